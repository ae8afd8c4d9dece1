"""The apiserver's own compactor (--etcd-compaction-interval=2s) on petcd and on real etcd.

We test these aspects:
- the compactor's compact_rev_key CAS transaction advances (value = the revision it compacted
  at, version = one more per cycle) and the datastore really compacts at that revision;
- a watch from a compacted resourceVersion: straight from the datastore (Events have no watch
  cache) it is an ERROR event with 410 Expired, also through kubectl; through the watch cache
  (ConfigMaps) it is still served from the cache's history;
- a LIST at an exact compacted resourceVersion → 410 Expired;
- the conformance flow "API chunking ... continue listing from the last key if the original
  version has been compacted away": the old continue token → 410 with a new continue token
  (rv -1) that lists the rest, every object exactly once.
"""

from __future__ import annotations

import base64
import json
import time

from tests.e2e.conftest import KubeEnv, configmap, event, make_namespace, wait_compacted_past

# Events live an hour here: the flows below need them to outlast several compactions.
KUBE_OPTIONS = {"compaction_interval": "2s", "event_ttl": "1h"}

TOO_OLD_LIST = "The resourceVersion for the provided list is too old."
TOO_OLD_WATCH = "The resourceVersion for the provided watch is too old."


def test_apiserver_compactor_advances_compact_rev_key(env: KubeEnv) -> None:
    ns = make_namespace(env)
    first = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        env.client.create(f"/api/v1/namespaces/{ns}/configmaps", configmap(f"c{time.monotonic_ns()}"))
        cur = env.ds.compact_rev_key()
        if cur is not None:
            first = first or cur
            if cur[1] >= first[1] + 2 and cur[0] > first[0]:
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"compact_rev_key did not advance: first={first} now={env.ds.compact_rev_key()}")
    # the datastore compacted at the revision the compactor stored (or at a later cycle's)
    deadline = time.monotonic() + 10
    while True:
        stored, _ = env.ds.compact_rev_key()  # type: ignore[misc]
        compacted = env.ds.compacted_revision()
        if compacted == stored or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert compacted == stored, (compacted, stored)
    # reads below the compaction revision fail with etcd's error, at it they succeed
    r = env.ds.ctl()("get", "/registry/namespaces/default", f"--rev={compacted - 1}")
    assert r.rc != 0 and "required revision has been compacted" in r.err, r
    env.ds.ctl().ok("get", "/registry/namespaces/default", f"--rev={compacted}")
    # compact_rev_key lives outside /registry, as a plain decimal
    kv = env.ds.get_json("compact_rev_key")["kvs"][0]
    assert kv["value"].decode().isdigit()
    assert not kv.get("lease")


def test_watch_from_compacted_resource_version(env: KubeEnv) -> None:
    ns = make_namespace(env)
    ev = env.client.create(f"/api/v1/namespaces/{ns}/events", event("old", ns))
    env.client.create(f"/api/v1/namespaces/{ns}/events", event("newer", ns))
    cm = env.client.create(f"/api/v1/namespaces/{ns}/configmaps", configmap("old"))
    newer = env.client.create(f"/api/v1/namespaces/{ns}/configmaps", configmap("newer"))
    rv = int(ev["metadata"]["resourceVersion"])
    wait_compacted_past(env, int(cm["metadata"]["resourceVersion"]))

    # Events: an etcd watch from rv+1 < compaction revision → ERROR event, 410 Expired
    with env.client.watch(f"/api/v1/namespaces/{ns}/events", timeout=20, resourceVersion=str(rv)) as events:
        first = next(events)
    assert first["type"] == "ERROR", first
    status = first["object"]
    assert (status["code"], status["reason"]) == (410, "Expired"), status
    assert status["message"] == TOO_OLD_WATCH

    # the same through kubectl
    r = env.kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/{ns}/events?watch=1&resourceVersion={rv}&timeoutSeconds=5",
        check=True,
    )
    line = json.loads(r.out.splitlines()[0])
    assert line["type"] == "ERROR" and line["object"]["message"] == TOO_OLD_WATCH, r.out

    # ConfigMaps are watched through the watch cache, which still holds these events (it has
    # been following the datastore since the apiserver started): compaction does not affect it
    with env.client.watch(
        f"/api/v1/namespaces/{ns}/configmaps", timeout=20, resourceVersion=cm["metadata"]["resourceVersion"]
    ) as events:
        first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "newer")
    assert first["object"]["metadata"]["resourceVersion"] == newer["metadata"]["resourceVersion"]


def test_list_at_compacted_resource_version_is_410(env: KubeEnv) -> None:
    ns = make_namespace(env)
    ev = env.client.create(f"/api/v1/namespaces/{ns}/events", event("e", ns))
    rv = ev["metadata"]["resourceVersion"]
    ok = env.client.get(f"/api/v1/namespaces/{ns}/events", resourceVersion=rv, resourceVersionMatch="Exact")
    assert [i["metadata"]["name"] for i in ok["items"]] == ["e"]
    wait_compacted_past(env, int(rv))
    status, body = env.client.request(
        "GET",
        f"/api/v1/namespaces/{ns}/events",
        params={"resourceVersion": rv, "resourceVersionMatch": "Exact"},
    )
    assert status == 410, body
    assert (body["reason"], body["message"]) == ("Expired", TOO_OLD_LIST)


def _decode_continue(token: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


def test_continue_after_compaction_gives_410_and_a_new_token(env: KubeEnv) -> None:
    """Events are listed straight from the datastore: a continue token pins the first page's
    revision; once that is compacted the apiserver answers 410 with an inconsistent continue
    token (rv -1) that reads the rest at the latest revision."""
    ns = make_namespace(env, "chunk")
    path = f"/api/v1/namespaces/{ns}/events"
    names = [f"ev-{i:03d}" for i in range(100)]
    for n in names:
        env.client.create(path, event(n, ns))
    page1 = env.client.get(path, limit=40)
    got = [i["metadata"]["name"] for i in page1["items"]]
    assert got == names[:40]
    assert page1["metadata"]["remainingItemCount"] == 60
    token = page1["metadata"]["continue"]
    rv = int(page1["metadata"]["resourceVersion"])
    assert _decode_continue(token)["rv"] == rv
    wait_compacted_past(env, rv)

    status, body = env.client.request("GET", path, params={"limit": 40, "continue": token})
    assert status == 410, body
    assert body["reason"] == "Expired"
    assert body["message"].startswith(
        "The provided continue parameter is too old to display a consistent list result."
    )
    new_token = body["metadata"]["continue"]
    decoded = _decode_continue(new_token)
    assert decoded["rv"] == -1
    assert decoded["start"] == "ev-039\x00"

    page2 = env.client.get(path, limit=40, **{"continue": new_token})
    got += [i["metadata"]["name"] for i in page2["items"]]
    assert page2["metadata"]["remainingItemCount"] == 20
    page3 = env.client.get(path, limit=40, **{"continue": page2["metadata"]["continue"]})
    got += [i["metadata"]["name"] for i in page3["items"]]
    assert "continue" not in page3["metadata"]
    assert got == names
    assert int(page2["metadata"]["resourceVersion"]) > rv


def test_datastore_restart_keeps_objects_and_compaction(env: KubeEnv) -> None:
    """kill -9 of the (single) datastore member under the apiserver, then a restart on the same
    data directory: the objects, the revision and the compaction survive, and the apiserver
    serves and compacts again."""
    assert env.ds.member is not None
    ns = make_namespace(env, "restart")
    path = f"/api/v1/namespaces/{ns}/configmaps"
    made = [env.client.create(path, configmap(f"c{i:02d}")) for i in range(20)]
    last = int(made[-1]["metadata"]["resourceVersion"])
    compacted = wait_compacted_past(env, int(made[0]["metadata"]["resourceVersion"]))
    env.ds.member.kill()
    env.ds.member.start()
    assert env.ds.revision() >= last
    assert env.ds.compacted_revision() >= compacted
    deadline = time.monotonic() + 60
    while True:
        status, body = env.client.request("GET", path)
        if status == 200:
            break
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.5)
    assert [i["metadata"]["name"] for i in body["items"]] == [f"c{i:02d}" for i in range(20)]
    after = env.client.create(path, configmap("after"))
    assert int(after["metadata"]["resourceVersion"]) > last
    wait_compacted_past(env, int(after["metadata"]["resourceVersion"]))
    status, body = env.client.raw_get("/readyz")
    assert status == 200, body
