"""The pytest plugin (petcd_harness.pytest_plugin, registered through the pytest11 entry point) as
a user's project sees it: pytest runs in a directory of its own, with nothing from this
repository but the installed package.

We test these aspects:
- the README's example test file, run as it is: the plugin starts a control plane for the
  session, both tests pass, and nothing it started is left running afterwards;
- --kube-existing=PATH (make cluster's kubeconfig): nothing is started; .kubeconfig,
  .etcd_endpoints (from the kubeconfig's petcd extension), .kubectl() and .api_client() reach the
  running cluster;
- in this session, kube_cluster is the petcd cluster the other e2e tests share.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from petcd_harness.controlplane import KubeCluster
from tests.e2e.conftest import ROOT, running_under


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- pytest-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md has no pytest example"
    return m.group(1)


def run_pytest(dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={dir / 'tmp'}", *args],
        cwd=dir,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_readme_example_runs_on_a_cluster_of_its_own(tmp_path: Path) -> None:
    assert len(readme_example().strip().splitlines()) <= 20
    (tmp_path / "test_example.py").write_text(readme_example())
    r = run_pytest(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout, r.stdout
    assert running_under(tmp_path) == []


def test_existing_cluster(tmp_path: Path, kube_cluster_factory: Any) -> None:
    cluster: KubeCluster = kube_cluster_factory(datastore="petcd")
    (tmp_path / "test_existing.py").write_text(
        f"""
from kubernetes import client


def test_it(kube_cluster):
    assert str(kube_cluster.kubeconfig) == {str(cluster.kubeconfig)!r}
    assert kube_cluster.etcd_endpoints == {cluster.etcd_endpoints!r}
    nodes = kube_cluster.kubectl("get", "nodes", "-o", "name").out.split()
    assert nodes == {[f"node/{n}" for n in sorted(cluster.nodes)]!r}
    v1 = client.CoreV1Api(kube_cluster.api_client())
    assert v1.read_namespace("kube-system").metadata.name == "kube-system"
"""
    )
    r = run_pytest(tmp_path, f"--kube-existing={cluster.kubeconfig}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout, r.stdout
    assert not list(tmp_path.glob("tmp/**/kube-*")), "a cluster was started"


def test_kube_cluster_is_the_shared_petcd_cluster(kube_cluster: Any, kube_cluster_factory: Any) -> None:
    assert isinstance(kube_cluster, KubeCluster)
    assert kube_cluster is kube_cluster_factory(datastore="petcd")
    assert kube_cluster.config.datastore == "petcd"
