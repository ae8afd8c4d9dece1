"""Raw gRPC Watch streams against petcd and a real etcd v3.6, side by side.

Every differential test runs the same script (writes + watch requests) against a fresh petcd and
a fresh etcd started with the same flags and compares the responses each watch stream received,
after dropping what legitimately differs (the member and cluster IDs in headers).

etcd sends a stream's control responses (created, canceled) and its event/progress responses
through two channels and interleaves them arbitrarily, and delivers one revision to several
watchers in map order; so where a script has several watchers, the comparison is per watch ID
(each watcher's own sequence is fully ordered) plus the order of the `created` responses.

We test these aspects:
- created responses in request order with header.revision = current revision;
- a synced watcher: one response per revision, every revision in order, a txn's events together;
- start_revision: 0 = from now, a past revision replays history, a future one waits for it;
- client-chosen watch IDs, the duplicate-ID error, automatic IDs skipping taken ones;
- errors: empty range, negative start revision; cancel (and canceling unknown IDs);
- a compacted start revision: created, then {compact_revision, canceled};
- filters NOPUT / NODELETE, prev_kv on modify and delete (none on create, none when compacted);
- progress requests: nothing for zero watchers, nothing while a watcher is unsynced (far behind
  or before its future start revision), otherwise one response with watch_id -1 and the current
  revision; periodic progress notifications (--watch-progress-notify-interval=500ms);
- fragment=true responses above the size limit (--max-request-bytes=65536);
- petcd alone: 4 concurrent writers x 200 puts, 3 watchers (one reading slowly) from revision 1
  each see every revision exactly once, in order, with each revision's events together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.api.mvccpb import kv_pb2
from tests.framework.differential import Differential
from tests.harness.procs import Member

# both servers get the same flags: periodic progress every 500 ms (only watchers that ask get
# them), a 64 KiB request limit (fragmenting watch responses above 64 KiB + 512 KiB of gRPC
# overhead), and no fsync (thousands of revisions quickly)
FLAGS = ("--watch-progress-notify-interval=500ms", "--max-request-bytes=65536", "--unsafe-no-fsync")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.flags(*FLAGS)]
FRAGMENT_LIMIT = 65536 + 512 * 1024
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_RANGE = "mvcc: watcher range is empty"
NEGATIVE_REV = "etcdserver: mvcc: required revision has been compacted"

T = TypeVar("T")


# -- processes --------------------------------------------------------------------------------------


@pytest.fixture
def petcd_only(tmp_path: Path) -> Iterator[Member]:
    with Member.petcd(tmp_path, *FLAGS) as m:
        yield m


# -- a small raw client -----------------------------------------------------------------------------


class Client:
    def __init__(self, m: Member) -> None:
        self.member = m
        self.channel = grpc.aio.insecure_channel(
            m.client_url.split("://", 1)[1], options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.kv = pb_grpc.KVStub(self.channel)
        self.watch_stub = pb_grpc.WatchStub(self.channel)
        self.streams: list[Stream] = []

    async def put(self, key: str | bytes, value: str | bytes = b"v") -> int:
        r = await self.kv.Put(pb.PutRequest(key=_b(key), value=_b(value)), timeout=10)
        return int(r.header.revision)

    async def delete(self, key: str | bytes, end: str | bytes = b"") -> int:
        r = await self.kv.DeleteRange(pb.DeleteRangeRequest(key=_b(key), range_end=_b(end)), timeout=10)
        return int(r.header.revision)

    async def txn(self, *ops: pb.RequestOp) -> int:
        r = await self.kv.Txn(pb.TxnRequest(success=list(ops)), timeout=10)
        return int(r.header.revision)

    async def rev(self) -> int:
        r = await self.kv.Range(pb.RangeRequest(key=b"\x00", count_only=True), timeout=10)
        return int(r.header.revision)

    async def compact(self, rev: int) -> None:
        await self.kv.Compact(pb.CompactionRequest(revision=rev, physical=True), timeout=30)

    def stream(self) -> Stream:
        s = Stream(self.watch_stub.Watch())
        self.streams.append(s)
        return s

    async def close(self) -> None:
        for s in self.streams:
            await s.close()
        await self.channel.close()


def put_op(key: str, value: str = "v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value.encode()))


def del_op(key: str, end: str = "") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode(), range_end=end.encode()))


def _b(s: str | bytes) -> bytes:
    return s.encode() if isinstance(s, str) else s


class Stream:
    """One Watch stream; a background task moves responses into a queue so that waiting for a
    response with a deadline never cancels a read of the call itself."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.queue: asyncio.Queue[pb.WatchResponse | BaseException | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                r = await self.call.read()
                if r is grpc.aio.EOF:
                    break
                self.queue.put_nowait(r)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            self.queue.put_nowait(e)
        else:
            self.queue.put_nowait(None)

    async def create(self, key: str | bytes, **kw: Any) -> None:
        await self.call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=_b(key), **kw)))

    async def cancel(self, watch_id: int) -> None:
        await self.call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    async def progress(self) -> None:
        await self.call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def recv(self, timeout: float = 10.0) -> pb.WatchResponse:
        try:
            r = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no watch response within {timeout}s") from None
        if r is None or isinstance(r, BaseException):
            raise AssertionError(f"watch stream ended: {r!r}")
        return r

    async def recv_n(self, n: int, timeout: float = 10.0) -> list[pb.WatchResponse]:
        return [await self.recv(timeout) for _ in range(n)]

    async def recv_until(
        self, done: Callable[[pb.WatchResponse], bool], timeout: float = 20.0
    ) -> list[pb.WatchResponse]:
        """Responses up to and including the first one for which done() holds."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            r = await self.recv(max(0.01, deadline - time.monotonic()))
            out.append(r)
            if done(r):
                return out

    async def create_ok(self, key: str | bytes, **kw: Any) -> int:
        """Create a watcher and wait for its created response (which must come next)."""
        await self.create(key, **kw)
        r = await self.recv()
        assert r.created and not r.canceled, fmt(r)
        return int(r.watch_id)

    async def close(self) -> None:
        self.call.cancel()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def both(pair: Differential, script: Callable[[Client], Awaitable[T]]) -> tuple[T, T]:
    """Run script against petcd and etcd concurrently; (petcd's result, etcd's result)."""

    async def run(m: Member) -> T:
        c = Client(m)
        try:
            return await script(c)
        finally:
            await c.close()

    return await pair.arun(run)


# -- formatting responses for comparison ------------------------------------------------------------


def _kv(kv: kv_pb2.KeyValue) -> str:
    value = kv.value if len(kv.value) <= 24 else kv.value[:8] + b"...(%d bytes)" % len(kv.value)
    s = f"{kv.key.decode()}={value.decode(errors='replace')} c{kv.create_revision} m{kv.mod_revision} v{kv.version}"
    return s + (" lease" if kv.lease else "")


def fmt_event(ev: kv_pb2.Event) -> str:
    s = f"{kv_pb2.Event.EventType.Name(ev.type)} {_kv(ev.kv)}"
    if ev.HasField("prev_kv"):
        s += f" prev({_kv(ev.prev_kv)})"
    return s


def fmt(r: pb.WatchResponse, events: bool = True) -> str:
    """One response as a line; header member/cluster IDs left out on purpose."""
    parts = [f"id={r.watch_id}", f"rev={r.header.revision}", f"term={r.header.raft_term}"]
    for flag in ("created", "canceled", "fragment"):
        if getattr(r, flag):
            parts.append(flag)
    if r.compact_revision:
        parts.append(f"compact_revision={r.compact_revision}")
    if r.cancel_reason:
        parts.append(f"reason={r.cancel_reason!r}")
    if events:
        parts.extend(f"[{fmt_event(ev)}]" for ev in r.events)
    else:
        parts.append(f"events={len(r.events)}")
    if not r.events and not r.created and not r.canceled:
        parts.append("PROGRESS")
    return " ".join(parts)


def by_id(resps: list[pb.WatchResponse], events: bool = True) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in resps:
        out.setdefault(int(r.watch_id), []).append(fmt(r, events))
    return out


def created_order(resps: list[pb.WatchResponse]) -> list[str]:
    return [fmt(r) for r in resps if r.created]


def is_progress(r: pb.WatchResponse) -> bool:
    return not r.events and not r.created and not r.canceled and not r.compact_revision


def has_key(key: str) -> Callable[[pb.WatchResponse], bool]:
    return lambda r: any(ev.kv.key == key.encode() for ev in r.events)


# -- tests ------------------------------------------------------------------------------------------


async def test_created_in_request_order_then_history(pair: Differential) -> None:
    async def script(c: Client) -> dict[str, Any]:
        for i in range(3):
            await c.put(f"a{i}", f"x{i}")  # revisions 2..4
        s = c.stream()
        await s.create("a0")  # id 0, from now
        await s.create("a", range_end=b"b")  # id 1, a range
        await s.create("a1", start_revision=2)  # id 2, history: a1 was written at revision 3
        await s.create("", range_end=b"\x00", start_revision=1)  # id 3, every key from revision 1
        resps = await s.recv_n(6)  # 4 created, the history of ids 2 and 3
        await c.put("a0", "y")  # 5: ids 0, 1, 3
        await c.txn(put_op("a1", "t"), put_op("a2", "t"), put_op("zz", "t"))  # 6: ids 1, 2, 3
        resps += await s.recv_n(6)
        return {"created": created_order(resps), "by_id": by_id(resps)}

    got, want = await both(pair, script)
    assert want["created"] == [f"id={i} rev=4 term=2 created" for i in range(4)], want
    assert got == want


async def test_synced_watcher_one_response_per_revision(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        s = c.stream()
        await s.create_ok("k", range_end=b"l")
        start = await c.rev()
        await c.put("k1", "1")
        await c.put("k2", "2")
        await c.put("k1", "11")
        await c.txn(put_op("k3", "3"), put_op("k4", "4"), put_op("x", "not watched"), put_op("k5", "5"))
        await c.delete("k2")
        await c.delete("k3", "k5")  # k3 and k4 in one revision
        await c.put("x", "again")  # no event
        await c.delete("nothing")  # no revision
        await c.txn(put_op("k6", "6"), del_op("k1"), put_op("k0", "0"))  # one revision
        await c.put("k7", "end")
        resps = await s.recv_until(has_key("k7"))
        end = await c.rev()
        # a synced watcher: consecutive responses, one per revision with a watched key
        revs = [r.header.revision for r in resps]
        assert revs == sorted(set(revs)), revs
        for r in resps:
            assert {ev.kv.mod_revision for ev in r.events} == {r.header.revision}, fmt(r)
        assert revs[0] == start + 1 and revs[-1] == end
        return [fmt(r) for r in resps]

    got, want = await both(pair, script)
    assert got == want


async def test_start_revision_history_then_live(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        for i in range(6):
            await c.put("h", f"v{i}")  # revisions 2..7
        await c.put("other", "x")  # 8
        await c.delete("h")  # 9
        await c.put("h", "again")  # 10
        s = c.stream()
        await s.create("h", start_revision=4)
        resps = await s.recv_n(2)  # created, then everything from revision 4 in one response
        await c.put("h", "live1")  # 11
        await c.txn(put_op("h", "t1"), put_op("other", "t"))  # 12
        resps += await s.recv_until(lambda r: r.header.revision == 12)
        # the same history with prev_kv (read back from the store for each event)
        p = c.stream()
        await p.create("h", start_revision=4, prev_kv=True)
        resps += await p.recv_n(2)
        return [fmt(r) for r in resps]

    got, want = await both(pair, script)
    assert len(want) == 6 and "created" in want[0] and want[1].count("[") == 6, want
    assert "[DELETE h= c0 m9 v0 prev(h=v5 c2 m7 v6)]" in want[5], want
    assert got == want


async def test_many_watchers_on_one_stream(pair: Differential) -> None:
    """100 create requests sent back to back: 100 created responses in request order (IDs 0..99,
    every other one from history), then one write reaches every watcher once."""

    async def script(c: Client) -> dict[str, Any]:
        await c.put("m/0", "old")  # 2
        s = c.stream()
        for i in range(100):
            await s.create("m/", range_end=b"m0", start_revision=2 if i % 2 else 0)
        resps = await s.recv_n(150)  # 100 created + 50 history responses
        await c.put("m/1", "new")  # 3: one response per watcher
        resps += await s.recv_n(100)
        return {"created": created_order(resps), "by_id": by_id(resps)}

    got, want = await both(pair, script)
    assert want["created"] == [f"id={i} rev=2 term=2 created" for i in range(100)]
    assert all(len(v) == (3 if i % 2 else 2) for i, v in want["by_id"].items()), want
    assert got == want


async def test_start_revision_zero_and_future(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        for i in range(3):
            await c.put("f", f"old{i}")  # 2..4
        s = c.stream()
        await s.create_ok("f")  # from now
        await s.create_ok("f", start_revision=7)
        await s.progress()  # the future watcher has not reached its start revision: nothing
        # a stream's requests are handled in order: once this one is answered, the progress
        # request was handled before the puts below (which travel on other calls)
        await s.create_ok("g")
        for i in range(4):
            await c.put("f", f"new{i}")  # 5..8
        resps = await s.recv_n(6)  # id 0: 5, 6, 7, 8; id 1: 7, 8
        await s.progress()  # now both are synced and past their start
        resps.append(await s.recv())
        return [fmt(r) for r in sorted(resps, key=lambda r: (r.watch_id, r.header.revision))]

    got, want = await both(pair, script)
    assert want[0] == "id=-1 rev=8 term=2 PROGRESS", want
    assert [line.split()[:2] for line in want[1:]] == [
        ["id=0", "rev=5"],
        ["id=0", "rev=6"],
        ["id=0", "rev=7"],
        ["id=0", "rev=8"],
        ["id=1", "rev=7"],
        ["id=1", "rev=8"],
    ]
    assert got == want


async def test_watch_ids_client_chosen_and_duplicate(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        s = c.stream()
        out = []
        # explicit 7, its duplicate, auto 0, explicit 2, auto 1, auto 3 (skips 2), duplicates of 1 and 3
        for key, wid in [
            ("a", 7),
            ("b", 7),
            ("c", 0),
            ("d", 2),
            ("e", 0),
            ("f", 0),
            ("g", 1),
            ("h", 0),
            ("i", 3),
        ]:
            await s.create(key, watch_id=wid)
            out.append(fmt(await s.recv()))
        await c.put("a", "1")
        await c.put("b", "1")  # the refused duplicate watches nothing
        await c.put("h", "1")
        resps = await s.recv_n(2)
        out += sorted(fmt(r) for r in resps)
        return out

    got, want = await both(pair, script)
    assert want[1] == f"id=-1 rev=1 term=2 created canceled reason={DUPLICATE_ID!r}", want
    assert got == want


async def test_create_errors_keep_the_stream(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        await c.put("k", "v")
        s = c.stream()
        out = []
        kws: list[dict[str, Any]] = [
            {"key": b"b", "range_end": b"a"},
            {"key": b"a", "range_end": b"a"},
            {"key": b"a", "start_revision": -1},
            {"key": b"a", "start_revision": -100, "watch_id": 5},
            {"key": b"a", "range_end": b"b", "start_revision": 0},  # fine: id 0
        ]
        for kw in kws:
            await s.call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(**kw)))
            out.append(fmt(await s.recv()))
        await c.put("a", "1")
        out.append(fmt(await s.recv()))
        return out

    got, want = await both(pair, script)
    assert want[0] == f"id=-1 rev=2 term=2 created canceled reason={EMPTY_RANGE!r}", want
    # a negative start revision: etcd answers with rpctypes.ErrCompacted's text, "etcdserver: " included
    assert want[2] == f"id=-1 rev=2 term=2 created canceled reason={NEGATIVE_REV!r}", want
    assert got == want


async def test_cancel(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        s = c.stream()
        out = []
        wid = await s.create_ok("a")
        await c.put("a", "1")
        out.append(fmt(await s.recv()))
        await s.cancel(wid)
        out.append(fmt(await s.recv()))
        await s.cancel(wid)  # already canceled: no response
        await s.cancel(99)  # unknown: no response
        await c.put("a", "2")  # no event for the canceled watcher
        await s.create("a")
        out.append(fmt(await s.recv()))  # must be the created response (id 1, not reused)
        await c.put("a", "3")
        out.append(fmt(await s.recv()))
        return out

    got, want = await both(pair, script)
    assert want[1] == "id=0 rev=2 term=2 canceled", want
    assert got == want


async def test_compacted_start_revision(pair: Differential) -> None:
    async def script(c: Client) -> dict[str, Any]:
        for i in range(10):
            await c.put("k", f"v{i}")  # 2..11
        await c.compact(6)
        s = c.stream()
        await s.create("k", start_revision=3)  # id 0: compacted
        await s.create("k", start_revision=6)  # id 1: the compaction revision itself is fine
        await s.create("k", start_revision=1)  # id 2: compacted
        await s.create("k", start_revision=6, prev_kv=True)  # id 3: revision 6's prev is compacted
        resps = await s.recv_n(8)
        await c.put("k", "live")  # 12: ids 1 and 3
        resps += await s.recv_n(2)
        return {"created": created_order(resps), "by_id": by_id(resps)}

    got, want = await both(pair, script)
    # etcd's compaction response carries revision 0 in its header
    assert want["by_id"][0] == ["id=0 rev=11 term=2 created", "id=0 rev=0 term=2 canceled compact_revision=6"]
    assert want["by_id"][2][1] == "id=2 rev=0 term=2 canceled compact_revision=6", want
    assert "prev" not in want["by_id"][3][1].split("] [")[0], want
    assert got == want


async def test_filters(pair: Differential) -> None:
    noput, nodelete = pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NODELETE

    async def script(c: Client) -> dict[int, list[str]]:
        s = c.stream()
        await s.create_ok("p", range_end=b"q", filters=[noput])  # 0
        await s.create_ok("p", range_end=b"q", filters=[nodelete])  # 1
        await s.create_ok("p", range_end=b"q", filters=[noput, nodelete])  # 2: sees nothing
        await s.create_ok("p", range_end=b"q", filters=[noput], prev_kv=True)  # 3
        await c.put("p1", "1")
        await c.put("p2", "2")
        await c.delete("p1")
        await c.txn(put_op("p3", "3"), del_op("p2"))  # one revision, a put and a delete
        await c.put("p4", "end")
        await c.delete("p4")
        resps = await s.recv_n(10)
        await s.progress()  # its response comes after every event response: nothing else came
        resps += await s.recv_until(lambda r: r.watch_id == -1)
        return by_id(resps)

    got, want = await both(pair, script)
    assert 2 not in want and len(want[0]) == 3 and len(want[1]) == 4, want
    assert got == want


async def test_prev_kv(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        s = c.stream()
        await s.create_ok("p", range_end=b"q", prev_kv=True)
        await c.put("p1", "a")  # create: no prev
        await c.put("p1", "b")  # modify: prev a
        await c.delete("p1")  # delete: prev b
        await c.put("p1", "c")  # created again: no prev
        await c.txn(put_op("p2", "x"), put_op("p1", "d"))  # p2 no prev, p1 prev c
        await c.put("p3", "y")
        await c.delete("p", "q")  # p1, p2, p3 with their prevs
        resps = await s.recv_n(7)
        return [fmt(r) for r in resps]

    got, want = await both(pair, script)
    assert "prev" not in want[0] and "prev(p1=a" in want[1] and "prev(p1=b" in want[2], want
    assert got == want


async def test_progress_request_zero_synced_and_future(pair: Differential) -> None:
    async def script(c: Client) -> list[str]:
        await c.put("x", "1")
        s = c.stream()
        out = []
        await s.progress()  # zero watchers: etcd sends nothing
        await s.create("a")
        out.append(fmt(await s.recv()))  # so the next response is the created one
        await s.progress()  # one synced watcher
        out.append(fmt(await s.recv()))
        await c.put("y", "1")
        await s.progress()  # the revision moved on
        out.append(fmt(await s.recv()))
        await s.create("b", start_revision=10)  # future: not synced until revision 10
        out.append(fmt(await s.recv()))
        await s.progress()  # nothing
        await s.cancel(1)
        out.append(fmt(await s.recv()))  # so the next response is the cancel
        await s.progress()
        out.append(fmt(await s.recv()))
        return out

    got, want = await both(pair, script)
    assert want == [
        "id=0 rev=2 term=2 created",
        "id=-1 rev=2 term=2 PROGRESS",
        "id=-1 rev=3 term=2 PROGRESS",
        "id=1 rev=3 term=2 created",
        "id=1 rev=3 term=2 canceled",
        "id=-1 rev=3 term=2 PROGRESS",
    ], want
    assert got == want


async def test_progress_request_with_unsynced_watcher_far_behind(pair: Differential) -> None:
    """A watcher from revision 1 with 2400 revisions of history needs three catch-up passes 100 ms
    apart (1000 revisions per watcher per pass): a progress request sent right behind its create
    request finds it unsynced and gets no response; once it has caught up, one gets the current
    revision."""
    total = 2400

    async def script(c: Client) -> list[str]:
        sem = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with sem:
                await c.put(f"far/{i % 50}", str(i))

        await asyncio.gather(*(put(i) for i in range(total)))
        cur = await c.rev()
        assert cur == total + 1
        s = c.stream()
        # the progress request right behind the create request: the watcher is still far behind
        await s.create("far/", range_end=b"far0", start_revision=1)
        await s.progress()
        created = await s.recv()
        assert created.created and not created.canceled, fmt(created)
        resps = await s.recv_until(
            lambda r: r.header.revision == cur and bool(r.events) and (r.events[-1].kv.mod_revision == cur)
        )
        await s.progress()
        resps.append(await s.recv())
        seen = [ev.kv.mod_revision for r in resps for ev in r.events]
        assert seen == list(range(2, cur + 1))
        return [
            f"id={r.watch_id} rev={r.header.revision} events={len(r.events)}"
            + (f" {r.events[0].kv.mod_revision}..{r.events[-1].kv.mod_revision}" if r.events else " PROGRESS")
            for r in resps
        ]

    got, want = await both(pair, script)
    assert [line for line in want if "PROGRESS" in line] == [f"id=-1 rev={total + 1} events=0 PROGRESS"], want
    assert got == want


async def test_periodic_progress_notify(pair: Differential) -> None:
    """--watch-progress-notify-interval=500ms: idle watchers that asked get a progress response about
    every 0.5 s with the current revision (never 0, never going back); others get nothing."""

    async def script(c: Client) -> list[str]:
        s = c.stream()
        await s.create_ok("quiet")  # id 0: no progress_notify
        await s.create_ok("idle", progress_notify=True)  # id 1
        resps: list[pb.WatchResponse] = []
        floor = await c.rev()
        deadline = time.monotonic() + 15
        while len(resps) < 3 and time.monotonic() < deadline:
            rev = await c.put("elsewhere", str(len(resps)))  # the revision moves on
            r = await s.recv(timeout=5)
            assert r.header.revision >= floor, fmt(r)  # at least what was written before the last one
            floor = rev
            resps.append(r)
        # writes stop: the next notification reports the final revision
        final = await c.rev()
        resps.append(await s.recv(timeout=5))
        assert resps[-1].header.revision == final, fmt(resps[-1])
        revs = [r.header.revision for r in resps]
        assert all(rv > 0 for rv in revs) and revs == sorted(revs), revs
        return [f"id={r.watch_id} {'PROGRESS' if is_progress(r) else fmt(r)}" for r in resps]

    got, want = await both(pair, script)
    assert want == ["id=1 PROGRESS"] * 4
    assert got == want


async def test_fragments(pair: Differential) -> None:
    """Responses above --max-request-bytes + 512 KiB of gRPC overhead are split for watchers that
    asked for fragments (never splitting one event): the catch-up of 70 x 10 KiB values from
    revision 1, and one revision deleting them all with prev_kv (about 700 KiB)."""
    value = "v" * 10 * 1024
    delete = kv_pb2.Event.DELETE

    async def script(c: Client) -> dict[str, Any]:
        s = c.stream()
        live = await s.create_ok("big/", range_end=b"big0", fragment=True, prev_kv=True)
        whole = await s.create_ok("big/", range_end=b"big0", prev_kv=True)  # no fragments: one response
        for i in range(0, 70, 5):
            await c.txn(*(put_op(f"big/{j:03}", value) for j in range(i, i + 5)))  # about 50 KiB each
        history = c.stream()
        await history.create("big/", range_end=b"big0", start_revision=1, fragment=True)
        hist = await history.recv_until(lambda r: bool(r.events) and not r.fragment)
        await c.delete("big/", "big0")
        resps: list[pb.WatchResponse] = []
        seen: set[int] = set()
        while seen != {live, whole}:
            r = await s.recv()
            resps.append(r)
            if r.events and r.events[0].type == delete and not r.fragment:
                seen.add(int(r.watch_id))
        deletes = [r for r in resps if r.events and r.events[0].type == delete]
        assert all(r.ByteSize() < FRAGMENT_LIMIT for r in hist + deletes if r.fragment)
        return {
            "history": [fmt(r, events=False) for r in hist],
            "history_keys": [ev.kv.key.decode() for r in hist for ev in r.events],
            "deletes": by_id(deletes, events=False),
            "delete_keys": [ev.kv.key.decode() for r in deletes if r.watch_id == live for ev in r.events],
            # put events per watcher: how many responses carry them depends on how far the
            # client lags (a lagging watcher's pending revisions are sent together, in etcd too)
            "puts": {
                wid: sum(len(r.events) for r in resps if r not in deletes and r.watch_id == wid)
                for wid in (live, whole)
            },
        }

    got, want = await both(pair, script)
    assert [line.split()[3:] for line in want["history"]] == [
        ["created", "events=0"],
        ["fragment", "events=57"],
        ["events=13"],
    ], want
    assert want["deletes"] == {
        0: ["id=0 rev=16 term=2 fragment events=57", "id=0 rev=16 term=2 events=13"],
        1: ["id=1 rev=16 term=2 events=70"],
    }, want
    assert len(want["history_keys"]) == 70 and len(want["delete_keys"]) == 70, want
    assert got == want


async def test_concurrent_writers_and_watchers_petcd(petcd_only: Member) -> None:
    """4 writers x 200 puts of 8 KiB values over a prefix (every 20th a txn of two keys) while
    watchers on separate streams watch it from revision 1: one reads promptly, one reads slowly
    (50 ms between reads for its first second) and one reads nothing until the writers are done
    (its stream backs up: flow control, then a full server-side buffer, then catch-up from the
    store; 6.4 MB, past every buffer on the way). Every watcher gets every revision exactly once,
    in order, each revision's events in one response."""
    c = Client(petcd_only)
    value = "w" * 8192
    calls: list[Any] = []
    # the stalled watcher's own connection keeps HTTP/2 flow control at its initial 64 KiB window
    # (no BDP probing), so that not reading soon stops the server from sending
    small_window = grpc.aio.insecure_channel(
        petcd_only.client_url.split("://", 1)[1],
        options=[
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 65536),
            # its catch-up responses are as large as etcd's (clientv3 receives any size)
            ("grpc.max_receive_message_length", -1),
        ],
    )
    try:
        start = await c.rev()
        for stub in [c.watch_stub, c.watch_stub, pb_grpc.WatchStub(small_window)]:
            call = stub.Watch()
            calls.append(call)
            await call.write(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(key=b"cw/", range_end=b"cw0", start_revision=1)
                )
            )
            created = await asyncio.wait_for(call.read(), 10)
            assert isinstance(created, pb.WatchResponse), created
            assert created.created and not created.canceled, fmt(created)
        writers_done = asyncio.Event()

        async def writer(n: int) -> None:
            for i in range(200):
                if i % 20 == 0:
                    await c.txn(put_op(f"cw/{n}/{i}", "t"), put_op(f"cw/{n}/x{i}", "t"))
                else:
                    await c.put(f"cw/{n}/{i}", value)

        async def reader(call: Any, mode: str) -> list[pb.WatchResponse]:
            out: list[pb.WatchResponse] = []
            if mode == "stalled":
                await writers_done.wait()
            t0 = time.monotonic()
            while True:
                if mode == "slow" and time.monotonic() - t0 < 1.0:
                    await asyncio.sleep(0.05)
                r = await asyncio.wait_for(call.read(), 30)
                assert r is not grpc.aio.EOF, f"{mode} watch stream ended"
                out.append(r)
                if any(ev.kv.key == b"cw/end" for ev in r.events):
                    return out

        readers = [
            asyncio.create_task(reader(call, mode))
            for call, mode in zip(calls, ["prompt", "slow", "stalled"], strict=True)
        ]
        await asyncio.gather(*(writer(n) for n in range(4)))
        final = await c.put("cw/end", "end")
        writers_done.set()
        results = await asyncio.wait_for(asyncio.gather(*readers), 60)
        # the stalled watcher really fell behind: it caught up with multi-revision responses
        stalled_batch = max(len({ev.kv.mod_revision for ev in r.events}) for r in results[2])
        assert stalled_batch > 1, "the stalled watcher never fell behind: the test lost its point"
        assert final == start + 4 * 200 + 1
        for idx, resps in enumerate(results):
            revs: list[int] = []
            for r in resps:
                assert not r.canceled and not r.created and not r.compact_revision, fmt(r)
                if not r.events:
                    continue  # a progress response
                rs = [ev.kv.mod_revision for ev in r.events]
                assert rs == sorted(rs), f"watcher {idx}: events out of order in {fmt(r, False)}"
                assert r.header.revision >= rs[-1], fmt(r, False)
                # the events of one revision arrive together: a txn's two keys in the same response
                for rev in set(rs):
                    keys = [ev.kv.key for ev in r.events if ev.kv.mod_revision == rev]
                    is_txn = any(k.count(b"/") == 2 and k.split(b"/")[2].startswith(b"x") for k in keys)
                    assert len(keys) == (2 if is_txn else 1), f"watcher {idx}: revision {rev} has {keys}"
                revs.extend(dict.fromkeys(rs))
            missing = sorted(set(range(start + 1, final + 1)) - set(revs))
            dups = len(revs) - len(set(revs))
            assert not missing and not dups, f"watcher {idx}: missing {missing[:20]}, {dups} duplicated"
            assert revs == list(range(start + 1, final + 1)), f"watcher {idx}: revisions out of order"
    finally:
        for call in calls:
            call.cancel()
        await small_window.close()
        await c.close()
