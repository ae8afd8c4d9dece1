"""controllers.informer against a scripted fake apiserver (list pages and watch streams).

We test these aspects:
- the first list is paginated and consistent (no resourceVersion), items arrive as ADDED and
  the watch starts at the list's resourceVersion;
- BOOKMARKs and events move the resourceVersion; a watch that ends cleanly is re-opened from
  the last resourceVersion without a relist;
- an ERROR event with 410 → a consistent relist whose diff against the cache yields
  MODIFIED / DELETED / ADDED / SYNC, counted as relists{reason="expired"};
- a failed watch (connection refused, 500) → backoff and a re-watch from the same
  resourceVersion (no relist);
- a resume point → list with resourceVersionMatch=Exact delivered as SYNC; a 410 answer to that
  list → a consistent list (reason "expired").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from controllers.informer import Informer
from controllers.kubeclient import CONFIGMAPS, Obj
from controllers.metrics import Metrics
from controllers.retry import ExponentialBackoff


def cm(name: str, rv: int) -> Obj:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}}


class Stream:
    def __init__(self, events: list[Obj]) -> None:
        self.events = events

    def __iter__(self) -> Iterator[Obj]:
        yield from self.events

    def close(self) -> None:
        pass


class FakeKube:
    """lists: resourceVersion → pages; watches: a script of streams or exceptions."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls: list[dict[str, Any]] = []
        self.watch_calls: list[str | None] = []
        self.done = threading.Event()

    def list(self, res: Any, namespace: Any = None, **params: Any) -> Obj:
        self.list_calls.append(params)
        page = self.lists.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    def watch(self, res: Any, namespace: Any = None, resource_version: Any = None, **kw: Any) -> Stream:
        self.watch_calls.append(resource_version)
        if not self.watches:
            self.done.set()
            raise ApiException(status=503)
        w = self.watches.pop(0)
        if isinstance(w, Exception):
            raise w
        return Stream(w)


def run(kube: FakeKube, **kw: Any) -> tuple[Informer, list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []
    inf = Informer(
        kube,  # type: ignore[arg-type]
        CONFIGMAPS,
        lambda t, o, old: events.append((t, o["metadata"]["name"], o["metadata"]["resourceVersion"])),
        metrics=Metrics("test"),
        backoff=ExponentialBackoff(initial=0.001, cap=0.001),
        page_size=2,
        **kw,
    ).start()
    assert kube.done.wait(5)
    inf.stop()
    return inf, events


def page(items: list[Obj], rv: str, cont: str = "") -> Obj:
    return {"metadata": {"resourceVersion": rv, "continue": cont}, "items": items}


def test_list_then_watch_bookmarks_and_rewatch() -> None:
    kube = FakeKube(
        [page([cm("a", 1), cm("b", 2)], "10", "tok"), page([cm("c", 3)], "10")],
        [
            [{"type": "MODIFIED", "object": cm("a", 11)}, {"type": "BOOKMARK", "object": cm("", 15)}],
            [{"type": "DELETED", "object": cm("b", 16)}],
        ],
    )
    inf, events = run(kube)
    assert kube.list_calls[0] == {"limit": 2, "labelSelector": None}
    assert kube.list_calls[1]["continue"] == "tok"
    assert events == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "2"),
        ("ADDED", "c", "3"),
        ("MODIFIED", "a", "11"),
        ("DELETED", "b", "16"),
    ]
    assert kube.watch_calls[:3] == ["10", "15", "16"]
    assert len(kube.list_calls) == 2, "a watch that ends is re-opened, not relisted"
    assert sorted(inf.store.keys()) == ["ns/a", "ns/c"]
    assert inf.metrics.value("relists_total", reason="initial") == 1


def test_410_relists_and_diffs() -> None:
    gone = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
    }
    kube = FakeKube(
        [
            page([cm("a", 1), cm("b", 2), cm("c", 3)], "10"),
            page([cm("a", 1), cm("b", 20), cm("d", 21)], "25"),
        ],
        [[gone], []],
    )
    inf, events = run(kube)
    assert events[3:] == [
        ("SYNC", "a", "1"),
        ("MODIFIED", "b", "20"),
        ("ADDED", "d", "21"),
        ("DELETED", "c", "3"),
    ]
    assert kube.list_calls[1] == {"limit": 2, "labelSelector": None}, "a consistent list, not at the old rv"
    assert kube.watch_calls[:2] == ["10", "25"]
    assert inf.metrics.value("relists_total", reason="expired") == 1


def test_watch_failures_back_off_and_rewatch_same_rv() -> None:
    kube = FakeKube(
        [page([cm("a", 1)], "10")],
        [
            ConnectionRefusedError("down"),
            ApiException(status=500),
            [{"type": "MODIFIED", "object": cm("a", 12)}],
        ],
    )
    inf, _events = run(kube)
    assert kube.watch_calls[:4] == ["10", "10", "10", "12"]
    assert len(kube.list_calls) == 1
    assert inf.metrics.value("retries_total", reason="watch") >= 2


def test_resume_lists_exact_as_sync() -> None:
    kube = FakeKube([page([cm("a", 5)], "7")], [[{"type": "MODIFIED", "object": cm("a", 9)}]])
    inf, events = run(kube, resume_from="7")
    assert kube.list_calls[0] == {
        "limit": 2,
        "labelSelector": None,
        "resourceVersion": "7",
        "resourceVersionMatch": "Exact",
    }
    assert events == [("SYNC", "a", "5"), ("MODIFIED", "a", "9")]
    assert inf.metrics.value("relists_total", reason="resume") == 1


def test_resume_point_expired() -> None:
    kube = FakeKube([ApiException(status=410, reason="Expired"), page([cm("a", 30)], "31")], [[]])
    inf, events = run(kube, resume_from="7")
    assert kube.list_calls[1] == {"limit": 2, "labelSelector": None}
    assert events == [("ADDED", "a", "30")]
    assert inf.metrics.value("relists_total", reason="expired") == 1
