"""Faults on demand and etcd's failpoints in a real petcd process, seen through the real etcdctl:

- without --listen-faults-urls (and GOFAIL_HTTP) the member listens on its client and peer
  ports only; with them, on those two more;
- the surface refuses to share the client or peer port, and with --client-cert-auth serves only
  https:// callers the client CA verifies;
- each fault kind as etcdctl sees it (etcd's error text, a txn losing to a concurrent writer,
  a watch canceled as compacted), counted in /metrics; the Python client (tests/harness/faults.py);
- gofail: GOFAIL_FAILPOINTS at start, `panic` ending the process at a step (exit 2) with the
  data intact after restart, and a compaction crashed between batches resuming.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from petcd_harness.certs import make_pki
from petcd_harness.datastore import Datastore
from petcd_harness.errors import HarnessError
from petcd_harness.faults import FaultError, Faults
from petcd_harness.faults import main as faults_main
from server.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import petcd_command
from tests.harness.procs import Member, free_port

pytestmark = pytest.mark.integration


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (its sockets' inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def http_json(method: str, url: str, body: object = None) -> tuple[int, object]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[Member, str, str]]:
    """A member with the surface and /metrics: (member, surface URL, metrics URL)."""
    faults, metrics = free_port(), free_port()
    m = Member.petcd(
        tmp_path,
        f"--listen-faults-urls=http://127.0.0.1:{faults}",
        f"--listen-metrics-urls=http://127.0.0.1:{metrics}",
    )
    with m:
        yield m, f"http://127.0.0.1:{faults}", f"http://127.0.0.1:{metrics}/metrics"


# -- off unless asked ------------------------------------------------------------------------------


def test_nothing_listens_without_the_flag(tmp_path: Path) -> None:
    assert not any(k.startswith("GOFAIL_") for k in os.environ)
    (tmp_path / "plain").mkdir()
    (tmp_path / "faulty").mkdir()
    with Member.petcd(tmp_path / "plain") as m:
        assert m.proc is not None
        assert listening_ports(m.proc.pid) == {m.client_port, m.peer_port}
    faults, gofail = free_port(), free_port()
    with Member.petcd(
        tmp_path / "faulty",
        f"--listen-faults-urls=http://127.0.0.1:{faults}",
        env={"GOFAIL_HTTP": f"127.0.0.1:{gofail}"},
    ) as m:
        assert m.proc is not None
        assert listening_ports(m.proc.pid) == {m.client_port, m.peer_port, faults, gofail}


def run_petcd(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    client, peer = free_port(), free_port()
    base = [
        f"--data-dir={tmp_path / 'refused.etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=default=http://127.0.0.1:{peer}",
    ]
    flags = tuple(f.replace("CLIENT", str(client)).replace("PEER", str(peer)) for f in flags)
    return subprocess.run([*petcd_command(), *base, *flags], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (
            ["--listen-faults-urls=http://127.0.0.1:CLIENT"],
            "is a port of --listen-client-urls; it needs its own",
        ),
        (["--listen-faults-urls=http://127.0.0.1:PEER"], "is a port of --listen-peer-urls; it needs its own"),
        (["--listen-faults-urls=127.0.0.1:2399"], "is not an http:// or https:// URL with a port"),
        (
            [
                "--listen-faults-urls=http://127.0.0.1:2399",
                "--client-cert-auth",
                "--trusted-ca-file=/nonexistent",
            ],
            "must be https:// with --client-cert-auth",
        ),
    ],
)
def test_refused_flags(tmp_path: Path, flags: list[str], error: str) -> None:
    p = run_petcd(tmp_path, *flags)
    assert p.returncode == 2
    assert error in p.stderr and "Traceback" not in p.stderr


def test_bad_gofail_env_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "GOFAIL_FAILPOINTS": "raftBeforeSave"}
    client, peer = free_port(), free_port()
    p = subprocess.run(
        [
            *petcd_command(),
            f"--data-dir={tmp_path / 'x'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 1
    assert (
        p.stderr.strip().splitlines()[-1]
        == 'petcd: GOFAIL_FAILPOINTS: fail to parse failpoint: bad failpoint "raftBeforeSave"'
    )


def test_tls_client_auth_needs_the_client_ca(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other", ca_cn="another-ca")
    faults = free_port()
    m = Member.petcd(tmp_path, *pki.etcd_server_flags(), f"--listen-faults-urls=https://127.0.0.1:{faults}")
    m.client_port  # noqa: B018 - the member serves plain http to clients; only the surface is TLS
    with m:
        url = f"https://127.0.0.1:{faults}/faults"

        def ctx(client: object | None) -> ssl.SSLContext:
            c = ssl.create_default_context(cafile=str(pki.ca))
            if client is not None:
                c.load_cert_chain(client.client_cert, client.client_key)  # type: ignore[attr-defined]
            return c

        with urllib.request.urlopen(url, context=ctx(pki), timeout=10) as r:
            assert json.loads(r.read()) == {"faults": []}
        for who in (None, other):
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(url, context=ctx(who), timeout=10).read()


# -- the kinds, through etcdctl --------------------------------------------------------------------


def test_errors_and_metrics(faulty: tuple[Member, str, str]) -> None:
    m, surface, metrics = faulty
    ctl = Etcdctl(m.client_url)
    code, _ = http_json(
        "POST",
        surface + "/faults",
        {"kind": "error", "error": "too_many_requests", "prefix": "/app/", "count": 2},
    )
    assert code == 201
    for _ in range(2):
        r = ctl("put", "/app/k", "v")
        assert r.rc != 0 and r.error_line == "Error: etcdserver: too many requests"
    ctl.ok("put", "/app/k", "v")
    ctl.ok("put", "/other", "v")
    http_json(
        "POST",
        surface + "/faults",
        {"kind": "error", "error": "leader_changed", "methods": ["DeleteRange"], "count": 1},
    )
    assert ctl("del", "/other").error_line == "Error: etcdserver: leader changed"
    with urllib.request.urlopen(metrics, timeout=10) as r:
        text = r.read().decode()
    assert 'petcd_faults_injected_total{kind="error"} 3' in text
    assert 'petcd_faults_injected_total{kind="conflict"} 0' in text


def test_conflict_as_etcdctl_sees_it(faulty: tuple[Member, str, str]) -> None:
    m, surface, _ = faulty
    ctl = Etcdctl(m.client_url)
    ctl.ok("put", "/registry/configmaps/default/cm", "v1")
    rev = ctl("get", "/registry/configmaps/default/cm", "-w", "json").json()["kvs"][0]["mod_revision"]
    watch = subprocess.Popen(
        [
            ctl.binary,
            f"--endpoints={m.client_url}",
            "watch",
            "--prefix",
            "/registry/configmaps/",
            f"--rev={rev + 1}",
            "-w",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        Faults([surface]).conflicts("configmaps", namespace="default", n=1)
        txn = f'mod("/registry/configmaps/default/cm") = "{rev}"\n\nput /registry/configmaps/default/cm v2\n\nget /registry/configmaps/default/cm\n\n'
        out = ctl("txn", "-w", "json", input=txn).json()
        assert "succeeded" not in out  # false
        kv = out["responses"][0]["Response"]["response_range"]["kvs"][0]
        assert kv["mod_revision"] == rev + 1 and kv["version"] == 2
        assert kv["value"] == "djE="  # "v1": rewritten unchanged
        assert watch.stdout is not None
        event = json.loads(watch.stdout.readline())["Events"][0]
        assert event["kv"]["mod_revision"] == rev + 1
    finally:
        watch.kill()
        watch.communicate()
    # the retry succeeds
    out = ctl("txn", "-w", "json", input=txn.replace(f'"{rev}"', f'"{rev + 1}"')).json()
    assert out["succeeded"] is True


def test_watch_cut_as_etcdctl_sees_it(faulty: tuple[Member, str, str]) -> None:
    m, surface, _ = faulty
    ctl = Etcdctl(m.client_url)
    ctl.ok("put", "/w/a", "1")
    rev = ctl("get", "/w/a", "-w", "json").json()["kvs"][0]["mod_revision"]
    watch = subprocess.Popen(
        [ctl.binary, f"--endpoints={m.client_url}", "watch", "--prefix", "/w/", f"--rev={rev}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        faults = Faults([surface])
        # etcdctl has its watch by the time it prints its first event (the put at rev)
        assert watch.stdout is not None
        assert watch.stdout.readline().strip() == "PUT"
        cut = faults.watch_cut("/w/").result[0]
        assert cut["injected"] == 1
        out = watch.communicate(timeout=30)[0]
        assert "watch was canceled (etcdserver: mvcc: required revision has been compacted)" in out
        assert watch.returncode != 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    r = ctl("get", "/w/a", f"--rev={cut['compact_revision'] - 1}")
    assert r.error_line == "Error: etcdserver: mvcc: required revision has been compacted"


def test_client_api_refusals(faulty: tuple[Member, str, str]) -> None:
    _, surface, _ = faulty
    faults = Faults([surface])
    with pytest.raises(FaultError, match="count must be an integer >= 1, got 0"):
        faults.conflicts("configmaps", n=0)
    with pytest.raises(FaultError, match="unknown error 'disk'"):
        faults.errors("pods", error="disk")
    with pytest.raises(FaultError, match="leader loss needs a cluster of 3 members"):
        faults.leader_loss()
    with faults.latency("pods", delay=0.01, ttl=60) as f:
        assert f.active
        assert [x["prefix"] for x in faults.list()] == ["/registry/pods/"]
    assert faults.list() == []  # cleared when the block ends
    faults.errors("counters.petcd.example.com", namespace="ns", name="c")
    assert [x["key"] for x in faults.list()] == ["/registry/petcd.example.com/counters/ns/c"]
    assert faults.clear() == 1


# -- gofail ----------------------------------------------------------------------------------------


def gofail_call(port: int, method: str, path: str, body: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body.encode() if body is not None else None, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_gofail_panic_at_a_step_then_restart(tmp_path: Path) -> None:
    port = free_port()
    m = Member.petcd(
        tmp_path, env={"GOFAIL_HTTP": f"127.0.0.1:{port}", "GOFAIL_FAILPOINTS": "beforeCommit=2*return"}
    )
    with m:
        ctl = Etcdctl(m.client_url)
        assert gofail_call(port, "GET", "/beforeCommit") == (200, "2*return\n")
        for i in range(5):
            ctl.ok("put", f"k{i}", "v")
        assert gofail_call(port, "PUT", "/raftBeforeSave", "panic") == (204, "")
        r = ctl("put", "lost", "v", timeout=30)
        assert r.rc != 0
        assert m.proc is not None
        assert m.proc.wait(30) == 2
        assert "panic: failpoint panic: {}" in m.log()
        # the member restarts on its data: every acknowledged write is there, the other never was
        m.env = {}
        m.start()
        assert [kv["key"] for kv in ctl("get", "k", "--prefix", "-w", "json").json()["kvs"]] == [
            "azA=", "azE=", "azI=", "azM=", "azQ="
        ]  # fmt: skip
        assert ctl.ok("get", "lost") == ""


def test_gofail_compaction_crash_between_batches_resumes(tmp_path: Path) -> None:
    port = free_port()
    m = Member.petcd(tmp_path, env={"GOFAIL_HTTP": f"127.0.0.1:{port}"})
    with m:
        ctl = Etcdctl(m.client_url)
        # more revisions than one compaction batch (1,000)
        with grpc.insecure_channel(f"127.0.0.1:{m.client_port}") as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(1500):
                kv.Put(rpc_pb2.PutRequest(key=b"key%d" % (i % 5), value=b"v%d" % i), timeout=10)
        rev = ctl("get", "key0", "-w", "json").json()["header"]["revision"]
        assert gofail_call(port, "PUT", "/compactBeforeCommitBatch", "panic")[0] == 204
        ctl("compact", str(rev), "--physical", timeout=30)
        assert m.proc is not None
        assert m.proc.wait(30) == 2
        m.env = {}
        m.start()
        deadline = time.monotonic() + 30
        while "finished scheduled compaction" not in m.log().split("---- start")[-1]:
            assert time.monotonic() < deadline, "the compaction did not resume"
            time.sleep(0.1)
        assert ctl("get", "key0", f"--rev={rev - 1}").error_line == (
            "Error: etcdserver: mvcc: required revision has been compacted"
        )
        values = {kv["key"]: kv["value"] for kv in ctl("get", "key", "--prefix", "-w", "json").json()["kvs"]}
        assert len(values) == 5


def test_faults_through_grpc_frontends(tmp_path: Path) -> None:
    """Calls relayed by --grpc-frontends processes meet the faults as in-process ones do."""
    faults = free_port()
    with Member.petcd(tmp_path, "--grpc-frontends=1", f"--listen-faults-urls=http://127.0.0.1:{faults}") as m:
        ctl = Etcdctl(m.client_url)
        Faults([f"http://127.0.0.1:{faults}"]).errors("/fe/", error="leader_changed", n=1)
        assert ctl("put", "/fe/k", "v").error_line == "Error: etcdserver: leader changed"
        ctl.ok("put", "/fe/k", "v")


def test_cli(faulty: tuple[Member, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    m, surface, _ = faulty
    assert faults_main(["--url", surface, "conflict", "configmaps", "--namespace", "ns", "-n", "2"]) == 0
    [set_] = json.loads(capsys.readouterr().out)
    assert (set_["kind"], set_["prefix"], set_["count"]) == ("conflict", "/registry/configmaps/ns/", 2)
    assert faults_main(["--url", surface, "error", "--error", "no_leader", "--method", "Put"]) == 0
    capsys.readouterr()
    assert Etcdctl(m.client_url)("put", "k", "v").error_line == "Error: etcdserver: no leader"
    assert faults_main(["--url", surface, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(f["kind"], f["injected"]) for f in listed] == [("conflict", 0), ("error", 1)]
    with pytest.raises(SystemExit) as usage:
        faults_main(["--url", surface, "latency", "pods"])  # --delay is required
    assert usage.value.code == 2
    assert faults_main(["--url", surface, "error", "pods", "--error", "disk"]) == 1
    assert "unknown error 'disk'" in capsys.readouterr().err
    assert faults_main(["--url", surface, "clear"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cleared": 2}


def test_harness_datastore_over_tls(tmp_path: Path) -> None:
    """petcd_harness's TLS datastore serves its surfaces on https://, reached with the
    datastore's client certificate; a real etcd has none."""
    with Datastore("petcd", 1, tmp_path / "ds", tls=True, faults=True) as ds:
        assert [u.split("://")[0] for u in ds.fault_urls] == ["https"]
        faults = ds.faults()
        with faults.errors("/tls/", error="timeout") as f:
            assert ds.ctl()("put", "/tls/a", "v").error_line == "Error: etcdserver: request timed out"
        assert f.injected == 1
    with pytest.raises(HarnessError, match="a real etcd has no fault surface"):
        Datastore("etcd", 1, tmp_path / "etcd", faults=True).faults()
