"""Real processes: petcd or etcd members on free loopback ports, and supervised components.

    with Member.petcd(tmp_path) as m:          # or Member.etcd(tmp_path) for real etcd v3.6
        m.client_url                            # http://127.0.0.1:<port>
        m.kill(); m.start()                     # kill -9 and restart on the same data dir

    p = Process("kube-scheduler", [peer("kube-scheduler"), ...], log_path)
    p.start(); p.check_alive(); p.stop()        # SIGTERM to its process group, then SIGKILL

A supervised process (every Process; a Member with supervised=True) runs in a process group of
its own, so stop() and kill() reach whatever it started, and, when started from the main
thread, is killed by the kernel when that thread ends (PR_SET_PDEATHSIG): a launcher killed
with -9 leaks nothing.

Usable by people too: `python -m petcd_harness.procs petcd` starts one and prints its URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from petcd_harness.errors import ComponentFailed
from petcd_harness.paths import peer, petcd_command

__all__ = [
    "Member",
    "Process",
    "check_alive",
    "free_port",
    "log_tail",
    "running",
    "spawn",
    "wait_ready",
]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out by this process. They are drawn from below the kernel's ephemeral range: a
# port from bind(("127.0.0.1", 0)) is released before the member binds it, and in that window
# any outgoing connection (members dialling each other, test clients) may take it as its local
# port, so the member exits with "address already in use".
_handed_out: set[int] = set()
_rng = random.Random(os.getpid() ^ time.time_ns())


def free_port() -> int:
    high = _ephemeral_low()
    low = max(1024, high - 20000)
    for _ in range(1000):
        port = _rng.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the thread that started it ends (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    supervised: bool = True,
    header: bool = True,
) -> subprocess.Popen[bytes]:
    """Start argv with stdout and stderr appended to log_path (after a "---- start" line)."""
    with open(log_path, "ab") as log:
        if header:
            log.write(f"---- start {' '.join(argv)}\n".encode())
            log.flush()
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=supervised,
            # the kernel acts when the starting *thread* ends: only the main thread lives as
            # long as the process (elsewhere the process group and pid records must do)
            preexec_fn=_die_with_parent
            if supervised and threading.current_thread() is threading.main_thread()
            else None,
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0, group: bool = True) -> None:
    """SIGTERM (timeout 0: straight to SIGKILL), SIGKILL after timeout seconds. With group, the
    signals go to proc's process group, and the group is SIGKILLed at the end even when proc
    itself exited: nothing it started outlives it."""

    def signal_(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        signal_(signal.SIGTERM if timeout > 0 else signal.SIGKILL)
        try:
            proc.wait(timeout if timeout > 0 else None)
        except subprocess.TimeoutExpired:
            signal_(signal.SIGKILL)
            proc.wait()
    if group:
        signal_(signal.SIGKILL)


def log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


_AUTH_REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


def check_alive(proc: subprocess.Popen[bytes] | None, log_path: Path | None = None) -> None:
    """Raise if proc has exited; the error carries the end of its log."""
    if proc is not None and proc.poll() is not None:
        tail = log_tail(log_path)
        ends = f"; its log ends:\n{tail}" if tail else ""
        raise RuntimeError(f"member exited with {proc.returncode} before it was ready{ends}")


def wait_ready(
    url: str,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    connect: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> None:
    """Wait until the member at url answers Maintenance.Status over connect(host:port) (an auth
    refusal is an answer). If proc exits first, the error carries the end of its log (log_path)."""
    from server.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    target = url.split("://", 1)[1]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        check_alive(proc, log_path)
        try:
            with connect(target) as ch:
                rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1.0)
                return
        except grpc.RpcError as e:
            if e.code() in _AUTH_REFUSALS:  # auth is enabled: it serves, but not us
                return
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


@dataclass
class Member:
    kind: str  # "petcd" or "etcd"
    data_dir: Path
    name: str = "default"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    extra: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # a process group of its own, killed with the thread that started it (see the module doc)
    supervised: bool = False
    # called with the member after each spawn (a cluster registers the pid with its proxy, a
    # launcher records it in its state directory)
    on_spawn: Callable[[Member], None] | None = None

    @classmethod
    def petcd(cls, tmp: Path, *extra: str, **kw: object) -> Member:
        return cls("petcd", tmp / "petcd.etcd", extra=extra, **kw)  # type: ignore[arg-type]

    @classmethod
    def etcd(cls, tmp: Path, *extra: str, **kw: object) -> Member:
        return cls("etcd", tmp / "etcd.etcd", extra=extra, **kw)  # type: ignore[arg-type]

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        exe = petcd_command() if self.kind == "petcd" else [peer("etcd")]
        flags = [
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.name}={self.peer_url}",
        ]
        return [*exe, *flags, *self.extra]

    def start(self, timeout: float = 30.0) -> Member:
        self.log_path = self.data_dir.parent / f"{self.kind}-{self.name}.log"
        self.proc = spawn(self.command(), self.log_path, self.env, self.supervised, header=False)
        if self.on_spawn is not None:
            self.on_spawn(self)
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> Member:
        wait_ready(self.client_url, timeout, self.proc, self.log_path)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout, group=self.supervised)

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        if self.proc is not None:
            terminate(self.proc, 0, group=self.supervised)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def __enter__(self) -> Member:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Process:
    """A supervised component process (kube-apiserver, kube-controller-manager, kwok, ...):
    start(argv) spawns it with its output appended to log_path; check_alive() raises
    ComponentFailed if it has exited; stop() is SIGTERM then SIGKILL to its process group,
    kill() is SIGKILL at once."""

    def __init__(
        self,
        name: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        on_spawn: Callable[[Process], None] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.env = env
        self.on_spawn = on_spawn
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{self.name} pid={self.pid} {state}>"

    def start(self, argv: Sequence[str]) -> Process:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.proc = spawn(argv, self.log_path, self.env)
        if self.on_spawn is not None:
            self.on_spawn(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def check_alive(self, what: str = "at start") -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ComponentFailed(self.name, self.log_path, self.proc.returncode, what)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running(kind: str, tmp: Path, *extra: str) -> Iterator[Member]:
    m = Member(kind, tmp / f"{kind}.etcd", extra=extra)
    with m:
        yield m


if __name__ == "__main__":
    import tempfile

    kind = sys.argv[1] if len(sys.argv) > 1 else "petcd"
    with tempfile.TemporaryDirectory() as d, running(kind, Path(d), *sys.argv[2:]) as m:
        print(m.client_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            m.proc.wait()  # type: ignore[union-attr]
