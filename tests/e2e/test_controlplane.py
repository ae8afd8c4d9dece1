"""The whole control plane (petcd_harness.KubeCluster) on petcd and on real etcd: what a
controller author gets from kind, here with fake kwok nodes.

We test these aspects, each in a namespace of its own on the session's cluster:
- the cluster as started: every node Ready with a podCIDR and no taint, the `default`
  ServiceAccount, the controller-manager's and the scheduler's leader Leases and each node's
  heartbeat Lease held and renewed, all stored in the datastore with resourceVersion equal to
  the key's mod_revision;
- `kubectl create deployment --replicas=3`: 3 pods Running and Ready on the fake nodes, each
  with an IP from its node's podCIDR; the pod's resourceVersion (kubectl get -o yaml) is its
  key's mod_revision; scaling down to 1 leaves exactly 1 pod, in the API and in the datastore;
- a Job completes; deleting a namespace with running pods and other objects finishes, and no
  key of it is left in the datastore.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from petcd_harness.controlplane import KubeCluster
from tests.e2e.conftest import unique
from tests.framework.wait import wait_until

LEADER_LEASES = ["kube-controller-manager", "kube-scheduler"]


@pytest.fixture
def ns(cluster: KubeCluster) -> Iterator[str]:
    name = unique("cp")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def lease_path(ns: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}"


def stored_as(cluster: KubeCluster, path: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the object from the API, its key from etcdctl) read at the same revision: the API is
    read before and after the datastore, until the object did not change in between."""
    ds = cluster.datastore
    assert ds is not None

    def consistent() -> tuple[dict[str, Any], dict[str, Any]] | None:
        before = cluster.client.get(path)
        kvs = ds.get_json(key)["kvs"]
        after = cluster.client.get(path)
        rv = before["metadata"]["resourceVersion"]
        return (after, kvs[0]) if rv == after["metadata"]["resourceVersion"] else None

    return wait_until(consistent, timeout=30, interval=0.2, what=f"{path} unchanged across a read of {key}")


def test_cluster_is_ready_and_its_leases_live_in_the_datastore(cluster: KubeCluster) -> None:
    nodes = cluster.kubectl("get", "nodes", "-o", "json").json()["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(cluster.nodes)
    for n in nodes:
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
        assert ready == "True", n["metadata"]["name"]
        assert ipaddress.IPv4Network(n["spec"]["podCIDR"]).subnet_of(ipaddress.IPv4Network("10.244.0.0/16"))
        assert not n["spec"].get("taints"), n["spec"]
    cluster.kubectl("get", "serviceaccount", "default", "-n", "default")

    leases = [("kube-system", name) for name in LEADER_LEASES]
    leases += [("kube-node-lease", name) for name in cluster.nodes]
    first: dict[str, int] = {}
    for ns, name in leases:
        obj, kv = stored_as(cluster, lease_path(ns, name), f"/registry/leases/{ns}/{name}")
        holder = obj["spec"]["holderIdentity"]
        assert holder and holder.encode() in kv["value"]
        assert int(obj["metadata"]["resourceVersion"]) == int(kv["mod_revision"])
        first[f"/registry/leases/{ns}/{name}"] = int(kv["mod_revision"])
    # the holders keep renewing them: every 2 s (leader election), every 10 s (node heartbeats)
    assert cluster.datastore is not None
    ds = cluster.datastore
    for key, rev in first.items():
        renewed = lambda key=key, rev=rev: (ds.mod_revision(key) or 0) > rev  # noqa: E731
        wait_until(renewed, timeout=60, interval=0.5, what=f"a renewal of {key}")


def pods(cluster: KubeCluster, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl(
        "get", "pods", "-n", ns, "-l", selector, "-o", "json"
    ).json()["items"]
    return items


def test_deployment_pods_run_on_fake_nodes_and_scale_down(cluster: KubeCluster, ns: str) -> None:
    cluster.kubectl("create", "deployment", "web", "--image=registry.example/web:1", "--replicas=3", "-n", ns)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=120s")
    running = pods(cluster, ns, "app=web")
    assert len(running) == 3
    cidrs = {n: cluster.client.get(f"/api/v1/nodes/{n}")["spec"]["podCIDR"] for n in cluster.nodes}
    for p in running:
        assert p["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in p["status"]["conditions"]}["Ready"] == "True"
        node = p["spec"]["nodeName"]
        assert node in cluster.nodes
        assert ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network(cidrs[node])
    assert len({p["status"]["podIP"] for p in running}) == 3

    # kubectl get -o yaml: the resourceVersion is the etcd mod_revision of the pod's key
    name = running[0]["metadata"]["name"]
    out = cluster.kubectl("get", "pod", name, "-n", ns, "-o", "yaml").out
    rv = next(
        line.split(":", 1)[1].strip().strip('"') for line in out.splitlines() if "resourceVersion:" in line
    )
    assert cluster.datastore is not None
    assert cluster.datastore.mod_revision(f"/registry/pods/{ns}/{name}") == int(rv)

    cluster.kubectl("scale", "deployment/web", "--replicas=1", "-n", ns)
    wait_until(lambda: len(pods(cluster, ns, "app=web")) == 1, timeout=120, interval=0.5, what="one pod left")
    cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=120s")
    keys = cluster.datastore.ctl().ok("get", f"/registry/pods/{ns}/", "--prefix", "--keys-only").split()
    assert len(keys) == 1, keys


def test_job_completes(cluster: KubeCluster, ns: str) -> None:
    cluster.kubectl("create", "job", "once", "--image=registry.example/batch:1", "-n", ns)
    cluster.kubectl("wait", "--for=condition=complete", "job/once", "-n", ns, "--timeout=120s")
    job = cluster.kubectl("get", "job", "once", "-n", ns, "-o", "json").json()
    assert job["status"]["succeeded"] == 1
    (pod,) = pods(cluster, ns, "job-name=once")
    assert pod["status"]["phase"] == "Succeeded"


def test_namespace_deletion_finishes(cluster: KubeCluster) -> None:
    ns = unique("gone")
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "deployment", "web", "--image=registry.example/web:1", "--replicas=4", "-n", ns)
    cluster.kubectl("create", "configmap", "settings", "--from-literal=a=1", "-n", ns)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=120s")
    cluster.kubectl("delete", "namespace", ns, "--timeout=120s")  # waits until it is gone
    status, body = cluster.client.request("GET", f"/api/v1/namespaces/{ns}")
    assert status == 404, body
    assert cluster.datastore is not None
    keys = cluster.datastore.ctl().ok("get", "/registry/", "--prefix", "--keys-only").split()
    left = [k for k in keys if f"/{ns}/" in k or k.endswith(f"/{ns}")]
    assert not left, json.dumps(left)
