"""The whole control plane on petcd vs on a real etcd: what a user of `make cluster` waits for.
Not a test: nothing here asserts a time.

    python -m bench.cluster_bench               # 3 runs per datastore, about 15 minutes
    python -m bench.cluster_bench --runs 1 --replicas 300 --namespace-pods 100   # quicker

Each run starts `petcd-harness up` (3 kwok nodes) on a fresh directory, for petcd and for etcd in
turn, and measures:
    ready s          from starting the launcher to its kubeconfig (every component healthy,
                     nodes Ready, leader Leases held, the default ServiceAccount)
    deployment s     a Deployment of --replicas (1,000) pods, from create to every pod Running
                     (the Deployment's availableReplicas, then one list of the pods to check)
    namespace s      a namespace holding --namespace-pods (300) Running pods, from the delete
                     to the namespace gone (404)
Medians of the runs, the ranges, and petcd/etcd ratios are printed and written to
bench/results/cluster.json (cluster-qps.json with --qps). By default the components keep their client rate limits
(kube-controller-manager: 20 requests/s, burst 30), as kind's do, and those bound the pod
figures; --qps N lifts them (--kube-api-qps and --kube-api-burst of the controller-manager and
the scheduler), so that the apiserver and the datastore set the pace.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests.harness.paths import ROOT

RESULTS = ROOT / "bench" / "results"
LAUNCHER = str(Path(sys.executable).parent / "petcd-harness")
METRICS = ("ready s", "deployment s", "namespace s")


def wait(what: str, fn: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(interval)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
            },
        },
    }


def running_pods(core: Any, ns: str) -> int:
    pods = core.list_namespaced_pod(ns, _preload_content=False)
    items = json.loads(pods.data)["items"]
    return sum(1 for p in items if p.get("status", {}).get("phase") == "Running")


def pods_running(api: Any, ns: str, name: str, replicas: int, timeout: float) -> float:
    """Seconds from creating the Deployment to every pod Running."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    t0 = time.monotonic()
    body: Any = deployment(name, replicas)  # the client takes plain dicts too
    apps.create_namespaced_deployment(ns, body)

    def available() -> bool:
        status = apps.read_namespaced_deployment_status(name, ns).status
        return status is not None and (status.available_replicas or 0) == replicas

    wait(f"{replicas} pods available", available, timeout)
    seconds = time.monotonic() - t0
    running = running_pods(core, ns)
    if running != replicas:
        raise RuntimeError(f"{running} pods Running, not {replicas}")
    return seconds


def one_run(kind: str, base: Path, replicas: int, ns_pods: int, timeout: float, qps: int) -> dict[str, float]:
    d = base / f"{kind}-{time.monotonic_ns()}"
    out = open(base / f"{d.name}.log", "wb")  # noqa: SIM115 - closed below
    limits = [f"--kube-api-qps={qps}", f"--kube-api-burst={qps}"] if qps else []
    flags = [f"--{component}-flag={f}" for component in ("controller-manager", "scheduler") for f in limits]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [LAUNCHER, "up", "--dir", str(d), "--datastore", kind, *flags], stdout=out, stderr=subprocess.STDOUT
    )
    try:
        kubeconfig = d / "kubeconfig"
        wait("the kubeconfig", lambda: kubeconfig.exists() or proc.poll() is not None, 300, 0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the launcher exited: {(base / f'{d.name}.log').read_text()[-2000:]}")
        result = {"ready s": time.monotonic() - t0}
        api = config.new_client_from_config(config_file=str(kubeconfig))
        core = client.CoreV1Api(api)
        for ns in ("bench", "doomed"):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        result["deployment s"] = pods_running(api, "bench", "big", replicas, timeout)
        pods_running(api, "doomed", "some", ns_pods, timeout)
        t0 = time.monotonic()
        core.delete_namespace("doomed")

        def gone() -> bool:
            try:
                core.read_namespace("doomed")
            except client.ApiException as e:
                return e.status == 404
            return False

        wait("the namespace gone", gone, timeout)
        result["namespace s"] = time.monotonic() - t0
        api.close()
        return result
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        out.close()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--namespace-pods", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=900.0, help="per measurement")
    ap.add_argument("--qps", type=int, default=0, help="lift the components' client rate limits to this")
    args = ap.parse_args()

    results: dict[str, list[dict[str, float]]] = {"petcd": [], "etcd": []}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        for run in range(args.runs):
            for kind in results:  # interleaved, so that a noisy minute hits both
                print(f"run {run + 1}/{args.runs}: {kind} ...", flush=True)
                r = one_run(kind, Path(tmp), args.replicas, args.namespace_pods, args.timeout, args.qps)
                print("  " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
                results[kind].append(r)

    def med(kind: str, metric: str) -> float:
        return statistics.median(r[metric] for r in results[kind])

    def span(kind: str, metric: str) -> str:
        xs = [r[metric] for r in results[kind]]
        return f"{min(xs):.1f}-{max(xs):.1f}"

    print()
    limits = f"client rate limits {args.qps}/s" if args.qps else "default client rate limits"
    print(f"control plane on petcd vs etcd ({limits}): {args.runs} runs, medians (ranges); lower is better")
    print(f"{'metric':<16}{'petcd':>20}{'etcd':>20}{'petcd/etcd':>12}")
    summary = {}
    for m in METRICS:
        p, e = med("petcd", m), med("etcd", m)
        summary[m] = {"petcd": p, "etcd": e, "ratio": p / e}
        cells = [f"{p:.1f} ({span('petcd', m)})", f"{e:.1f} ({span('etcd', m)})"]
        print(f"{m:<16}{cells[0]:>20}{cells[1]:>20}{p / e:>11.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cluster{'-qps' if args.qps else ''}.json").write_text(
        json.dumps({"args": vars(args), "runs": results, "medians": summary}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
