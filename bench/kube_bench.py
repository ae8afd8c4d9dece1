"""kube-apiserver on petcd vs on a real etcd v3.6 and on kine (SQLite, k3s's etcd shim): the same
workload through the real apiserver, same machine, same run. Not a test: nothing here asserts a
time.

    python -m bench.kube_bench                 # about two minutes
    python -m bench.kube_bench --objects 300 --seconds 3     # quicker

Measures, for each datastore (one member, a fresh kube-apiserver each):
    create/s        POST ConfigMaps with --concurrency clients
    update/s        PUT each ConfigMap once with its resourceVersion (optimistic concurrency)
    list/s cache    consistent LIST of the ConfigMaps (served by the watch cache after a
                    progress-notify round trip to the datastore)
    list/s etcd     LIST of as many Events (no watch cache: one Range on the datastore)
    page/s etcd     first page (limit=100) of the same Events
    watch p50/p99   ms from the start of a POST to the watch event's arrival, ConfigMaps
                    (watch cache) and Events (a datastore watch)
and prints a table with petcd/etcd and petcd/kine ratios. Results also go to bench/results/kube.json.
kine is built by `make bench-peers` and started as bench.run starts it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from bench.run import Target, member
from petcd_harness.apiserver import KubeAPIServer, KubeClient
from petcd_harness.datastore import Datastore
from tests.harness.paths import ROOT

RESULTS = ROOT / "bench" / "results"


def _cm(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"payload": "x" * 512}}


def _ev(name: str, ns: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "involvedObject": {"kind": "Pod", "name": "bench", "namespace": ns},
        "reason": "Bench",
        "message": "y" * 256,
        "type": "Normal",
    }


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _for_seconds(fn: Callable[[], object], seconds: float, clients: int) -> float:
    """Calls of fn per second with `clients` concurrent callers over `seconds`."""
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            fn()
            counts[i] += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(loop, range(clients)))
    return _rate(sum(counts), time.monotonic() - t0)


def _watch_latency(c: KubeClient, path: str, make: Callable[[str], dict[str, Any]], n: int) -> list[float]:
    """ms from the start of each POST to the arrival of its ADDED event."""
    start_rv = c.get(path)["metadata"]["resourceVersion"]
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    ready = threading.Event()

    def watch() -> None:
        with c.watch(path, timeout=60, resourceVersion=start_rv) as events:
            ready.set()
            for ev in events:
                name = ev["object"]["metadata"].get("name", "")
                if ev["type"] == "ADDED" and name.startswith("w-"):
                    got[name] = time.monotonic()
                    if len(got) == n:
                        return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(10)
    for i in range(n):
        name = f"w-{i:05d}"
        sent[name] = time.monotonic()
        c.create(path, make(name))
        time.sleep(0.01)
    t.join(30)
    return sorted((got[k] - sent[k]) * 1000 for k in sent if k in got)


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


class Kine:
    """kine as the apiserver's datastore (what KubeAPIServer reads of a Datastore: endpoints, pki)."""

    pki = None

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self._member = member("kine", workdir)
        self.endpoints = ""

    def __enter__(self) -> Datastore:
        t: Target = self._member.__enter__()
        self.endpoints = t.url
        return cast(Datastore, self)

    def __exit__(self, *exc: object) -> None:
        self._member.__exit__(None, None, None)


def run_one(kind: str, tmp: Path, objects: int, concurrency: int, seconds: float) -> dict[str, float]:
    store = Kine(tmp / kind) if kind == "kine" else Datastore(kind, 1, tmp / kind)
    with (
        store as ds,
        KubeAPIServer(ds, tmp / f"{kind}-kube", compaction_interval="5m") as api,
    ):
        c = api.client
        c.create("/api/v1/namespaces", {"metadata": {"name": "bench"}})
        cms = "/api/v1/namespaces/bench/configmaps"
        evs = "/api/v1/namespaces/bench/events"
        out: dict[str, float] = {}

        names = [f"cm-{i:05d}" for i in range(objects)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(concurrency) as ex:
            created = list(ex.map(lambda n: c.create(cms, _cm(n)), names))
        out["create/s"] = _rate(objects, time.monotonic() - t0)

        def update(obj: dict[str, Any]) -> None:
            obj["data"]["payload"] = "z" * 512
            c.ok("PUT", f"{cms}/{obj['metadata']['name']}", obj)

        t0 = time.monotonic()
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(update, created))
        out["update/s"] = _rate(objects, time.monotonic() - t0)

        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(lambda i: c.create(evs, _ev(f"ev-{i:05d}", "bench")), range(objects)))
        out["list/s cache"] = _for_seconds(lambda: c.get(cms), seconds, 4)
        out["list/s etcd"] = _for_seconds(lambda: c.get(evs), seconds, 4)
        out["page/s etcd"] = _for_seconds(lambda: c.get(evs, limit=100), seconds, 4)

        lat = _watch_latency(c, cms, _cm, 200)
        out["watch p50 ms cache"] = statistics.median(lat)
        out["watch p99 ms cache"] = _pct(lat, 99)
        lat = _watch_latency(c, evs, lambda n: _ev(n, "bench"), 200)
        out["watch p50 ms etcd"] = statistics.median(lat)
        out["watch p99 ms etcd"] = _pct(lat, 99)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kube_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each list measurement")
    ap.add_argument("--targets", default="petcd,etcd,kine", help="datastores, petcd and etcd first")
    args = ap.parse_args()
    kinds = args.targets.split(",")

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kube-bench-") as d:
        for kind in kinds:
            print(f"running against {kind} ...", flush=True)
            results[kind] = run_one(kind, Path(d), args.objects, args.concurrency, args.seconds)

    print()
    print(f"kube-apiserver on petcd vs etcd: {args.objects} objects, {args.concurrency} clients")
    others = [k for k in kinds if k != "petcd"]
    print(
        f"{'metric':<22}"
        + "".join(f"{k:>12}" for k in kinds)
        + "".join(f"{'petcd/' + k:>13}" for k in others)
    )
    for metric in results["petcd"]:
        p = results["petcd"][metric]
        row = "".join(f"{results[k][metric]:>12.1f}" for k in kinds)
        row += "".join(
            f"{p / results[k][metric] if results[k][metric] else float('nan'):>12.2f}x" for k in others
        )
        print(f"{metric:<22}{row}")
    print("(rates: higher is better; latencies: lower is better)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kube.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
