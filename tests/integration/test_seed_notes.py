"""The etcdctl sessions of the project's seed notes (../shared/seed/etcd-notes.md), verbatim,
against `make run`'s defaults: petcd with no flags, on http://localhost:2379, data in
./default.etcd. Expected outputs are the ones the notes show (IDs are etcd's for these flags).

We test these aspects:
- multi-version reads: put/get -wjson/--rev, revisions and versions as in the notes;
- prefix reads at a revision; member list and endpoint status tables;
- the quota session: --quota-backend-bytes=16MiB, 1 MiB puts until "database space exceeded",
  the NOSPACE alarm in endpoint status and alarm list, defrag, alarm disarm, and writes working
  again after compaction + defrag + disarm.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import peer, petcd_command
from tests.harness.procs import wait_ready

pytestmark = pytest.mark.integration

ENDPOINTS = "--endpoints=http://localhost:2379"
MEMBER_ID = 10276657743932975437  # etcd's default member: sha1("http://localhost:2380" + "etcd-cluster")
CLUSTER_ID = 14841639068965178418


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def default_petcd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """petcd exactly as `make run` starts it: no flags, cwd = tmp_path."""
    assert _port_free(2379) and _port_free(2380), "ports 2379/2380 are taken: stop the etcd running there"
    extra: list[str] = getattr(request, "param", [])
    log = open(tmp_path / "petcd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*petcd_command(), *extra], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready("http://127.0.0.1:2379", proc=proc)
        yield tmp_path
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def etcdctl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [peer("etcdctl"), *args],
        input=stdin.decode("latin-1") if stdin else None,
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=60,
    )


def test_data_dir_is_default_etcd(default_petcd: Path) -> None:
    assert (default_petcd / "default.etcd" / "member" / "snap" / "db").exists()


def test_multi_version_session(default_petcd: Path) -> None:
    assert etcdctl(ENDPOINTS, "get", "b").stdout == ""
    assert etcdctl(ENDPOINTS, "put", "b", "v1").stdout == "OK\n"
    assert etcdctl(ENDPOINTS, "get", "b", "-wjson").stdout == (
        '{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":2,'
        '"raft_term":2},"kvs":[{"key":"Yg==","create_revision":2,"mod_revision":2,"version":1,"value":"djE="}],'
        '"count":1}\n'
    )
    assert etcdctl(ENDPOINTS, "put", "b", "v2").stdout == "OK\n"
    assert etcdctl(ENDPOINTS, "get", "b", "-wjson").stdout == (
        '{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":3,'
        '"raft_term":2},"kvs":[{"key":"Yg==","create_revision":2,"mod_revision":3,"version":2,"value":"djI="}],'
        '"count":1}\n'
    )
    assert etcdctl(ENDPOINTS, "get", "b", "--rev=2").stdout == "b\nv1\n"


def test_prefix_session(default_petcd: Path) -> None:
    for i in range(1, 6):
        etcdctl(ENDPOINTS, "put", f"a{i}", f"x{i}")  # revisions 2..6
    etcdctl(ENDPOINTS, "put", "a1", "changed")  # revision 7
    assert etcdctl(ENDPOINTS, "get", "--prefix", "a").stdout.splitlines()[:2] == ["a1", "changed"]
    at6 = etcdctl(ENDPOINTS, "get", "--prefix", "a", "--rev=6").stdout.splitlines()
    assert at6 == ["a1", "x1", "a2", "x2", "a3", "x3", "a4", "x4", "a5", "x5"]


def test_member_list_and_endpoint_status_tables(default_petcd: Path) -> None:
    out = etcdctl(ENDPOINTS, "member", "list", "--write-out=table").stdout
    assert (
        "| 8e9e05c52164694d | started | default | http://localhost:2380 | http://localhost:2379 |      false |"
        in out
    )
    status = etcdctl(ENDPOINTS, "--write-out=table", "endpoint", "status").stdout
    row = next(line for line in status.splitlines() if "localhost:2379" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "http://localhost:2379"
    assert cells[1] == "8e9e05c52164694d"
    assert cells[8] == "true"  # IS LEADER
    assert cells[10] == "2"  # RAFT TERM


@pytest.mark.parametrize("default_petcd", [[f"--quota-backend-bytes={16 * 1024 * 1024}"]], indirect=True)
def test_quota_session(default_petcd: Path) -> None:
    # The notes' loop: `while [1]; do dd if=/dev/urandom bs=1024 count=1024 | ETCDCTL_API=3 etcdctl put key
    # || break; done`. (`[1]` is a typo for `[ 1 ]` in bash; the loop intended runs until a put fails.)
    loop = (
        "while [ 1 ]; do dd if=/dev/urandom bs=1024 count=1024 2>/dev/null | "
        f"ETCDCTL_API=3 {peer('etcdctl')} put key || break; done"
    )
    r = subprocess.run(["bash", "-c", loop], capture_output=True, text=True, timeout=300)
    assert r.stdout.count("OK") >= 10
    assert "Error: etcdserver: mvcc: database space exceeded" in r.stderr

    alarm = f"memberID:{MEMBER_ID} alarm:NOSPACE "  # etcdctl prints gogoproto text, trailing space included
    status = etcdctl(ENDPOINTS, "--write-out=table", "endpoint", "status").stdout
    # the table wraps the ERRORS cell over two lines
    assert f"memberID:{MEMBER_ID}" in status and "alarm:NOSPACE" in status
    assert etcdctl("alarm", "list").stdout == alarm + "\n"
    # reads, deletes still work; puts are refused while the alarm is raised
    assert etcdctl("get", "key", "--print-value-only").returncode == 0
    assert "database space exceeded" in etcdctl("put", "other", "x").stderr

    # the etcd procedure: compact the history, defragment, disarm
    rev = Etcdctl("http://127.0.0.1:2379")("endpoint", "status", "-wjson").json()[0]["Status"]["header"][
        "revision"
    ]
    assert etcdctl("compact", str(rev), "--physical").returncode == 0
    defrag = etcdctl("defrag")
    assert defrag.returncode == 0
    assert defrag.stdout.startswith("Finished defragmenting etcd member[127.0.0.1:2379]")
    assert etcdctl("alarm", "disarm").stdout == alarm + "\n"
    assert etcdctl("alarm", "list").stdout == ""
    assert etcdctl("put", "other", "x").stdout == "OK\n"
