"""Before/after: petcd at several git revisions and a real etcd v3.6 in one run, rounds
alternating their order, medians per target, and each target's CPU time per request (user +
system of the server process, which stays comparable when the machine is shared and
requests/s swing). Not a test: nothing here asserts a time.

    python -m bench.ab --rounds 3 main HEAD                      # put, put-1client, range-s/l
    python -m bench.ab --workloads watch-latency,fanout,create,keepalive main HEAD
    python -m bench.ab main HEAD HEAD:--grpc-server=grpcio       # REV:FLAGS adds petcd flags

Each REV is exported with `git archive` and run with this checkout's venv (bench.run.source_tree). Workloads are the
bench.run suites' (etcd's benchmark tool); per round, each target starts on a fresh data dir.
Results: bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import RESULTS, WATCH_FANOUT, member, parse_benchmark, parse_sections, source_tree
from tests.harness.paths import peer

KV = ("put", "put-1client", "range-s", "range-l")
# requests per run, and what one request is for the CPU figure
_COMMON = ("--conns=10", "--clients=100")


def _workload(name: str, endpoint: str, total: int) -> tuple[dict[str, float], int]:
    def bench(*args: str) -> str:
        p = subprocess.run(
            [peer("benchmark"), f"--endpoints={endpoint}", *args], capture_output=True, text=True, timeout=900
        )
        return p.stdout + p.stderr

    put = ("put", "--key-size=8", "--sequential-keys", "--val-size=256")
    if name == "put":
        return parse_benchmark(bench(*_COMMON, *put, f"--total={total}")), total
    if name == "put-1client":
        return parse_benchmark(bench(*put, "--total=1000")), 1000
    if name in ("range-s", "range-l"):
        subprocess.run([peer("etcdctl"), f"--endpoints={endpoint}", "put", "foo", "bar"], capture_output=True)
        return parse_benchmark(
            bench(*_COMMON, "range", "foo", f"--consistency={name[-1]}", f"--total={total}")
        ), total
    if name == "keepalive":
        return parse_benchmark(bench(*_COMMON, "lease-keepalive", f"--total={total}")), total
    if name == "watch-latency":
        out = bench(
            "watch-latency", "--streams=10", "--watchers-per-stream=100", "--put-total=1000", "--put-rate=100"
        )
        return parse_sections(out).get("watch events", {}), 1000 * 1000
    if name in ("fanout", "create"):
        out = bench(*WATCH_FANOUT)
        section = "watch events received" if name == "fanout" else "watch creation"
        return parse_sections(out).get(section, {}), 2000 * 1000 if name == "fanout" else 1000
    raise ValueError(f"unknown workload {name!r}")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_target(
    src: Path | None, flags: list[str], workloads: list[str], total: int, workdir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with member("etcd" if src is None else "petcd", workdir, extra=flags, source=src) as t:
        for w in workloads:
            before = _cpu_seconds(t.proc.pid)
            res, n = _workload(w, t.endpoint, total)
            res["cpu_us"] = (_cpu_seconds(t.proc.pid) - before) / n * 1e6
            out[w] = res
    return out


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revs", nargs="+", help="git revisions of petcd, each optionally REV:FLAGS")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workloads", default=",".join(KV))
    p.add_argument("--total", type=int, default=20000)
    args = p.parse_args()
    workloads = args.workloads.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as d:
        workdir = Path(d)
        targets: list[tuple[str, Path | None, list[str]]] = []
        for spec in args.revs:
            rev, _, flags = spec.partition(":")
            targets.append((spec, source_tree(rev, workdir), flags.split()))
        targets.append(("etcd", None, []))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in targets}
        load = [_load()]
        for i in range(args.rounds):
            for name, tree, flags in targets if i % 2 == 0 else targets[::-1]:
                r = run_target(tree, flags, workloads, args.total, workdir)
                runs[name].append(r)
                print(
                    i,
                    name,
                    {w: (round(v.get("rps", 0)), round(v["cpu_us"])) for w, v in r.items()},
                    flush=True,
                )
        load.append(_load())
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for w in workloads:
        summary[w] = {}
        for name in runs:
            rs = [r[w] for r in runs[name]]
            summary[w][name] = {
                k: statistics.median(r.get(k, 0.0) for r in rs) for k in ("rps", "avg_s", "p99_s", "cpu_us")
            }
            # the ratio to etcd of each round, then their median (rounds differ in load)
            summary[w][name]["rps/etcd"] = statistics.median(
                r[w].get("rps", 0.0) / e[w]["rps"] if e[w].get("rps") else 0.0
                for r, e in zip(runs[name], runs["etcd"], strict=True)
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "load_before_after": load, "rounds": args.rounds}
    (RESULTS / "ab.json").write_text(json.dumps({"_meta": meta, "runs": runs, "summary": summary}, indent=2))
    print(f"load average before/after: {load}")
    print("| workload | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for w in workloads:
        cells = [
            f"{s['rps']:.0f}/s, {s['cpu_us']:.0f} µs CPU, {s['rps/etcd']:.2f}x etcd"
            for s in summary[w].values()
        ]
        print(f"| {w} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
