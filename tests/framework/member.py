"""Members behind one interface (etcd's tests/framework/interfaces.go Member), and the runners.

    with running("in-process", tmp_path, "--max-txn-ops=4") as m:   # petcd in this process
    with running("petcd", tmp_path) as m:                          # petcd as a process
    with running("etcd", tmp_path) as m:                           # a real etcd v3.6
        with m.client() as c:
            c.put("k", "v")

The in-process runner serves the member from an event loop of its own, in a thread, so the
same synchronous scenario runs on every runner; it starts in a fraction of a second and lets a
unit test look inside (InProcessMember.server, .call). The flags are etcd's on every runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from server.embed.etcd import Etcd
from server.etcdmain import parse_args
from server.etcdserver.server import EtcdServer
from tests.framework.client import Client
from tests.harness.procs import Member as ProcessMember
from tests.harness.procs import free_port

__all__ = ["InProcessMember", "Member", "connect", "running"]

T = TypeVar("T")
Runner = Literal["in-process", "petcd", "etcd"]


class Member(Protocol):
    """A running member: which server it is, and its client URL (http://host:port)."""

    @property
    def kind(self) -> str: ...

    @property
    def client_url(self) -> str: ...

    def stop(self) -> None: ...


def connect(m: Member, token: str | None = None) -> Client:
    return Client(m.client_url.split("://", 1)[1], token=token)


class InProcessMember:
    """petcd's embed.Etcd served from an event loop thread of this process."""

    kind = "petcd"

    def __init__(self, tmp: Path, *flags: str, name: str = "default") -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        self.cfg, _ = parse_args(
            [
                f"--name={name}",
                f"--data-dir={tmp / 'in-process.etcd'}",
                "--listen-client-urls=http://127.0.0.1:0",
                "--advertise-client-urls=http://127.0.0.1:0",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={name}={peer}",
                *flags,
            ]
        )
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._etcd: Etcd | None = None

    @property
    def etcd(self) -> Etcd:
        assert self._etcd is not None, "not started"
        return self._etcd

    @property
    def server(self) -> EtcdServer:
        return self.etcd.server

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd.client_ports[0]}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the member's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Call fn on the member's loop (where its state may be read or changed safely)."""

        async def wrapped() -> T:
            return fn()

        return self.run(wrapped(), timeout)

    def start(self, timeout: float = 30.0) -> InProcessMember:
        self._thread = threading.Thread(target=self._loop.run_forever, name="in-process-member", daemon=True)
        self._thread.start()

        async def start() -> Etcd:
            e = Etcd(self.cfg)
            await e.start()
            return e

        try:
            self._etcd = self.run(start(), timeout)
        except BaseException:
            self._close_loop()
            raise
        return self

    def stop(self) -> None:
        if self._etcd is not None:
            with contextlib.suppress(Exception):
                self.run(self._etcd.stop())
            self._etcd = None
        self._close_loop()

    def _close_loop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> InProcessMember:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(runner: Runner, tmp: Path, *flags: str) -> Iterator[Member]:
    """A fresh member of the given runner, started with etcd's flags; stopped on exit."""
    m: InProcessMember | ProcessMember
    if runner == "in-process":
        m = InProcessMember(tmp, *flags)
    elif runner == "petcd":
        m = ProcessMember.petcd(tmp, *flags)
    else:
        m = ProcessMember.etcd(tmp, *flags)
    m.start()
    try:
        yield m
    finally:
        if isinstance(m, ProcessMember) and m.kind == "etcd":
            m.kill()  # a real etcd takes a second to stop gracefully after watch streams
        else:
            m.stop()
