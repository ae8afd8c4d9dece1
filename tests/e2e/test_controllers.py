"""The sample controllers (controllers/) against a real kube-apiserver on petcd and on real etcd.

We test these aspects:
- conflict storm: 8 writers x 25 increments of one Counter with get-modify-update +
  retry_on_conflict: the count is exactly 200, 409s were seen and retried, every write got its
  own resourceVersion; the naive last-write-wins writer acknowledged 200 writes but lost some;
- three counter controller replicas on one Counter: exactly `target` status writes (the safe
  one) vs. more writes than increments (the naive one);
- resourceVersion semantics as the controller sees them: the resourceVersion a write returns
  equals the etcd mod_revision of /registry/petcd.example.com/counters/<ns>/<name> (and is not
  stored in the value), watch events carry the same resourceVersions in order, and a list
  without resourceVersion answers at the datastore's revision at the time of the list;
- watch resume: the replicator stopped (SIGTERM-like stop) and started again with a resume
  file gets every change made before, during and after the downtime exactly once;
- 410 Gone: with the datastore compacted past the resume point and the apiserver restarted
  (a fresh watch cache), the replicator's resume list gets 410, it relists and converges; with
  the apiserver down under a running replicator, it backs off, relists on 410 and converges;
- bad input and faults: invalid spec, missing source, missing namespace, foreign ConfigMap at
  the target, hand-edited copy, objects deleted mid-reconcile, count above target: a status
  condition and no crash or hot loop;
- a 3-member datastore whose leader is killed during a storm: the count is still exact.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers import counter, replicator, storm
from controllers.checkpoint import Checkpointer, FileCheckpoint
from controllers.conditions import get_condition
from controllers.informer import SYNC, Informer
from controllers.kubeclient import CONFIGMAPS, COUNTERS, REPLICATED_CONFIGMAPS, Kube, Obj, key_of, rv_of
from controllers.metrics import Metrics
from controllers.retry import is_not_found, is_transient
from controllers.runtime import Controller
from tests.e2e.conftest import DATASTORES, KubeEnv, apply_manifests, kube_env, make_namespace, unique

# the apiserver's own compactor stays out of the way: the tests compact through etcdctl
KUBE_OPTIONS = {"compaction_interval": "10m"}

WRITERS, INCREMENTS = 8, 25


# ------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def kube(env: KubeEnv) -> Iterator[Kube]:
    apply_manifests(env)
    k = Kube.from_kubeconfig(str(env.api.kubeconfig))
    yield k
    k.close()


@pytest.fixture(scope="module", params=DATASTORES)
def env3(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEnv]:
    tmp = tmp_path_factory.mktemp(f"controllers3-{request.param}")
    with kube_env(request.param, tmp, members=3, **KUBE_OPTIONS) as e:
        apply_manifests(e)
        yield e


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """fn() until truthy; transient API errors (apiserver restarting) count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:
            if not (is_transient(e) or is_not_found(e)):
                raise
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last {last!r}")
        time.sleep(interval)


def show(capsys: pytest.CaptureFixture[str], env: KubeEnv, label: str, data: Any) -> None:
    with capsys.disabled():
        print(f"\n[{env.kind}] {label}: {data if isinstance(data, str) else json.dumps(data)}", flush=True)


def ready(obj: Obj) -> tuple[str, str]:
    c = get_condition(obj.get("status"), "Ready") or {}
    return c.get("status", ""), c.get("reason", "")


def configmap(name: str, **data: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def rcm(name: str, source: str, targets: list[str], **spec: Any) -> Obj:
    return {
        "apiVersion": "petcd.example.com/v1alpha1",
        "kind": "ReplicatedConfigMap",
        "metadata": {"name": name},
        "spec": {"sourceName": source, "targetNamespaces": targets, **spec},
    }


def set_data(kube: Kube, ns: str, name: str, **data: str) -> Obj:
    return kube.patch(CONFIGMAPS, ns, name, {"data": data})


def data_of(kube: Kube, ns: str, name: str) -> dict[str, str] | None:
    try:
        return kube.get(CONFIGMAPS, ns, name).get("data") or {}
    except Exception as e:
        if is_not_found(e):
            return None
        raise


def at_target(kube: Kube, ns: str, name: str, target: int) -> Obj | None:
    o = kube.get(COUNTERS, ns, name)
    ok = (o.get("status") or {}).get("count") == target and ready(o) == ("True", "TargetReached")
    return o if ok else None


def counter_key(ns: str, name: str) -> str:
    return f"/registry/petcd.example.com/counters/{ns}/{name}"


# ------------------------------------------------------------------------------------------------
# conflict storm


def test_conflict_storm_safe_writers_lose_nothing(
    env: KubeEnv, kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = make_namespace(env, "storm")
    storm.ensure_counter(kube, ns, "safe")
    rep = storm.storm(kube, ns, "safe", WRITERS, INCREMENTS, identity="safe")
    show(capsys, env, f"safe storm {WRITERS}x{INCREMENTS}", rep.to_json())
    assert rep.acknowledged == WRITERS * INCREMENTS
    assert rep.final_count == WRITERS * INCREMENTS, "lost or doubled increments"
    assert rep.conflicts > 0, "8 concurrent writers and not one 409?"
    assert rep.conflict_retries > 0
    assert len(set(rep.resource_versions)) == WRITERS * INCREMENTS, "each write has its own resourceVersion"
    final = kube.get(COUNTERS, ns, "safe")
    assert final["status"]["count"] == WRITERS * INCREMENTS
    assert env.ds.mod_revision(counter_key(ns, "safe")) == int(rv_of(final))


def test_conflict_storm_naive_writers_lose_updates(
    env: KubeEnv, kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = make_namespace(env, "storm")
    storm.ensure_counter(kube, ns, "naive")
    rep = storm.storm(kube, ns, "naive", WRITERS, INCREMENTS, naive=True, identity="naive")
    show(capsys, env, f"naive storm {WRITERS}x{INCREMENTS}", rep.to_json())
    assert rep.acknowledged == WRITERS * INCREMENTS
    assert rep.conflicts == 0, "no resourceVersion, no 409"
    assert rep.final_count < rep.acknowledged, "last-write-wins should have lost increments"
    assert rep.lost > 0


def test_controller_replicas_safe_vs_naive(
    env: KubeEnv, kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three replicas of each controller (no leader election) on one Counter each."""
    ns = make_namespace(env, "replicas")
    target = 30
    results = {}
    for naive in (False, True):
        name = "naive" if naive else "safe"
        kube.create(
            COUNTERS,
            ns,
            {
                "apiVersion": "petcd.example.com/v1alpha1",
                "kind": "Counter",
                "metadata": {"name": name},
                "spec": {"target": target},
            },
        )
        metrics = [Metrics(f"{name}-{i}") for i in range(3)]
        ctls = [
            counter.make_controller(
                kube, f"{name}-{i}", workers=2, metrics=metrics[i], naive=naive, namespace=ns
            )
            for i in range(3)
        ]
        try:
            for c in ctls:
                c.start(sync_timeout=30)
            done = wait_for(
                f"{name} counter at its target", functools.partial(at_target, kube, ns, name, target)
            )
        finally:
            for c in ctls:
                c.stop()
        writes = sum(m.value("writes_total", kind="status") for m in metrics)
        conflicts = sum(m.value("conflicts_total") for m in metrics)
        results[name] = {
            "target": target,
            "count": done["status"]["count"],
            "status_writes": writes,
            "conflicts": conflicts,
        }
    show(capsys, env, "3 controller replicas", results)
    # safe: one write per step (the last step also sets Ready=True), never a lost one
    assert results["safe"]["status_writes"] == target
    assert results["safe"]["conflicts"] > 0
    # naive: converges, but only by writing more often than it counted
    assert results["naive"]["status_writes"] >= target
    assert results["naive"]["conflicts"] == 0


# ------------------------------------------------------------------------------------------------
# resourceVersion semantics


def test_resource_version_is_etcd_mod_revision(
    env: KubeEnv, kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = make_namespace(env, "rv")
    created = storm.ensure_counter(kube, ns, "c", target=100)
    key = counter_key(ns, "c")
    assert env.ds.mod_revision(key) == int(rv_of(created))

    seen: list[tuple[str, str]] = []
    stream = kube.watch(
        COUNTERS, ns, resource_version=rv_of(created), timeout_seconds=30, allow_bookmarks=False
    )

    def collect() -> None:
        for ev in stream:
            seen.append((ev["type"], rv_of(ev["object"])))

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    w = counter.CounterWriter(kube, "rv-test")
    written = []
    for i in range(5):
        out = w.step(ns, "c")
        assert out is not None
        rv = int(rv_of(out))
        written.append(str(rv))
        kv = env.ds.get_json(key)["kvs"][0]
        assert int(kv["mod_revision"]) == rv, (kv["mod_revision"], rv)
        assert int(kv["version"]) == i + 2, "one etcd version per write (create = 1)"
        stored = json.loads(kv["value"])
        assert stored["status"]["count"] == i + 1
        assert "resourceVersion" not in stored["metadata"], (
            "the resourceVersion is not stored, it is the mod_revision"
        )
        assert rv_of(kube.get(COUNTERS, ns, "c")) == str(rv)
    wait_for("the watch to deliver every write", lambda: len(seen) >= len(written), timeout=20)
    stream.close()
    assert seen == [("MODIFIED", rv) for rv in written]

    # a list without resourceVersion is a consistent read at the datastore's current revision
    # (bracketed by etcd revisions read just before and after; equal when nothing else wrote)
    exact = None
    for _ in range(20):
        r1 = env.ds.revision()
        lst = kube.list(COUNTERS, ns)
        r2 = env.ds.revision()
        lrv = int(lst["metadata"]["resourceVersion"])
        assert r1 <= lrv <= r2, (r1, lrv, r2)
        if r1 == r2:
            exact = (r1, lrv)
            break
    assert exact is not None and exact[0] == exact[1], "no quiet moment to compare list rv and etcd revision"
    # ... also for the informer's paginated list
    inf = Informer(kube, COUNTERS, namespace=ns, page_size=1)
    r1 = env.ds.revision()
    inf.start()
    assert inf.wait_synced(30)
    r2 = env.ds.revision()
    inf.stop()
    assert r1 <= int(inf.last_resource_version) <= r2
    show(
        capsys,
        env,
        "resourceVersion = mod_revision",
        {"writes": written, "list_rv_vs_etcd_revision": exact, "etcd_key": key},
    )


# ------------------------------------------------------------------------------------------------
# watch resume and 410


class Recorder:
    """Every event the replicator's informers hand out, tagged with the run."""

    def __init__(self, namespaces: set[str]) -> None:
        self.namespaces = namespaces
        self.events: list[tuple[int, str, str, str, str]] = []  # run, resource, type, key, rv
        self.lock = threading.Lock()
        self.run = 0

    def attach(self, ctl: Controller) -> None:
        for inf in ctl.informers:
            inf.add_handler(functools.partial(self.record, inf.resource.plural))

    def record(self, resource: str, t: str, obj: Obj, old: Obj | None) -> None:
        if obj.get("metadata", {}).get("namespace") in self.namespaces:
            with self.lock:
                self.events.append((self.run, resource, t, key_of(obj), rv_of(obj)))

    def changes(self) -> list[tuple[int, str, str, str, str]]:
        with self.lock:
            return [e for e in self.events if e[2] != SYNC]

    def has_rv(self, rv: str) -> bool:
        return any(e[4] == rv for e in self.changes())


def start_replicator(
    kube: Kube, checkpoint: Path | None, recorder: Recorder | None = None, **kw: Any
) -> Controller:
    cp = Checkpointer(FileCheckpoint(checkpoint), interval=0.2) if checkpoint else None
    ctl = replicator.make_controller(kube, Metrics("replicator"), workers=2, checkpointer=cp, **kw)
    if recorder is not None:
        recorder.run += 1
        recorder.attach(ctl)
    return ctl.start(sync_timeout=60)


def test_watch_resume_delivers_every_change_exactly_once(
    env: KubeEnv, kube: Kube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ns, target = make_namespace(env, "resume"), make_namespace(env, "resume-t")
    rec = Recorder({ns, target})
    kube.create(CONFIGMAPS, ns, configmap("src", v="0"))
    kube.create(REPLICATED_CONFIGMAPS, ns, rcm("r", "src", [target]))
    ck = tmp_path / "resume.json"
    writes: list[Obj] = []

    ctl = start_replicator(kube, ck, rec)
    try:
        wait_for("first copy", lambda: data_of(kube, target, "src") == {"v": "0"})
        for i in range(1, 4):
            writes.append(set_data(kube, ns, "src", v=str(i)))
        wait_for("copy v3", lambda: data_of(kube, target, "src") == {"v": "3"})
        wait_for("the last source write delivered", lambda: rec.has_rv(rv_of(writes[-1])))
        time.sleep(0.5)  # let the replicator's own writes (copy, status) come back as events
    finally:
        ctl.stop()
    saved = json.loads(ck.read_text())

    # changes while no controller runs
    for i in range(4, 7):
        writes.append(set_data(kube, ns, "src", v=str(i)))
    writes.append(kube.create(CONFIGMAPS, ns, configmap("extra", a="1")))
    writes.append(set_data(kube, ns, "extra", a="2"))
    kube.delete(CONFIGMAPS, ns, "extra")

    ctl = start_replicator(kube, ck, rec)
    try:
        wait_for("copy v6 after resume", lambda: data_of(kube, target, "src") == {"v": "6"})
        for i in range(7, 9):
            writes.append(set_data(kube, ns, "src", v=str(i)))
        wait_for("copy v8", lambda: data_of(kube, target, "src") == {"v": "8"})
        wait_for("the last source write delivered", lambda: rec.has_rv(rv_of(writes[-1])))
        time.sleep(0.5)
        assert ctl.metrics.value("relists_total", reason="resume") == 2
        assert ctl.metrics.value("relists_total", reason="expired") == 0
        assert ctl.metrics.value("relists_total", reason="initial") == 0
    finally:
        ctl.stop()

    changes = rec.changes()
    # every write of the test delivered exactly once, across the restart
    for w in writes:
        got = [e for e in changes if e[3] == key_of(w) and e[4] == rv_of(w)]
        assert len(got) == 1, (key_of(w), rv_of(w), got)
    deleted = [e for e in changes if e[2] == "DELETED" and e[3] == f"{ns}/extra"]
    assert len(deleted) == 1 and deleted[0][0] == 2
    # no change (the controller's own copy and status writes included) delivered twice
    ids = [(e[1], e[2], e[3], e[4]) for e in changes]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    # the second run only got changes after the checkpoint, the first only before it
    for run, res, _, _, rv in changes:
        if run == 2:
            assert int(rv) > int(saved[res]), (res, rv, saved)
        else:
            assert int(rv) <= int(saved[res]), (res, rv, saved)
    show(
        capsys,
        env,
        "watch resume",
        {
            "checkpoint": saved,
            "changes_run1": sum(e[0] == 1 for e in changes),
            "changes_run2": sum(e[0] == 2 for e in changes),
        },
    )


def test_relist_on_410_after_compaction_and_apiserver_restarts(
    env: KubeEnv,
    kube: Kube,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("INFO", logger="controllers")
    ns, target = make_namespace(env, "gone"), make_namespace(env, "gone-t")
    kube.create(CONFIGMAPS, ns, configmap("src", v="0"))
    kube.create(REPLICATED_CONFIGMAPS, ns, rcm("r", "src", [target]))
    ck = tmp_path / "resume.json"
    ctl = start_replicator(kube, ck)
    try:
        wait_for("first copy", lambda: data_of(kube, target, "src") == {"v": "0"})
    finally:
        ctl.stop()
    resume_at = json.loads(ck.read_text())

    # while stopped: changes, then compaction past the resume point, then a fresh watch cache
    for i in range(1, 4):
        set_data(kube, ns, "src", v=str(i))
    rev = env.ds.revision()
    env.ctl().ok("compact", str(rev))
    assert env.ds.compacted_revision() >= rev > max(int(v) for v in resume_at.values())
    env.api.kill()
    env.api.start()

    ctl = start_replicator(kube, ck)
    try:
        wait_for("copy v3 after the relist", lambda: data_of(kube, target, "src") == {"v": "3"})
        assert ctl.metrics.value("relists_total", reason="expired") >= 1
        assert "resume point expired (410 Gone): relisting" in caplog.text

        # the apiserver goes away under the running controller
        expired_before = ctl.metrics.value("relists_total", reason="expired")
        env.api.kill()
        wait_for("the watch failing", lambda: ctl.metrics.value("retries_total", reason="watch") >= 1)
        # a write meanwhile, elsewhere: the new watch cache starts past the controller's last
        # resourceVersion (without one, it may start exactly there and serve it: no 410)
        env.ctl().ok("put", "/petcd-e2e/revision-bump", "x")
        env.api.start()
        wait_for("apiserver back", lambda: set_data(kube, ns, "src", v="4"))
        wait_for("copy v4 after the apiserver restart", lambda: data_of(kube, target, "src") == {"v": "4"})
        retries = ctl.metrics.value("retries_total", reason="watch")
        expired_after = ctl.metrics.value("relists_total", reason="expired")
        assert retries >= 1, "the watch should have failed and backed off while the apiserver was down"
        assert expired_after > expired_before, "the new watch cache cannot serve the old resourceVersion: 410"
        assert "watch expired (410 Gone): relisting" in caplog.text
    finally:
        ctl.stop()
    show(
        capsys,
        env,
        "410 relists",
        {
            "resume_at": resume_at,
            "compacted_at": rev,
            "expired_relists": expired_after,
            "watch_retries": retries,
        },
    )


# ------------------------------------------------------------------------------------------------
# bad input and faults


def test_replicator_bad_input_and_faults(env: KubeEnv, kube: Kube) -> None:
    ns, t1 = make_namespace(env, "faults"), make_namespace(env, "faults-t")
    ctl = start_replicator(kube, None, retry_interval=1.0)
    m = ctl.metrics

    def rcm_ready(name: str) -> tuple[str, str]:
        return ready(kube.get(REPLICATED_CONFIGMAPS, ns, name))

    try:
        # invalid spec: the copy would overwrite its own source
        kube.create(CONFIGMAPS, ns, configmap("self", a="1"))
        kube.create(REPLICATED_CONFIGMAPS, ns, rcm("self", "self", [ns, t1]))
        wait_for("InvalidSpec", lambda: rcm_ready("self") == ("False", "InvalidSpec"))
        before = m.value("reconciles_total")
        time.sleep(2)
        assert m.value("reconciles_total") - before <= 2, "an invalid spec must not be retried in a loop"
        assert data_of(kube, t1, "self") is None

        # missing source → SourceNotFound, then created → Synced
        kube.create(REPLICATED_CONFIGMAPS, ns, rcm("late", "late-src", [t1]))
        wait_for("SourceNotFound", lambda: rcm_ready("late") == ("False", "SourceNotFound"))
        kube.create(CONFIGMAPS, ns, configmap("late-src", x="y"))
        wait_for("Synced once the source exists", lambda: rcm_ready("late") == ("True", "Synced"))
        assert data_of(kube, t1, "late-src") == {"x": "y"}

        # a copy edited by hand is put back; one deleted by hand is recreated
        kube.patch(CONFIGMAPS, t1, "late-src", {"data": {"x": "tampered"}})
        wait_for("copy restored", lambda: data_of(kube, t1, "late-src") == {"x": "y"})
        kube.delete(CONFIGMAPS, t1, "late-src")
        wait_for("copy recreated", lambda: data_of(kube, t1, "late-src") == {"x": "y"})

        # a namespace that does not exist yet → PartiallySynced, then Synced when it appears
        missing = unique("faults-later")
        kube.create(REPLICATED_CONFIGMAPS, ns, rcm("partial", "late-src", [t1, missing], targetName="p"))
        wait_for("PartiallySynced", lambda: rcm_ready("partial") == ("False", "PartiallySynced"))
        st = kube.get(REPLICATED_CONFIGMAPS, ns, "partial")["status"]
        assert st["syncedCount"] == 1 and st["syncedNamespaces"] == [t1]
        assert "namespace not found" in get_condition(st, "Ready")["message"]  # type: ignore[index]
        env.client.create("/api/v1/namespaces", {"metadata": {"name": missing}})
        wait_for("Synced after the namespace appeared", lambda: rcm_ready("partial") == ("True", "Synced"))
        assert kube.get(REPLICATED_CONFIGMAPS, ns, "partial")["status"]["syncedCount"] == 2

        # a foreign ConfigMap where the copy should go is not overwritten
        kube.create(CONFIGMAPS, t1, configmap("taken", mine="yes"))
        kube.create(REPLICATED_CONFIGMAPS, ns, rcm("clash", "late-src", [t1], targetName="taken"))
        wait_for("PartiallySynced (foreign)", lambda: rcm_ready("clash") == ("False", "PartiallySynced"))
        assert data_of(kube, t1, "taken") == {"mine": "yes"}

        # deleted: copies are cleaned up; a target removed from the spec loses its copy
        kube.delete(REPLICATED_CONFIGMAPS, ns, "partial")
        wait_for(
            "copies of a deleted RCM removed",
            lambda: data_of(kube, missing, "p") is None and data_of(kube, t1, "p") is None,
        )
        late = kube.get(REPLICATED_CONFIGMAPS, ns, "late")
        late["spec"]["targetNamespaces"] = [missing]
        kube.replace(REPLICATED_CONFIGMAPS, ns, "late", late)
        wait_for(
            "copy moved",
            lambda: (
                data_of(kube, missing, "late-src") == {"x": "y"} and data_of(kube, t1, "late-src") is None
            ),
        )

        assert all(t.is_alive() for t in ctl._threads), "a worker died"
    finally:
        ctl.stop()


def test_counter_bad_input_and_deleted_mid_reconcile(env: KubeEnv, kube: Kube) -> None:
    ns = make_namespace(env, "ctr-faults")
    m = Metrics("counter")
    ctl = counter.make_controller(kube, "faults", workers=2, metrics=m, namespace=ns)
    ctl.start(sync_timeout=30)

    def body(name: str, target: int) -> Obj:
        return {
            "apiVersion": "petcd.example.com/v1alpha1",
            "kind": "Counter",
            "metadata": {"name": name},
            "spec": {"target": target},
        }

    try:
        kube.create(COUNTERS, ns, body("five", 5))
        wait_for("five at 5", lambda: at_target(kube, ns, "five", 5))
        # target lowered below the count: a condition, no counting down, no loop
        kube.patch(COUNTERS, ns, "five", {"spec": {"target": 2}})
        wait_for(
            "CountAboveTarget", lambda: ready(kube.get(COUNTERS, ns, "five")) == ("False", "CountAboveTarget")
        )
        before = m.value("reconciles_total")
        time.sleep(1.5)
        assert m.value("reconciles_total") - before <= 2
        assert kube.get(COUNTERS, ns, "five")["status"]["count"] == 5

        # deleted while the controller is busy counting it
        kube.create(COUNTERS, ns, body("gone", 1_000_000))
        wait_for(
            "gone counting", lambda: (kube.get(COUNTERS, ns, "gone").get("status") or {}).get("count", 0) >= 5
        )
        kube.delete(COUNTERS, ns, "gone")
        wait_for("dropped after 404", lambda: m.value("reconciles_total", result="dropped") >= 1)

        # ... and the controller carries on with other objects
        kube.create(COUNTERS, ns, body("after", 3))
        wait_for("after at 3", lambda: at_target(kube, ns, "after", 3))
        assert all(t.is_alive() for t in ctl._threads)
    finally:
        ctl.stop()


# ------------------------------------------------------------------------------------------------
# 3 members: the leader dies during the storm


def test_leader_killed_during_storm_count_is_exact(env3: KubeEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert env3.ds.cluster is not None
    kube = Kube.from_kubeconfig(str(env3.api.kubeconfig))
    ns = make_namespace(env3, "kill")
    storm.ensure_counter(kube, ns, "c")
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = storm.storm(kube, ns, "c", WRITERS, INCREMENTS, identity="kill")
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    wait_for(
        "the storm under way",
        lambda: (kube.get(COUNTERS, ns, "c").get("status") or {}).get("count", 0) >= 40,
        timeout=120,
    )
    leader = env3.ds.cluster.leader()
    assert leader is not None
    leader.kill()
    killed_at = (kube.get(COUNTERS, ns, "c").get("status") or {}).get("count", 0)
    t.join(300)
    assert not t.is_alive(), "the storm did not finish"
    if "error" in result:
        raise result["error"]
    rep = result["report"]
    show(capsys, env3, f"leader {leader.name} killed at count ~{killed_at}", rep.to_json())
    assert rep.final_count == WRITERS * INCREMENTS
    assert rep.acknowledged == WRITERS * INCREMENTS
    kube.close()
