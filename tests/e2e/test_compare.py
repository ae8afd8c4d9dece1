"""The same kubectl session against kube-apiserver on petcd and on real etcd, outputs compared.

Both apiservers run side by side; every command runs on both and the outputs must be equal
after removing what legitimately differs between two clusters (uids, timestamps,
resourceVersions, ages). We test these aspects:
- `kubectl apply -f manifests/` and the samples: same output, same objects (-o yaml);
- a session of failing and succeeding commands (AlreadyExists, Conflict, NotFound, Invalid,
  patch, label, delete): same exit codes, stdout and stderr;
- a chunked list: same pages, continue-token structure and remainingItemCount;
- a watch through the apiserver: same event sequence.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import MANIFESTS, KubeEnv, apply_manifests, configmap, kube_env

KUBE_OPTIONS: dict[str, Any] = {"compaction_interval": "1m"}
VOLATILE_META = ("uid", "creationTimestamp", "resourceVersion", "generateName", "selfLink")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, KubeEnv]]:
    envs: dict[str, KubeEnv] = {}
    with kube_env("petcd", tmp_path_factory.mktemp("cmp-petcd"), **KUBE_OPTIONS) as p:
        envs["petcd"] = p
        with kube_env("etcd", tmp_path_factory.mktemp("cmp-etcd"), **KUBE_OPTIONS) as e:
            envs["etcd"] = e
            yield envs


def normalize(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in VOLATILE_META or k in ("time", "lastTransitionTime", "lastUpdateTime"):
                continue
            out[k] = normalize(v)
        return out
    if isinstance(obj, list):
        return [normalize(x) for x in obj]
    return obj


def both(pair: dict[str, KubeEnv], *args: str, input: str | None = None) -> tuple[Any, Any]:
    p = pair["petcd"].kubectl(*args, input=input)
    e = pair["etcd"].kubectl(*args, input=input)
    return (p.rc, p.out, p.err), (e.rc, e.out, e.err)


def test_apply_manifests_same_result(pair: dict[str, KubeEnv]) -> None:
    p, e = both(pair, "apply", "-f", str(MANIFESTS))
    assert p == e
    assert p[0] == 0
    for env in pair.values():
        apply_manifests(env)
    kinds = "ns,crd,sa,clusterrole,clusterrolebinding,role,rolebinding,deploy,cm,counters,rcm"
    p, e = both(pair, "get", kinds, "-A", "-l", "app.kubernetes.io/part-of=petcd", "-o", "yaml")
    assert p[0] == e[0] == 0
    assert normalize(yaml.safe_load(p[1])) == normalize(yaml.safe_load(e[1]))
    p, e = both(pair, "get", "counters,rcm", "-A", "-o", "yaml")
    assert normalize(yaml.safe_load(p[1])) == normalize(yaml.safe_load(e[1]))
    # the printer columns (without AGE)
    p, e = both(
        pair,
        "get",
        "counters,rcm",
        "-A",
        "-o",
        "custom-columns=NAME:.metadata.name,NS:.metadata.namespace,SPEC:.spec",
    )
    assert p == e


SESSION = [
    ("create", "namespace", "cmp"),
    ("create", "configmap", "a", "-n", "cmp", "--from-literal=k=1"),
    ("create", "configmap", "a", "-n", "cmp", "--from-literal=k=2"),
    ("get", "configmap", "missing", "-n", "cmp"),
    ("delete", "configmap", "missing", "-n", "cmp"),
    ("patch", "configmap", "a", "-n", "cmp", "-p", '{"data":{"k":"3"}}'),
    ("patch", "configmap", "a", "-n", "cmp", "-p", '{"data":{"k":"3"}}'),
    ("label", "configmap", "a", "-n", "cmp", "x=y"),
    ("label", "configmap", "a", "-n", "cmp", "x=z"),
    ("get", "configmap", "a", "-n", "cmp", "-o", "jsonpath={.data.k} {.metadata.labels.x}"),
    ("create", "configmap", "Bad_Name", "-n", "cmp"),
    ("apply", "-f", "-", "--server-side", "--field-manager=cmp"),
    ("delete", "configmap", "a", "-n", "cmp"),
    ("get", "configmaps", "-n", "cmp", "-o", "name"),
]
APPLIED = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: cmp}\ndata: {k: ssa}\n"


def test_kubectl_session_same_outputs(pair: dict[str, KubeEnv]) -> None:
    for args in SESSION:
        p, e = both(pair, *args, input=APPLIED if "apply" in args else None)
        assert p == e, (args, p, e)
    # a stale update is a conflict on both, with the same message
    outs = {}
    for kind, env in pair.items():
        env.kubectl("create", "configmap", "stale", "-n", "cmp", check=True)
        old = env.kubectl("get", "configmap", "stale", "-n", "cmp", "-o", "json", check=True).json()
        env.kubectl("label", "configmap", "stale", "-n", "cmp", "v=2", check=True)
        old["data"] = {"k": "stale"}
        r = env.kubectl("replace", "-f", "-", input=json.dumps(old))
        outs[kind] = (r.rc, r.out, r.err)
    assert outs["petcd"] == outs["etcd"]
    assert "the object has been modified" in outs["petcd"][2]


def _pages(env: KubeEnv, path: str, limit: int) -> list[tuple[list[str], int | None, dict[str, Any] | None]]:
    pages = []
    token = None
    while True:
        lst = env.client.get(path, limit=limit, **({"continue": token} if token else {}))
        token = lst["metadata"].get("continue")
        decoded = None
        if token:
            decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            decoded.pop("rv")
        pages.append(
            (
                [i["metadata"]["name"] for i in lst["items"]],
                lst["metadata"].get("remainingItemCount"),
                decoded,
            )
        )
        if not token:
            return pages


def test_chunked_list_same_pages(pair: dict[str, KubeEnv]) -> None:
    for env in pair.values():
        env.client.create("/api/v1/namespaces", {"metadata": {"name": "chunks"}})
        for i in range(57):
            env.client.create("/api/v1/namespaces/chunks/configmaps", configmap(f"c{i:03d}"))
    for path in ("/api/v1/namespaces/chunks/configmaps", "/api/v1/configmaps"):
        p, e = (_pages(pair[k], path, 10) for k in ("petcd", "etcd"))
        assert p == e, path
    p, e = both(pair, "get", "configmaps", "-n", "chunks", "--chunk-size=7", "-o", "name")
    assert p == e and len(p[1].split()) == 57


def test_watch_same_events(pair: dict[str, KubeEnv]) -> None:
    seqs: dict[str, list[tuple[str, str, Any]]] = {}
    for kind, env in pair.items():
        env.client.create("/api/v1/namespaces", {"metadata": {"name": "watched"}})
        start = env.client.get("/api/v1/namespaces/watched/configmaps")["metadata"]["resourceVersion"]
        seen: list[tuple[str, str, Any]] = []

        def run(env: KubeEnv = env, seen: list[tuple[str, str, Any]] = seen, start: str = start) -> None:
            with env.client.watch(
                "/api/v1/namespaces/watched/configmaps", timeout=30, resourceVersion=start
            ) as evs:
                for ev in evs:
                    seen.append((ev["type"], ev["object"]["metadata"]["name"], ev["object"].get("data")))
                    if ev["type"] == "DELETED" and ev["object"]["metadata"]["name"] == "w2":
                        return

        t = threading.Thread(target=run)
        t.start()
        path = "/api/v1/namespaces/watched/configmaps"
        env.client.create(path, configmap("w1", v="1"))
        env.client.create(path, configmap("w2", v="1"))
        cur = env.client.get(f"{path}/w1")
        cur["data"] = {"v": "2"}
        env.client.ok("PUT", f"{path}/w1", cur)
        env.client.ok("DELETE", f"{path}/w2")
        t.join(30)
        seqs[kind] = seen
    assert seqs["petcd"] == seqs["etcd"]
    assert [s[:2] for s in seqs["etcd"]] == [
        ("ADDED", "w1"),
        ("ADDED", "w2"),
        ("MODIFIED", "w1"),
        ("DELETED", "w2"),
    ]


def test_future_resource_versions_same_errors(pair: dict[str, KubeEnv]) -> None:
    """A resourceVersion beyond the datastore's revision: the apiserver answers from etcd's
    ErrFutureRev (Events, no watch cache) or from the cache's wait (ConfigMaps)."""
    outs: dict[str, list[tuple[int, str, str]]] = {}
    for kind, env in pair.items():
        future = str(env.ds.revision() + 1000)
        got = []
        for path, match in (
            ("/api/v1/namespaces/default/events", "Exact"),
            ("/api/v1/namespaces/default/events", "NotOlderThan"),
            ("/api/v1/namespaces/default/configmaps", "NotOlderThan"),
        ):
            status, body = env.client.request(
                "GET", path, params={"resourceVersion": future, "resourceVersionMatch": match, "limit": 10}
            )
            msg = body.get("message", "") if isinstance(body, dict) else str(body)
            reason = body.get("reason", "") if isinstance(body, dict) else ""
            got.append((status, reason, re.sub(r"\d+", "N", msg)))
        outs[kind] = got
    assert outs["petcd"] == outs["etcd"]
    assert all(status == 504 for status, _, _ in outs["etcd"]), outs["etcd"]
