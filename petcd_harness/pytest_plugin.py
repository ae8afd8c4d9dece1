"""pytest plugin (the `pytest11` entry point "petcd"): a Kubernetes control plane on petcd for
the test session.

    def test_deployment_runs(kube_cluster):
        kube_cluster.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2")
        kube_cluster.kubectl("rollout", "status", "deployment/web", "--timeout=60s")

`kube_cluster` (session scope) is a KubeCluster started in a temporary directory, or with
`--kube-existing=PATH` an ExistingCluster for that kubeconfig (like envtest's
USE_EXISTING_CLUSTER): .kubeconfig, .etcd_endpoints, .kubectl(*args), .api_client(), and .faults
(petcd_harness.faults: 409 conflicts, cut watches, etcd errors and latency, partitions):

    def test_retries(kube_cluster):
        with kube_cluster.faults.conflicts("configmaps", namespace="default", n=3) as f:
            ...
        assert f.injected == 3

Options: --kube-datastore petcd|etcd, --kube-members 1|3, --kube-nodes N, --kube-tls,
--kube-existing PATH, --kube-peers-dir DIR (where the peer binaries are; see paths.py).

`kube_cluster_factory` starts more clusters with other settings, at most one per distinct
ClusterConfig, each stopped at the end of the session:

    def test_on_etcd_too(kube_cluster_factory):
        cluster = kube_cluster_factory(datastore="etcd")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["kube_cluster", "kube_cluster_factory"]


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("petcd", "Kubernetes control plane on petcd (petcd_harness)")
    g.addoption(
        "--kube-datastore", choices=["petcd", "etcd"], default="petcd", help="the datastore of kube_cluster"
    )
    g.addoption("--kube-members", type=int, choices=[1, 3], default=1, help="datastore members (default 1)")
    g.addoption("--kube-nodes", type=int, default=3, help="kwok fake nodes (default 3)")
    g.addoption(
        "--kube-tls", action="store_true", default=False, help="datastore on https:// with client certs"
    )
    g.addoption(
        "--kube-existing",
        metavar="KUBECONFIG",
        default=None,
        help="use this running cluster instead of starting one",
    )
    g.addoption("--kube-peers-dir", metavar="DIR", default=None, help="where etcd, kube-* and kwok are")


ClusterFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def kube_cluster_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterFactory]:
    """factory(**ClusterConfig fields) -> a started KubeCluster, shared by equal configs."""
    from petcd_harness.controlplane import ClusterConfig, KubeCluster
    from petcd_harness.errors import HarnessError
    from petcd_harness.paths import set_peers_dir

    set_peers_dir(request.config.getoption("--kube-peers-dir"))
    started: dict[ClusterConfig, KubeCluster] = {}
    failed: dict[ClusterConfig, str] = {}

    def factory(**fields: Any) -> KubeCluster:
        config = ClusterConfig(**fields)
        if config in failed:  # once per session, not once per test
            pytest.fail(failed[config], pytrace=False)
        if config not in started:
            cluster = KubeCluster(tmp_path_factory.mktemp(f"kube-{config.datastore}"), config)
            try:
                cluster.start()
            except HarnessError as e:
                failed[config] = f"the control plane did not start: {e}"
                pytest.fail(failed[config], pytrace=False)
            started[config] = cluster
        return started[config]

    try:
        yield factory
    finally:
        for cluster in started.values():
            cluster.stop()


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Any:
    """The session's control plane (see the module doc)."""
    opt = request.config.getoption
    existing = opt("--kube-existing")
    if existing:
        from petcd_harness.controlplane import ExistingCluster
        from petcd_harness.errors import HarnessError

        try:
            return ExistingCluster(Path(existing))
        except HarnessError as e:
            pytest.fail(str(e), pytrace=False)
    factory: ClusterFactory = request.getfixturevalue("kube_cluster_factory")
    return factory(
        datastore=opt("--kube-datastore"),
        members=opt("--kube-members"),
        nodes=opt("--kube-nodes"),
        tls=opt("--kube-tls"),
    )
