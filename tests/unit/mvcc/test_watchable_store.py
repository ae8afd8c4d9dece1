"""The watchable store against a model of the watch guarantees etcd's robustness suite checks.

We test these aspects:
- ordered, unique, reliable: a watcher receives every event of its range from its start
  revision, in revision order, without gaps or duplicates;
- atomic: the events of one revision reach a watcher in one response;
- bookmarkable: a progress response with revision R comes only after every event <= R;
- resumable: a watcher created at (last revision seen + 1) continues exactly where another
  left off;
- compaction: a watcher whose next revision was compacted gets one compaction response, then
  nothing;
- slow consumers: with tiny channels that are drained rarely, watchers go through
  synced -> victim -> unsynced -> synced and still receive everything, and writes never block.
All driven synchronously (no event loop, no clock): the test plays the server's loops.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.api.mvccpb.kv_pb2 import Event
from server.backend.lmdb_backend import LmdbBackend
from server.mvcc import watchable_store, watcher_group
from server.mvcc.kv import CompactedError
from server.mvcc.watchable_store import WatchableStore
from server.mvcc.watcher import INVALID_WATCH_ID, Channel, WatchResponse, WatchStream

KEYS = [b"a", b"ab", b"b", b"c"]
RANGES: list[tuple[bytes, bytes | None]] = [(b"a", None), (b"a", b"b"), (b"b", b""), (b"\x00", b"")]


class NoLeases:
    def get_lease(self, key: bytes) -> int:
        return 0

    def attach(self, lease_id: int, keys: list[bytes]) -> None:
        pass

    def detach(self, lease_id: int, keys: list[bytes]) -> None:
        pass


@dataclass
class Seen:
    key: bytes
    end: bytes | None
    start: int
    events: list[tuple[int, int, bytes, bytes]] = field(default_factory=list)  # (rev, type, key, value)
    compacted_at: int = 0
    canceled: bool = False

    def contains(self, k: bytes) -> bool:
        if self.end is None:
            return k == self.key
        return self.key <= k and (self.end == b"" or k < self.end)


class WatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.history: dict[int, list[tuple[int, bytes, bytes]]] = {}  # rev -> events
        self.streams: list[WatchStream] = []
        self.seen: dict[tuple[int, int], Seen] = {}  # (stream index, watch id) -> what it got
        self.pending_progress: dict[int, list[set[int]]] = {}  # stream -> watchers each progress covers

    @initialize(path=st.just(None))
    def setup(self, path: None) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.backend = LmdbBackend(str(Path(self.dir) / "db"), fsync=False)
        self.store, _ = WatchableStore.open(self.backend, NoLeases())
        # tiny limits, so catch-up passes split histories and batches
        self._limits = (watcher_group.WATCH_BATCH_MAX_REVS, watchable_store.SYNC_SCAN_REVS)
        watcher_group.WATCH_BATCH_MAX_REVS, watchable_store.SYNC_SCAN_REVS = 2, 3

    def teardown(self) -> None:
        if hasattr(self, "backend"):
            try:
                self.settle()
                self.check_all()
            finally:
                watcher_group.WATCH_BATCH_MAX_REVS, watchable_store.SYNC_SCAN_REVS = self._limits
                self.backend.close()

    # -- writes -----------------------------------------------------------------------------------

    def _write(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        tw = self.store.write()
        for key, value in ops:
            if value is None:
                tw.delete_range(key, None)
            else:
                tw.put(key, value, 0)
        changes = [(c.key, c.value, c.create_revision) for c in tw.changes()]
        rev = tw.rev()
        tw.end()
        if changes:
            self.history[rev] = [
                (Event.DELETE if create == 0 else Event.PUT, key, value) for key, value, create in changes
            ]

    @rule(key=st.sampled_from(KEYS), value=st.binary(min_size=1, max_size=3))
    def put(self, key: bytes, value: bytes) -> None:
        self._write([(key, value)])

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: bytes) -> None:
        self._write([(key, None)])

    @rule(
        ops=st.lists(
            st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.binary(min_size=1, max_size=2))),
            min_size=2,
            max_size=4,
            unique_by=lambda op: op[0],
        )
    )
    def txn(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        self._write(ops)

    # -- watchers ---------------------------------------------------------------------------------

    @rule(capacity=st.integers(1, 3))
    def new_stream(self, capacity: int) -> None:
        self.streams.append(self.store.new_watch_stream(Channel(capacity)))

    @precondition(lambda self: self.streams)
    @rule(data=st.data(), rng=st.sampled_from(RANGES))
    def watch(self, data: st.DataObject, rng: tuple[bytes, bytes | None]) -> None:
        si = data.draw(st.integers(0, len(self.streams) - 1))
        cur = self.store.current_rev
        start = data.draw(st.one_of(st.just(0), st.integers(1, cur + 2)))
        ws = self.streams[si]
        wid = ws.watch(0, rng[0], rng[1], start)
        effective = start if start else cur + 1
        self.seen[(si, wid)] = Seen(rng[0], rng[1], effective)

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        si, wid = data.draw(st.sampled_from(sorted(self.seen)))
        ws = self.streams[si]
        if wid in ws.watchers:
            ws.cancel(wid)
            self.drain(si)  # events queued before the cancel still count
            self.seen[(si, wid)].canceled = True

    @precondition(lambda self: self.streams)
    @rule(data=st.data())
    def drain_one(self, data: st.DataObject) -> None:
        self.drain(data.draw(st.integers(0, len(self.streams) - 1)))

    @rule()
    def sync(self) -> None:
        self.store.sync_watchers()

    @rule()
    def move_victims(self) -> None:
        self.store.move_victims()

    @precondition(lambda self: self.streams)
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        si = data.draw(st.integers(0, len(self.streams) - 1))
        ws = self.streams[si]
        before = len(ws.ch)
        ws.request_progress_all()
        if len(ws.ch) > before:
            # the bookmark covers the watchers the stream has now
            self.pending_progress.setdefault(si, []).append(set(ws.watchers))

    @precondition(lambda self: self.store.current_rev > 2)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        low = max(self.store.compact_main_rev + 1, 1)
        if low > self.store.current_rev:
            return
        rev = data.draw(st.integers(low, self.store.current_rev))
        self.store.compact(rev).run()

    # -- delivery checks --------------------------------------------------------------------------

    def drain(self, si: int) -> None:
        ws = self.streams[si]
        for item in ws.ch.drain():
            assert isinstance(item, WatchResponse)
            if item.watch_id == INVALID_WATCH_ID:
                # a progress response: everything up to its revision was delivered to all
                covered = self.pending_progress[si].pop(0)
                for (sj, wid), seen in self.seen.items():
                    if sj == si and wid in covered and not seen.canceled and not seen.compacted_at:
                        assert self.expected(seen, upto=item.revision) == seen.events, (
                            "progress before events"
                        )
                continue
            seen = self.seen[(si, item.watch_id)]
            assert not seen.canceled and not seen.compacted_at, "delivery after cancel/compaction"
            if item.compact_revision:
                nxt = seen.events[-1][0] + 1 if seen.events else seen.start
                assert nxt < item.compact_revision
                seen.compacted_at = item.compact_revision
                continue
            revs = [ev.kv.mod_revision for ev in item.events]
            assert revs == sorted(revs)
            for rev in set(revs):
                wanted = [e for e in self.history[rev] if seen.contains(e[1])]
                got = [(ev.type, ev.kv.key, ev.kv.value) for ev in item.events if ev.kv.mod_revision == rev]
                assert got == [(t, k, v if t == Event.PUT else b"") for t, k, v in wanted], "revision split"
            seen.events.extend((ev.kv.mod_revision, ev.type, ev.kv.key, ev.kv.value) for ev in item.events)
            if item.revision:
                assert item.revision >= max(revs)

    def expected(self, seen: Seen, upto: int | None = None) -> list[tuple[int, int, bytes, bytes]]:
        last = self.store.current_rev if upto is None else upto
        out = []
        for rev in range(seen.start, last + 1):
            for t, k, v in self.history.get(rev, []):
                if seen.contains(k):
                    out.append((rev, t, k, v if t == Event.PUT else b""))
        return out

    @invariant()
    def writes_never_blocked(self) -> None:
        # the store accepted every write; history is dense from 2 to the current revision
        assert sorted(self.history) == list(range(2, self.store.current_rev + 1))

    def settle(self) -> None:
        for _ in range(1000):
            for si in range(len(self.streams)):
                self.drain(si)
            self.store.move_victims()
            self.store.sync_watchers()
            if (
                not self.store.unsynced
                and not self.store.victims
                and not any(len(ws.ch) for ws in self.streams)
            ):
                return
        raise AssertionError("watchers never caught up")

    def check_all(self) -> None:
        for seen in self.seen.values():
            if seen.canceled or seen.compacted_at:
                want = self.expected(seen)
                assert seen.events == want[: len(seen.events)]
            else:
                assert seen.events == self.expected(seen)


TestWatchModel = WatchMachine.TestCase
TestWatchModel.settings = settings(
    max_examples=int(__import__("os").environ.get("PETCD_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
)


# -- focused scenarios ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> WatchableStore:
    backend = LmdbBackend(str(tmp_path / "db"), fsync=False)
    s, _ = WatchableStore.open(backend, NoLeases())
    return s


def put(s: WatchableStore, key: bytes, value: bytes) -> int:
    tw = s.write()
    tw.put(key, value, 0)
    rev = tw.rev()
    tw.end()
    return rev


def test_synced_watcher_gets_each_revision_in_one_response(store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"a", b"", 0)
    tw = store.write()
    tw.put(b"a", b"1", 0)
    tw.put(b"b", b"2", 0)
    tw.end()
    (resp,) = ws.ch.drain()
    assert isinstance(resp, WatchResponse) and resp.watch_id == wid and resp.revision == 2
    assert [ev.kv.key for ev in resp.events] == [b"a", b"b"]


@pytest.mark.parametrize(
    ("start", "group"), [(0, "synced"), (1, "unsynced"), (2, "unsynced"), (3, "synced"), (9, "synced")]
)
def test_new_watcher_group(store: WatchableStore, start: int, group: str) -> None:
    put(store, b"a", b"1")  # revision 2
    w = store.watch(b"a", None, start, 0, Channel())
    assert (w in store.synced) == (group == "synced")
    assert w.min_rev == (start if group == "unsynced" else max(3, start))


def test_slow_consumer_becomes_victim_then_catches_up(store: WatchableStore) -> None:
    ch = Channel(capacity=1)
    ws = store.new_watch_stream(ch)
    wid = ws.watch(0, b"k", None, 0)
    w = ws.watchers[wid]
    put(store, b"k", b"1")
    put(store, b"k", b"2")  # channel full: victim
    assert w.victim and w not in store.synced and store.victims
    put(store, b"k", b"3")  # a victim is in no group: writes go on regardless
    assert store.move_victims() == 0  # still full
    got = [r.events for r in ch.drain() if isinstance(r, WatchResponse)]
    assert store.move_victims() == 1  # revision 3 is behind: back to unsynced
    assert w in store.unsynced
    got += [r.events for r in ch.drain() if isinstance(r, WatchResponse)]
    store.sync_watchers()
    got += [r.events for r in ch.drain() if isinstance(r, WatchResponse)]
    assert w in store.synced
    assert [ev.kv.value for evs in got for ev in evs] == [b"1", b"2", b"3"]


def test_compacted_start_gets_compaction_response(store: WatchableStore) -> None:
    for i in range(4):
        put(store, b"k", str(i).encode())  # revisions 2..5
    store.compact(4).run()
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"k", None, 2)
    store.sync_watchers()
    (resp,) = ws.ch.drain()
    assert isinstance(resp, WatchResponse)
    assert (resp.watch_id, resp.compact_revision, resp.events) == (wid, 4, ())
    assert not store.unsynced and not store.synced
    with pytest.raises(CompactedError):
        store.read().range(
            b"k", None, __import__("server.mvcc.kv", fromlist=["RangeOptions"]).RangeOptions(rev=3)
        )


def test_watch_at_compaction_revision_sees_history(store: WatchableStore) -> None:
    for i in range(4):
        put(store, b"k", str(i).encode())
    store.compact(4).run()
    ws = store.new_watch_stream()
    ws.watch(0, b"k", None, 4)
    store.sync_watchers()
    (resp,) = ws.ch.drain()
    assert isinstance(resp, WatchResponse)
    assert [ev.kv.mod_revision for ev in resp.events] == [4, 5]


def test_progress_only_when_all_synced(store: WatchableStore) -> None:
    for i in range(3):
        put(store, b"k", str(i).encode())
    ws = store.new_watch_stream()
    ws.watch(0, b"k", None, 0)
    ws.watch(0, b"k", None, 2)  # unsynced
    assert ws.request_progress_all() is False
    assert ws.ch.drain() == []
    store.sync_watchers()
    ws.ch.drain()
    assert ws.request_progress_all() is True
    (resp,) = ws.ch.drain()
    assert resp == WatchResponse(INVALID_WATCH_ID, (), store.current_rev)


def test_progress_with_no_watchers_sends_nothing(store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    assert ws.request_progress_all() is True
    assert ws.ch.drain() == []


def test_catch_up_in_bounded_batches(store: WatchableStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.mvcc.watcher_group as wg

    monkeypatch.setattr(wg, "WATCH_BATCH_MAX_REVS", 3)
    revs = [put(store, b"k", str(i).encode()) for i in range(10)]
    ws = store.new_watch_stream()
    ws.watch(0, b"k", None, 1)
    batches = []
    for _ in range(10):
        store.sync_watchers()
        batches += [r for r in ws.ch.drain() if isinstance(r, WatchResponse)]
        if not store.unsynced:
            break
    assert [len(b.events) for b in batches] == [3, 3, 3, 1]
    assert [ev.kv.mod_revision for b in batches for ev in b.events] == revs


def test_resume_from_last_revision_plus_one(store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    ws.watch(0, b"\x00", b"", 1)
    for i in range(5):
        put(store, bytes([97 + i]), b"v")
    store.sync_watchers()
    first = [ev.kv.mod_revision for r in ws.ch.drain() if isinstance(r, WatchResponse) for ev in r.events][:3]
    ws2 = store.new_watch_stream()
    ws2.watch(0, b"\x00", b"", first[-1] + 1)
    store.sync_watchers()
    rest = [ev.kv.mod_revision for r in ws2.ch.drain() if isinstance(r, WatchResponse) for ev in r.events]
    assert first + rest == list(range(2, store.current_rev + 1))


def test_many_idle_watchers_share_a_range(store: WatchableStore) -> None:
    streams = [store.new_watch_stream() for _ in range(50)]
    for ws in streams:
        ws.watch(0, b"/registry/", b"/registry0", 0)
    put(store, b"/registry/pods/x", b"v")
    counts = [len(ws.ch.drain()) for ws in streams]
    assert counts == [1] * 50
    assert len(store.synced._ranges) == 1  # one distinct range for all of them


def test_cancel_victim_removes_it(store: WatchableStore) -> None:
    ws = store.new_watch_stream(Channel(capacity=1))
    wid = ws.watch(0, b"k", None, 0)
    put(store, b"k", b"1")
    put(store, b"k", b"2")
    assert store.victims
    ws.cancel(wid)
    assert all(not batch for batch in store.victims)
    ws.ch.drain()
    store.move_victims()
    assert list(itertools.chain(ws.ch.drain())) == []
