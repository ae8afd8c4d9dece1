"""CPU per stream of the native bidi front (server/embed/_bidi): N streams of one request and one
response each (KeepAliveOnce's shape: open, message, response, end), from grpcio clients over TCP
(connections accepted here and adopted, as petcd's client port does) or to its Unix socket. Reports the
CPU of the front's Rust threads and of the Python thread that serves it, per stream, from
/proc/self/task/*/schedstat. Not a test: nothing here asserts a time.

    python -m bench.bidi_cpu [--streams 20000] [--concurrency 32] [--unix]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc import aio

from server.embed import _bidi
from server.embed._bidi import BidiFront

PATH = "/etcdserverpb.Lease/LeaseKeepAlive"
RUST_THREADS = "petcd-bidi"


def thread_cpu_ns(pred: Callable[[str, int], bool]) -> int:
    """CPU time (ns) of this process's threads whose name (comm) pred accepts."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            if pred(comm, int(task.name)):
                total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def serve(front: BidiFront) -> None:
    """Answers each request with itself and ends the call (the server side of KeepAliveOnce)."""
    while (batch := front.recv_batch(1024)) is not None:
        for kind, call, _, payload, _ in batch:
            if kind == _bidi.EVENT_MESSAGE and payload is not None:
                front.try_send(call, payload)
                front.end(call, 0)


def adopt_all(listener: socket.socket, front: BidiFront) -> None:
    while True:
        try:
            conn, (host, port) = listener.accept()
        except OSError:
            return  # closed
        front.adopt(conn.detach(), f"ipv4:{host}:{port}")


async def drive(target: str, streams: int, concurrency: int, options: list[tuple[str, str]]) -> None:
    async with aio.insecure_channel(target, options=options) as ch:
        method: aio.StreamStreamMultiCallable = ch.stream_stream(PATH)
        left = iter(range(streams))

        async def worker() -> None:
            for i in left:
                call = method()
                await call.write(b"%016d" % i)
                await call.done_writing()
                async for _ in call:
                    pass
                assert await call.code() == grpc.StatusCode.OK

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--unix", action="store_true", help="grpcio to the front's Unix socket instead of TCP")
    args = ap.parse_args()

    path = os.path.join(tempfile.mkdtemp(prefix="bidi-bench"), "s")
    front = BidiFront(path, [PATH], ["etcdserverpb.Lease"])
    front.start()
    server = threading.Thread(target=serve, args=(front,), name="bidi-serve")
    server.start()
    listener = socket.create_server(("127.0.0.1", 0))
    acceptor = threading.Thread(target=adopt_all, args=(listener, front), name="bidi-accept", daemon=True)
    acceptor.start()
    try:
        if args.unix:
            target, options = f"unix:{path}", [("grpc.default_authority", "localhost")]
        else:
            target, options = f"127.0.0.1:{listener.getsockname()[1]}", []
        asyncio.run(drive(target, 200, args.concurrency, options))  # warm-up
        server_tid = server.native_id
        rust0 = thread_cpu_ns(lambda comm, _: comm == RUST_THREADS)
        py0 = thread_cpu_ns(lambda _, tid: tid == server_tid)
        t0 = time.monotonic()
        asyncio.run(drive(target, args.streams, args.concurrency, options))
        elapsed = time.monotonic() - t0
        rust = thread_cpu_ns(lambda comm, _: comm == RUST_THREADS) - rust0
        py = thread_cpu_ns(lambda _, tid: tid == server_tid) - py0
    finally:
        listener.close()
        front.close()
        server.join()
    n = args.streams
    via = "to the Unix socket" if args.unix else "over adopted TCP connections"
    print(f"{n} streams {via}, concurrency {args.concurrency}: {n / elapsed:,.0f} streams/s")
    print(f"  Rust threads ({RUST_THREADS}): {rust / n / 1000:.1f} us CPU per stream")
    print(f"  Python serving thread (recv_batch, try_send, end): {py / n / 1000:.1f} us CPU per stream")


if __name__ == "__main__":
    main()
