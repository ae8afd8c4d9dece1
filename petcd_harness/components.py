"""The control-plane components that run on the apiserver: kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods reach Running), each a supervised Process on
free loopback ports with its log next to the apiserver's.

    kcm = ControllerManager(api).start()       # spawns; kcm.healthy() polls /healthz
    kcm.is_leader()                            # from its /metrics (leader_election_master_status)
    kcm.kill()                                 # kill -9 (its process group)

Flags follow kubeadm's (what kind runs): each component has its own identity from the
apiserver's token file (system:kube-controller-manager, system:kube-scheduler; kwok is in
system:masters as with kwokctl), delegated authentication and authorization, leader election
on (the Leases kube-system/kube-controller-manager and kube-scheduler), and /healthz, /readyz,
/livez and /metrics open without credentials. The controller-manager runs every default
controller plus bootstrapsigner and tokencleaner, with per-controller service-account
credentials and node CIDR allocation from 10.244.0.0/16, so kwok hands out pod IPs from each
node's podCIDR as kind's nodes do.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from petcd_harness.apiserver import SERVICE_CIDR, KubeAPIServer
from petcd_harness.paths import kwok_stages, peer
from petcd_harness.procs import Process, free_port

__all__ = ["CLUSTER_CIDR", "Component", "ControllerManager", "Kwok", "Scheduler"]

CLUSTER_CIDR = "10.244.0.0/16"
_OPEN_PATHS = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"


class Component:
    """A component spawned after the apiserver is ready; healthy() once /healthz answers 200."""

    binary: ClassVar[str]
    scheme: ClassVar[str] = "https"

    def __init__(
        self,
        api: KubeAPIServer,
        name: str | None = None,
        extra: Sequence[str] = (),
        on_spawn: Callable[[Process], None] | None = None,
    ) -> None:
        self.api = api
        self.name = name or self.binary
        self.extra = tuple(extra)
        self.port = free_port()
        self.process = Process(self.name, api.dir / f"{self.name}.log", self.env(), on_spawn)

    def __repr__(self) -> str:
        return f"<{self.name} {self.url} {'running' if self.process.running else 'stopped'}>"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def env(self) -> dict[str, str] | None:
        return None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Component:
        self.process.start([peer(self.binary), *self.command(), *self.extra])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.process.stop(timeout)

    def kill(self) -> None:
        self.process.kill()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET path on the component's own server (its certificate is self-signed)."""
        if self.scheme == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=ctx, timeout=timeout
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except (OSError, http.client.HTTPException):
            return False


class ControllerManager(Component):
    binary = "kube-controller-manager"

    def command(self) -> list[str]:
        kc = self.api.kubeconfig_for("kube-controller-manager")
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            _OPEN_PATHS,
            "--controllers=*,bootstrapsigner,tokencleaner",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.api.dir / 'sa.key'}",
            f"--root-ca-file={self.api.ca}",
            f"--cluster-signing-cert-file={self.api.ca}",
            f"--cluster-signing-key-file={self.api.dir / 'pki' / 'ca.key'}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=true",
        ]

    def is_leader(self) -> bool:
        """Whether it holds its Lease, by its own account (/metrics)."""
        try:
            status, text = self.get("/metrics")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and any(
            line.startswith("leader_election_master_status{") and line.endswith(" 1")
            for line in text.splitlines()
        )


class Scheduler(Component):
    binary = "kube-scheduler"

    def command(self) -> list[str]:
        kc = self.api.kubeconfig_for("kube-scheduler")
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            _OPEN_PATHS,
            "--leader-elect=true",
        ]


class Kwok(Component):
    """kwok runs every Node (--manage-all-nodes) through kwok's stages: nodes become Ready and
    renew their Leases in kube-node-lease; pods bound to them become Running with an IP, Job pods
    Succeeded, and pods being deleted are removed (no kubelet would)."""

    binary = "kwok"
    scheme = "http"
    NODE_LEASE_SECONDS = 40  # kwokctl's value

    def env(self) -> dict[str, str]:
        # kwok also loads ~/.kwok/kwok.yaml: a HOME of its own keeps a user's config out
        home = self.api.dir / "kwok-home"
        home.mkdir(exist_ok=True)
        return {"HOME": str(home)}

    def command(self) -> list[str]:
        return [
            f"--kubeconfig={self.api.kubeconfig_for('kwok')}",
            f"--config={kwok_stages()}",
            "--manage-all-nodes=true",
            f"--cidr={CLUSTER_CIDR}",
            "--node-ip=127.0.0.1",
            f"--node-lease-duration-seconds={self.NODE_LEASE_SECONDS}",
            f"--server-address=127.0.0.1:{self.port}",
        ]
