"""The store with watchers (etcd's watchable_store.go and watchable_store_txn.go).

Every watcher is in exactly one place:

    synced   -- caught up: the end of each write transaction hands it that revision's events
                directly (notify), all events of one revision in one response.
    unsynced -- behind (created with a past start revision, or just back from being a victim):
                sync_watchers() catches up to 512 of them per pass from the backend, at most
                1000 revisions per watcher per pass, then moves the caught-up ones to synced.
    victims  -- its stream's channel was full when events were due: the undelivered batch waits
                in a victim batch; move_victims() retries it and moves the watcher back to synced
                or unsynced. Writers never wait for a slow reader, and a slow reader holds at most
                one batch here; everything later is re-read from the backend when it catches up.

Nothing here runs by itself: the server calls sync_watchers() every WATCH_RESYNC_PERIOD while
watchers are unsynced, and move_victims() when a stream's channel drains (or every 10 ms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from server.api.mvccpb.kv_pb2 import Event, KeyValue
from server.backend.backend import Backend
from server.backend.schema import Bucket
from server.mvcc.kv import LeaseTracker
from server.mvcc.kvstore import Compaction, KVStore
from server.mvcc.kvstore_txn import StoreTxnWrite
from server.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes
from server.mvcc.watcher import Channel, FilterFunc, SharedEvents, Watcher, WatchResponse, WatchStream
from server.mvcc.watcher_group import WatcherBatch, WatcherGroup, new_watcher_batch

__all__ = ["WATCH_RESYNC_PERIOD", "WatchableStore"]

# seconds between catch-up passes while watchers are unsynced (non-const for tests)
WATCH_RESYNC_PERIOD = 0.1
MAX_WATCHERS_PER_SYNC = 512
# revisions one catch-up pass reads from the backend at most
SYNC_SCAN_REVS = 10_000


class WatchableStore(KVStore):
    def __init__(self, backend: Backend, lessor: LeaseTracker) -> None:
        super().__init__(backend, lessor)
        self.synced = WatcherGroup()
        self.unsynced = WatcherGroup()
        self.victims: list[WatcherBatch] = []
        # called when there is catch-up work (unsynced watchers or victims)
        self.on_work: Callable[[], None] | None = None

    def restore(self) -> Compaction | None:
        """After the backend was replaced: every synced watcher must catch up from the new data
        (its min_rev may now be ahead of the restored revision: marked restore)."""
        job = super().restore()
        for w in list(self.synced.watchers):
            w.restore = True
            self.synced.delete(w)
            self.unsynced.add(w)
        if self.unsynced:
            self._wake()
        return job

    # -- writes notify synced watchers ------------------------------------------------------------

    def write(self) -> WatchableStoreTxnWrite:
        return WatchableStoreTxnWrite(self)

    def notify(self, rev: int, evs: list[Event]) -> None:
        victims: WatcherBatch = {}
        # watchers given the same events share them (and their encoding)
        shared: dict[tuple[int, ...], SharedEvents] = {}
        for w, eb in new_watcher_batch(self.synced, evs).items():
            if eb.revs != 1:
                raise AssertionError(f"notify with {eb.revs} revisions")
            key = tuple(map(id, eb.evs))
            se = shared.get(key)
            if se is None:
                se = shared[key] = SharedEvents(tuple(eb.evs))
            if not w.send(WatchResponse(w.id, se.events, rev, shared=se)):
                w.victim = True
                victims[w] = eb
                self.synced.delete(w)
            w.min_rev = rev + 1
        self._add_victims(victims)

    # -- watchers ---------------------------------------------------------------------------------

    def new_watch_stream(self, ch: Channel | None = None) -> WatchStream:
        return WatchStream(self, ch if ch is not None else Channel())

    def watch(
        self,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        watch_id: int,
        ch: Channel,
        filters: tuple[FilterFunc, ...] = (),
    ) -> Watcher:
        cur = self.current_rev
        if start_rev == 0 or start_rev > cur:
            w = Watcher(key, end, start_rev, max(cur + 1, start_rev), watch_id, ch, filters)
            self.synced.add(w)
        else:
            w = Watcher(key, end, start_rev, start_rev, watch_id, ch, filters)
            self.unsynced.add(w)
            self._wake()
        return w

    def cancel_watcher(self, w: Watcher) -> None:
        if not (self.unsynced.delete(w) or self.synced.delete(w)) and w.victim:
            for batch in self.victims:
                if batch.pop(w, None) is not None:
                    break
        w.ch = None

    def cut_watchers(self, key: bytes, end: bytes) -> int:
        """Cancel every watcher whose range meets [key, end) (end b"": every key >= key) as a
        watcher behind the compaction revision is canceled: one response carrying
        compact_revision, then nothing more (a fault injected on purpose, server/faults).
        Returns how many were cut."""
        compact_rev = self.compact_main_rev
        watchers = [*self.synced.watchers, *self.unsynced.watchers, *(w for b in self.victims for w in b)]
        cut = 0
        for w in watchers:
            ch = w.ch
            if ch is None or not _meets(w, key, end):
                continue
            self.cancel_watcher(w)
            w.compacted = True
            ch.put_control(WatchResponse(w.id, compact_revision=compact_rev))
            cut += 1
        return cut

    def progress_if_sync(self, watchers: dict[int, Watcher], response_id: int) -> bool:
        """If every watcher is synced (and past its start revision), send one progress response
        with the current revision through their (shared) channel; otherwise send nothing."""
        rev = self.current_rev
        for w in watchers.values():
            if w not in self.synced or rev < w.start_rev:
                return False
        for w in watchers.values():
            w.send(WatchResponse(response_id, (), rev))
            return True
        return True

    def _wake(self) -> None:
        if self.on_work is not None:
            self.on_work()

    def _add_victims(self, victims: WatcherBatch) -> None:
        if victims:
            self.victims.append(victims)
            self._wake()

    # -- catch-up -------------------------------------------------------------------------------

    def sync_watchers(self) -> int:
        """One catch-up pass; returns how many watchers are still unsynced.

        A pass reads at most SYNC_SCAN_REVS revisions from the backend, so memory stays bounded
        however far behind a watcher starts; watchers still behind stay unsynced."""
        if not self.unsynced:
            return 0
        cur_rev, compact_rev = self.current_rev, self.compact_main_rev
        wg, min_rev = self.unsynced.choose(MAX_WATCHERS_PER_SYNC, cur_rev, compact_rev)
        if wg is not self.unsynced:
            for w in [w for w in self.unsynced.watchers if w.compacted]:
                self.unsynced.delete(w)
        upto = min(cur_rev, min_rev + SYNC_SCAN_REVS - 1)
        batches = new_watcher_batch(wg, self._range_events(min_rev, upto + 1, wg))
        victims: WatcherBatch = {}
        for w in list(wg.watchers):
            if w.min_rev < compact_rev:
                continue  # its compaction response did not fit; retried next pass
            w.min_rev = max(upto + 1, w.min_rev)
            eb = batches.get(w)
            if eb is not None:
                if eb.more_rev:
                    w.min_rev = eb.more_rev
                if not w.send(WatchResponse(w.id, tuple(eb.evs), upto)):
                    w.victim = True
                    victims[w] = eb
                    self.unsynced.delete(w)
                    continue
            if w.min_rev > cur_rev:
                self.unsynced.delete(w)
                self.synced.add(w)
        self._add_victims(victims)
        return len(self.unsynced)

    def move_victims(self) -> int:
        """Retry every victim batch; returns how many were delivered."""
        victims, self.victims = self.victims, []
        moved = 0
        still: WatcherBatch = {}
        for batch in victims:
            for w, eb in batch.items():
                if not w.send(WatchResponse(w.id, tuple(eb.evs), w.min_rev - 1)):
                    still[w] = eb
                    continue
                moved += 1
            cur_rev = self.current_rev
            for w, eb in batch.items():
                if w in still:
                    continue
                w.victim = False
                if eb.more_rev:
                    w.min_rev = eb.more_rev
                if w.min_rev <= cur_rev:
                    self.unsynced.add(w)
                else:
                    self.synced.add(w)
        if still:
            self.victims.append(still)
        if self.unsynced:
            self._wake()
        return moved

    def _range_events(self, min_rev: int, max_rev: int, wg: WatcherGroup) -> list[Event]:
        start = rev_to_bytes(Revision(max(min_rev, 0), 0))
        end = rev_to_bytes(Revision(max_rev, 0))
        evs: list[Event] = []
        for raw_rev, raw_kv in self.backend.read_tx().range(Bucket.KEY, start, end):
            kv = KeyValue.FromString(raw_kv)
            if not wg.contains_key(kv.key):
                continue
            if is_tombstone(raw_rev):
                kv.mod_revision = bytes_to_rev(raw_rev).main
                evs.append(Event(type=Event.DELETE, kv=kv))
            else:
                evs.append(Event(type=Event.PUT, kv=kv))
        return evs


class WatchableStoreTxnWrite(StoreTxnWrite):
    """A write transaction whose end hands its events to the synced watchers."""

    def __init__(self, store: WatchableStore) -> None:
        super().__init__(store)
        self._ws = store

    def end(self) -> None:
        changes = self.changes()
        if changes and self._ws.synced:
            rev = self.rev()
            self._ws.notify(rev, list(_to_events(changes, rev)))
        super().end()


def _to_events(changes: Iterable[KeyValue], rev: int) -> Iterable[Event]:
    for kv in changes:
        if kv.create_revision == 0:
            kv.mod_revision = rev
            yield Event(type=Event.DELETE, kv=kv)
        else:
            yield Event(type=Event.PUT, kv=kv)


def _meets(w: Watcher, key: bytes, end: bytes) -> bool:
    """Whether w's range and [key, end) (end b"": unbounded) share a key."""
    if w.end is None:
        return key <= w.key and (end == b"" or w.key < end)
    below_end = end == b"" or w.key < end
    return below_end and (w.end == b"" or key < w.end)
