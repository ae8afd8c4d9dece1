"""Differential tests of the HTTP API: the same gateway requests against petcd and a real etcd
v3.6 (gateway on its client port), compared byte for byte after normalizing what legitimately
differs (member/cluster IDs, ports, db sizes, raft indexes, version strings, backend hashes, and
lease IDs or TTLs that depend on them or on time). Every test runs twice: on petcd's client port
(gRPC and HTTP/1.1 on one port, as etcd) and on its --listen-client-http-urls listener.

Compared: HTTP status, the headers etcd's answers carry (Content-Type, Grpc-Metadata-Content-Type,
Allow, X-Content-Type-Options, CORS) and the body.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.framework.differential import Differential
from tests.harness.normalize import Normalizer
from tests.harness.procs import Member, free_port

pytestmark = pytest.mark.integration

COMPARED_HEADERS = (
    "Content-Type",
    "Grpc-Metadata-Content-Type",
    "Allow",
    "X-Content-Type-Options",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Headers",
)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Side:
    member: Member
    http_url: str
    norm: Normalizer
    metrics_url: str = ""

    def call(self, method: str, path: str, body: str | bytes | None = None, *, url: str = "") -> Answer:
        host, port = (url or self.http_url).removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            data = body.encode() if isinstance(body, str) else body
            conn.request(method, path, body=data)
            r = conn.getresponse()
            raw = r.read()
            headers = {h: r.headers[h] for h in COMPARED_HEADERS if r.headers[h] is not None}
            return Answer(r.status, headers, self.norm(raw.decode("utf-8", "replace")))
        finally:
            conn.close()

    def post(self, path: str, body: Any = None) -> Answer:
        text = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
        return self.call("POST", path, text)


def _normalizer(m: Member, ids: dict[str, Any]) -> Normalizer:
    n = Normalizer()
    n.name(m.client_url, "<client-url>").name(m.peer_url, "<peer-url>")
    n.name(int(ids["member_id"]), "<member-id>").name(int(ids["cluster_id"]), "<cluster-id>")
    return n


def _side(m: Member, http_url: str, metrics_url: str) -> Side:
    conn = http.client.HTTPConnection(http_url.removeprefix("http://"), timeout=30)
    conn.request("POST", "/v3/maintenance/status", body=b"{}")
    ids = json.loads(conn.getresponse().read())["header"]
    conn.close()
    side = Side(m, http_url, _normalizer(m, ids), metrics_url)
    side.norm.name(http_url, "<client-url>")
    return side


@pytest.fixture(scope="module", params=["client-url", "client-http-url"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Side, Side]]:
    """(petcd, etcd) over HTTP: etcd serves its gateway on the client URL; petcd on its client
    URL too, or on a --listen-client-http-urls of its own (then its client URL serves gRPC
    only, as etcd's does)."""
    http_url, p_metrics, e_metrics = (f"http://127.0.0.1:{free_port()}" for _ in range(3))
    split = request.param == "client-http-url"
    with Differential.start(
        tmp_path_factory.mktemp(f"http-gateway-{request.param}"),
        petcd_flags=(
            f"--listen-metrics-urls={p_metrics}",
            *([f"--listen-client-http-urls={http_url}"] if split else []),
        ),
        etcd_flags=(f"--listen-metrics-urls={e_metrics}",),
    ) as d:
        petcd_url = http_url if split else d.petcd.client_url
        yield _side(d.petcd, petcd_url, p_metrics), _side(d.etcd, d.etcd.client_url, e_metrics)


# what differs between two members holding the same data
_VOLATILE = [
    (re.compile(r'"(dbSize|dbSizeInUse|raftIndex|raftAppliedIndex)":"\d+"'), r'"\1":"N"'),
    (re.compile(r'"(version|storageVersion|etcdserver|etcdcluster|storage)":"\d+\.\d+\.\d+"'), r'"\1":"V"'),
    (re.compile(r'"hash":\d+'), '"hash":H'),
]


def scrub(text: str) -> str:
    for pat, rep in _VOLATILE:
        text = pat.sub(rep, text)
    return text


def same(
    pair: tuple[Side, Side],
    method: str,
    path: str,
    body: Any = None,
    *,
    fix: Any = None,
    metrics: bool = False,
) -> Answer:
    """Run one request on both; assert the normalized answers are equal; return petcd's."""
    petcd, etcd = pair
    text = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    a = petcd.call(method, path, text, url=petcd.metrics_url if metrics else "")
    b = etcd.call(method, path, text, url=etcd.metrics_url if metrics else "")
    a.body, b.body = scrub(a.body), scrub(b.body)
    if fix is not None:
        a.body, b.body = fix(a.body), fix(b.body)
    assert (a.status, a.headers, a.body) == (b.status, b.headers, b.body), f"{method} {path} {text!r}"
    return a


def test_kv_sequence_matches_etcd(pair: tuple[Side, Side]) -> None:
    def post(path: str, body: Any = None) -> Answer:
        return same(pair, "POST", path, body)

    for k, v in [("kv/a", "1"), ("kv/b", "2"), ("kv/c", "3"), ("kv/d", "4"), ("kx", "other")]:
        post("/v3/kv/put", {"key": b64(k), "value": b64(v)})
    post("/v3/kv/put", {"key": b64("kv/a"), "value": b64("1b"), "prev_kv": True})
    post("/v3/kv/put", {"key": b64("kv/a"), "ignore_value": True})
    post("/v3/kv/put", {"key": b64("kv/a"), "ignore_value": True, "value": b64("x")})
    post("/v3/kv/put", {"key": b64("kv/a"), "ignore_lease": True, "lease": "5"})
    post("/v3/kv/range", {"key": b64("kv/a")})
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0")})
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0"), "limit": 2})
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0"), "limit": "2", "keys_only": True})
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0"), "count_only": True})
    post(
        "/v3/kv/range",
        {"key": b64("kv/"), "rangeEnd": b64("kv0"), "sort_order": "DESCEND", "sort_target": "MOD"},
    )
    post(
        "/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0"), "sort_order": 2, "sort_target": "VALUE"}
    )
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0"), "sort_order": 9})
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0"), "revision": 3})
    post(
        "/v3/kv/range",
        {"key": b64("kv/"), "range_end": b64("kv0"), "min_mod_revision": 3, "max_mod_revision": 4},
    )
    post("/v3/kv/range", {"key": "AA==", "range_end": "AA=="})
    post("/v3/kv/range", {"key": b64("nothing")})
    post("/v3/kv/range", {"key": b64("kv/a"), "revision": 999})
    post(
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("kv/a"), "target": "VALUE", "result": "EQUAL", "value": b64("1b")}],
            "success": [
                {"request_range": {"key": b64("kv/b")}},
                {"request_put": {"key": b64("kv/e"), "value": b64("5"), "prev_kv": True}},
                {"request_txn": {"success": [{"request_range": {"key": b64("kv/e")}}]}},
            ],
            "failure": [{"request_delete_range": {"key": b64("kv/b")}}],
        },
    )
    post(
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("kv/a"), "target": "MOD", "result": "GREATER", "mod_revision": "100"}],
            "success": [{"request_put": {"key": b64("kv/f"), "value": b64("6")}}],
            "failure": [{"request_delete_range": {"key": b64("kv/b"), "prev_kv": True}}],
        },
    )
    post("/v3/kv/txn", {"compare": [{"key": b64("kv/a"), "target": "VERSION", "version": "0"}]})
    post("/v3/kv/txn", {"compare": [{"key": "", "target": "VERSION"}]})
    post(
        "/v3/kv/txn",
        {"success": [{"request_put": {"key": b64("kv/g")}}, {"request_put": {"key": b64("kv/g")}}]},
    )
    post("/v3/kv/txn", {"success": [{}]})
    post("/v3/kv/deleterange", {"key": b64("kv/c"), "range_end": b64("kv/e"), "prev_kv": True})
    post("/v3/kv/deleterange", {"key": b64("nothing")})
    post("/v3/kv/range", {"key": b64("kv/"), "range_end": b64("kv0")})
    # compaction, and reading below it
    rev = json.loads(pair[0].post("/v3/kv/range", {"key": b64("kv/a")}).body)["header"]["revision"]
    pair[1].post("/v3/kv/range", {"key": b64("kv/a")})
    post("/v3/kv/compaction", {"revision": int(rev) - 2})
    post("/v3/kv/compaction", {"revision": int(rev) - 2})
    post("/v3/kv/compaction", {"revision": "1000"})
    post("/v3/kv/range", {"key": b64("kv/a"), "revision": 2})
    post("/v3/kv/compaction", {"revision": rev, "physical": True})
    post("/v3/maintenance/hashkv", {})
    # empty keys
    post("/v3/kv/range", {"key": ""})
    post("/v3/kv/range", {})
    post("/v3/kv/put", {"value": b64("v")})
    post("/v3/kv/deleterange", {})
    post("/v3/kv/range", "")


BAD_BODIES = [
    '{"key":',
    '{"key":"a2V5",}',
    "xyz",
    "[]",
    "null",
    "5",
    '"abc"',
    '{"key":"!!"}',
    '{"key":1}',
    '{"key":"a2V5","limit":"abc"}',
    '{"key":"a2V5","limit":1.5}',
    '{"key":"a2V5","limit":"1e1"}',
    '{"key":"a2V5","limit":1e1}',
    '{"key":"a2V5","limit":" 1"}',
    '{"key":"a2V5","limit":true}',
    '{"key":"a2V5","revision":-1}',
    '{"key":"a2V5","key":"a2V5"}',
    '{"key":"a2V5","keys_only":"true"}',
    '{"key":"a2V5","sort_order":"NOPE"}',
    '{"key":"a2V5","sort_order":null}',
    '{"key":"a2V5","bogus":{"x":[1,2,{"y":null}]}}',
    '{"key":"a2V5"} trailing garbage',
    '{"key":"a2V5-_"}',
    '{"key":"a2V"}',
    '{"key":"a2V="}',
    '{"key":"a\\u00e9"}',
    '{\n  "key": "a2V5",\n  "limit": "x"\n}',
    '{"key":"a2V5","limit":"9223372036854775808"}',
    '{"key":"a2V5","limit":"-9223372036854775808"}',
    '{"key":"a2V5","sort_order":1.0}',
    '{"key":"a2V5" "limit":1}',
    '{"key" "a2V5"}',
    '{"key":tru}',
    '{"key":-}',
    '{"key":"\\x"}',
    "\t\n {} ",
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_request_decoding_matches_etcd(pair: tuple[Side, Side], body: str) -> None:
    same(pair, "POST", "/v3/kv/range", body)


def test_txn_oneof_and_nested_decoding_matches_etcd(pair: tuple[Side, Side]) -> None:
    for body in [
        '{"compare":[{"key":"YQ==","version":"1","value":"YQ=="}]}',
        '{"compare":[{"key":"YQ==","target":"VALUE","value":"YQ=="}],"success":[{"request_range":{"key":"YQ=="},"request_put":{"key":"YQ=="}}]}',
        '{"compare":"x"}',
        '{"compare":[1]}',
        '{"success":[{"request_range":{"key":"YQ==","limit":"x"}}]}',
        '{"success":[{"request_range":null}]}',
        '{"compare":[{"key":"YQ==","target":"VALUE","value":null}]}',
    ]:
        same(pair, "POST", "/v3/kv/txn", body)


def test_leases_match_etcd(pair: tuple[Side, Side]) -> None:
    def post(path: str, body: Any = None, fix: Any = None) -> Answer:
        return same(pair, "POST", path, body, fix=fix)

    ttl = re.compile(r'"TTL":"(5[89]|60)"')
    post("/v3/lease/grant", {"ID": 4242, "TTL": 60})
    post("/v3/lease/grant", {"ID": "4242", "TTL": 60})
    post("/v3/lease/grant", {"ID": 4243, "TTL": "60"})
    post("/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": 4242})
    post("/v3/kv/put", {"key": b64("leased2"), "value": b64("v"), "lease": "4242"})
    post("/v3/kv/put", {"key": b64("leased3"), "value": b64("v"), "lease": "77"})

    def ttl_and_sorted_keys(t: str) -> str:
        # etcd lists a lease's keys in Go map order
        keys = re.search(r'"keys":\[(.*)\]', t)
        if keys:
            t = t.replace(keys.group(1), ", ".join(sorted(keys.group(1).split(", "))))
        return ttl.sub('"TTL":"T"', t)

    post("/v3/lease/timetolive", {"ID": 4242, "keys": True}, ttl_and_sorted_keys)
    post("/v3/kv/lease/timetolive", {"ID": 4243}, lambda t: ttl.sub('"TTL":"T"', t))
    post("/v3/lease/timetolive", {"ID": 999})

    def sorted_leases(t: str) -> str:
        doc = json.loads(t)
        ids = sorted(x["ID"] for x in doc.get("leases", []))
        return t.split('"leases"')[0] + json.dumps(ids)

    post("/v3/lease/leases", {}, sorted_leases)
    post("/v3/kv/lease/leases", None, sorted_leases)
    post("/v3/lease/keepalive", '{"ID":4242}')
    post("/v3/lease/keepalive", '{"ID":4242} {"ID":999}\n{"ID":"4243"}')
    post("/v3/lease/keepalive", '{"ID":4242} xx {"ID":4243}')
    post("/v3/lease/keepalive", "")
    post("/v3/lease/revoke", {"ID": 4242})
    post("/v3/lease/revoke", {"ID": 4242})
    post("/v3/kv/lease/revoke", {"ID": 4243})
    post("/v3/kv/range", {"key": b64("leased"), "range_end": b64("leasee")})
    post("/v3/lease/grant", {"TTL": 5}, lambda t: re.sub(r'"ID":"\d+"', '"ID":"L"', t))
    post("/v3/lease/grant", {"ID": 5000, "TTL": 9999999999})


def test_maintenance_and_cluster_match_etcd(pair: tuple[Side, Side]) -> None:
    def post(path: str, body: Any = None) -> Answer:
        return same(pair, "POST", path, body)

    post("/v3/maintenance/status", {})
    post("/v3/cluster/member/list", {})
    post("/v3/cluster/member/list", {"linearizable": True})
    post("/v3/maintenance/alarm", {})
    post("/v3/maintenance/alarm", {"action": "GET"})
    post("/v3/maintenance/defragment", {})
    post("/v3/maintenance/hash", {})
    post("/v3/maintenance/transfer-leadership", {"targetID": 1})


def test_alarm_health_matches_etcd(pair: tuple[Side, Side]) -> None:
    def get(path: str) -> Answer:
        return same(pair, "GET", path)

    get("/health")
    try:
        for side in pair:
            member_id = _member_id(side)
            side.post(
                "/v3/maintenance/alarm", {"action": "ACTIVATE", "memberID": member_id, "alarm": "NOSPACE"}
            )
        same(pair, "POST", "/v3/maintenance/alarm", {})
        get("/health")
        get("/health?exclude=NOSPACE")
        get("/health?exclude=CORRUPT")
        get("/health?serializable=true")
        get("/readyz")
        same(pair, "POST", "/v3/kv/put", {"key": b64("full"), "value": b64("x")})
        same(pair, "POST", "/v3/maintenance/status", {})
    finally:
        for side in pair:
            side.post(
                "/v3/maintenance/alarm",
                {"action": "DEACTIVATE", "memberID": _member_id(side), "alarm": "NOSPACE"},
            )
    get("/health")
    same(pair, "POST", "/v3/maintenance/alarm", {})


def _member_id(side: Side) -> str:
    conn = http.client.HTTPConnection(side.http_url.removeprefix("http://"), timeout=30)
    conn.request("POST", "/v3/maintenance/status", body=b"{}")
    mid: str = json.loads(conn.getresponse().read())["header"]["member_id"]
    conn.close()
    return mid


def test_health_version_and_routing_match_etcd(pair: tuple[Side, Side]) -> None:
    def lines_sorted(t: str) -> str:
        return "\n".join(sorted(t.split("\n")))

    for method, path in [
        ("GET", "/health"),
        ("GET", "/health?serializable=true"),
        ("POST", "/health"),
        ("GET", "/livez"),
        ("GET", "/livez?verbose"),
        ("GET", "/livez/serializable_read"),
        ("GET", "/livez/nope"),
        ("GET", "/livez/"),
        ("GET", "/readyz"),
        ("GET", "/readyz/non_learner?verbose=1"),
        ("PUT", "/readyz"),
        ("GET", "/version"),
        ("DELETE", "/version"),
        ("GET", "/nothing"),
        ("GET", "/v3/kv/range"),
        ("PUT", "/v3/lease/grant"),
        ("POST", "/v3/nothing"),
        ("POST", "/v3"),
        ("GET", "/v3?x=1"),
        ("GET", "//health"),
        ("POST", "/v3/kv/./range"),
        ("GET", "/a/../version"),
        ("GET", "/metrics/"),
        ("OPTIONS", "/v3/kv/range"),
        ("OPTIONS", "/anything"),
    ]:
        same(pair, method, path)
    # etcd runs the checks in Go's random map order
    same(pair, "GET", "/readyz?verbose", fix=lines_sorted)
    same(pair, "GET", "/readyz?exclude=non_learner&exclude=linearizable_read&verbose", fix=lines_sorted)
    same(pair, "POST", "/v3beta/kv/range", {"key": b64("kv/a")})


def test_streams_match_etcd_in_shape(pair: tuple[Side, Side]) -> None:
    """Snapshots differ in content (member and cluster IDs, etcd's own meta keys) but not in framing."""
    for side in pair:
        a = side.post("/v3/maintenance/snapshot", "{}")
        assert a.status == 200
        assert a.headers["Content-Type"] == "application/json"
        lines = a.body.split("\n")
        assert lines[-1] == ""
        docs = [json.loads(line) for line in lines[:-1]]
        assert all(set(d) == {"result"} for d in docs)
        assert all(set(d["result"]) <= {"blob", "version", "remaining_bytes"} for d in docs)
        assert "remaining_bytes" not in docs[-1]["result"]
        assert len(base64.b64decode(docs[-1]["result"]["blob"])) == 32  # the sha256 trailer
    same(pair, "POST", "/v3/maintenance/snapshot", '{"x":')


def test_metrics_listener_matches_etcd(pair: tuple[Side, Side]) -> None:
    for method, path in [
        ("GET", "/health"),
        ("GET", "/livez?verbose"),
        ("GET", "/readyz/data_corruption"),
        ("POST", "/health"),
        ("OPTIONS", "/health"),
        ("GET", "/version"),
        ("POST", "/v3/kv/range"),
        ("GET", "//metrics"),
    ]:
        same(pair, method, path, metrics=True)
    a = pair[0].call("GET", "/metrics", url=pair[0].metrics_url)
    assert a.status == 200 and "etcd_server_has_leader 1" in a.body


def _families(text: str) -> dict[str, tuple[str, str]]:
    """name -> (type, help) of a text exposition."""
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    return {name: (typ, helps.get(name, "")) for name, typ in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def test_metrics_match_etcd_names_types_and_help(pair: tuple[Side, Side]) -> None:
    petcd, etcd = pair
    a, b = petcd.call("GET", "/metrics"), etcd.call("GET", "/metrics")
    assert a.headers["Content-Type"] == b.headers["Content-Type"]
    ours, theirs = _families(a.body), _families(b.body)
    expected = {
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_is_learner",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_quota_backend_bytes",
        "etcd_server_id",
        "etcd_server_version",
        "etcd_cluster_version",
        "etcd_server_health_success",
        "etcd_server_health_failures",
        "etcd_network_known_peers",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_current_revision",
        "etcd_debugging_mvcc_compact_revision",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    }
    assert expected <= set(ours)
    for name in ours:
        assert name in theirs, f"{name} is not an etcd metric"
        assert ours[name] == theirs[name], name
    for line in (
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_server_quota_backend_bytes 2.147483648e+09",
    ):
        assert line in a.body and line in b.body
    for name in (
        "etcd_debugging_mvcc_current_revision",
        "etcd_debugging_mvcc_compact_revision",
        "etcd_debugging_mvcc_keys_total",
    ):
        (ours_v,) = re.findall(rf"^{name} (\S+)$", a.body, re.M)
        (theirs_v,) = re.findall(rf"^{name} (\S+)$", b.body, re.M)
        assert ours_v == theirs_v, name
