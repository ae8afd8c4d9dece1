"""petcd-harness: a whole Kubernetes control plane on petcd, from the command line.

    petcd-harness up [--datastore petcd|etcd] [--members 1|3] [--nodes N] [--tls] [-- APISERVER FLAGS]
    petcd-harness down
    petcd-harness faults conflict|error|latency|watch-cut|partition|leader|list|clear ...

`up` starts petcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with fake
nodes on loopback, waits until all are ready, writes DIR/kubeconfig (default .cluster/kubeconfig)
and stays in the foreground; Ctrl-C or SIGTERM stops everything it started. A launcher killed
with -9 is cleaned up by the next `up`. `down` stops the launcher running from DIR. `faults`
sets, lists and clears faults on the running cluster's petcd (petcd_harness.faults).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from petcd_harness.controlplane import ClusterConfig, KubeCluster
from petcd_harness.errors import HarnessError
from petcd_harness.paths import peer, set_peers_dir
from petcd_harness.state import StateDir

PROG = "petcd-harness"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["faults"]:
        from petcd_harness.faults import main as faults_main

        return faults_main(argv[1:])
    args, apiserver_flags = _parse(argv)
    set_peers_dir(getattr(args, "peers_dir", None))
    try:
        if args.command == "up":
            return up(args, apiserver_flags)
        return down(Path(args.dir))
    except HarnessError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "up",
        help="start a control plane and stay in the foreground",
        epilog="kube-apiserver flags go after --, e.g. -- --feature-gates=WatchList=false",
    )
    a.add_argument("--datastore", choices=["petcd", "etcd"], default="petcd")
    a.add_argument("--members", type=int, choices=[1, 3], default=1, help="datastore members")
    a.add_argument("--nodes", type=int, default=3, help="kwok fake nodes (default 3)")
    a.add_argument("--controller-managers", type=int, default=1, help="kube-controller-managers (HA: 2)")
    a.add_argument("--tls", action="store_true", help="datastore on https:// with client certificates")
    a.add_argument("--dir", default=".cluster", help="state directory (default .cluster)")
    a.add_argument("--keep", action="store_true", help="keep the datastore's data from a previous run")
    a.add_argument("--port", type=int, default=0, help="kube-apiserver port (default: a free one)")
    a.add_argument("--compaction-interval", default="5m", help="kube-apiserver --etcd-compaction-interval")
    a.add_argument("--event-ttl", default="1h", help="kube-apiserver --event-ttl")
    a.add_argument(
        "--controller-manager-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a kube-controller-manager flag, e.g. --controller-manager-flag=--kube-api-qps=100 (repeatable)",
    )
    a.add_argument(
        "--scheduler-flag", action="append", default=[], metavar="FLAG", help="a kube-scheduler flag"
    )
    a.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    a.add_argument("--no-faults", action="store_true", help="petcd without its fault surface")
    a.add_argument(
        "--peers-dir", help="where etcd, kube-* and kwok are (else $PETCD_PEERS_DIR, .peers/bin, $PATH)"
    )
    d = sub.add_parser("down", help="stop the launcher running from --dir")
    d.add_argument("--dir", default=".cluster", help="state directory (default .cluster)")
    sub.add_parser("faults", help="set, list and clear faults on the running cluster (faults --help)")
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    return ap.parse_args(argv), extra


def up(args: argparse.Namespace, apiserver_flags: list[str]) -> int:
    config = ClusterConfig(
        datastore=args.datastore,
        members=args.members,
        nodes=args.nodes,
        controller_managers=args.controller_managers,
        tls=args.tls,
        apiserver_port=args.port or None,
        apiserver_flags=tuple(apiserver_flags),
        controller_manager_flags=tuple(args.controller_manager_flag),
        scheduler_flags=tuple(args.scheduler_flag),
        compaction_interval=args.compaction_interval,
        event_ttl=args.event_ttl,
        keep_data=args.keep,
        timeout=args.timeout,
        faults=not args.no_faults,
    )
    cluster = KubeCluster(Path(args.dir), config)
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt here (also in the background, where a
    # non-interactive shell leaves SIGINT ignored); while stopping, both are ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    what = f"{config.datastore} ({config.members} member{'s' if config.members > 1 else ''}{', TLS' if config.tls else ''})"
    print(
        f"starting {what}, kube-apiserver, kube-controller-manager, kube-scheduler and kwok in {cluster.dir}",
        flush=True,
    )
    t0 = time.monotonic()
    try:
        try:
            cluster.start()
        finally:
            for reaped in cluster.reaped:
                print(f"  stopped {reaped}, left over from a launcher that was killed", flush=True)
        print(_ready_text(cluster, time.monotonic() - t0), flush=True)
        return _watch(cluster)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


def _watch(cluster: KubeCluster) -> int:
    """Until interrupted: report processes that exit; stop when the apiserver does."""
    reported: set[str] = set()
    while True:
        time.sleep(1)
        if not cluster.api.process.running:
            print(
                f"{PROG}: error: kube-apiserver exited with status {cluster.api.process.returncode} "
                f"(log: {cluster.api.log_path}); stopping",
                file=sys.stderr,
                flush=True,
            )
            return 1
        assert cluster.datastore is not None
        processes = [(f"{m.kind} {m.name}", m.proc, m.log_path) for m in cluster.datastore.members]
        processes += [(c.name, c.process.proc, c.log_path) for c in cluster.components]
        for name, proc, log in processes:
            if proc is not None and proc.poll() is not None and name not in reported:
                reported.add(name)
                print(
                    f"{PROG}: warning: {name} exited with status {proc.returncode} (log: {log})",
                    file=sys.stderr,
                    flush=True,
                )


def _ready_text(cluster: KubeCluster, seconds: float) -> str:
    api, ds = cluster.api, cluster.datastore
    assert ds is not None
    etcdctl_env = " ".join(f"{k}={v}" for k, v in (ds.pki.etcdctl_env() if ds.pki else {}).items())
    kubectl, etcdctl = peer("kubectl"), _optional_peer("etcdctl")
    logs = sorted({str(p.parent) for p in cluster.logs().values()})
    lines = [
        "",
        f"cluster ready after {seconds:.1f}s: kube-apiserver at {api.server}, "
        f"{len(cluster.nodes)} node{'' if len(cluster.nodes) == 1 else 's'}, "
        f"{ds.kind} at {ds.endpoints}",
        f"  kubeconfig:  {cluster.kubeconfig}",
        f"  logs:        {', '.join(d + '/*.log' for d in logs)}",
        *([f"  faults:      {', '.join(ds.fault_urls)} ({PROG} faults --help)"] if ds.fault_urls else []),
        "",
        f"  export KUBECONFIG={cluster.kubeconfig}",
        f"  {kubectl} get nodes",
        f"  {kubectl} create deployment web --image=nginx --replicas=3",
        f"  {kubectl} get pods -o wide",
    ]
    if etcdctl:
        env = etcdctl_env + " " if etcdctl_env else ""
        lines.append(f"  {env}{etcdctl} --endpoints={ds.endpoints} get /registry/pods --prefix --keys-only")
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


def _optional_peer(name: str) -> str | None:
    with contextlib.suppress(HarnessError):
        return peer(name)
    return None


def down(dir: Path, timeout: float = 60.0) -> int:
    """SIGTERM the launcher owning dir and wait until it has stopped everything; with no
    launcher, stop what a killed one left."""
    state = StateDir(dir)
    pid = state.owner()
    if pid is None:
        reaped = state.reap() if state.pids.is_dir() else []
        print(f"no cluster is running from {dir}" + (f"; stopped {', '.join(reaped)}" if reaped else ""))
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while state.owner() == pid:  # it gives the directory up once everything has stopped
        if time.monotonic() > deadline:
            raise HarnessError(f"the launcher (pid {pid}) did not stop within {timeout:.0f}s")
        time.sleep(0.2)
    print(f"stopped the cluster running from {dir} (launcher pid {pid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
