"""Scale benchmark: petcd and a real etcd v3.6 holding 1,000,000 keys, one after the other on
this machine. Not a test: nothing here asserts a time.

    python -m bench.scale_bench                   # 1,000,000 keys of 256 B in 1,000 prefixes
    python -m bench.scale_bench --keys 100000     # smaller, for a smoke check

Each target gets the key space (txns of 1,000 puts, --max-txn-ops=1000 on both), then:
- RSS and db size (Maintenance.Status dbSize) with the keys loaded;
- restart: seconds from starting the member again on its data dir until it answers;
- range: etcd's benchmark tool, one client, serializable ranges over 10,000 keys (10 prefixes);
- compaction: every key written once more (1,000,000 old revisions), then a physical compaction
  at the last revision; its seconds, and the latency of puts from one client meanwhile (p99, max);
- defrag: `etcdctl defrag` seconds, with the same puts meanwhile.
Results: bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench.run import RESULTS, Target, _run, member, parse_benchmark
from bench.snapshot_bench import first_start
from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.harness.paths import peer

VALUE = 256
TXN_OPS = 1000
PREFIXES = 1000
RANGE_PREFIXES = 10  # a range over 10 prefixes: 10,000 keys at 1,000,000
FLAGS = [f"--max-txn-ops={TXN_OPS}", "--quota-backend-bytes=8589934592"]


def _key(i: int, keys: int) -> bytes:
    per = max(keys // PREFIXES, 1)
    return b"/registry/p%04d/k%08d" % (i // per, i)


def load(t: Target, keys: int, fill: bytes) -> float:
    started = time.monotonic()
    with grpc.insecure_channel(t.endpoint) as ch:
        kv = pb_grpc.KVStub(ch)
        value = fill * VALUE
        for start in range(0, keys, TXN_OPS):
            ops = [
                pb.RequestOp(request_put=pb.PutRequest(key=_key(i, keys), value=value))
                for i in range(start, min(start + TXN_OPS, keys))
            ]
            kv.Txn(pb.TxnRequest(success=ops), timeout=120)
    return time.monotonic() - started


def status(t: Target) -> pb.StatusResponse:
    with grpc.insecure_channel(t.endpoint) as ch:
        resp: pb.StatusResponse = pb_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=30)
        return resp


class Puts:
    """Puts from one client, one at a time, until stopped; their latencies."""

    def __init__(self, t: Target) -> None:
        self._t = t
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Puts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with grpc.insecure_channel(self._t.endpoint) as ch:
            kv = pb_grpc.KVStub(ch)
            i = 0
            while not self._stop.is_set():
                started = time.monotonic()
                kv.Put(pb.PutRequest(key=b"/bench/meanwhile/%d" % (i % 1000), value=b"x" * VALUE), timeout=60)
                self.latencies.append(time.monotonic() - started)
                i += 1

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies) or [0.0]
        return {
            "puts": len(self.latencies),
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1),
        }


def run_target(kind: str, workdir: Path, keys: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with member(kind, workdir, FLAGS) as t:
        out["load_s"] = round(load(t, keys, b"a"), 1)
        out["rss_mb"] = round(t.rss_mb())
        out["db_mb"] = round(status(t).dbSize / 1e6)
        data = t.data
        print(f"{kind}: loaded {keys} keys in {out['load_s']} s, {out}", flush=True)
    out["restart_s"] = round(first_start(kind, data, workdir), 1)
    with member(kind, workdir, FLAGS, data=data) as t:
        out["rss_after_restart_mb"] = round(t.rss_mb())
        per = max(keys // PREFIXES, 1)
        end = b"/registry/p%04d/" % RANGE_PREFIXES
        text = _run(
            [
                peer("benchmark"),
                f"--endpoints={t.endpoint}",
                "--conns=1",
                "--clients=1",
                "range",
                "/registry/p0000/",
                end.decode(),
                "--consistency=s",
                "--total=50",
            ]
        )
        out["range"] = {"keys": per * RANGE_PREFIXES, **parse_benchmark(text)}
        print(f"{kind}: range {out['range']}", flush=True)
        load(t, keys, b"b")  # every key once more: `keys` old revisions to compact
        rev = status(t).header.revision
        with Puts(t) as puts, grpc.insecure_channel(t.endpoint) as ch:
            started = time.monotonic()
            pb_grpc.KVStub(ch).Compact(pb.CompactionRequest(revision=rev, physical=True), timeout=3600)
            out["compact_s"] = round(time.monotonic() - started, 1)
        out["compact_puts"] = puts.summary()
        print(f"{kind}: compaction {out['compact_s']} s, puts meanwhile {out['compact_puts']}", flush=True)
        with Puts(t) as puts:
            started = time.monotonic()
            subprocess.run(
                [peer("etcdctl"), f"--endpoints={t.url}", "--command-timeout=3600s", "defrag"],
                check=True,
                capture_output=True,
            )
            out["defrag_s"] = round(time.monotonic() - started, 1)
        out["defrag_puts"] = puts.summary()
        out["db_after_defrag_mb"] = round(status(t).dbSize / 1e6)
        print(f"{kind}: defrag {out['defrag_s']} s, puts meanwhile {out['defrag_puts']}", flush=True)
    return out


def render(r: dict[str, Any]) -> str:
    p, e = r["petcd"], r["etcd"]

    def row(label: str, a: Any, b: Any, ratio: bool = True) -> str:
        q = (
            f"{a / b:.2f}"
            if ratio and isinstance(a, int | float) and isinstance(b, int | float) and b
            else ""
        )
        return f"| {label} | {a} | {b} | {q} |"

    def lat(d: dict[str, float]) -> str:
        return f"p99 {d['p99_ms']} ms, max {d['max_ms']} ms ({d['puts']} puts)"

    return "\n".join(
        [
            f"{r['keys']:,} keys x {r['value_bytes']} B in {PREFIXES:,} prefixes",
            "",
            "| metric | petcd | etcd | petcd/etcd |",
            "|---|---|---|---|",
            row("load (txns of 1,000 puts), s", p["load_s"], e["load_s"]),
            row("RSS with the keys, MB", p["rss_mb"], e["rss_mb"]),
            row("RSS after a restart, MB", p["rss_after_restart_mb"], e["rss_after_restart_mb"]),
            row("db size, MB", p["db_mb"], e["db_mb"]),
            row("restart until serving, s", p["restart_s"], e["restart_s"]),
            row(
                f"serializable range over {p['range']['keys']:,} keys, avg ms",
                round(p["range"].get("avg_s", 0) * 1000, 1),
                round(e["range"].get("avg_s", 0) * 1000, 1),
            ),
            row(f"compaction of {r['keys']:,} old revisions, s", p["compact_s"], e["compact_s"]),
            row("  puts meanwhile", lat(p["compact_puts"]), lat(e["compact_puts"]), ratio=False),
            row("defrag, s", p["defrag_s"], e["defrag_s"]),
            row("  puts meanwhile", lat(p["defrag_puts"]), lat(e["defrag_puts"]), ratio=False),
            row("db size after defrag, MB", p["db_after_defrag_mb"], e["db_after_defrag_mb"]),
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        started = time.time()
        data: dict[str, Any] = {"keys": args.keys, "value_bytes": VALUE}
        for kind in ("petcd", "etcd"):
            data[kind] = run_target(kind, Path(d), args.keys)
        data["_meta"] = {"when": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - started)}
    (RESULTS / "scale.json").write_text(json.dumps(data, indent=2))
    print(render(data))


if __name__ == "__main__":
    main()
