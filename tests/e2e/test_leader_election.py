"""Two kube-controller-managers on one cluster (HA, leader election on), on petcd and on real
etcd: resourceVersion optimistic locking in production use.

We test these aspects:
- with a second controller-manager started, exactly one of the two leads (each says so on its
  /metrics), and the Lease kube-system/kube-controller-manager names one holder;
- the Lease is renewed every retry period; an update with the resourceVersion read before a
  renewal (the key's mod_revision has moved on) gets 409 Conflict with the apiserver's
  message, and changes nothing;
- kill -9 of the leader: the other one takes the Lease over once the lease duration has passed
  since the dead leader's last renewal, and not before (no two leaders), within one more lease
  duration; leaseTransitions goes up by one;
- the new leader runs the controllers: a Deployment created after the failover gets its pods.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from typing import Any

from petcd_harness.controlplane import KubeCluster
from tests.e2e.conftest import metric, unique
from tests.framework.wait import wait_until

LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"


def _time(t: str) -> dt.datetime:
    return dt.datetime.fromisoformat(t.replace("Z", "+00:00"))


def test_controller_manager_failover(cluster: KubeCluster) -> None:
    standby = cluster.add_controller_manager()
    running = [k for k in cluster.controller_managers if k.process.running]
    assert len(running) == 2
    wait_until(standby.healthy, timeout=60, interval=0.2, what="the second controller-manager's /healthz")

    # exactly one leads, and stays the only one
    def leaders() -> list[Any]:
        return [k for k in running if k.is_leader()]

    (leader,) = wait_until(lambda: leaders() if len(leaders()) == 1 else None, timeout=60, what="one leader")
    for _ in range(5):
        assert leaders() == [leader]
        time.sleep(0.5)
    (follower,) = (k for k in running if k is not leader)
    lease = cluster.client.get(LEASE)
    spec = lease["spec"]
    duration = int(spec["leaseDurationSeconds"])
    transitions = int(spec.get("leaseTransitions", 0))

    # a write from a stale read: 409 Conflict, nothing written
    conflicts_before = metric(cluster, "apiserver_request_total", resource="leases", code="409")
    stale = copy.deepcopy(lease)
    wait_until(
        lambda: (
            cluster.client.get(LEASE)["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
        ),
        timeout=30,
        interval=0.2,
        what="a renewal of the Lease",
    )
    # the key has moved past the revision the update is conditioned on: the datastore's compare fails
    assert cluster.datastore is not None
    key = "/registry/leases/kube-system/kube-controller-manager"
    assert (cluster.datastore.mod_revision(key) or 0) > int(stale["metadata"]["resourceVersion"])
    stale["spec"]["holderIdentity"] = "an-impostor"
    status, body = cluster.client.request("PUT", LEASE, stale)
    assert status == 409, body
    assert body["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "kube-controller-manager": '
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    assert cluster.client.get(LEASE)["spec"]["holderIdentity"] == spec["holderIdentity"]
    conflicts = metric(cluster, "apiserver_request_total", resource="leases", code="409") - conflicts_before

    leader.kill()
    killed = time.monotonic()
    time.sleep(1)  # a renewal the leader sent just before it died may still land
    last = cluster.client.get(LEASE)["spec"]
    assert last["holderIdentity"] == spec["holderIdentity"]

    def taken_over() -> dict[str, Any] | None:
        s: dict[str, Any] = cluster.client.get(LEASE)["spec"]
        return s if s["holderIdentity"] != last["holderIdentity"] else None

    new = wait_until(taken_over, timeout=3 * duration, interval=0.2, what="a new holder of the Lease")
    seconds = time.monotonic() - killed
    gap = (_time(new["acquireTime"]) - _time(last["renewTime"])).total_seconds()
    print(
        f"\n[{cluster.config.datastore}] leader killed; the standby took the Lease {seconds:.1f}s later, "
        f"{gap:.1f}s after the last renewal (lease duration {duration}s); {conflicts:.0f} 409s on leases"
    )
    assert duration <= gap < 2 * duration, (last, new)
    assert int(new.get("leaseTransitions", 0)) == transitions + 1
    wait_until(follower.is_leader, timeout=30, interval=0.2, what="the standby reporting itself leader")
    assert not leader.process.running

    # the new leader runs the deployment and replicaset controllers
    ns = unique("failover")
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.kubectl(
            "create", "deployment", "after", "--image=registry.example/web:1", "--replicas=2", "-n", ns
        )
        cluster.kubectl("rollout", "status", "deployment/after", "-n", ns, "--timeout=120s")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
