"""Load soak: thousands of client connections and watchers held for minutes with a slow trickle of
writes, sampling the member's RSS.

    python -m tests.soak.load                                   # 2,000 connections, 20,000
                                                                # watchers, 3 minutes, 20 puts/s
    python -m tests.soak.load --connections 500 --watchers 5000 --minutes 1
    python -m tests.soak.load --kind etcd                       # the same against etcd v3.6
    python -m tests.soak.load --compact-every 0                 # never compact (default: 30 s)

Each connection is its own TCP connection (a local subchannel pool) carrying one Watch stream
with watchers/connections watchers on keys load/0000..load/0999 (so about watchers/1000 watchers
per key). While the writes trickle in, every event each watcher should get is counted; at the
end it prints the RSS figures (baseline, with the connections, with the watchers, min/max while
held, MiB per 1,000 watchers) and the events expected/received. The exit code is non-zero when
an event was missing or duplicated, or a stream failed. Every loop is bounded in count and time,
and the traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.harness.procs import Member

KEYS = 1000
OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def total_rss_mib(pid: int) -> float:
    """The member plus its children (front-end processes, if any)."""
    total = rss_mib(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for c in children.read_text().split():
            with contextlib.suppress(OSError):
                total += rss_mib(int(c))
    return total


class Conn:
    def __init__(self, target: str, keys: list[int]) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=OPTIONS)
        self.keys = keys
        self.queue: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        self.created = 0
        self.events: Counter[tuple[int, int]] = Counter()  # (key index, revision) -> count
        self.error: str = ""
        self.task: asyncio.Task[None] | None = None

    async def _requests(self):
        while True:
            r = await self.queue.get()
            if r is None:
                return
            yield r

    async def run(self) -> None:
        call = pb_grpc.WatchStub(self.channel).Watch(self._requests())
        for k in self.keys:
            self.queue.put_nowait(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"load/%04d" % k)))
        try:
            async for resp in call:
                if resp.created:
                    self.created += 1
                for ev in resp.events:
                    self.events[(int(ev.kv.key[5:]), int(ev.kv.mod_revision))] += 1
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{e.code().name}: {e.details()}"

    async def close(self) -> None:
        self.queue.put_nowait(None)
        if self.task is not None:
            self.task.cancel()
        await self.channel.close()


async def soak(args: argparse.Namespace, member: Member) -> int:
    assert member.proc is not None
    pid = member.proc.pid
    target = member.client_url.split("://")[1]
    rng = random.Random(args.seed)
    per_conn = max(1, args.watchers // args.connections)
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    def sample(label: str) -> float:
        r = total_rss_mib(pid)
        samples.append((time.monotonic() - t0, r))
        print(f"[{time.monotonic() - t0:6.0f} s] {label}: RSS {r:.1f} MiB", flush=True)
        return r

    base = sample("baseline")
    conns: list[Conn] = []
    next_key = 0
    for _ in range(args.connections):
        keys = [(next_key + j) % KEYS for j in range(per_conn)]
        next_key += per_conn
        conns.append(Conn(target, keys))
    # connect in batches
    for i in range(0, len(conns), 100):
        await asyncio.wait_for(
            asyncio.gather(*(c.channel.channel_ready() for c in conns[i : i + 100])), timeout=60
        )
    with_conns = sample(f"{len(conns)} connections open")
    for c in conns:
        c.task = asyncio.create_task(c.run())
    deadline = time.monotonic() + 60
    want = per_conn * len(conns)
    last_report = time.monotonic()
    while sum(c.created for c in conns) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            errs = sum(1 for c in conns if c.error)
            first = next((c.error for c in conns if c.error), "")
            print(
                f"  {sum(c.created for c in conns)} of {want} watchers created, {errs} streams failed {first}",
                flush=True,
            )
    created = sum(c.created for c in conns)
    with_watchers = sample(f"{created} watchers created")
    failed_streams = [c for c in conns if c.error or c.created < len(c.keys)]
    if failed_streams:
        print(
            f"FAILURE: only {created} of {want} watchers were created; {len(failed_streams)} streams failed or "
            f"hang, e.g. {next((c.error for c in failed_streams if c.error), 'no answer')!r}; "
            "going on with the others",
            file=sys.stderr,
            flush=True,
        )
    conns_all, conns = conns, [c for c in conns if c not in failed_streams]

    # hold, with a trickle of writes
    watchers_on: Counter[int] = Counter(k for c in conns for k in c.keys)
    expected: Counter[int] = Counter()  # key -> number of puts
    writes: list[tuple[int, int]] = []
    ch = grpc.aio.insecure_channel(target)
    kv = pb_grpc.KVStub(ch)
    end = time.monotonic() + args.minutes * 60
    next_sample = time.monotonic() + args.sample_every
    next_compact = time.monotonic() + args.compact_every
    compactions = 0
    interval = 1.0 / args.writes_per_sec
    latencies: list[float] = []
    while time.monotonic() < end:
        k = rng.randrange(KEYS)
        t = time.monotonic()
        r = await kv.Put(pb.PutRequest(key=b"load/%04d" % k, value=b"x" * 64), timeout=30)
        latencies.append(time.monotonic() - t)
        writes.append((k, int(r.header.revision)))
        expected[k] += 1
        if args.compact_every and time.monotonic() >= next_compact:
            await kv.Compact(pb.CompactionRequest(revision=int(r.header.revision)), timeout=60)
            compactions += 1
            next_compact += args.compact_every
        if time.monotonic() >= next_sample:
            got = sum(sum(c.events.values()) for c in conns)
            sample(f"held: {len(writes)} puts, {got} events delivered")
            next_sample += args.sample_every
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))
    # let the last events arrive
    want_events = sum(watchers_on[k] for k, _ in writes)
    deadline = time.monotonic() + 60
    while sum(sum(c.events.values()) for c in conns) < want_events and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    final = sample("end")
    got_events = sum(sum(c.events.values()) for c in conns)
    dup = sum(n - 1 for c in conns for n in c.events.values() if n > 1)
    missing = 0
    for c in conns:
        for k in c.keys:
            for wk, rev in writes:
                if wk == k and c.events[(k, rev)] == 0:
                    missing += 1
    errors = [c.error for c in conns if c.error]
    held = [r for t, r in samples if t >= samples[2][0]]
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    print("----")
    print(
        f"{member.kind}: {len(conns)} connections, {created} watchers ({per_conn} per connection, "
        f"~{created / KEYS:.0f} per key), {len(writes)} puts over {args.minutes:g} min "
        f"(put p99 {p99 * 1000:.0f} ms), {compactions} compactions"
    )
    print(
        f"RSS MiB: baseline {base:.1f}, with connections {with_conns:.1f} "
        f"({(with_conns - base) * 1024 / len(conns):.1f} KiB per connection), with watchers "
        f"{with_watchers:.1f} ({(with_watchers - with_conns) * 1024 / max(1, created):.2f} KiB per watcher), "
        f"held min {min(held):.1f} max {max(held):.1f}, end {final:.1f}"
    )
    print(f"events: expected {want_events}, received {got_events}, missing {missing}, duplicated {dup}")
    print(f"stream errors while held: {len(errors)} {errors[:3]}")
    print(
        f"streams that failed or hung while creating their watchers: {len(failed_streams)} of {len(conns_all)}"
    )
    await ch.close()
    for c in conns_all:
        await c.close()
    return 0 if missing == 0 and dup == 0 and not errors and not failed_streams else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak.load", description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--watchers", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--writes-per-sec", type=float, default=20.0)
    ap.add_argument("--sample-every", type=float, default=15.0, help="seconds between RSS samples")
    ap.add_argument(
        "--compact-every", type=float, default=30.0, help="seconds between compactions (0: never)"
    )
    ap.add_argument("--kind", choices=["petcd", "etcd"], default="petcd")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", help="keep the member's data and log here")
    ap.add_argument("flags", nargs="*", help="extra member flags (after --)")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections * 2 + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    with contextlib.ExitStack() as stack:
        d = args.data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="petcd-load-soak-"))
        Path(d).mkdir(parents=True, exist_ok=True)
        make = Member.petcd if args.kind == "petcd" else Member.etcd
        member = make(Path(d), *args.flags)
        member.start()
        try:
            return asyncio.run(soak(args, member))
        finally:
            member.stop()


if __name__ == "__main__":
    sys.exit(main())
