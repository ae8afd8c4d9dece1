"""Benchmarks: the same workload against petcd, a real etcd v3.6 and (for the gRPC ceiling) a null
grpc.aio server, in one run, on this machine. Not a test: nothing here asserts a time.

    python -m bench.run                       # everything (about 25 minutes)
    python -m bench.run --suites kv,watch      # some suites
    python -m bench.run --quick                # shorter runs, for a smoke check

Targets: null (bench/null_server.py), petcd (one process, as `petcd` with no flags: its native gRPC front
on the client port), petcd-grpcio (petcd --grpc-server=grpcio, the transport of https:// ports), petcd-fe (petcd
--grpc-frontends=2: gRPC served by two front-end processes, the core keeps Raft/MVCC), etcd v3.6, and
kine v0.17 on SQLite (the other etcd-API shim, k3s's default datastore; kv and watch suites).

Suites:
    perf     etcdctl check perf --load=s|m|l|xl (60 s each) on null, petcd, petcd-fe, etcd
    kv       etcd's benchmark tool: put (100 clients, 10 conns) and range (linearizable, serializable);
             also against kine
    watch    (petcd, etcd, kine) benchmark watch-latency (1,000 watchers on one key), watch fan-out, RSS of 10,000 idle watchers
    lease    benchmark lease-keepalive
    cluster  3-member put throughput, check perf m, leader failover time (petcd vs etcd)
    port     the cost of the shared client port: put, 1 client and 100 clients, on petcd and on
             petcd at --baseline (default: the commit before the port was shared), in interleaved
             rounds (--rounds), medians
    relay    the ways a shared port can hand gRPC connections on (bench/relay.py), in front of the
             null server: its own port, the native relay, a Python os.splice relay (--rounds)

Results are written to bench/results/<suite>.json and rendered into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.harness.paths import ROOT, peer, petcd_command
from tests.harness.procs import free_port, wait_ready

RESULTS = ROOT / "bench" / "results"
FRONTENDS = 2  # petcd-fe: petcd with this many gRPC front-end processes (--grpc-frontends)
SINGLE = ("null", "petcd", "petcd-grpcio", "petcd-fe", "etcd")
KV = (*SINGLE, "kine")
WATCH = ("petcd", "petcd-grpcio", "etcd", "kine")
LEASE = ("petcd", "petcd-grpcio", "etcd")
# the last commit whose gRPC server owned the client port itself (suite port's default baseline)
PORT_BASELINE = "190e108"


@dataclass
class Target:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    data: Path

    @property
    def endpoint(self) -> str:
        return self.url.split("://", 1)[1]

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


def _start_member(
    kind: str,
    workdir: Path,
    extra: list[str] | None = None,
    data: Path | None = None,
    source: Path | None = None,
) -> Target:
    """A fresh member of this kind (null, petcd, petcd-grpcio, petcd-fe, etcd), or (data given)
    one started again on its data dir; source: run petcd from that source tree instead."""
    port, peer_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    if data is None:
        data = workdir / f"{kind}.data"
        shutil.rmtree(data, ignore_errors=True)
    log = open(workdir / f"{kind}.log", "wb")  # noqa: SIM115
    if kind == "null":
        cmd = [sys.executable, "-m", "bench.null_server", "--listen", f"127.0.0.1:{port}"]
    elif kind == "kine":  # kine's default SQLite DSN, in the target's data dir
        data.mkdir(parents=True)
        dsn = f"sqlite://{data}/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
        cmd = [
            peer("kine"),
            f"--listen-address=127.0.0.1:{port}",
            f"--endpoint={dsn}",
            "--metrics-bind-address=0",
        ]
    else:
        exe = petcd_command() if kind.startswith("petcd") else [peer("etcd")]
        if source is not None:
            exe = [sys.executable, "-m", "server.etcdmain"]  # run from source (the cwd comes first)
        if kind == "petcd-fe":
            exe = [*exe, f"--grpc-frontends={FRONTENDS}"]
        elif kind == "petcd-grpcio":
            exe = [*exe, "--grpc-server=grpcio"]
        cmd = [
            *exe,
            f"--data-dir={data}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            *(extra or []),
        ]
    # a source tree's petcd reads no ETCD_* settings of this environment (make test-grpcio's)
    env = {k: v for k, v in os.environ.items() if source is None or not k.startswith("ETCD_")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=source or ROOT, env=env)
    log.close()
    wait_ready(url, 600, proc, workdir / f"{kind}.log")
    return Target(kind, url, proc, data)


@contextlib.contextmanager
def member(
    kind: str,
    workdir: Path,
    extra: list[str] | None = None,
    data: Path | None = None,
    source: Path | None = None,
) -> Iterator[Target]:
    t = _start_member(kind, workdir, extra, data, source)
    try:
        yield t
    finally:
        t.proc.terminate()
        try:
            t.proc.wait(15)
        except subprocess.TimeoutExpired:
            t.proc.kill()
            t.proc.wait()


def _run(cmd: list[str], timeout: float = 900) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    return p.stdout + p.stderr


_FLOAT = r"([0-9.]+(?:e[+-]?\d+)?)"


def parse_benchmark(out: str) -> dict[str, float]:
    """etcd's benchmark tool summary: requests/s, average and slowest latency, percentiles (s)."""
    res: dict[str, float] = {}
    for key, pat in {
        "rps": rf"Requests/sec:\s+{_FLOAT}",
        "avg_s": rf"Average:\s+{_FLOAT} secs",
        "slowest_s": rf"Slowest:\s+{_FLOAT} secs",
        "p50_s": rf"50% in {_FLOAT} secs",
        "p99_s": rf"99% in {_FLOAT} secs",
    }.items():
        m = re.search(pat, out)
        if m:
            res[key] = float(m.group(1))
    return res


def parse_check_perf(out: str) -> dict[str, Any]:
    """etcdctl check perf's verdict lines (v3.6 check.go: the "too long"/"too high" lines carry
    no FAIL: prefix, the final FAIL line does)."""
    res: dict[str, Any] = {"pass": "PASS" in out and "FAIL" not in out}
    for key, pat, conv in (
        ("writes_per_s", r"Throughput (?:is|too low:) (\d+) writes/s", int),
        ("slowest_s", r"Slowest request took (?:too long: )?([0-9.]+)s", float),
        ("stddev_s", r"Stddev (?:is|too high:) ([0-9.]+)s", float),
    ):
        m = re.search(pat, out)
        if m:
            res[key] = conv(m.group(1))
    res["lines"] = [
        ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL", "Slowest request", "Stddev too high"))
    ]
    return res


_SECTION = re.compile(r"([A-Z][A-Za-z ]*?) summary:")


def parse_sections(out: str) -> dict[str, dict[str, float]]:
    """The benchmark tool's named summaries, each parsed: watch-latency prints "Put summary:" and
    "Watch events summary:", watch prints "Watch creation summary:" and "Watch events received
    summary:" (keys: the names in lower case). Output without names parses under ""."""
    marks = list(_SECTION.finditer(out))
    if not marks:
        return {"": parse_benchmark(out)}
    ends = [m.start() for m in marks[1:]] + [len(out)]
    return {
        m.group(1).lower(): parse_benchmark(out[m.end() : end]) for m, end in zip(marks, ends, strict=True)
    }


def benchmark(t: Target, *args: str) -> dict[str, float]:
    return parse_benchmark(_run([peer("benchmark"), f"--endpoints={t.endpoint}", *args]))


def benchmark_sections(t: Target, *args: str) -> dict[str, dict[str, float]]:
    return parse_sections(_run([peer("benchmark"), f"--endpoints={t.endpoint}", *args]))


# -- suites ----------------------------------------------------------------------------------------


def suite_perf(workdir: Path, quick: bool) -> dict[str, Any]:
    loads = ["m"] if quick else ["s", "m", "l", "xl"]
    out: dict[str, Any] = {}
    for load in loads:
        for kind in SINGLE:
            with member(kind, workdir) as t:
                text = _run([peer("etcdctl"), f"--endpoints={t.url}", "check", "perf", f"--load={load}"])
                out[f"{load}/{kind}"] = parse_check_perf(text)
                print(f"check perf {load} {kind}: {out[f'{load}/{kind}']}", flush=True)
    return out


def suite_kv(workdir: Path, quick: bool) -> dict[str, Any]:
    total = "5000" if quick else "20000"
    out: dict[str, Any] = {}
    for kind in KV:
        with member(kind, workdir) as t:
            common = ["--conns=10", "--clients=100"]
            out[f"put/{kind}"] = benchmark(
                t, *common, "put", "--key-size=8", "--sequential-keys", f"--total={total}", "--val-size=256"
            )
            _run([peer("etcdctl"), f"--endpoints={t.url}", "put", "foo", "bar"])
            for mode in ("l", "s"):
                out[f"range-{mode}/{kind}"] = benchmark(
                    t, *common, "range", "foo", f"--consistency={mode}", f"--total={total}"
                )
            out[f"put-1client/{kind}"] = benchmark(
                t, "put", "--key-size=8", "--sequential-keys", "--total=1000", "--val-size=256"
            )
            print(kind, {k: v for k, v in out.items() if k.endswith(f"/{kind}")}, flush=True)
    return out


def _idle_watchers_rss(t: Target, n: int) -> dict[str, float]:
    """RSS before and after n idle watchers (100 per stream)."""
    from server.api.etcdserverpb import rpc_pb2 as pb
    from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

    before = t.rss_mb()
    streams = n // 100
    channel = grpc.insecure_channel(t.endpoint)
    stub = pb_grpc.WatchStub(channel)
    calls = []
    created = threading.Semaphore(0)

    def requests(s: int) -> Iterator[pb.WatchRequest]:
        for i in range(100):
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=f"/idle/{s}/{i}".encode()))
        while not stop.is_set():
            time.sleep(0.1)

    stop = threading.Event()

    def consume(s: int) -> None:
        call = stub.Watch(requests(s))
        calls.append(call)
        got = 0
        with contextlib.suppress(grpc.RpcError):
            for resp in call:
                if resp.created:
                    got += 1
                    if got == 100:
                        created.release()

    threads = [threading.Thread(target=consume, args=(s,), daemon=True) for s in range(streams)]
    for th in threads:
        th.start()
    for _ in range(streams):
        created.acquire(timeout=120)
    time.sleep(1.0)
    after = t.rss_mb()
    stop.set()
    for c in calls:
        c.cancel()
    channel.close()
    return {
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "per_watcher_kb": round((after - before) * 1024 / n, 2),
    }


# 1,000 watchers (10 streams of 100) of one key, 2,000 puts at 500/s: creation and fan-out
WATCH_FANOUT = (
    "--conns=10",
    "--clients=10",
    "watch",
    "--streams=10",
    "--watch-per-stream=100",
    "--put-total=2000",
    "--put-rate=500",
)


def suite_watch(workdir: Path, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in WATCH:
        with member(kind, workdir) as t:
            latency = benchmark_sections(
                t,
                "watch-latency",
                "--streams=10",
                "--watchers-per-stream=100",
                "--put-total=500" if quick else "--put-total=2000",
                "--put-rate=100",
            )
            out[f"latency/{kind}"] = latency.get("watch events", {})
            fanout = benchmark_sections(t, *WATCH_FANOUT)
            out[f"create/{kind}"] = fanout.get("watch creation", {})
            out[f"fanout/{kind}"] = fanout.get("watch events received", {})
            out[f"idle10k/{kind}"] = _idle_watchers_rss(t, 2000 if quick else 10000)
            print(kind, {k: v for k, v in out.items() if k.endswith(f"/{kind}")}, flush=True)
    return out


def suite_lease(workdir: Path, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in LEASE:
        with member(kind, workdir) as t:
            out[f"keepalive/{kind}"] = benchmark(
                t,
                "--conns=10",
                "--clients=100",
                "lease-keepalive",
                "--total=5000" if quick else "--total=20000",
            )
            print(kind, out[f"keepalive/{kind}"], flush=True)
    return out


def suite_cluster(workdir: Path, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("petcd", "etcd"):
        procs, urls = _start_cluster(kind, workdir)
        try:
            eps = ",".join(u.split("://")[1] for u in urls)
            out[f"put/{kind}"] = parse_benchmark(
                _run(
                    [
                        peer("benchmark"),
                        f"--endpoints={eps}",
                        "--target-leader",
                        "--conns=10",
                        "--clients=100",
                        "put",
                        "--key-size=8",
                        "--sequential-keys",
                        "--total=5000" if quick else "--total=20000",
                        "--val-size=256",
                    ]
                )
            )
            if not quick:
                out[f"perf-m/{kind}"] = parse_check_perf(
                    _run([peer("etcdctl"), f"--endpoints={','.join(urls)}", "check", "perf", "--load=m"])
                )
            out[f"failover/{kind}"] = _failover(procs, urls)
            print(kind, {k: v for k, v in out.items() if k.endswith(f"/{kind}")}, flush=True)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                with contextlib.suppress(Exception):
                    p.wait(15)
    return out


def _start_cluster(kind: str, workdir: Path) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    ports = [(free_port(), free_port()) for _ in range(3)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    for i, (c, p) in enumerate(ports):
        data = workdir / f"{kind}-m{i}"
        shutil.rmtree(data, ignore_errors=True)
        exe = petcd_command() if kind == "petcd" else [peer("etcd")]
        log = open(workdir / f"{kind}-m{i}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    *exe,
                    f"--name=m{i}",
                    f"--data-dir={data}",
                    f"--listen-client-urls=http://127.0.0.1:{c}",
                    f"--advertise-client-urls=http://127.0.0.1:{c}",
                    f"--listen-peer-urls=http://127.0.0.1:{p}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{p}",
                    f"--initial-cluster={initial}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        )
        log.close()
        urls.append(f"http://127.0.0.1:{c}")
    for i, (u, proc) in enumerate(zip(urls, procs, strict=True)):
        wait_ready(u, 60, proc, workdir / f"{kind}-m{i}.log")
    return procs, urls


def _failover(procs: list[subprocess.Popen[bytes]], urls: list[str]) -> dict[str, float]:
    """Seconds from kill -9 of the leader until a write succeeds on a survivor."""
    deadline = time.monotonic() + 30
    while True:  # after a heavy load an election may be under way: wait for an agreed leader
        out = subprocess.run(
            [peer("etcdctl"), f"--endpoints={','.join(urls)}", "endpoint", "status", "-wjson"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        status = json.loads(out or "[]")
        leaders = {s["Status"].get("leader", 0) for s in status}  # -wjson omits a zero leader
        if len(status) < len(urls):
            leaders.add(0)
        if len(leaders) == 1 and 0 not in leaders:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no agreed leader: {status}")
        time.sleep(0.5)
    leader = leaders.pop()
    idx = next(i for i, s in enumerate(status) if s["Status"]["header"]["member_id"] == leader)
    survivors = [u for i, u in enumerate(urls) if i != idx]
    procs[idx].kill()
    start = time.monotonic()
    while time.monotonic() - start < 30:
        r = subprocess.run(
            [
                peer("etcdctl"),
                f"--endpoints={','.join(survivors)}",
                "--command-timeout=1s",
                "put",
                "failover",
                "x",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            return {"seconds": round(time.monotonic() - start, 3)}
    return {"seconds": float("nan")}


def source_tree(ref: str, workdir: Path) -> Path:
    """The files of a git ref, extracted (no checkout, no worktree), its native extensions
    (the client port's relay, where the ref has it) built in place with this venv's setuptools."""
    out = workdir / f"src-{len(list(workdir.glob('src-*')))}"
    out.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    if (out / "server" / "embed" / "_relay.c").exists():
        subprocess.run(
            [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_ext", "--inplace"],
            cwd=out,
            capture_output=True,
            check=True,
        )
    return out


def suite_port(workdir: Path, quick: bool, baseline: str = PORT_BASELINE, rounds: int = 7) -> dict[str, Any]:
    """put with 1 client (one request at a time: requests/s is 1 / latency) and with 100 clients
    on petcd as it is and on petcd at the baseline ref, both running, in interleaved rounds (the
    order alternates): the machine's noise hits both alike. Medians of the rounds; ratio =
    median of the per-round ratios."""
    rounds = 2 if quick else rounds
    base_src = source_tree(baseline, workdir)
    with member("petcd-base", workdir, source=base_src) as base, member("petcd", workdir) as cur:
        runs = _rounds([base, cur], {"put-1client": _PUT_1, "put": _PUT_100}, rounds)
    out: dict[str, Any] = {"baseline": baseline, "rounds": rounds}
    for w in ("put-1client", "put"):
        out[w] = _compare(runs, w, "petcd-base", "petcd")
        print(w, out[w], flush=True)
    return out


_PUT_1 = ["put", "--key-size=8", "--sequential-keys", "--total=1000", "--val-size=256"]
_PUT_100 = ["--conns=10", "--clients=100", "put", "--key-size=8", "--sequential-keys", "--total=5000"]


def _rounds(
    targets: list[Target], workloads: dict[str, list[str]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Each workload on each target, round after round, the targets' order rotating."""
    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for w, args in workloads.items():
            for t in order:
                runs.setdefault(f"{w}/{t.name}", []).append(benchmark(t, *args))
        print(f"round {r + 1}/{rounds}", flush=True)
    return runs


def _compare(runs: dict[str, list[dict[str, float]]], w: str, base: str, other: str) -> dict[str, Any]:
    """Medians of requests/s, and the median of the per-round ratios other/base."""
    b, c = runs[f"{w}/{base}"], runs[f"{w}/{other}"]
    return {
        "base_rps": statistics.median(x["rps"] for x in b),
        "rps": statistics.median(x["rps"] for x in c),
        "ratio": statistics.median(y["rps"] / x["rps"] for x, y in zip(b, c, strict=True)),
        "per_round": [[x["rps"], y["rps"]] for x, y in zip(b, c, strict=True)],
    }


def suite_relay(workdir: Path, quick: bool, rounds: int = 7) -> dict[str, Any]:
    """put with 1 client and with 100 clients on the null server, directly and through each
    relay candidate of bench/relay.py (all running at once), in interleaved rounds."""
    rounds = 2 if quick else rounds
    backend = str(workdir / "null.sock")
    ports = {kind: free_port() for kind in ("direct", "native", "splice")}
    null = [sys.executable, "-m", "bench.null_server"]
    relay = [sys.executable, "-m", "bench.relay", "serve", f"--backend={backend}"]
    procs = {
        "direct": [*null, f"--listen=127.0.0.1:{ports['direct']}", f"--listen=unix:{backend}"],
        **{kind: [*relay, f"--kind={kind}", f"--port={ports[kind]}"] for kind in ("native", "splice")},
    }
    targets: list[Target] = []
    try:
        for kind, cmd in procs.items():
            log = workdir / f"relay-{kind}.log"
            with open(log, "wb") as logf:
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
            url = f"http://127.0.0.1:{ports[kind]}"
            targets.append(Target(kind, url, proc, workdir))
            wait_ready(url, 30, proc, log)
        runs = _rounds(targets, {"put-1client": _PUT_1, "put": _PUT_100}, rounds)
    finally:
        for t in targets:
            t.proc.terminate()
            t.proc.wait(10)
    out: dict[str, Any] = {"rounds": rounds}
    for w in ("put-1client", "put"):
        out[w] = {kind: _compare(runs, w, "direct", kind) for kind in ("native", "splice")}
        print(w, out[w], flush=True)
    return out


SUITES = {
    "perf": suite_perf,
    "kv": suite_kv,
    "watch": suite_watch,
    "lease": suite_lease,
    "cluster": suite_cluster,
    "port": suite_port,
    "relay": suite_relay,
}


# -- report ----------------------------------------------------------------------------------------


_HEAD = ["null gRPC", "petcd", "petcd, grpcio", f"petcd, {FRONTENDS} front-ends", "etcd"]
_KV_HEAD = [*_HEAD, "kine"]


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}"


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)

    def add(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        self.sections.append("\n".join(lines))


def render(results: dict[str, dict[str, Any]]) -> str:
    rep = Report()
    perf = results.get("perf", {})
    if perf:
        rows = []
        for load in ("s", "m", "l", "xl"):
            got = {k: perf.get(f"{load}/{k}") for k in SINGLE}
            if not any(got.values()):
                continue
            cell = {
                k: (f"{v.get('writes_per_s', '?')} ({'PASS' if v['pass'] else 'FAIL'})" if v else "-")
                for k, v in got.items()
            }
            wps = {k: (got[k] or {}).get("writes_per_s") for k in SINGLE}
            rows.append(
                [
                    load,
                    *(cell[k] for k in SINGLE),
                    _ratio(wps["petcd"], wps["etcd"]),
                    _ratio(wps["petcd-grpcio"], wps["etcd"]),
                    _ratio(wps["petcd-fe"], wps["etcd"]),
                    _ratio(wps["petcd"], wps["null"]),
                ]
            )
        rep.add(
            "etcdctl check perf (writes/s, verdict)",
            ["load", *_HEAD, "petcd/etcd", "petcd-grpcio/etcd", "petcd-fe/etcd", "petcd/null"],
            rows,
        )
    kv = results.get("kv", {})
    if kv:
        rows = []
        for w in ("put", "put-1client", "range-l", "range-s"):
            v = {k: kv.get(f"{w}/{k}", {}) for k in KV}
            rows.append(
                [
                    w,
                    *(
                        f"{v[k].get('rps', 0):.0f} / {v[k].get('avg_s', 0) * 1000:.1f} ms" if v[k] else "-"
                        for k in KV
                    ),
                    _ratio(v["petcd"].get("rps"), v["etcd"].get("rps")),
                    _ratio(v["petcd-grpcio"].get("rps"), v["etcd"].get("rps")),
                    _ratio(v["petcd-fe"].get("rps"), v["etcd"].get("rps")),
                    _ratio(v["petcd"].get("rps"), v["null"].get("rps")),
                    _ratio(v["petcd"].get("rps"), v["kine"].get("rps")),
                ]
            )
        rep.add(
            "benchmark put / range (requests/s / average latency)",
            [
                "workload",
                *_KV_HEAD,
                "petcd/etcd",
                "petcd-grpcio/etcd",
                "petcd-fe/etcd",
                "petcd/null",
                "petcd/kine",
            ],
            rows,
        )
    watch = results.get("watch", {})
    if watch:
        rows = []
        for w, label in (
            ("latency", "put-to-event latency, 1,000 watchers of one key, 100 puts/s"),
            ("create", "watch creation, 1,000 watchers on 10 streams"),
            ("fanout", "fan-out: events delivered, 1,000 watchers of one key, 500 puts/s"),
        ):
            v = {k: watch.get(f"{w}/{k}", {}) for k in WATCH}
            rows.append(
                [
                    label,
                    *(
                        f"{v[k].get('rps', 0):.0f} / {v[k].get('avg_s', 0) * 1000:.2f} ms"
                        + (
                            f" (p99 {v[k]['p99_s'] * 1000:.1f} ms)"
                            if w == "latency" and "p99_s" in v[k]
                            else ""
                        )
                        for k in WATCH
                    ),
                    _ratio(v["petcd"].get("rps"), v["etcd"].get("rps")),
                    _ratio(v["petcd-grpcio"].get("rps"), v["etcd"].get("rps")),
                    _ratio(v["petcd"].get("rps"), v["kine"].get("rps")),
                ]
            )
        idle = {k: watch.get(f"idle10k/{k}", {}) for k in WATCH}
        rows.append(
            [
                "idle watchers RSS",
                *(
                    f"{idle[k].get('rss_before_mb')} -> {idle[k].get('rss_after_mb')} MB ({idle[k].get('per_watcher_kb')} KB each)"
                    for k in WATCH
                ),
                "",
                "",
                "",
            ]
        )
        rep.add(
            "watch (per second / average latency)",
            ["workload", *WATCH, "petcd/etcd", "petcd-grpcio/etcd", "petcd/kine"],
            rows,
        )
    lease = results.get("lease", {})
    if lease:
        v = {k: lease.get(f"keepalive/{k}", {}) for k in LEASE}
        rep.add(
            "lease keep-alive",
            ["workload", *LEASE, "petcd/etcd", "petcd-grpcio/etcd"],
            [
                [
                    "keepalive",
                    *(f"{v[k].get('rps', 0):.0f}/s" for k in LEASE),
                    _ratio(v["petcd"].get("rps"), v["etcd"].get("rps")),
                    _ratio(v["petcd-grpcio"].get("rps"), v["etcd"].get("rps")),
                ]
            ],
        )
    cl = results.get("cluster", {})
    if cl:
        rows = []
        v = {k: cl.get(f"put/{k}", {}) for k in ("petcd", "etcd")}
        rows.append(
            [
                "put (leader, 100 clients)",
                *(
                    f"{v[k].get('rps', 0):.0f}/s / {v[k].get('avg_s', 0) * 1000:.1f} ms"
                    for k in ("petcd", "etcd")
                ),
                _ratio(v["petcd"].get("rps"), v["etcd"].get("rps")),
            ]
        )
        pm = {k: cl.get(f"perf-m/{k}") or {} for k in ("petcd", "etcd")}
        if all(pm.values()):
            rows.append(
                [
                    "check perf m",
                    *(
                        f"{pm[k].get('writes_per_s', '?')} ({'PASS' if pm[k]['pass'] else 'FAIL'})"
                        for k in ("petcd", "etcd")
                    ),
                    "",
                ]
            )
        fo = {k: cl.get(f"failover/{k}", {}) for k in ("petcd", "etcd")}
        rows.append(["leader failover", *(f"{fo[k].get('seconds')} s" for k in ("petcd", "etcd")), ""])
        rep.add("3-member cluster", ["workload", "petcd", "etcd", "petcd/etcd"], rows)
    port = results.get("port", {})
    if port:
        rows = [
            [w, f"{port[w]['base_rps']:.0f}", f"{port[w]['rps']:.0f}", f"{port[w]['ratio']:.3f}"]
            for w in ("put-1client", "put")
            if w in port
        ]
        rep.add(
            f"shared client port: cost (requests/s, medians of {port['rounds']} interleaved rounds)",
            ["workload", f"petcd at {port['baseline']}", "petcd", "petcd/baseline"],
            rows,
        )
    relay = results.get("relay", {})
    if relay:
        rows = []
        for w in ("put-1client", "put"):
            if w not in relay:
                continue
            r = relay[w]
            rows.append(
                [
                    w,
                    f"{r['native']['base_rps']:.0f}",
                    f"{r['native']['rps']:.0f} ({r['native']['ratio']:.3f})",
                    f"{r['splice']['rps']:.0f} ({r['splice']['ratio']:.3f})",
                ]
            )
        rep.add(
            f"shared port candidates on the null gRPC server (requests/s (ratio to direct), medians of {relay['rounds']} rounds)",
            ["workload", "direct", "native relay", "Python os.splice relay"],
            rows,
        )
    return "\n\n".join(rep.sections)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suites", default=",".join(SUITES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--baseline", default=PORT_BASELINE, help="suite port: the git ref to compare with")
    p.add_argument("--rounds", type=int, default=7, help="suites port, relay: interleaved rounds")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.suites.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as d:
            started = time.time()
            if name == "port":
                data = suite_port(Path(d), args.quick, args.baseline, args.rounds)
            elif name == "relay":
                data = suite_relay(Path(d), args.quick, args.rounds)
            else:
                data = SUITES[name](Path(d), args.quick)
            data["_meta"] = {
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "seconds": round(time.time() - started),
                "quick": args.quick,
            }
            (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    results = {f.stem: json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))}
    print(render(results))


if __name__ == "__main__":
    main()
