"""A partitionable TCP proxy for peer traffic: the controllable network between members.

Each member listens for peers on its real peer port but advertises a proxy port
(--initial-advertise-peer-urls and --initial-cluster use the proxy port), so every byte between
two members goes through one PeerNetwork:

    net = PeerNetwork(); net.start()
    net.add_route("m0", listen_port=Q0, target_port=P0)     # members dial Q0 to reach m0 (on P0)
    net.register_pid(proc.pid, "m0")                         # lets the proxy tell who is dialing
    net.register_id(member_id, "m0")                         # (the fallback: see below)
    net.isolate("m0")      # drop everything in and out of m0 (a partition of m0 from the others)
    net.cut("m1", "m2")    # drop the m1 <-> m2 link only (both directions)
    net.heal()             # every link works again (or heal("m0"), heal("m1", "m2"))

petcd_harness.raft_cluster.Cluster(..., proxied=True) does the routing and registering; its c.net is
this object.

A connection is attributed to its dialing member by the process that owns its other end
(/proc/net/tcp gives the socket's inode, /proc/<pid>/fd the process; register_pid() names the
member processes), falling back to its first bytes: petcd's peer handshake (b"PETCD1" | kind |
from member ID | cluster ID) or etcd's rafthttp request header (X-Server-From: <hex ID>; Go
reuses HTTP connections, so this fallback is only as good as the first request's headers). Its
destination is the route it came in on. Connections whose dialer is unknown are dropped only when
their destination is isolated.

Dropping a link closes the connections already open on it (a reset) and black-holes new ones: they
are accepted, their bytes discarded and nothing forwarded, until the link heals, when they are
closed too. Nothing is ever forwarded after bytes were discarded, so the framing of a stream
is never corrupted. The proxy runs its own asyncio loop on a background thread; every method is
safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import threading
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["PeerNetwork"]

T = TypeVar("T")

_PETCD_HELLO = struct.Struct(">6scQQ")
_SERVER_FROM = re.compile(rb"\r\nX-Server-From:\s*([0-9a-fA-F]+)\r\n", re.IGNORECASE)
_IDENTIFY_TIMEOUT = 2.0
_BUF = 64 * 1024


@dataclass(eq=False)
class _Conn:
    src: str | None  # the dialing member (None: unknown)
    dst: str
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    blackholed: bool = False

    def close(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.transport.abort()


@dataclass
class _Route:
    name: str
    listen_port: int
    target_port: int
    host: str
    server: asyncio.Server | None = None


class PeerNetwork:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, _Route] = {}
        self._ids: dict[int, str] = {}
        self._pids: dict[int, str] = {}
        self._isolated: set[str] = set()
        self._cut: set[frozenset[str]] = set()
        self._conns: set[_Conn] = set()
        self._accepted: set[asyncio.StreamWriter] = set()
        # every transport the proxy made, so that none outlives stop() with its socket open
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.dropped = 0  # connections reset or black-holed so far

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> PeerNetwork:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="peer-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        if not self._thread.is_alive():
            loop.run_until_complete(self._close_transports())
            loop.close()
        self._loop = None

    async def _close_transports(self) -> None:
        for t in list(self._transports):
            t.abort()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)  # the sockets are closed in callbacks

    def __enter__(self) -> PeerNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None, "PeerNetwork.start() first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        for route in self._routes.values():
            if route.server is not None:
                route.server.close()
        for c in list(self._conns):
            c.close()
        self._conns.clear()
        for w in list(self._accepted):  # connections still being identified
            w.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        _, pending = await asyncio.wait(tasks, timeout=2.0) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0.05)  # aborted transports close their sockets in callbacks

    # -- routes and identities ----------------------------------------------------------------

    def add_route(
        self, name: str, listen_port: int, target_port: int, target_host: str | None = None
    ) -> None:
        """Accept on listen_port and forward to the member `name` on target_port."""
        route = _Route(name, listen_port, target_port, target_host or self.host)
        self._call(self._listen(route))
        with self._lock:
            self._routes[name] = route

    async def _listen(self, route: _Route) -> None:
        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._accepted.add(w)
            self._transports.add(w.transport)
            try:
                await self._handle(route, r, w)
            finally:
                self._accepted.discard(w)

        route.server = await asyncio.start_server(accept, self.host, route.listen_port, reuse_address=True)

    def remove_route(self, name: str) -> None:
        with self._lock:
            route = self._routes.pop(name, None)
        if route is not None and route.server is not None:
            server = route.server

            async def close() -> None:
                server.close()
                for c in [c for c in self._conns if c.dst == name or c.src == name]:
                    c.close()

            self._call(close())

    def register_id(self, member_id: int, name: str) -> None:
        """The member ID `name` uses in its handshakes (petcd) or X-Server-From headers (etcd)."""
        with self._lock:
            self._ids[member_id] = name

    def register_pid(self, pid: int, name: str) -> None:
        """A process of member `name`: connections it dials are attributed to it."""
        with self._lock:
            self._pids[pid] = name

    def _owner(self, peer_port: int, listen_port: int) -> str | None:
        """The registered member whose process owns the socket 127.0.0.1:peer_port connected
        to listen_port, found through /proc; None when unknown."""
        inode = None
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    lines = f.readlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if len(parts) < 10:
                    continue
                lport = int(parts[1].rsplit(":", 1)[1], 16)
                rport = int(parts[2].rsplit(":", 1)[1], 16)
                if lport == peer_port and rport == listen_port:
                    inode = parts[9]
                    break
            if inode is not None:
                break
        if inode is None or inode == "0":
            return None
        target = f"socket:[{inode}]"
        with self._lock:
            pids = list(self._pids.items())
        for pid, name in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return name
        return None

    # -- faults -------------------------------------------------------------------------------

    def isolate(self, *names: str) -> None:
        """Drop every link in and out of each named member."""
        with self._lock:
            self._isolated.update(names)
        self._enforce()

    def cut(self, a: str, b: str) -> None:
        """Drop the link between a and b, both directions."""
        with self._lock:
            self._cut.add(frozenset((a, b)))
        self._enforce()

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """heal(): every link works again; heal(a): a is no longer isolated (nor any cut
        link of a); heal(a, b): the a <-> b link works again."""
        with self._lock:
            if a is None:
                self._isolated.clear()
                self._cut.clear()
            elif b is None:
                self._isolated.discard(a)
                self._cut = {p for p in self._cut if a not in p}
            else:
                self._cut.discard(frozenset((a, b)))
        self._enforce()

    def partitioned(self) -> bool:
        with self._lock:
            return bool(self._isolated or self._cut)

    def blocked(self, src: str | None, dst: str) -> bool:
        with self._lock:
            return self._blocked(src, dst)

    def _blocked(self, src: str | None, dst: str) -> bool:
        if dst in self._isolated or (src is not None and src in self._isolated):
            return True
        return src is not None and frozenset((src, dst)) in self._cut

    def _enforce(self) -> None:
        """Reset the open connections of links that are now down; close black-holed ones of
        links that are up again (their discarded bytes must not be followed by forwarded ones)."""
        if self._loop is None:
            return

        async def enforce() -> None:
            with self._lock:
                for c in list(self._conns):
                    down = self._blocked(c.src, c.dst)
                    if (down and not c.blackholed) or (c.blackholed and not down):
                        if down:
                            self.dropped += 1
                        c.close()
                        self._conns.discard(c)

        self._call(enforce())

    # -- the data path ------------------------------------------------------------------------

    async def _identify(self, reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
        """Read the first bytes of a connection; return them and the dialing member's name."""
        head = b""
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            head = await asyncio.wait_for(reader.read(_PETCD_HELLO.size), _IDENTIFY_TIMEOUT)
            if head.startswith(b"PETCD"):
                while len(head) < _PETCD_HELLO.size:
                    more = await asyncio.wait_for(
                        reader.read(_PETCD_HELLO.size - len(head)), _IDENTIFY_TIMEOUT
                    )
                    if not more:
                        break
                    head += more
                if len(head) >= _PETCD_HELLO.size:
                    _, _, frm, _ = _PETCD_HELLO.unpack(head[: _PETCD_HELLO.size])
                    return head, self._ids.get(frm)
                return head, None
            if head[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD"):
                while b"\r\n\r\n" not in head and len(head) < 16 * 1024:
                    more = await asyncio.wait_for(reader.read(_BUF), _IDENTIFY_TIMEOUT)
                    if not more:
                        break
                    head += more
                m = _SERVER_FROM.search(head)
                if m:
                    return head, self._ids.get(int(m.group(1), 16))
        return head, None

    async def _handle(
        self, route: _Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _Conn(None, route.name, [writer])
        try:
            head = b""
            peer = writer.get_extra_info("peername")
            if peer:
                conn.src = self._owner(peer[1], route.listen_port)
            if conn.src is None:
                head, conn.src = await self._identify(reader)
            with self._lock:
                conn.blackholed = self._blocked(conn.src, route.name)
                self._conns.add(conn)
                if conn.blackholed:
                    self.dropped += 1
            if conn.blackholed:
                while await reader.read(_BUF):
                    pass
                return
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(route.host, route.target_port), _IDENTIFY_TIMEOUT
                )
            except (OSError, TimeoutError):
                return  # the member is down: the dialer sees the connection close
            conn.writers.append(up_w)
            self._transports.add(up_w.transport)
            with self._lock:
                if conn not in self._conns:  # cut while we were dialing
                    return
            if head:
                up_w.write(head)
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except Exception:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_BUF):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
