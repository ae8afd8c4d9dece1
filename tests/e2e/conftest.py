"""Fixtures for the e2e tier: real Kubernetes components (and the real kubectl) on petcd or on a
real etcd; a test that passes on "etcd" and fails on "petcd" is a petcd bug.

Two kinds of fixture, both parametrized over DATASTORES:

- `cluster` (session scope): the whole control plane (petcd_harness.KubeCluster: apiserver,
  controller-manager, scheduler, kwok nodes), one per datastore for the session, from the
  pytest plugin's kube_cluster_factory (so the petcd one is the plugin's kube_cluster). Tests
  on it work in namespaces of their own and leave the cluster as they found it.
- `env` (module scope): a bare kube-apiserver on a fresh datastore, for tests that need
  apiserver flags of their own or a quiet datastore (exact revisions, compaction): a module
  sets them with a module-level KUBE_OPTIONS dict (keyword arguments of KubeAPIServer:
  compaction_interval, event_ttl, extra) and DATASTORE_OPTIONS (of Datastore: members, tls).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from petcd_harness.apiserver import KubeAPIServer, KubeClient, KubectlResult
from petcd_harness.controlplane import KubeCluster
from petcd_harness.datastore import Datastore
from petcd_harness.etcdctl import Etcdctl
from petcd_harness.state import start_time

DATASTORES = ["petcd", "etcd"]
ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class KubeEnv:
    kind: str
    ds: Datastore
    api: KubeAPIServer
    dir: Path

    @property
    def client(self) -> KubeClient:
        return self.api.client

    def kubectl(self, *args: str, input: str | None = None, check: bool = False) -> KubectlResult:
        return self.api.kubectl(*args, input=input, check=check)

    def ctl(self) -> Etcdctl:
        return self.ds.ctl()

    def logs(self) -> str:
        return f"--- kube-apiserver ({self.api.log_path})\n{self.api.log()[-8000:]}\n--- {self.kind}\n{self.ds.logs()[-8000:]}"


@contextlib.contextmanager
def kube_env(kind: str, tmp: Path, members: int = 1, tls: Any = False, **api_opts: Any) -> Iterator[KubeEnv]:
    with Datastore(kind, members, tmp / "datastore", tls=tls) as ds:
        api = KubeAPIServer(ds, tmp / "kube", **api_opts)
        try:
            api.start()
            yield KubeEnv(kind, ds, api, tmp)
        finally:
            api.stop()


@pytest.fixture(scope="session", params=DATASTORES)
def cluster(request: pytest.FixtureRequest, kube_cluster_factory: Any) -> KubeCluster:
    c: KubeCluster = kube_cluster_factory(datastore=request.param)
    return c


@pytest.fixture(scope="module", params=DATASTORES)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEnv]:
    api_opts = getattr(request.module, "KUBE_OPTIONS", {})
    ds_opts = getattr(request.module, "DATASTORE_OPTIONS", {})
    tmp = tmp_path_factory.mktemp(f"{request.module.__name__.rsplit('.', 1)[-1]}-{request.param}")
    with kube_env(request.param, tmp, **ds_opts, **api_opts) as e:
        yield e


def running_under(dir: Path) -> list[str]:
    """Processes (other than this one) whose command line mentions dir."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(dir) in cmdline and start_time(int(entry.name)) is not None:
            out.append(f"{entry.name}: {cmdline[:200]}")
    return out


_names = itertools.count()


def unique(prefix: str) -> str:
    """A DNS-label name unique within the test session."""
    return f"{prefix}-{int(time.time() * 1000) % 10**8}-{next(_names)}"


def make_namespace(env: KubeEnv, prefix: str = "e2e") -> str:
    name = unique(prefix)
    env.client.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def event(name: str, namespace: str, message: str = "m") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"kind": "Pod", "name": "somepod", "namespace": namespace},
        "reason": "Testing",
        "message": message,
        "type": "Normal",
    }


def apply_manifests(env: KubeEnv) -> None:
    """kubectl apply -f manifests/ (namespaces, CRDs, RBAC, controller Deployments), wait for
    the CRDs to be Established, then kubectl apply -f manifests/samples/."""
    env.kubectl("apply", "-f", str(MANIFESTS), check=True)
    env.kubectl(
        "wait",
        "--for=condition=Established",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=petcd",
        "--timeout=60s",
        check=True,
    )
    # discovery of the new group can lag Established by a moment
    deadline = time.monotonic() + 30
    while True:
        r = env.kubectl("apply", "-f", str(MANIFESTS / "samples"))
        if r.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.rc == 0, r.err


def metric(env: KubeEnv | KubeCluster, name: str, **labels: str) -> float:
    """Sum of the samples of a Prometheus metric on the apiserver's /metrics matching labels."""
    status, text = env.client.raw_get("/metrics")
    assert status == 200, text[:500]
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_compacted_past(env: KubeEnv, rev: int, timeout: float = 60.0) -> int:
    """Until the apiserver's compactor has stored a compaction revision > rev in compact_rev_key
    and the datastore has compacted there; returns the datastore's compaction revision."""
    deadline = time.monotonic() + timeout
    while True:
        stored = env.ds.compact_rev_key()
        compacted = env.ds.compacted_revision()
        if stored is not None and stored[0] > rev and compacted > rev:
            return compacted
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no compaction past {rev} after {timeout}s (compact_rev_key={stored}, "
                f"datastore compaction revision={compacted})"
            )
        time.sleep(0.5)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing e2e test's report carries the tail of the apiserver's and datastore's logs."""
    report = yield
    if report.failed and call.when == "call":
        funcargs = getattr(item, "funcargs", {})
        env, cluster = funcargs.get("env"), funcargs.get("cluster")
        if isinstance(env, KubeEnv):
            report.sections.append((f"logs ({env.kind})", env.logs()))
        if isinstance(cluster, KubeCluster):
            tails = (f"--- {name} ({path})\n{_tail(path)}" for name, path in cluster.logs().items())
            report.sections.append((f"logs ({cluster.config.datastore})", "\n".join(tails)))
    return report


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""
