"""The samples' reconciles over a fake apiserver: what they read (the informer's cache) and
what they write (conditional writes only).

We test these aspects:
- Store indexes follow puts, deletes and replaces (client-go's indexer): the replicator finds
  the ReplicatedConfigMaps of a source, and the copies of an owner, without a scan;
- the counter's reconcile reads the cached Counter and writes .../status with its
  resourceVersion; a stale cache costs one 409 and a fresh GET, never a lost or double step;
- the replicator's reconcile reads the source and the existing copies from the cache, creates
  what is missing, updates stale copies with their resourceVersion, deletes copies no longer
  wanted with a resourceVersion precondition, and writes its status once.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.exceptions import ApiException

from controllers import counter, replicator
from controllers.informer import Store
from controllers.kubeclient import CONFIGMAPS, COUNTERS, REPLICATED_CONFIGMAPS, Obj, Resource, key_of
from controllers.metrics import Metrics


def obj(ns: str, name: str, rv: int, **fields: Any) -> Obj:
    return {
        "metadata": {"namespace": ns, "name": name, "resourceVersion": str(rv), "generation": 1},
        **fields,
    }


class FakeKube:
    """Objects by (plural, key); conditional writes compare resourceVersions like the apiserver."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.rv = 100
        self.calls: list[tuple[str, str, str]] = []

    def add(self, res: Resource, o: Obj) -> Obj:
        self.objects[(res.plural, key_of(o))] = o
        return o

    def _next(self, o: Obj) -> Obj:
        self.rv += 1
        o = copy.deepcopy(o)
        o["metadata"]["resourceVersion"] = str(self.rv)
        return o

    def get(self, res: Resource, namespace: str | None, name: str, subresource: str | None = None) -> Obj:
        self.calls.append(("get", res.plural, f"{namespace}/{name}"))
        found = self.objects.get((res.plural, f"{namespace}/{name}"))
        if found is None:
            raise ApiException(status=404)
        return copy.deepcopy(found)

    def create(self, res: Resource, namespace: str | None, body: Obj, **params: Any) -> Obj:
        key = f"{namespace}/{body['metadata']['name']}"
        self.calls.append(("create", res.plural, key))
        if (res.plural, key) in self.objects:
            raise ApiException(status=409)
        return self.add(res, self._next(body))

    def replace(
        self, res: Resource, namespace: str | None, name: str, body: Obj, subresource: str | None = None
    ) -> Obj:
        key = f"{namespace}/{name}"
        self.calls.append(("replace" + (f"/{subresource}" if subresource else ""), res.plural, key))
        cur = self.objects[(res.plural, key)]
        if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return self.add(res, self._next(body))

    def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        key = f"{namespace}/{name}"
        self.calls.append(("delete", res.plural, key))
        cur = self.objects[(res.plural, key)]
        if resource_version != cur["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return self.objects.pop((res.plural, key))


def test_store_indexes_follow_the_cache() -> None:
    store = Store({"source": replicator.source_key})
    a = obj("ns", "a", 1, spec={"sourceName": "s"})
    b = obj("ns", "b", 2, spec={"sourceName": "s"})
    store.put(a)
    store.put(b)
    assert [key_of(o) for o in store.by_index("source", "ns/s")] == ["ns/a", "ns/b"]
    store.put(obj("ns", "b", 3, spec={"sourceName": "t"}))
    assert [key_of(o) for o in store.by_index("source", "ns/s")] == ["ns/a"]
    assert [key_of(o) for o in store.by_index("source", "ns/t")] == ["ns/b"]
    store.delete(a)
    assert store.by_index("source", "ns/s") == []
    store.replace([a])
    assert [key_of(o) for o in store.by_index("source", "ns/s")] == ["ns/a"]
    assert store.by_index("source", "ns/t") == []


def test_counter_step_from_the_cache() -> None:
    kube = FakeKube()
    c = kube.add(COUNTERS, obj("ns", "c", 1, spec={"target": 3, "step": 1}, status={"count": 0}))
    w = counter.CounterWriter(kube, "w", Metrics("t-counter-1"))  # type: ignore[arg-type]
    out = w.step("ns", "c", cached=copy.deepcopy(c))
    assert out is not None and out["status"]["count"] == 1
    assert [call[0] for call in kube.calls] == ["replace/status"], "no GET: the cache was fresh"
    kube.calls.clear()
    out = w.step("ns", "c", cached=copy.deepcopy(c))  # stale: still at count 0
    assert out is not None and out["status"]["count"] == 2, "one step, from the fresh GET"
    assert [call[0] for call in kube.calls] == ["replace/status", "get", "replace/status"]


def _replicator(kube: FakeKube, rcm: Obj, *configmaps: Obj) -> replicator.Replicator:
    rcms = Store({replicator.SOURCE: replicator.source_key})
    rcms.put(rcm)
    cms = Store({replicator.OWNER: replicator.owner_key})
    for cm in configmaps:
        cms.put(cm)
    return replicator.Replicator(kube, Metrics("t-replicator"), rcms, cms)  # type: ignore[arg-type]


def test_replicator_reconciles_from_the_cache() -> None:
    kube = FakeKube()
    rcm = kube.add(
        REPLICATED_CONFIGMAPS, obj("src", "r", 5, spec={"sourceName": "cfg", "targetNamespaces": ["a", "b"]})
    )
    source = kube.add(CONFIGMAPS, obj("src", "cfg", 6, data={"k": "v2"}))
    stale = kube.add(CONFIGMAPS, replicator.desired_copy(obj("src", "cfg", 4, data={"k": "v1"}), rcm, "a"))
    stale["metadata"]["resourceVersion"] = "7"
    gone = replicator.desired_copy(source, rcm, "old")
    gone["metadata"]["resourceVersion"] = "8"
    kube.add(CONFIGMAPS, gone)
    rep = _replicator(kube, rcm, source, stale, gone)
    assert rep.reconcile("src/r") is None
    writes = [c for c in kube.calls if c[0] != "get"]
    assert writes == [
        ("replace", "configmaps", "a/cfg"),
        ("create", "configmaps", "b/cfg"),
        ("delete", "configmaps", "old/cfg"),
        ("replace/status", "replicatedconfigmaps", "src/r"),
    ]
    reads = [c for c in kube.calls if c[0] == "get"]
    assert reads == [("get", "replicatedconfigmaps", "src/r")], "only the status write re-reads"
    status = kube.objects[("replicatedconfigmaps", "src/r")]["status"]
    assert (status["syncedNamespaces"], status["syncedCount"]) == (["a", "b"], 2)
    assert kube.objects[("configmaps", "a/cfg")]["data"] == {"k": "v2"}
