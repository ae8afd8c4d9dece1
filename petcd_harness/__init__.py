"""petcd's Kubernetes harness: a whole control plane on petcd (or on a real etcd, to compare) for
testing controllers, as a library, a command (petcd-harness) and a pytest plugin (kube_cluster).

    from petcd_harness import ClusterConfig, KubeCluster

    with KubeCluster(tmp_path, ClusterConfig(nodes=3)) as cluster:
        cluster.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=3")

Modules, one concept each:
    controlplane  KubeCluster (datastore + apiserver + controller-manager + scheduler + kwok),
                  ClusterConfig, ExistingCluster
    datastore     petcd or etcd under the apiserver: one member or a Raft cluster, plain or TLS
    apiserver     kube-apiserver, an admin JSON client, kubectl, kubeconfigs
    components    kube-controller-manager, kube-scheduler, kwok
    procs         members and supervised processes (process groups, die with the launcher)
    raft_cluster  multi-member petcd/etcd clusters; proxy: their partitionable peer network
    certs         throwaway PKIs; etcdctl: the real etcdctl as a client
    state         the launcher's state directory (lock, pid files, atomic writes)
    paths         where the peer binaries are found; errors: one-line errors
    cli           petcd-harness; pytest_plugin: kube_cluster, kube_cluster_factory
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClusterConfig", "ExistingCluster", "HarnessError", "KubeCluster"]


def __getattr__(name: str) -> Any:
    # imported on first use: the pytest plugin loads this package in every pytest run
    if name in ("ClusterConfig", "ExistingCluster", "KubeCluster"):
        from petcd_harness import controlplane

        return getattr(controlplane, name)
    if name == "HarnessError":
        from petcd_harness.errors import HarnessError

        return HarnessError
    raise AttributeError(f"module 'petcd_harness' has no attribute {name!r}")
