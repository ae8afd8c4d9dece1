"""Snapshot benchmark: `etcdctl snapshot save` against petcd and a real etcd v3.6 holding the same
key space, then `petcd snapshot restore` and `etcdutl snapshot restore` of the files, in one run
on this machine. Not a test: nothing here asserts a time.

    python -m bench.snapshot_bench                 # 1,000,000 keys of 256 bytes, 3 runs of each step
    python -m bench.snapshot_bench --keys 100000   # smaller, for a smoke check

Each target gets the key space once (txns of 1,000 puts, --max-txn-ops=1000 on both), then:
- save: wall time of `etcdctl snapshot save` and the server's peak RSS while it runs (the
  kernel's high-water mark, reset just before: /proc/PID/clear_refs), and the file's size;
- restore: wall time and peak RSS (the process's ru_maxrss) of etcdutl and petcd restoring the
  etcd snapshot, and petcd restoring its own;
- first start: seconds from starting the restored member until it answers (petcd rebuilds its
  index from the key bucket, as etcd does).
Every figure is the median of the runs. Results: bench/results/snapshot.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.run import RESULTS, Target, member
from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.harness.paths import peer, petcd_command
from tests.harness.procs import free_port, wait_ready

VALUE = 256
TXN_OPS = 1000
FLAGS = [f"--max-txn-ops={TXN_OPS}", "--quota-backend-bytes=8589934592"]


def load(t: Target, keys: int) -> float:
    started = time.monotonic()
    with grpc.insecure_channel(t.endpoint) as ch:
        kv = pb_grpc.KVStub(ch)
        value = b"v" * VALUE
        for start in range(0, keys, TXN_OPS):
            ops = [
                pb.RequestOp(request_put=pb.PutRequest(key=b"/registry/bench/%010d" % i, value=value))
                for i in range(start, min(start + TXN_OPS, keys))
            ]
            kv.Txn(pb.TxnRequest(success=ops), timeout=120)
    return time.monotonic() - started


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a command run to completion. The peak is the process's
    own high-water mark (VmHWM), read every 10 ms while it runs: wait4's ru_maxrss would include
    this Python process's RSS, which a forked child keeps as its high-water mark across exec."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while p.poll() is None:
            with contextlib.suppress(OSError):  # it may exit between poll() and the read
                peak = max(peak, _status_kb(p.pid, "VmHWM"))
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[0]} failed: {err.read().decode(errors='replace')}")
    return elapsed, peak / 1024


def save(t: Target, path: Path) -> dict[str, float]:
    """Seconds of `etcdctl snapshot save`, the server's peak RSS while it ran, the file's size."""
    rss_before = _status_kb(t.proc.pid, "VmRSS") / 1024
    Path(f"/proc/{t.proc.pid}/clear_refs").write_text("5")  # reset the peak to the current RSS
    path.unlink(missing_ok=True)
    seconds, _ = timed(
        [peer("etcdctl"), f"--endpoints={t.url}", "--command-timeout=600s", "snapshot", "save", str(path)]
    )
    return {
        "seconds": seconds,
        "server_rss_before_mb": rss_before,
        "server_peak_rss_mb": _status_kb(t.proc.pid, "VmHWM") / 1024,
        "file_mb": path.stat().st_size / 1e6,
    }


def restore(tool: str, snap: Path, data: Path) -> dict[str, float]:
    shutil.rmtree(data, ignore_errors=True)
    exe = [peer("etcdutl")] if tool == "etcdutl" else petcd_command()
    seconds, rss = timed([*exe, "snapshot", "restore", str(snap), f"--data-dir={data}"])
    return {"seconds": seconds, "peak_rss_mb": rss}


def first_start(kind: str, data: Path, workdir: Path) -> float:
    """Seconds until a member restored into data (as the default member) answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = petcd_command() if kind == "petcd" else [peer("etcd")]
    log_path = workdir / f"start-{kind}.log"
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                *exe,
                f"--data-dir={data}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
                *FLAGS,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(url, 600, proc, log_path)
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(30)


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def run(workdir: Path, keys: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": keys, "value_bytes": VALUE, "runs": runs}
    files: dict[str, Path] = {}
    for kind in ("petcd", "etcd"):
        with member(kind, workdir, FLAGS) as t:
            out[f"load/{kind}"] = round(load(t, keys), 1)
            print(f"{kind}: loaded {keys} keys in {out[f'load/{kind}']} s", flush=True)
            files[kind] = workdir / f"{kind}.snap"
            out[f"save/{kind}"] = median([save(t, files[kind]) for _ in range(runs)])
            print(f"{kind}: save {out[f'save/{kind}']}", flush=True)
    for label, tool, snap in (
        ("etcdutl<-etcd", "etcdutl", files["etcd"]),
        ("petcd<-etcd", "petcd", files["etcd"]),
        ("petcd<-petcd", "petcd", files["petcd"]),
    ):
        data = workdir / f"restored-{tool}"
        out[f"restore/{label}"] = median([restore(tool, snap, data) for _ in range(runs)])
        kind = "etcd" if tool == "etcdutl" else "petcd"
        out[f"start/{label}"] = round(first_start(kind, data, workdir), 1)
        print(
            f"restore {label}: {out[f'restore/{label}']}, first start {out[f'start/{label}']} s", flush=True
        )
    return out


def render(r: dict[str, Any]) -> str:
    s = {k: r[f"save/{k}"] for k in ("petcd", "etcd")}
    lines = [
        f"{r['keys']:,} keys x {r['value_bytes']} B, median of {r['runs']} runs",
        "",
        "| step | petcd | etcd | petcd/etcd |",
        "|---|---|---|---|",
        f"| load (txns of {TXN_OPS} puts) | {r['load/petcd']} s | {r['load/etcd']} s | "
        f"{r['load/petcd'] / r['load/etcd']:.2f} |",
        f"| snapshot save | {s['petcd']['seconds']} s | {s['etcd']['seconds']} s | "
        f"{s['petcd']['seconds'] / s['etcd']['seconds']:.2f} |",
        f"| server RSS during save (before -> peak) | {s['petcd']['server_rss_before_mb']:.0f} -> "
        f"{s['petcd']['server_peak_rss_mb']:.0f} MB | {s['etcd']['server_rss_before_mb']:.0f} -> "
        f"{s['etcd']['server_peak_rss_mb']:.0f} MB | |",
        f"| snapshot file | {s['petcd']['file_mb']:.0f} MB | {s['etcd']['file_mb']:.0f} MB | |",
    ]
    e, pe, pp = (r[f"restore/{k}"] for k in ("etcdutl<-etcd", "petcd<-etcd", "petcd<-petcd"))
    lines += [
        f"| restore of etcd's file (petcd / etcdutl) | {pe['seconds']} s, {pe['peak_rss_mb']:.0f} MB peak | "
        f"{e['seconds']} s, {e['peak_rss_mb']:.0f} MB peak | {pe['seconds'] / e['seconds']:.2f} |",
        f"| restore of petcd's own file | {pp['seconds']} s, {pp['peak_rss_mb']:.0f} MB peak | | |",
        f"| first start on the restored dir | {r['start/petcd<-etcd']} s | {r['start/etcdutl<-etcd']} s | "
        f"{r['start/petcd<-etcd'] / r['start/etcdutl<-etcd']:.2f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as d:
        started = time.time()
        data = run(Path(d), args.keys, args.runs)
        data["_meta"] = {"when": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - started)}
    (RESULTS / "snapshot.json").write_text(json.dumps(data, indent=2))
    print(render(data))


if __name__ == "__main__":
    main()
