"""A full stream channel's event responses merged per watcher (server/v3rpc/watch.py _merged):
each watcher's events in order, at the last merged revision; progress, control and compaction
responses are barriers; a merged response stays under MAX_MERGED_BYTES of events."""

from __future__ import annotations

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.mvccpb.kv_pb2 import Event, KeyValue
from server.mvcc.watcher import WatchResponse
from server.v3rpc import watch


def ev(key: str, rev: int, size: int = 1) -> Event:
    return Event(kv=KeyValue(key=key.encode(), mod_revision=rev, value=b"v" * size))


def keys(item: object) -> tuple[int, list[str], int] | str:
    if isinstance(item, WatchResponse):
        return item.watch_id, [e.kv.key.decode() for e in item.events], item.revision
    return "barrier"


def test_merged_per_watcher_in_order_with_barriers() -> None:
    progress = pb.WatchResponse()
    items: list[object] = [
        WatchResponse(1, (ev("a", 2),), 2),
        WatchResponse(2, (ev("a", 2),), 2),
        WatchResponse(1, (ev("b", 3),), 3),
        progress,
        WatchResponse(1, (ev("c", 4),), 4),
        WatchResponse(2, compact_revision=3),
        WatchResponse(2, (ev("d", 5),), 5),
    ]
    assert [keys(i) for i in watch._merged(items)] == [
        (1, ["a", "b"], 3),
        (2, ["a"], 2),
        "barrier",
        (1, ["c"], 4),
        (2, [], 0),
        (2, ["d"], 5),
    ]


def test_merged_responses_stay_under_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MAX_MERGED_BYTES", 250)
    items: list[object] = [WatchResponse(1, (ev(f"k{i}", i + 2, 100),), i + 2) for i in range(5)]
    out = watch._merged(items)
    assert [len(i.events) for i in out if isinstance(i, WatchResponse)] == [2, 2, 1]
    assert [e.kv.key for i in out if isinstance(i, WatchResponse) for e in i.events] == [
        f"k{i}".encode() for i in range(5)
    ]
