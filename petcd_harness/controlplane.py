"""A whole Kubernetes control plane on petcd (or on a real etcd, to compare): the datastore,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok with fake nodes whose pods
reach Running, all on loopback.

    cluster = KubeCluster(Path(".cluster"), ClusterConfig(nodes=3)).start()
    cluster.kubeconfig                 # .cluster/kubeconfig, written when everything is ready
    cluster.etcd_endpoints             # ["http://127.0.0.1:23790"]
    cluster.kubectl("get", "pods", "-A")
    api = cluster.api_client()         # a kubernetes.client.ApiClient
    cluster.stop()

start() returns when every component is healthy, the nodes are Ready (podCIDR set, no taint
left), the controller-manager and the scheduler hold their leader Leases and the `default`
ServiceAccount exists; only then is the kubeconfig written (atomically). If anything fails on
the way, everything started so far is stopped and the error (a HarnessError) says in one line
which component failed and where its log is. stop() stops every process it started (process
groups, SIGKILL after a grace period), whatever state each is in.

The parts stay reachable for tests that go further: cluster.datastore (its members, etcdctl),
cluster.apiserver (an admin JSON client), cluster.controller_managers (add_controller_manager()
starts another candidate for the leader Lease), cluster.scheduler, cluster.kwok. Fault
injection hooks in at the same level: it wraps these parts (members, the apiserver's
--etcd-servers, processes) and needs nothing else from the cluster.

cluster.faults makes the hard cases happen on purpose (petcd_harness.faults): 409 conflicts, cut
watches, etcd errors and latency, partitions and leader loss, through petcd's fault surface,
which a petcd datastore serves unless ClusterConfig(faults=False).

ExistingCluster is the same surface (kubeconfig, etcd_endpoints, kubectl, api_client, faults)
for a cluster started elsewhere, from its kubeconfig; kubeconfigs written here carry the etcd
endpoints and the fault surfaces in a cluster extension named "petcd".
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petcd_harness.apiserver import (
    ADMIN_TOKEN,
    KubeAPIServer,
    KubeClient,
    KubectlResult,
    KubeError,
    kubeconfig,
    run_kubectl,
)
from petcd_harness.components import Component, ControllerManager, Kwok, Scheduler
from petcd_harness.datastore import Datastore
from petcd_harness.errors import ComponentFailed, HarnessError
from petcd_harness.faults import Faults, tls_context
from petcd_harness.paths import kwok_stages, peer
from petcd_harness.procs import Member, Process
from petcd_harness.state import StateDir

__all__ = ["ClusterConfig", "ExistingCluster", "KubeCluster"]

EXTENSION = "petcd"
LEADER_LEASES = ("kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class ClusterConfig:
    datastore: str = "petcd"  # or "etcd" (the real one, to compare)
    members: int = 1  # datastore members (1, or 3 for a Raft cluster)
    nodes: int = 3  # kwok fake nodes
    controller_managers: int = 1  # more than one: candidates for one leader Lease (HA)
    tls: bool = False  # the datastore on https:// with client certificates
    apiserver_port: int | None = None  # default: a free one
    apiserver_flags: tuple[str, ...] = ()
    controller_manager_flags: tuple[str, ...] = ()  # added to (or overriding) the defaults
    scheduler_flags: tuple[str, ...] = ()
    compaction_interval: str = "5m"  # --etcd-compaction-interval
    event_ttl: str = "1h"
    keep_data: bool = False  # reuse the datastore's data from a previous start in the same dir
    timeout: float = 180.0  # for the whole start
    faults: bool = True  # petcd serves its fault surface (cluster.faults); a real etcd has none

    def __post_init__(self) -> None:
        if self.datastore not in ("petcd", "etcd"):
            raise HarnessError(f"datastore must be petcd or etcd, not {self.datastore!r}")
        if self.members not in (1, 3):
            raise HarnessError(f"members must be 1 or 3, not {self.members}")
        if self.nodes < 0:
            raise HarnessError(f"nodes must be 0 or more, not {self.nodes}")
        if self.controller_managers < 1:
            raise HarnessError(f"controller_managers must be 1 or more, not {self.controller_managers}")

    @property
    def binaries(self) -> list[str]:
        ds = ["etcd"] if self.datastore == "etcd" else []
        return [*ds, "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl"]


class _Access:
    """What a test needs from any cluster: its kubeconfig, kubectl, an ApiClient, faults."""

    kubeconfig: Path
    _faults: Faults | None = None

    @property
    def faults(self) -> Faults:
        """The datastore's fault surfaces (petcd_harness.faults.Faults), which resolve resource
        names through the cluster's discovery (custom resources included)."""
        if self._faults is None:
            self._faults = self._new_faults()
        return self._faults

    def _new_faults(self) -> Faults:
        raise NotImplementedError

    def _discover(self, plural: str) -> list[str]:
        """The "plural.group" names the cluster serves plural under (kubectl api-resources)."""
        names = self.kubectl("api-resources", "-o", "name").out.split()
        return [n for n in names if n.partition(".")[0] == plural]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> KubectlResult:
        """The real kubectl against the cluster; a non-zero status raises KubectlError
        unless check=False. The result has .rc, .out, .err and .json()."""
        return run_kubectl(self.kubeconfig, args, input=input, timeout=timeout, check=check)

    def api_client(self) -> Any:
        """A new kubernetes.client.ApiClient for the cluster (close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]


class ExistingCluster(_Access):
    """A cluster someone else started (`--kube-existing=PATH`): nothing is started or stopped."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = Path(kubeconfig).resolve()
        if not self.kubeconfig.is_file():
            raise HarnessError(f"kubeconfig {self.kubeconfig} does not exist")
        try:
            cfg = json.loads(self.kubeconfig.read_text())
        except ValueError:
            cfg = _yaml(self.kubeconfig)
        self.extension = _extension(cfg)
        self.etcd_endpoints: list[str] = list(self.extension.get("etcd-endpoints", []))

    def _new_faults(self) -> Faults:
        ext = self.extension
        urls = list(ext.get("faults-urls", []))
        if not urls:
            raise HarnessError(
                f"{self.kubeconfig} names no fault surface (a petcd_harness kubeconfig of petcd has them)"
            )
        ssl_ctx = None
        if "etcd-cacert" in ext:
            ssl_ctx = tls_context(ext["etcd-cacert"], ext["etcd-cert"], ext["etcd-key"])
        return Faults(urls, ssl_context=ssl_ctx, discover=self._discover)

    def __repr__(self) -> str:
        return f"<ExistingCluster {self.kubeconfig}>"


class KubeCluster(_Access):
    def __init__(self, dir: Path, config: ClusterConfig | None = None) -> None:
        self.dir = Path(dir).resolve()
        self.config = config or ClusterConfig()
        self.state = StateDir(self.dir)
        self.kubeconfig = self.dir / "kubeconfig"
        self.datastore: Datastore | None = None
        self.apiserver: KubeAPIServer | None = None
        self.controller_managers: list[ControllerManager] = []
        self.scheduler: Scheduler | None = None
        self.kwok: Kwok | None = None
        self.nodes = [f"petcd-worker{i + 1 if i else ''}" for i in range(self.config.nodes)]
        self.reaped: list[str] = []  # what start() stopped for a launcher killed before

    def __repr__(self) -> str:
        c = self.config
        return f"<KubeCluster {c.datastore} x{c.members}{' tls' if c.tls else ''} nodes={c.nodes} {self.dir}>"

    # -- what tests use ------------------------------------------------------------------------

    @property
    def etcd_endpoints(self) -> list[str]:
        return self.datastore.urls if self.datastore is not None else []

    @property
    def api(self) -> KubeAPIServer:
        if self.apiserver is None:
            raise HarnessError("the cluster is not started")
        return self.apiserver

    @property
    def client(self) -> KubeClient:
        """The apiserver's JSON client, as the admin."""
        return self.api.client

    @property
    def components(self) -> list[Component]:
        out: list[Component] = [*self.controller_managers]
        out += [c for c in (self.scheduler, self.kwok) if c is not None]
        return out

    def logs(self) -> dict[str, Path]:
        """Component name -> its log file."""
        out: dict[str, Path] = {}
        if self.datastore is not None:
            out.update({f"{m.kind}-{m.name}": m.log_path for m in self.datastore.members if m.log_path})
        if self.apiserver is not None:
            out["kube-apiserver"] = self.apiserver.log_path
        out.update({c.name: c.log_path for c in self.components})
        return out

    def _new_faults(self) -> Faults:
        if self.datastore is None:
            raise HarnessError("the cluster is not started")
        return self.datastore.faults(discover=self._discover)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeCluster:
        cfg = self.config
        for name in cfg.binaries:  # all found before anything starts
            peer(name)
        kwok_stages()
        self.reaped = self.state.acquire()
        try:
            self._start(time.monotonic() + cfg.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, deadline: float) -> None:
        cfg = self.config
        self.state.remove("kubeconfig")
        ds_dir = self.dir / "datastore"
        if not cfg.keep_data and ds_dir.exists():
            _rmtree(ds_dir)
        _rmtree(self.dir / "kube")
        self.datastore = Datastore(
            cfg.datastore,
            cfg.members,
            ds_dir,
            tls=cfg.tls,
            supervised=True,
            on_spawn=self._member_spawned,
            faults=cfg.faults,
        )
        self._faults = None
        self.apiserver = KubeAPIServer(  # (checks the port asked for before anything starts)
            self.datastore,
            self.dir / "kube",
            compaction_interval=cfg.compaction_interval,
            event_ttl=cfg.event_ttl,
            extra=cfg.apiserver_flags,
            port=cfg.apiserver_port,
            on_spawn=self._spawned,
        )
        self.datastore.start()
        self.apiserver.start(timeout=max(1.0, deadline - time.monotonic()))
        for _ in range(cfg.controller_managers):
            self.add_controller_manager(cfg.controller_manager_flags)
        self.scheduler = Scheduler(self.apiserver, extra=cfg.scheduler_flags, on_spawn=self._spawned)
        self.scheduler.start()
        self.kwok = Kwok(self.apiserver, on_spawn=self._spawned)
        self.kwok.start()
        for name in self.nodes:
            self._create_node(name)
        self.wait_ready(deadline)
        self.state.write("kubeconfig", self.user_kubeconfig())

    def stop(self) -> None:
        """Stop everything started, newest first; each part gets SIGTERM, then SIGKILL (one that
        hung or died already does not hold up the others). SIGINT and SIGTERM wait meanwhile."""
        if not self.state.owned:
            return
        with _signals_deferred():
            self.state.remove("kubeconfig")
            stops: list[Callable[[], None]] = [c.stop for c in reversed(self.components)]
            if self.apiserver is not None:
                stops.append(self.apiserver.stop)
            if self.datastore is not None:
                stops.append(self.datastore.stop)
            for stop in stops:
                with contextlib.suppress(Exception):
                    stop()
            self.state.reap(grace=1.0)  # anything recorded that survived the above
            self.state.release()

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_controller_manager(self, extra: Sequence[str] = ()) -> ControllerManager:
        """Start another kube-controller-manager (a candidate for the same leader Lease)."""
        n = len(self.controller_managers)
        name = "kube-controller-manager" + (f"-{n + 1}" if n else "")
        kcm = ControllerManager(self.api, name, extra, on_spawn=self._spawned)
        self.controller_managers.append(kcm)
        kcm.start()
        return kcm

    def _spawned(self, p: Process) -> None:
        if p.pid is not None:
            self.state.record(p.name, p.pid)

    def _member_spawned(self, m: Member) -> None:
        if m.proc is not None:
            self.state.record(f"{m.kind}-{m.name}", m.proc.pid)

    # -- readiness -----------------------------------------------------------------------------

    def _create_node(self, name: str) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
        }
        status, body = self.api.client.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):  # 409: kept from a previous start (keep_data)
            raise HarnessError(f"creating node {name} failed: HTTP {status}: {body}")

    def pending(self) -> tuple[Process, str] | None:
        """The first readiness condition not met yet, as (the process it waits for, what)."""
        for m in self.datastore.members if self.datastore is not None else []:
            if m.proc is not None and m.proc.poll() is not None:
                raise ComponentFailed(f"{m.kind} {m.name}", m.log_path, m.proc.returncode, "while starting")
        self.api.process.check_alive("while starting")
        for c in self.components:
            c.process.check_alive()
        try:
            return self._pending()
        except (OSError, http.client.HTTPException, KubeError) as e:
            return self.api.process, f"{type(e).__name__}: {e}"

    def _pending(self) -> tuple[Process, str] | None:
        api = self.api
        kcm = self.controller_managers[0].process
        for c in self.components:
            if not c.healthy():
                return c.process, f"/healthz at {c.url} did not answer 200"
        for lease in LEADER_LEASES:
            obj = _get(api, f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{lease}")
            if not (obj or {}).get("spec", {}).get("holderIdentity"):
                owner = self.scheduler.process if self.scheduler and lease == "kube-scheduler" else kcm
                return owner, f"no leader holds the Lease kube-system/{lease}"
        nodes = {n["metadata"]["name"]: n for n in (_get(api, "/api/v1/nodes") or {}).get("items", [])}
        assert self.kwok is not None
        for name in self.nodes:
            node = nodes.get(name, {})
            conditions = node.get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return self.kwok.process, f"node {name} is not Ready"
            if node.get("spec", {}).get("taints") or not node.get("spec", {}).get("podCIDR"):
                return kcm, f"node {name} is tainted or has no podCIDR"
        if _get(api, "/api/v1/namespaces/default/serviceaccounts/default") is None:
            return kcm, "the default ServiceAccount does not exist"
        return None

    def wait_ready(self, deadline: float) -> None:
        while True:
            waiting = self.pending()
            if waiting is None:
                return
            if time.monotonic() > deadline:
                process, what = waiting
                raise ComponentFailed(process.name, process.log_path, None, f"not ready: {what}")
            time.sleep(0.25)

    def user_kubeconfig(self) -> str:
        """The admin kubeconfig, self-contained, with the datastore in the "petcd" extension."""
        api, ds = self.api, self.datastore
        assert ds is not None
        ext: dict[str, Any] = {"datastore": ds.kind, "etcd-endpoints": ds.urls}
        if ds.fault_urls:
            ext["faults-urls"] = ds.fault_urls
        if ds.pki is not None:
            ext.update(
                {
                    "etcd-cacert": str(ds.pki.ca),
                    "etcd-cert": str(ds.pki.client_cert),
                    "etcd-key": str(ds.pki.client_key),
                }
            )
        return kubeconfig(api.server, api.ca.read_bytes(), ADMIN_TOKEN, "petcd", {EXTENSION: ext})


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {
        sig: signal.signal(sig, lambda signum, frame: held.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def _get(api: KubeAPIServer, path: str) -> Any:
    """GET path as the admin; None for 404."""
    try:
        return api.client.get(path)
    except KubeError as e:
        if e.status == 404:
            return None
        raise


def _extension(cfg: dict[str, Any]) -> dict[str, Any]:
    current = cfg.get("current-context")
    contexts = {c["name"]: c.get("context", {}) for c in cfg.get("contexts") or []}
    cluster_name = contexts.get(current, {}).get("cluster")
    for c in cfg.get("clusters") or []:
        if c.get("name") == cluster_name:
            for ext in c.get("cluster", {}).get("extensions") or []:
                if ext.get("name") == EXTENSION and isinstance(ext.get("extension"), dict):
                    return dict(ext["extension"])
    return {}


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
