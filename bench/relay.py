"""How the client port's gRPC connections reach the gRPC server, and what each way costs: the
candidates for the shared client port, measured in front of the null gRPC server (where a
request costs least, so what a hop adds shows most).

    direct   the null server's own TCP port (what petcd did before the port was shared)
    native   petcd's client port code: first bytes peeked and classified, then the native relay
             thread (server/embed/serve.py, server/embed/_relay.c) to the server's Unix socket
    splice   the same classification, then a relay in Python on the event loop: os.splice
             through a pipe each way, the kernel moving the bytes (the best Python can do)

    python -m bench.relay serve --kind native|splice --port P --backend PATH   (one relay)

Used by `python -m bench.run --suites relay`; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import socket
import ssl
from collections.abc import Callable

from server.embed._relay import Relay
from server.embed.serve import ClientListener, RelayTo

__all__ = ["serve"]

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_CHUNK = 1 << 16


class _NoHttp:
    async def adopt(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        sock.close()


class _SpliceRelay:
    """A relay in Python: each direction splices src -> pipe -> dst when src is readable."""

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def add(self, a: int, b: int) -> None:
        socks = [socket.socket(fileno=a), socket.socket(fileno=b)]
        open_halves = [2]

        def done() -> None:
            open_halves[0] -= 1
            if open_halves[0] == 0:
                for s in socks:
                    s.close()

        self._half(socks[0], socks[1], done)
        self._half(socks[1], socks[0], done)

    def _half(self, src: socket.socket, dst: socket.socket, done: Callable[[], None]) -> None:
        loop, fd_in, fd_out = self._loop, src.fileno(), dst.fileno()
        r, w = os.pipe2(os.O_NONBLOCK)

        def on_readable() -> None:
            try:
                n = os.splice(fd_in, w, _CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if n == 0:
                loop.remove_reader(fd_in)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                os.close(r)
                os.close(w)
                done()
                return
            while n:
                try:
                    n -= os.splice(r, fd_out, n, flags=_SPLICE_FLAGS)
                except BlockingIOError:  # a bench: wait for room rather than juggle writers
                    select.select([], [fd_out], [])

        loop.add_reader(fd_in, on_readable)

    def stop(self) -> None:
        pass


async def serve(kind: str, port: int, backend: str) -> None:
    relay = Relay() if kind == "native" else _SpliceRelay()
    relay.start()
    listener = ClientListener(
        "127.0.0.1",
        port,
        http=_NoHttp(),
        grpc=RelayTo([backend], relay),
    )
    await listener.start()
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--kind", choices=("native", "splice"), required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--backend", required=True, help="the gRPC server's Unix socket")
    args = p.parse_args()
    asyncio.run(serve(args.kind, args.port, args.backend))


if __name__ == "__main__":
    main()
