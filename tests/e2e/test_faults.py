"""Faults on demand through a real kube-apiserver on petcd: what a client sees.

- injected conflicts reach the client as 409 Conflict; the sample counter controller still ends
  with the exact count, and its conflict retries equal the conflicts injected;
- a cut watch (compaction + the apiserver's etcd watch canceled): a client resuming from before
  gets 410 Gone, the replicator's informer relists and the replicator converges;
- injected timeouts surface as apiserver errors (500, etcd's message) and a retry succeeds;
- a leader loss in the middle of a conflict storm on a 3-member petcd loses no acknowledged update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controllers import counter, replicator
from controllers.kubeclient import CONFIGMAPS, COUNTERS, REPLICATED_CONFIGMAPS, Kube, rv_of
from controllers.metrics import Metrics
from controllers.retry import is_not_found, is_transient
from controllers.storm import storm
from tests.e2e.conftest import KubeEnv, apply_manifests, make_namespace
from tests.harness.faults import Faults
from tests.harness.kube import Datastore, KubeAPIServer, KubeError
from tests.harness.procs import free_port


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeEnv, Faults, Kube]]:
    tmp = tmp_path_factory.mktemp("faults")
    port = free_port()
    with Datastore("petcd", 1, tmp / "ds", extra=[f"--listen-faults-urls=http://127.0.0.1:{port}"]) as ds:
        api = KubeAPIServer(ds, tmp / "kube", compaction_interval="10m")
        try:
            api.start()
            env = KubeEnv("petcd", ds, api, tmp)
            apply_manifests(env)
            kube = Kube.from_kubeconfig(str(api.kubeconfig))
            yield env, Faults([f"http://127.0.0.1:{port}"]), kube
            kube.close()
        finally:
            api.stop()


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
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
        time.sleep(0.1)


def test_conflicts_reach_the_client_as_409(faulty: tuple[KubeEnv, Faults, Kube]) -> None:
    env, faults, _ = faulty
    ns = make_namespace(env, "conflict")
    env.client.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "a"}, "data": {"x": "1"}})
    obj = env.client.get(f"/api/v1/namespaces/{ns}/configmaps/a")
    with faults.conflicts("configmaps", namespace=ns, n=1) as f:
        obj["data"]["x"] = "2"
        status, body = env.client.request("PUT", f"/api/v1/namespaces/{ns}/configmaps/a", obj)
        assert status == 409
        assert body["reason"] == "Conflict"
        assert body["message"] == (
            'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        assert f.injected == 1
    # the object was rewritten unchanged at a new resourceVersion, as by another writer
    now = env.client.get(f"/api/v1/namespaces/{ns}/configmaps/a")
    assert now["data"] == {"x": "1"} and int(rv_of(now)) > int(rv_of(obj))
    obj["metadata"]["resourceVersion"] = rv_of(now)
    assert env.client.request("PUT", f"/api/v1/namespaces/{ns}/configmaps/a", obj)[0] == 200


def test_counter_exact_and_retries_equal_injected_conflicts(faulty: tuple[KubeEnv, Faults, Kube]) -> None:
    """One writer doing get-modify-update (the counter's --storm 1x20): no conflict but the
    injected ones, each retried once (4 inside retry_on_conflict, whose DefaultRetry makes 5
    attempts, then a rate-limited requeue), and the count is exact."""
    env, faults, kube = faulty
    ns = make_namespace(env, "counter")
    counter.ensure_counter(kube, ns, "c")
    metrics = Metrics("faults-storm")
    with faults.conflicts("counters.petcd.example.com", namespace=ns, name="c", n=5) as f:
        rep = storm(kube, ns, "c", 1, 20, identity="faults", metrics=metrics)
        assert f.injected == 5
    assert (rep.acknowledged, rep.final_count) == (20, 20)
    assert rep.conflicts == 5
    assert rep.conflict_retries + rep.requeues == 5 == metrics.value("retries_total")


def test_counter_controller_exact_under_injected_conflicts(faulty: tuple[KubeEnv, Faults, Kube]) -> None:
    """The controller starts each step from its informer's copy, so the concurrent writes add
    conflicts of their own (a stale copy), as a real concurrent writer would; every 409 is
    retried and the count is exact."""
    env, faults, kube = faulty
    ns = make_namespace(env, "controller")
    target = 12
    counter.ensure_counter(kube, ns, "c", target=target)
    metrics = Metrics("faults-controller")
    with faults.conflicts("counters.petcd.example.com", namespace=ns, n=5) as f:
        ctl = counter.make_controller(kube, "faults", workers=1, metrics=metrics, namespace=ns)
        ctl.start(sync_timeout=30)
        try:
            done = wait_for(
                "the counter at its target",
                lambda: (o := kube.get(COUNTERS, ns, "c")).get("status", {}).get("count") == target and o,
            )
        finally:
            ctl.stop()
        assert f.injected == 5
    assert done["status"]["count"] == target
    assert metrics.value("conflicts_total") >= 5
    assert metrics.value("retries_total") == metrics.value("conflicts_total")
    assert metrics.value("writes_total", kind="status") == target


def test_watch_cut_makes_informers_relist(faulty: tuple[KubeEnv, Faults, Kube]) -> None:
    env, faults, kube = faulty
    ns, target = make_namespace(env, "cut"), make_namespace(env, "cut-t")
    kube.create(CONFIGMAPS, ns, {"metadata": {"name": "src"}, "data": {"v": "0"}})
    kube.create(
        REPLICATED_CONFIGMAPS,
        ns,
        {
            "apiVersion": "petcd.example.com/v1alpha1",
            "kind": "ReplicatedConfigMap",
            "metadata": {"name": "r"},
            "spec": {"sourceName": "src", "targetNamespaces": [target]},
        },
    )
    ctl = replicator.make_controller(kube, Metrics("cut"), workers=2).start(sync_timeout=60)
    try:
        wait_for("the first copy", lambda: kube.get(CONFIGMAPS, target, "src").get("data") == {"v": "0"})
        time.sleep(0.5)  # the replicator's own writes come back as events
        before = env.client.get(f"/api/v1/namespaces/{ns}/configmaps")["metadata"]["resourceVersion"]
        # the datastore moves on under other resources (nothing these watches see)
        for i in range(3):
            env.client.create(f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": f"s{i}"}})
        relists = ctl.metrics.value("relists_total", reason="expired")
        cut = faults.watch_cut("configmaps")
        assert cut.injected >= 1  # the apiserver's watch on configmaps
        compacted = cut.result[0]["compact_revision"]
        assert compacted > int(before)
        # a client resuming from before the cut: 429 while the apiserver's cache relists, then
        # 410 Gone
        answers: list[int] = []
        wait_for("410 Gone", lambda: resume(env, ns, before, answers) == 410)
        assert set(answers) <= {429, 410}, answers
        wait_for(
            "the informer relisting", lambda: ctl.metrics.value("relists_total", reason="expired") > relists
        )
        kube.patch(CONFIGMAPS, ns, "src", {"data": {"v": "1"}})
        wait_for(
            "the copy after the relist", lambda: kube.get(CONFIGMAPS, target, "src").get("data") == {"v": "1"}
        )
    finally:
        ctl.stop()


def resume(env: KubeEnv, ns: str, rv: str, answers: list[int]) -> int:
    """Watch configmaps from rv; the status answered, also appended to answers (an expired
    resourceVersion is a 200 whose one event is an ERROR carrying the 410)."""
    try:
        with env.client.watch(
            f"/api/v1/namespaces/{ns}/configmaps", timeout=10, resourceVersion=rv
        ) as events:
            first = next(events, None)
            ok = first is None or first["type"] != "ERROR"
            answers.append(200 if ok else int(first["object"]["code"]))  # type: ignore[index]
    except KubeError as e:
        answers.append(e.status)
    except TimeoutError:
        answers.append(200)  # a watch that serves
    return answers[-1]


def test_timeouts_surface_and_a_retry_succeeds(faulty: tuple[KubeEnv, Faults, Kube]) -> None:
    env, faults, _ = faulty
    ns = make_namespace(env, "timeout")
    with faults.errors("configmaps", namespace=ns, error="timeout", n=1, methods=["Txn"]) as f:
        r = env.kubectl("create", "configmap", "x", "-n", ns, "--from-literal=k=v")
        assert r.rc != 0 and "etcdserver: request timed out" in r.err
        status, body = env.client.request("GET", f"/api/v1/namespaces/{ns}/configmaps/x")
        assert status == 404  # nothing was written
        r = env.kubectl("create", "configmap", "x", "-n", ns, "--from-literal=k=v")
        assert r.rc == 0, r.err
        assert f.injected == 1
    with faults.errors("configmaps", namespace=ns, error="too_many_requests", n=1, methods=["Range"]):
        status, body = env.client.request("GET", f"/api/v1/namespaces/{ns}/configmaps/x")
        assert (status, body["message"]) == (500, "etcdserver: too many requests")
        assert env.client.request("GET", f"/api/v1/namespaces/{ns}/configmaps/x")[0] == 200
