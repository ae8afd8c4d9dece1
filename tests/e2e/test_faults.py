"""Faults on demand (petcd_harness.faults, kube_cluster.faults) through a real kube-apiserver on
petcd: what a client sees.

We test these aspects:
- injected conflicts reach the client as 409 Conflict, and the object was rewritten unchanged at
  a new resourceVersion, as by another writer;
- the sample counter: one writer doing get-modify-update ends with the exact count, and its
  retries equal the conflicts injected; the controller (which starts from its informer's copy)
  ends exact too, every 409 retried;
- a cut watch: the apiserver's watch cache relists (429 meanwhile), a client resuming from before
  the cut gets 410 Gone, the replicator's informer relists and the replicator converges;
- injected timeouts surface as apiserver errors (500, etcd's message) and a retry succeeds;
- a leader loss in the middle of a conflict storm on a 3-member petcd loses no acknowledged update;
- the README's example, run as a user's test file against this session's cluster
  (--kube-existing: the fault surfaces come from the kubeconfig), and the CLI on it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers import counter, replicator
from controllers.kubeclient import CONFIGMAPS, COUNTERS, REPLICATED_CONFIGMAPS, Kube, rv_of
from controllers.metrics import Metrics
from controllers.storm import ensure_counter, storm
from petcd_harness.apiserver import KubeAPIServer, KubeError
from petcd_harness.controlplane import KubeCluster
from petcd_harness.datastore import Datastore
from petcd_harness.faults import main as faults_main
from tests.e2e.conftest import MANIFESTS, ROOT, KubeEnv, apply_manifests, make_namespace, unique
from tests.framework.wait import wait_until

CRDS = ("10-crd-counter.yaml", "11-crd-replicatedconfigmap.yaml")


@pytest.fixture(scope="module")
def kube(kube_cluster: KubeCluster) -> Iterator[Kube]:
    """The sample controllers' CRDs on the session's cluster (removed afterwards)."""
    for crd in CRDS:
        kube_cluster.kubectl("apply", "-f", str(MANIFESTS / crd))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=petcd", "--timeout=60s"
    )
    k = Kube.from_kubeconfig(str(kube_cluster.kubeconfig))
    yield k
    k.close()
    for crd in CRDS:
        kube_cluster.kubectl("delete", "-f", str(MANIFESTS / crd), "--wait=false", check=False)


@pytest.fixture
def ns(kube_cluster: KubeCluster) -> Iterator[str]:
    name = unique("faults")
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_conflicts_reach_the_client_as_409(kube_cluster: KubeCluster, ns: str) -> None:
    api = kube_cluster.client
    path = f"/api/v1/namespaces/{ns}/configmaps"
    api.create(path, {"metadata": {"name": "a"}, "data": {"x": "1"}})
    obj = api.get(f"{path}/a")
    with kube_cluster.faults.conflicts("configmaps", namespace=ns, n=1) as f:
        obj["data"]["x"] = "2"
        status, body = api.request("PUT", f"{path}/a", obj)
        assert (status, body["reason"]) == (409, "Conflict")
        assert body["message"] == (
            'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        assert f.injected == 1
    now = api.get(f"{path}/a")
    assert now["data"] == {"x": "1"} and int(rv_of(now)) > int(rv_of(obj))
    obj["metadata"]["resourceVersion"] = rv_of(now)
    assert api.request("PUT", f"{path}/a", obj)[0] == 200


def test_counter_exact_and_retries_equal_injected_conflicts(
    kube_cluster: KubeCluster, kube: Kube, ns: str
) -> None:
    """One writer doing get-modify-update (the counter's --storm 1x20): no conflict but the
    injected ones, each retried once (4 inside retry_on_conflict, whose DefaultRetry makes 5
    attempts, then a rate-limited requeue), and the count is exact."""
    ensure_counter(kube, ns, "c")
    metrics = Metrics("faults-storm")
    with kube_cluster.faults.conflicts("counters.petcd.example.com", namespace=ns, name="c", n=5) as f:
        rep = storm(kube, ns, "c", 1, 20, identity="faults", metrics=metrics)
        assert f.injected == 5
    assert (rep.acknowledged, rep.final_count) == (20, 20)
    assert rep.conflicts == 5
    assert rep.conflict_retries + rep.requeues == 5 == metrics.value("retries_total")


def test_counter_controller_exact_under_injected_conflicts(
    kube_cluster: KubeCluster, kube: Kube, ns: str
) -> None:
    """The controller starts each step from its informer's copy, so the injected writes make
    conflicts of their own (a stale copy), as a real concurrent writer would; every 409 is
    retried and the count is exact."""
    target = 12
    ensure_counter(kube, ns, "c", target=target)
    metrics = Metrics("faults-controller")
    with kube_cluster.faults.conflicts("counters", namespace=ns, n=5) as f:  # resolved by discovery
        assert f.result[0]["prefix"] == f"/registry/petcd.example.com/counters/{ns}/"
        ctl = counter.make_controller(kube, "faults", workers=1, metrics=metrics, namespace=ns)
        ctl.start(sync_timeout=30)
        try:
            done = wait_until(
                lambda: (o := kube.get(COUNTERS, ns, "c")).get("status", {}).get("count") == target and o,
                60,
                what="the counter at its target",
            )
        finally:
            ctl.stop()
        assert f.injected == 5
    assert done["status"]["count"] == target
    assert metrics.value("conflicts_total") >= 5
    assert metrics.value("retries_total") == metrics.value("conflicts_total")
    assert metrics.value("writes_total", kind="status") == target


def resume(kube_cluster: KubeCluster, ns: str, rv: str, answers: list[int]) -> int:
    """Watch configmaps from rv; the status answered, also appended to answers (an expired
    resourceVersion is a 200 whose one event is an ERROR carrying the 410)."""
    try:
        with kube_cluster.client.watch(
            f"/api/v1/namespaces/{ns}/configmaps", timeout=10, resourceVersion=rv
        ) as ev:
            first = next(ev, None)
            ok = first is None or first["type"] != "ERROR"
            answers.append(200 if ok else int(first["object"]["code"]))  # type: ignore[index]
    except KubeError as e:
        answers.append(e.status)
    except TimeoutError:
        answers.append(200)  # a watch that serves
    return answers[-1]


def test_watch_cut_makes_informers_relist(kube_cluster: KubeCluster, kube: Kube, ns: str) -> None:
    target = unique("faults-t")
    kube_cluster.kubectl("create", "namespace", target)
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
        wait_until(lambda: kube.get(CONFIGMAPS, target, "src").get("data") == {"v": "0"}, 60, what="the copy")
        before = kube_cluster.client.get(f"/api/v1/namespaces/{ns}/configmaps")["metadata"]["resourceVersion"]
        # the datastore moves on under resources these watches do not see
        for i in range(3):
            kube_cluster.client.create(f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": f"s{i}"}})
        relists = ctl.metrics.value("relists_total", reason="expired")
        cut = kube_cluster.faults.watch_cut("configmaps")
        assert cut.injected >= 1  # the apiserver's own watch on /registry/configmaps/
        assert cut.result[0]["compact_revision"] > int(before)
        # a client resuming from before the cut: served (200) until the watch cache has seen the
        # cut, 429 while it relists, then 410 Gone; never served again once refused
        answers: list[int] = []
        wait_until(lambda: resume(kube_cluster, ns, before, answers) == 410, 60, what="410 Gone")
        phases = [200, 429, 410]
        assert set(answers) <= set(phases) and answers == sorted(answers, key=phases.index), answers
        wait_until(
            lambda: ctl.metrics.value("relists_total", reason="expired") > relists,
            60,
            what="the informer relisting",
        )
        kube.patch(CONFIGMAPS, ns, "src", {"data": {"v": "1"}})
        wait_until(
            lambda: kube.get(CONFIGMAPS, target, "src").get("data") == {"v": "1"}, 60, what="the copy after"
        )
    finally:
        ctl.stop()
        kube_cluster.kubectl("delete", "namespace", target, "--wait=false", check=False)


def test_timeouts_surface_and_a_retry_succeeds(kube_cluster: KubeCluster, ns: str) -> None:
    faults = kube_cluster.faults
    with faults.errors("configmaps", namespace=ns, error="timeout", n=1, methods=["Txn"]) as f:
        r = kube_cluster.kubectl("create", "configmap", "x", "-n", ns, "--from-literal=k=v", check=False)
        assert r.rc != 0 and "etcdserver: request timed out" in r.err
        assert kube_cluster.client.request("GET", f"/api/v1/namespaces/{ns}/configmaps/x")[0] == 404
        kube_cluster.kubectl("create", "configmap", "x", "-n", ns, "--from-literal=k=v")  # the retry
        assert f.injected == 1
    with faults.errors("configmaps", namespace=ns, error="too_many_requests", n=1, methods=["Range"]):
        status, body = kube_cluster.client.request("GET", f"/api/v1/namespaces/{ns}/configmaps/x")
        assert (status, body["message"]) == (500, "etcdserver: too many requests")
        assert kube_cluster.client.request("GET", f"/api/v1/namespaces/{ns}/configmaps/x")[0] == 200


def test_cli_on_the_running_cluster(kube_cluster: KubeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        faults_main(
            ["--dir", str(kube_cluster.dir), "latency", "/nothing/", "--delay", "0.01", "--ttl", "60"]
        )
        == 0
    )
    [set_] = json.loads(capsys.readouterr().out)
    assert faults_main(["--dir", str(kube_cluster.dir), "list"]) == 0
    assert set_["id"] in [f["id"] for f in json.loads(capsys.readouterr().out)]
    assert faults_main(["--dir", str(kube_cluster.dir), "clear"]) == 0
    assert json.loads(capsys.readouterr().out)["cleared"] >= 1


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- pytest-example: tests/e2e/test_faults.py[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md has no faults example"
    return m.group(1)


def test_readme_example(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    (tmp_path / "test_retry_paths.py").write_text(readme_example())
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'tmp'}",
            f"--kube-existing={kube_cluster.kubeconfig}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout, r.stdout
    kube_cluster.kubectl("delete", "configmap", "retry-demo", "timeout-demo", "-n", "default", check=False)


# -- 3 members: the leader lost during a storm ------------------------------------------------------


@pytest.fixture(scope="module")
def env3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEnv]:
    """A bare kube-apiserver on 3 petcd members serving their fault surfaces."""
    tmp = tmp_path_factory.mktemp("faults3")
    with Datastore("petcd", 3, tmp / "datastore", faults=True) as ds:
        api = KubeAPIServer(ds, tmp / "kube")
        try:
            api.start()
            e = KubeEnv("petcd", ds, api, tmp)
            apply_manifests(e)
            yield e
        finally:
            api.stop()


def test_leader_loss_during_a_storm_loses_no_acknowledged_update(env3: KubeEnv) -> None:
    kube = Kube.from_kubeconfig(str(env3.api.kubeconfig))
    ns = make_namespace(env3, "loss")
    ensure_counter(kube, ns, "c")
    faults = env3.ds.faults()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = storm(kube, ns, "c", 8, 25, identity="loss")
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_until(
            lambda: (kube.get(COUNTERS, ns, "c").get("status") or {}).get("count", 0) >= 40,
            120,
            what="the storm",
        )
        with faults.leader_loss() as loss:
            during = (kube.get(COUNTERS, ns, "c").get("status") or {}).get("count", 0)
            wait_until(
                lambda: (kube.get(COUNTERS, ns, "c").get("status") or {}).get("count", 0) >= during + 20,
                120,
                what="the storm going on under the new leader",
            )
            assert loss.injected > 0
    finally:
        t.join(300)
        kube.close()
    assert not t.is_alive(), "the storm did not finish"
    if "error" in result:
        raise result["error"]
    rep = result["report"]
    assert rep.acknowledged == 200
    assert rep.final_count == 200, rep.to_json()
