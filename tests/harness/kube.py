"""A real kube-apiserver (v1.37, .peers/bin) on top of petcd or a real etcd, on free loopback ports.

    with Datastore("petcd", members=1, dir=tmp / "ds") as ds, \\
         KubeAPIServer(ds, tmp / "kube", compaction_interval="5s", event_ttl="5s") as api:
        api.kubectl("get", "ns")                    # the real kubectl with api.kubeconfig
        api.client.get("/api/v1/namespaces")        # JSON over HTTPS with the admin token
        api.client.request("PUT", path, obj)         # (status, JSON), for expected errors
        ds.ctl().ok("get", "/registry/", "--prefix", "--keys-only")

What the apiserver gets: a generated service-account key pair and --service-account-issuer, a
serving certificate pre-placed in --cert-dir (issued by a CA the kubeconfig trusts), a static
token file with an admin in system:masters, --authorization-mode=Node,RBAC,
--service-cluster-ip-range, --etcd-servers (https with client certificates when the datastore
runs TLS), a configurable --etcd-compaction-interval and --event-ttl, and
--endpoint-reconciler-type=lease. Everything else (watch cache, feature gates) is the default.

Usable by people:

    python -m tests.harness.kube up [--datastore petcd|etcd] [--members 1|3] [--tls]

starts the datastore (data under .cluster/), then the apiserver, prints the kubeconfig and how to
use kubectl, and stays up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from tests.harness.certs import PKI, issue_serving_cert, make_pki
from tests.harness.cluster import FAST_ELECTIONS, Cluster, ClusterMember
from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import ROOT, peer
from tests.harness.procs import Member, free_port, wait_ready

__all__ = ["ADMIN_TOKEN", "Datastore", "KubeAPIServer", "KubeClient", "KubeError"]

ADMIN_TOKEN = "petcd-admin-token"
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The lease endpoint reconciler refuses a loopback --advertise-address ("may not be in the
# loopback range"), so advertise an address from TEST-NET-1 (RFC 5737). Nothing connects to
# it: it only ends up in the `kubernetes` Endpoints and in /registry/masterleases/<ip>.
ADVERTISE_ADDRESS = "192.0.2.10"


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the process that started it dies (Linux), so that
    an interrupted pytest or a killed `kube up` leaks no apiserver or datastore. (The kernel
    acts when the starting *thread* exits: start processes from a long-lived thread.)"""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------------------------
# datastore: one petcd/etcd member or a 3-member cluster, plain or TLS


def _secure_channel(target: str, pki: PKI) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    return grpc.secure_channel(target, creds)


def wait_ready_tls(
    url: str,
    pki: PKI,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until the TLS member at url answers Maintenance.Status over an mTLS channel."""
    wait_ready(url, timeout, proc, log_path, connect=lambda target: _secure_channel(target, pki))


@dataclass(eq=False)
class TLSMember(Member):
    """A single member serving clients on https:// with client-certificate authentication."""

    pki: PKI | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        assert self.pki is not None
        return [*super().command(), *self.pki.etcd_server_flags()]

    def start(self, timeout: float = 30.0) -> TLSMember:
        assert self.pki is not None
        self.log_path = self.data_dir.parent / f"{self.kind}-{self.name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=_die_with_parent,
            )
        wait_ready_tls(self.client_url, self.pki, timeout, self.proc, self.log_path)
        return self


@dataclass(eq=False)
class TLSClusterMember(ClusterMember):
    pki: PKI | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        assert self.pki is not None
        return [*super().command(), *self.pki.etcd_server_flags()]

    def wait_ready(self, timeout: float = 30.0) -> TLSClusterMember:
        assert self.pki is not None
        wait_ready_tls(self.client_url, self.pki, timeout, self.proc, self.log_path)
        if not self.member_id:
            self.member_id = int(self.status(timeout=5).header.member_id)
        return self

    @property
    def channel(self) -> grpc.Channel:
        assert self.pki is not None
        if self._channel is None:
            self._channel = _secure_channel(f"127.0.0.1:{self.client_port}", self.pki)
        return self._channel

    def ctl(self) -> Etcdctl:
        assert self.pki is not None
        return Etcdctl(self.client_url, env=self.pki.etcdctl_env())


class TLSCluster(Cluster):
    """A Cluster whose members serve clients over mutual TLS with one PKI."""

    def __init__(self, pki: PKI, *args: Any, **kw: Any) -> None:
        self.pki = pki
        super().__init__(*args, **kw)

    def _new_member(self, name: str) -> ClusterMember:
        m = super()._new_member(name)
        return TLSClusterMember(**{f: getattr(m, f) for f in m.__dataclass_fields__}, pki=self.pki)

    def ctl(self, *members: ClusterMember) -> Etcdctl:
        eps = ",".join(m.client_url for m in members) if members else self.endpoints
        return Etcdctl(eps, env=self.pki.etcdctl_env())


class Datastore:
    """petcd or a real etcd v3.6 for kube-apiserver: one member or a cluster of `members`,
    plain HTTP or TLS with client-certificate authentication (tls=True, or a PKI)."""

    def __init__(
        self,
        kind: str = "petcd",
        members: int = 1,
        dir: Path | None = None,
        tls: bool | PKI = False,
        extra: Sequence[str] = (),
    ) -> None:
        if kind not in ("petcd", "etcd"):
            raise ValueError(f"unknown datastore {kind!r}")
        if dir is None:
            raise ValueError("dir is required")
        self.kind = kind
        self.size = members
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki: PKI | None = tls if isinstance(tls, PKI) else (make_pki(self.dir / "pki") if tls else None)
        self.extra = tuple(extra)
        self.member: Member | None = None
        self.cluster: Cluster | None = None

    @property
    def tls(self) -> bool:
        return self.pki is not None

    def start(self) -> Datastore:
        if self.size == 1:
            data = self.dir / f"{self.kind}.etcd"
            m = (
                TLSMember(self.kind, data, extra=self.extra, pki=self.pki)
                if self.pki is not None
                else Member(self.kind, data, extra=self.extra)
            )
            self.member = m
            m.start()
        else:
            flags = (*FAST_ELECTIONS, *self.extra)
            if self.pki is not None:
                self.cluster = TLSCluster(self.pki, self.kind, self.size, self.dir, flags)
            else:
                self.cluster = Cluster(self.kind, self.size, self.dir, flags)
            try:
                self.cluster.start()
            except BaseException:
                self.cluster.stop()
                raise
        return self

    def stop(self) -> None:
        if self.member is not None:
            self.member.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def __enter__(self) -> Datastore:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoints(self) -> str:
        """Comma-separated client URLs (all members, running or not: the apiserver's list)."""
        if self.member is not None:
            return self.member.client_url
        assert self.cluster is not None
        return ",".join(m.client_url for m in self.cluster.members)

    def ctl(self) -> Etcdctl:
        """The real etcdctl against the running members (with the client certificate under TLS)."""
        eps = self.cluster.endpoints if self.cluster is not None else self.endpoints
        return Etcdctl(eps, env=self.pki.etcdctl_env() if self.pki else None)

    def logs(self) -> str:
        if self.member is not None:
            return self.member.log()[-20000:]
        assert self.cluster is not None
        return self.cluster.logs()

    # -- reads through etcdctl ------------------------------------------------------------------

    def get_json(self, key: str, *args: str) -> dict[str, Any]:
        """`etcdctl get -w json KEY ...`, with keys and values base64-decoded into str/bytes."""
        import base64

        out: dict[str, Any] = json.loads(self.ctl().ok("get", key, *args, "-w", "json"))
        for kv in out.get("kvs", []):
            kv["key"] = base64.b64decode(kv["key"]).decode(errors="replace")
            kv["value"] = base64.b64decode(kv.get("value", ""))
        return out

    def revision(self) -> int:
        return int(self.get_json("/petcd-probe")["header"]["revision"])

    def mod_revision(self, key: str) -> int | None:
        kvs = self.get_json(key).get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else None

    def compact_rev_key(self) -> tuple[int, int] | None:
        """(stored compaction revision, version) of the apiserver's compact_rev_key."""
        kvs = self.get_json("compact_rev_key").get("kvs", [])
        return (int(kvs[0]["value"]), int(kvs[0].get("version", 0))) if kvs else None

    def compacted_revision(self) -> int:
        """The datastore's compaction revision (from HashKV, which reports it)."""
        st = json.loads(self.ctl().ok("endpoint", "hashkv", "-w", "json"))
        return int(st[0]["HashKV"].get("compact_revision", 0))


# --------------------------------------------------------------------------------------------
# kube-apiserver


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


@dataclass
class KubectlResult:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class KubeAPIServer:
    """kube-apiserver against a Datastore. start() waits for /readyz; stop() (SIGTERM, then
    SIGKILL) and kill() (SIGKILL, no graceful shutdown) end it."""

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
    ) -> None:
        self.datastore = datastore
        self.advertise_address = advertise_address
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compaction_interval = compaction_interval
        self.event_ttl = event_ttl
        self.endpoint_reconciler = endpoint_reconciler
        self.extra = tuple(extra)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "kube-apiserver.log"
        self._write_files()
        self.client = KubeClient("127.0.0.1", self.port, self.ca)

    # -- files ------------------------------------------------------------------------------------

    @property
    def ca(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

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
        (self.dir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n')
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "petcd",
                            "cluster": {"server": self.server, "certificate-authority": str(self.ca)},
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
                    "contexts": [{"name": "petcd", "context": {"cluster": "petcd", "user": "admin"}}],
                    "current-context": "petcd",
                },
                indent=2,
            )
            + "\n"
        )

    def command(self) -> list[str]:
        ds = self.datastore
        flags = [
            f"--etcd-servers={ds.endpoints}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            f"--advertise-address={self.advertise_address}",
            f"--cert-dir={self.dir / 'serving'}",
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
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("kube-apiserver is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"kube-apiserver exited with {self.proc.returncode}:\n{self.log()[-5000:]}"
                )
            try:
                status, body = self.client.raw_get("/readyz")
                if status == 200:
                    return
                last = (status, body[-2000:])
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s: {last}\n{self.log()[-5000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        self.client.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients ----------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 120.0, check: bool = False
    ) -> KubectlResult:
        p = subprocess.run(
            [peer("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input.encode() if input is not None else None,
            capture_output=True,
            timeout=timeout,
        )
        r = KubectlResult(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
        if check and r.rc != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.rc}): {r.err}")
        return r


# --------------------------------------------------------------------------------------------
# CLI


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m tests.harness.kube",
        description="Start petcd (or etcd) and a real kube-apiserver on it; Ctrl-C stops both.",
    )
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--datastore", choices=["petcd", "etcd"], default="petcd")
    ap.add_argument("--members", type=int, choices=[1, 3], default=1)
    ap.add_argument("--tls", action="store_true", help="datastore on https:// with client certificates")
    ap.add_argument("--dir", default=str(ROOT / ".cluster"), help="state directory (default .cluster/)")
    ap.add_argument("--keep", action="store_true", help="keep the datastore's data from a previous run")
    ap.add_argument("--port", type=int, default=0, help="apiserver port (default: a free one)")
    ap.add_argument("--compaction-interval", default="5m", help="--etcd-compaction-interval")
    ap.add_argument("--event-ttl", default="1h")
    ap.epilog = "Extra kube-apiserver flags go after --, e.g. -- --feature-gates=WatchList=false"
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    base = Path(args.dir)
    tag = f"{args.datastore}-{args.members}{'-tls' if args.tls else ''}"
    ds_dir = base / tag
    if not args.keep and ds_dir.exists():
        shutil.rmtree(ds_dir)
    kube_dir = base / f"kube-{tag}"
    if kube_dir.exists():
        shutil.rmtree(kube_dir)

    # Ctrl-C and SIGTERM both end the `with` blocks below (also when started in the background,
    # where a non-interactive shell leaves SIGINT ignored)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.ExitStack() as stack:
        print(
            f"starting {args.datastore} ({args.members} member(s){', TLS' if args.tls else ''}) in {ds_dir}",
            flush=True,
        )
        ds = stack.enter_context(Datastore(args.datastore, args.members, ds_dir, tls=args.tls))
        print(f"  etcd endpoints: {ds.endpoints}", flush=True)
        print("starting kube-apiserver (this takes a while) ...", flush=True)
        t0 = time.monotonic()
        api = stack.enter_context(
            KubeAPIServer(
                ds,
                kube_dir,
                compaction_interval=args.compaction_interval,
                event_ttl=args.event_ttl,
                extra=extra,
                port=args.port or None,
            )
        )
        kubectl = peer("kubectl")
        env_ctl = " ".join(f"{k}={v}" for k, v in (ds.pki.etcdctl_env() if ds.pki else {}).items())
        print(
            f"""
kube-apiserver ready after {time.monotonic() - t0:.1f}s at {api.server}
  kubeconfig:  {api.kubeconfig}
  logs:        {api.log_path}, {ds_dir}/*.log

  export KUBECONFIG={api.kubeconfig}
  {kubectl} get --raw /readyz?verbose
  {kubectl} apply -f {ROOT / "manifests"}
  {kubectl} wait --for=condition=Established crd -l app.kubernetes.io/part-of=petcd
  {kubectl} apply -f {ROOT / "manifests" / "samples"}
  {kubectl} get counters,replicatedconfigmaps -A

  {env_ctl + " " if env_ctl else ""}{peer("etcdctl")} --endpoints={ds.endpoints} get /registry --prefix --keys-only

Ctrl-C stops the apiserver and the datastore.""",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while api.proc is not None and api.proc.poll() is None:
                time.sleep(1)
            if api.proc is not None:
                print(
                    f"kube-apiserver exited with {api.proc.returncode}; see {api.log_path}", file=sys.stderr
                )
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
