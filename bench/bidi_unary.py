"""CPU per unary call of the native front (server/embed/_bidi) under etcd's benchmark tool: an
asyncio loop drains events through add_reader(front.fileno()) and answers each Range call with an
empty RangeResponse by finish() from a task of its own (as BidiServer does), over TCP connections
accepted here and adopted. etcd's `benchmark range` (.peers/bin) drives it from another process.
Reports calls/s, the CPU of the front's Rust threads and of the event loop's thread per call (from
/proc/self/task/*/schedstat), and the time spent inside finish(). Not a test: nothing here asserts
a time.

    python -m bench.bidi_unary [--total 200000] [--conns 10] [--clients 100] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import threading
import time

from bench.bidi_cpu import RUST_THREADS, thread_cpu_ns
from server.embed import _bidi
from server.embed._bidi import BidiFront
from tests.harness.paths import peer

PATH = "/etcdserverpb.KV/Range"


class Server:
    def __init__(self, front: BidiFront) -> None:
        self.front = front
        self.calls = 0
        self.finish_ns = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def answer(self, call_id: int) -> None:
        t0 = time.perf_counter_ns()
        self.front.finish(call_id, b"", 0)
        self.finish_ns += time.perf_counter_ns() - t0
        self.calls += 1

    def on_readable(self) -> None:
        events = self.front.drain(1024)
        if not events:
            return
        loop = asyncio.get_running_loop()
        for kind, call_id, _, _, _ in events:
            if kind == _bidi.EVENT_CALL:
                task = loop.create_task(self.answer(call_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)


async def run(args: argparse.Namespace) -> list[dict[str, float]]:
    loop = asyncio.get_running_loop()
    front = BidiFront(None, [PATH], ["etcdserverpb.KV"], unary=[True], io_threads=args.io_threads)
    front.start()
    server = Server(front)
    loop.add_reader(front.fileno(), server.on_readable)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                conn, (host, port) = listener.accept()
            except BlockingIOError:
                return
            front.adopt(conn.detach(), f"ipv4:{host}:{port}")

    loop.add_reader(listener.fileno(), accept)
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
    main_tid = threading.get_native_id()

    async def bench(total: int) -> str:
        p = await asyncio.create_subprocess_exec(
            peer("benchmark"), f"--endpoints={endpoint}", f"--conns={args.conns}", f"--clients={args.clients}",
            "range", "foo", "--consistency=s", f"--total={total}",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await p.communicate()
        return out.decode()

    results = []
    try:
        await bench(2000)  # warm-up
        for _ in range(args.runs):
            calls0, fin0 = server.calls, server.finish_ns
            rust0 = thread_cpu_ns(lambda comm, _: comm == RUST_THREADS)
            py0 = thread_cpu_ns(lambda _, tid: tid == main_tid)
            out = await bench(args.total)
            n = server.calls - calls0
            rust = thread_cpu_ns(lambda comm, _: comm == RUST_THREADS) - rust0
            py = thread_cpu_ns(lambda _, tid: tid == main_tid) - py0
            m = re.search(r"Requests/sec:\s*([\d.]+)", out)
            results.append(
                {
                    "rps": float(m.group(1)) if m else 0.0,
                    "rust_us": rust / n / 1000,
                    "py_us": py / n / 1000,
                    "finish_us": (server.finish_ns - fin0) / n / 1000,
                }
            )
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()
        loop.remove_reader(front.fileno())
        await loop.run_in_executor(None, front.close)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total", type=int, default=200_000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--io-threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    results = asyncio.run(run(args))
    for r in results:
        print(
            f"{r['rps']:9,.0f} calls/s  Rust {r['rust_us']:5.2f} us/call  event loop {r['py_us']:5.2f} us/call"
            f"  (inside finish {r['finish_us']:5.2f})"
        )
    if len(results) > 1:
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(
            f"median: {med['rps']:,.0f} calls/s  Rust {med['rust_us']:.2f}  event loop {med['py_us']:.2f}"
            f"  finish {med['finish_us']:.2f} us/call"
        )


if __name__ == "__main__":
    main()
