"""A real kube-apiserver (v1.37) on a Datastore, on a free loopback port.

    with Datastore("petcd", dir=tmp / "ds") as ds, \\
         KubeAPIServer(ds, tmp / "kube", compaction_interval="5s", event_ttl="5s") as api:
        api.kubectl("get", "ns")                    # the real kubectl with api.kubeconfig
        api.client.get("/api/v1/namespaces")        # JSON over HTTPS with the admin token
        api.client.request("PUT", path, obj)         # (status, JSON), for expected errors

What the apiserver gets: a generated service-account key pair and --service-account-issuer, a
serving certificate pre-placed in --cert-dir, --client-ca-file and the front proxy's
--requestheader-* flags (one CA, which the kubeconfigs trust), a static token file with an admin in system:masters and one user per control-plane
component (system:kube-controller-manager, system:kube-scheduler, a kwok user in
system:masters), --authorization-mode=Node,RBAC, --service-cluster-ip-range, --etcd-servers
(https with client certificates when the datastore runs TLS), a configurable
--etcd-compaction-interval and --event-ttl, and --endpoint-reconciler-type=lease. Everything
else (watch cache, feature gates) is the default.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from petcd_harness.certs import CLIENT_CN, issue_serving_cert, make_pki
from petcd_harness.datastore import Datastore
from petcd_harness.errors import ComponentFailed, HarnessError, PortInUse
from petcd_harness.paths import peer
from petcd_harness.procs import Process, free_port

__all__ = [
    "ADMIN_TOKEN",
    "KubeAPIServer",
    "KubeClient",
    "KubeError",
    "KubectlError",
    "KubectlResult",
    "kubeconfig",
]

ADMIN_TOKEN = "petcd-admin-token"
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The lease endpoint reconciler refuses a loopback --advertise-address ("may not be in the
# loopback range"), so advertise an address from TEST-NET-1 (RFC 5737). Nothing connects to
# it: it only ends up in the `kubernetes` Endpoints and in /registry/masterleases/<ip>.
ADVERTISE_ADDRESS = "192.0.2.10"

# token -> (user, groups) in --token-auth-file; the components' users are the ones the bootstrap
# RBAC policy binds (system:kube-controller-manager, system:kube-scheduler)
USERS = {
    "admin": ("petcd-admin-token", "admin", "system:masters"),
    "kube-controller-manager": ("petcd-kcm-token", "system:kube-controller-manager", ""),
    "kube-scheduler": ("petcd-scheduler-token", "system:kube-scheduler", ""),
    "kwok": ("petcd-kwok-token", "kwok", "system:masters"),
}


def kubeconfig(
    server: str,
    ca_pem: bytes,
    token: str,
    name: str = "petcd",
    extensions: dict[str, Any] | None = None,
) -> str:
    """A self-contained kubeconfig (the CA inline) with one cluster, user and context called
    name; extensions go into the cluster's `extensions` list (kubectl keeps and ignores them)."""
    import base64

    cluster: dict[str, Any] = {
        "server": server,
        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
    }
    if extensions:
        cluster["extensions"] = [{"name": k, "extension": v} for k, v in extensions.items()]
    return (
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": name, "cluster": cluster}],
                "users": [{"name": name, "user": {"token": token}}],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
                "current-context": name,
            },
            indent=2,
        )
        + "\n"
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class KubeError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body}")


class KubeClient:
    """A minimal HTTPS client for the apiserver: JSON in and out, the admin bearer token,
    verification against the CA that issued the serving certificate. Thread-safe: requests
    take an idle keep-alive connection from a pool (or open one) and put it back."""

    def __init__(self, host: str, port: int, ca: Path, token: str = ADMIN_TOKEN) -> None:
        self.host, self.port, self.token = host, port, token
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self._idle: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()

    def _new_conn(self, timeout: float = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "Content-Type": content_type,
        }

    @staticmethod
    def url(path: str, params: dict[str, Any] | None = None) -> str:
        if params:
            q = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items() if v is not None}
            return f"{path}?{urllib.parse.urlencode(q)}"
        return path

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        target = self.url(path, params)
        for attempt in range(2):
            with self._lock:
                c = self._idle.pop() if self._idle and attempt == 0 else None
            reused = c is not None
            c = c or self._new_conn()
            try:
                c.request(method, target, body=data, headers=self._headers(content_type))
                r = c.getresponse()
                raw = r.read()
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                c.close()
                # a keep-alive connection the server closed: retry once on a new one
                if reused:
                    continue
                raise
            except BaseException:
                c.close()
                raise
            if r.will_close:
                c.close()
            else:
                with self._lock:
                    self._idle.append(c)
            break
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return r.status, payload

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        status, payload = self.request(method, path, body, params or None)
        if status >= 300:
            raise KubeError(status, payload)
        return payload

    def get(self, path: str, **params: Any) -> Any:
        return self.ok("GET", path, **params)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.ok("POST", path, obj)

    def raw_get(self, path: str) -> tuple[int, str]:
        c = self._new_conn(30)
        try:
            c.request("GET", path, headers=self._headers())
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    @contextlib.contextmanager
    def watch(self, path: str, timeout: float = 30.0, **params: Any) -> Iterator[Iterator[dict[str, Any]]]:
        """Stream watch events (dicts with type and object) from path with watch=true.
        A non-200 answer raises KubeError (e.g. 410 for a compacted resourceVersion)."""
        params = {"watch": "true", **params}
        c = self._new_conn(timeout)
        try:
            c.request("GET", self.url(path, params), headers=self._headers())
            r = c.getresponse()
            if r.status != 200:
                raw = r.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                raise KubeError(r.status, body)

            def events() -> Iterator[dict[str, Any]]:
                while True:
                    line = r.readline()
                    if not line:
                        return
                    if line.strip():
                        yield json.loads(line)

            yield events()
        finally:
            c.close()


@dataclass(frozen=True)
class KubectlResult:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class KubectlError(HarnessError):
    def __init__(self, args: Sequence[str], result: KubectlResult) -> None:
        self.args_, self.result = tuple(args), result
        err = " ".join(result.err.split())
        super().__init__(f"kubectl {' '.join(args)} failed with status {result.rc}: {err}")


def run_kubectl(
    kubeconfig: Path,
    args: Sequence[str],
    input: str | None = None,
    timeout: float = 120.0,
    check: bool = False,
) -> KubectlResult:
    """The real kubectl with --kubeconfig; check=True raises KubectlError on a non-zero status."""
    p = subprocess.run(
        [peer("kubectl"), f"--kubeconfig={kubeconfig}", *args],
        input=input.encode() if input is not None else None,
        capture_output=True,
        timeout=timeout,
    )
    r = KubectlResult(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
    if check and r.rc != 0:
        raise KubectlError(args, r)
    return r


class KubeAPIServer:
    """kube-apiserver against a Datastore. start() waits for /readyz; stop() (SIGTERM, then
    SIGKILL) and kill() (SIGKILL, no graceful shutdown) end it. on_spawn is called with its
    Process after each start."""

    def __init__(
        self,
        datastore: Datastore,
        dir: Path,
        compaction_interval: str = "10s",
        event_ttl: str = "1h",
        endpoint_reconciler: str = "lease",
        extra: Sequence[str] = (),
        port: int | None = None,
        advertise_address: str = ADVERTISE_ADDRESS,
        on_spawn: Callable[[Process], None] | None = None,
    ) -> None:
        self.datastore = datastore
        self.advertise_address = advertise_address
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compaction_interval = compaction_interval
        self.event_ttl = event_ttl
        self.endpoint_reconciler = endpoint_reconciler
        self.extra = tuple(extra)
        if port is not None and not port_is_free(port):
            raise PortInUse("kube-apiserver", port)
        self.port = port or free_port()
        self.process = Process("kube-apiserver", self.dir / "kube-apiserver.log", on_spawn=on_spawn)
        self._write_files()
        self.client = KubeClient("127.0.0.1", self.port, self.ca)

    # -- files ------------------------------------------------------------------------------------

    @property
    def ca(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig."""
        return self.dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig for one of USERS (written on first use)."""
        path = self.dir / f"{user}.kubeconfig"
        if not path.exists():
            path.write_text(kubeconfig(self.server, self.ca.read_bytes(), USERS[user][0]))
        return path

    def _write_files(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pki = make_pki(self.dir / "pki", ca_cn="petcd-kube-ca")
        serving = self.dir / "serving"
        issue_serving_cert(
            pki,
            serving / "apiserver.crt",
            serving / "apiserver.key",
            [
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            "kube-apiserver",
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (self.dir / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (self.dir / "tokens.csv").write_text(
            "".join(
                f"{token},{user},{user}-uid" + (f',"{groups}"' if groups else "") + "\n"
                for token, user, groups in USERS.values()
            )
        )
        self.kubeconfig.write_text(kubeconfig(self.server, self.ca.read_bytes(), ADMIN_TOKEN))

    def command(self) -> list[str]:
        ds = self.datastore
        flags = [
            f"--etcd-servers={ds.endpoints}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            f"--advertise-address={self.advertise_address}",
            f"--cert-dir={self.dir / 'serving'}",
            f"--client-ca-file={self.ca}",
            # the aggregation layer's front proxy (kubeadm sets these; the components'
            # delegated authentication reads them from extension-apiserver-authentication)
            f"--requestheader-client-ca-file={self.ca}",
            f"--requestheader-allowed-names={CLIENT_CN}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.dir / 'pki' / 'client.crt'}",
            f"--proxy-client-key-file={self.dir / 'pki' / 'client.key'}",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--etcd-compaction-interval={self.compaction_interval}",
            f"--event-ttl={self.event_ttl}",
            f"--endpoint-reconciler-type={self.endpoint_reconciler}",
        ]
        if ds.pki is not None:
            flags += ds.pki.apiserver_etcd_flags()
        return [peer("kube-apiserver"), *flags, *self.extra]

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> KubeAPIServer:
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def spawn(self) -> KubeAPIServer:
        """Start the process without waiting for it to be ready."""
        self.process.start(self.command())
        return self

    def is_ready(self) -> bool:
        try:
            status, _ = self.client.raw_get("/readyz")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            self.process.check_alive()
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    "kube-apiserver", self.log_path, None, f"was not ready after {timeout:.0f}s"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> None:
        self.client.close()
        self.process.stop(timeout)

    def kill(self) -> None:
        self.client.close()
        self.process.kill()

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        return self.process.log()

    # -- clients ----------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 120.0, check: bool = False
    ) -> KubectlResult:
        return run_kubectl(self.kubeconfig, args, input=input, timeout=timeout, check=check)
