"""Keys the apiserver writes with leases, on petcd and on real etcd (--event-ttl=5s).

We test these aspects:
- an Event's key is attached to a lease of the event TTL; the key disappears when the lease
  expires, and a watch on Events (served by the datastore: Events have no watch cache) sees
  the DELETED event;
- the lease endpoint reconciler (--endpoint-reconciler-type=lease): every apiserver keeps
  /registry/masterleases/<advertise address> alive with a 15 s lease; a second apiserver on
  the same datastore adds its own key, and after `kill -9` of that apiserver its key expires
  while the first one's stays.
"""

from __future__ import annotations

import time

from petcd_harness.apiserver import KubeAPIServer
from tests.e2e.conftest import KubeEnv, event, make_namespace

KUBE_OPTIONS = {"compaction_interval": "1m", "event_ttl": "5s"}

MASTER_LEASE_TTL = 15


def _lease_of(env: KubeEnv, key: str) -> int:
    kvs = env.ds.get_json(key).get("kvs", [])
    assert kvs, f"{key} is missing"
    return int(kvs[0].get("lease", 0))


def _granted_ttl(env: KubeEnv, lease: int) -> int:
    out = env.ds.ctl().ok("lease", "timetolive", f"{lease:x}")
    # "lease 694d9a2f5b1b2a0c granted with TTL(5s), remaining(4s)"
    return int(out.split("TTL(")[1].split("s)")[0])


def test_event_expires_through_its_lease(env: KubeEnv) -> None:
    ns = make_namespace(env)
    ev = env.client.create(f"/api/v1/namespaces/{ns}/events", event("short-lived", ns))
    key = f"/registry/events/{ns}/short-lived"
    lease = _lease_of(env, key)
    assert lease != 0
    assert _granted_ttl(env, lease) == 5
    t0 = time.monotonic()
    with env.client.watch(
        f"/api/v1/namespaces/{ns}/events", timeout=30, resourceVersion=ev["metadata"]["resourceVersion"]
    ) as events:
        first = next(events)
    waited = time.monotonic() - t0
    assert (first["type"], first["object"]["metadata"]["name"]) == ("DELETED", "short-lived"), first
    assert waited < 15, f"the event's lease expired after {waited:.1f}s"
    assert not env.ds.get_json(key).get("kvs")
    status, _ = env.client.request("GET", f"/api/v1/namespaces/{ns}/events/short-lived")
    assert status == 404
    r = env.ds.ctl().ok("lease", "timetolive", f"{lease:x}")
    assert "already expired" in r, r


def test_master_leases_are_kept_alive_and_expire_after_kill(env: KubeEnv) -> None:
    mine = f"/registry/masterleases/{env.api.advertise_address}"
    first_lease = _lease_of(env, mine)
    assert first_lease != 0
    assert _granted_ttl(env, first_lease) == MASTER_LEASE_TTL
    first_mod = int(env.ds.get_json(mine)["kvs"][0]["mod_revision"])

    other = KubeAPIServer(env.ds, env.dir / "kube-2", compaction_interval="0", advertise_address="192.0.2.11")
    theirs = "/registry/masterleases/192.0.2.11"
    try:
        other.start()
        deadline = time.monotonic() + 30
        while not env.ds.get_json(theirs).get("kvs"):
            assert time.monotonic() < deadline, f"{theirs} never appeared"
            time.sleep(0.5)
        assert _granted_ttl(env, _lease_of(env, theirs)) == MASTER_LEASE_TTL
        # both apiservers are in the kubernetes Endpoints (their reconcilers read each other's keys)
        deadline = time.monotonic() + 30
        while True:
            eps = env.client.get("/api/v1/namespaces/default/endpoints/kubernetes")
            ips = sorted(a["ip"] for s in eps.get("subsets", []) for a in s.get("addresses", []))
            if ips == ["192.0.2.10", "192.0.2.11"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ips == ["192.0.2.10", "192.0.2.11"]
        other.kill()  # no graceful shutdown: the key stays until its lease expires
        killed = time.monotonic()
        assert env.ds.get_json(theirs).get("kvs")
        while env.ds.get_json(theirs).get("kvs"):
            assert time.monotonic() - killed < MASTER_LEASE_TTL + 15, f"{theirs} outlived its lease"
            time.sleep(0.5)
    finally:
        other.stop()
    # meanwhile the first apiserver refreshed its own key (every 10 s) and it is still there
    kvs = env.ds.get_json(mine)["kvs"]
    assert kvs and int(kvs[0]["mod_revision"]) > first_mod
    assert int(kvs[0]["lease"]) != 0
