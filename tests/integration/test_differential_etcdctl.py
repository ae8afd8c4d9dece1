"""Differential tests: the same etcdctl session against petcd and a real etcd v3.6, side by side.

Each session starts a fresh petcd and a fresh etcd with the same flags (on different ports),
runs every command against both and compares exit code, stdout and etcdctl's final error line,
after normalizing what legitimately differs (ports, the member and cluster IDs derived from
them, lease IDs derived from member IDs, database sizes, raft indexes, version strings).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.framework.differential import Differential, normalizer
from tests.harness.etcdctl import Etcdctl

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Cmd:
    args: tuple[str, ...]
    stdin: str | None = None


def c(*args: str, stdin: str | None = None) -> Cmd:
    return Cmd(args, stdin)


def txn_input(compares: list[str], success: list[str], failure: list[str]) -> str:
    """etcdctl txn's interactive input: compares, blank line, success ops, blank, failure ops."""
    return "\n".join([*compares, "", *success, "", *failure, ""]) + "\n"


SESSIONS: dict[str, list[Cmd]] = {
    "put_get_revisions": [
        c("put", "b", "v1"),
        c("get", "b", "-wjson"),
        c("put", "b", "v2"),
        c("get", "b", "-wjson"),
        c("get", "b", "--rev=2"),
        c("get", "b", "--rev=2", "-wjson"),
        c("get", "b", "--rev=1"),
        c("get", "b", "--rev=99"),
        c("get", "nope", "-wjson"),
        c("put", "b", "v3", "--prev-kv"),
        c("put", "b", "v3", "--prev-kv", "-wjson"),
        c("get", "b", "--print-value-only"),
    ],
    "ranges": [
        *[c("put", f"k{i}", f"v{i}") for i in range(10)],
        c("put", "a", "first"),
        c("put", "z", "last"),
        c("get", "--prefix", "k"),
        c("get", "--prefix", "k", "--limit=3", "-wjson"),
        c("get", "--from-key", "k5"),
        c("get", "k2", "k6"),
        c("get", "--prefix", "k", "--keys-only"),
        c("get", "--prefix", "k", "--count-only", "-wjson"),
        c("get", "--prefix", "k", "--sort-by=MODIFY", "--order=DESCEND", "--limit=2"),
        c("get", "--prefix", "k", "--sort-by=VALUE", "--order=ASCEND"),
        c("get", "--prefix", "k", "--sort-by=KEY", "--order=DESCEND", "--limit=4", "-wjson"),
        c("get", "--prefix", "k", "--rev=5"),
        c("get", "", "--prefix", "--keys-only"),
        c("get", "--from-key", ""),
        c("get", "--prefix", "k", "--min-mod-revision=4", "--max-mod-revision=6"),
        c("get", "--prefix", "k", "--min-create-revision=9"),
        c("del", "k1"),
        c("del", "k2", "k5", "--prev-kv"),
        c("del", "--prefix", "k", "-wjson"),
        c("del", "nothing"),
        c("get", "", "--prefix"),
        c("get", "k3", "--rev=8", "-wjson"),
    ],
    "versions_and_recreate": [
        c("put", "x", "1"),
        c("put", "x", "2"),
        c("del", "x"),
        c("put", "x", "3"),
        c("get", "x", "-wjson"),
        c("get", "x", "--rev=3", "-wjson"),
        c("get", "x", "--rev=4", "-wjson"),
    ],
    "txn": [
        c("put", "a", "1"),
        c("txn", "-wjson", stdin=txn_input(['mod("a") = "2"'], ["put b 2", "get a"], ["put c 3"])),
        c("txn", stdin=txn_input(['value("a") = "1"'], ["put b 22", "del c", "get b"], ["get a"])),
        c("txn", "-wjson", stdin=txn_input(['version("missing") = "0"'], ["get b"], [])),
        c("txn", stdin=txn_input(['create("a") > "1"'], ["put z 1"], ["put y 1"])),
        c("txn", stdin=txn_input(['value("a") != "1"'], ["put z 1"], ['get --prefix ""'])),
        c("txn", stdin=txn_input(['value("a") = "1"'], ["put d 1", "put d 2"], [])),
        c("txn", stdin=txn_input([], ["put d 1", "del d"], [])),
        c("txn", stdin=txn_input([], [f"put t{i} v" for i in range(129)], [])),
        c("txn", stdin=txn_input([], [f"put t{i} v" for i in range(128)], [])),
        c("get", "t127"),
        c("txn", stdin=txn_input(['lease("a") = "0"'], ["get a"], [])),
    ],
    "compaction": [
        *[c("put", "key", f"v{i}") for i in range(5)],
        c("compact", "3"),
        c("get", "key", "--rev=2"),
        c("get", "key", "--rev=3", "-wjson"),
        c("compact", "3"),
        c("compact", "2"),
        c("compact", "100"),
        c("compact", "6", "--physical"),
        c("get", "key", "--rev=5"),
        c("get", "key", "-wjson"),
        c("endpoint", "hashkv", "-wjson"),
        c("endpoint", "hashkv", "--rev=6", "-wjson"),
        c("endpoint", "hashkv", "--rev=4", "-wjson"),
    ],
    "bad_input": [
        c("put", "", "x"),
        c("get", ""),
        c("del", ""),
        c("put", "big", stdin="x" * (1536 * 1024 + 10)),
        c("put", "huge", stdin="x" * (2 * 1024 * 1024 + 10)),
        c("put", "fits", stdin="x" * (1024 * 1024)),
        c("put", "k", "--ignore-value"),
        c("put", "k", "v", "--lease=1234"),
        c("get", "k", "--rev=-1"),
        c("put", "k", "v"),
        c("put", "k", "--ignore-value", "-wjson"),
        c("get", "k", "-wjson"),
    ],
    "leases": [
        c("lease", "grant", "100"),
        c("lease", "grant", "1"),
        c("lease", "list"),
        c("lease", "timetolive", "1234"),
        c("lease", "revoke", "1234"),
        c("put", "k", "v", "--lease=1234"),
    ],
    "alarms_and_status": [
        c("alarm", "list"),
        c("member", "list", "-wjson"),
        c("member", "list"),
        c("endpoint", "health", "-wjson"),
        c("endpoint", "status", "-wjson"),
        c("move-leader", "1234"),
    ],
}


def _health_line(text: str) -> str:
    # endpoint health prints the time it took
    import re

    return re.sub(r'"took":"[^"]*"', '"took":"T"', text)


@pytest.mark.parametrize("session", SESSIONS, ids=list(SESSIONS))
def test_session(pair: Differential, session: str) -> None:
    p, e = pair
    ctl_p, ctl_e = Etcdctl(p.client_url), Etcdctl(e.client_url)
    norm_p, norm_e = normalizer(p), normalizer(e)
    mismatches = []
    for cmd in SESSIONS[session]:
        rp, re_ = ctl_p(*cmd.args, input=cmd.stdin), ctl_e(*cmd.args, input=cmd.stdin)
        got = (rp.rc, _health_line(norm_p(rp.out)), norm_p(rp.error_line))
        want = (re_.rc, _health_line(norm_e(re_.out)), norm_e(re_.error_line))
        if got != want:
            mismatches.append(
                f"etcdctl {' '.join(a[:40] for a in cmd.args)}\n  petcd: {got}\n  etcd:  {want}"
            )
    assert not mismatches, "\n".join(mismatches)
