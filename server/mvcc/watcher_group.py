"""Groups of watchers and event batching (etcd's watcher_group.go).

A WatcherGroup finds the watchers interested in a key: single-key watchers by dict lookup;
range watchers grouped by their exact range (many watchers usually share a few ranges, e.g.
one prefix per Kubernetes resource), so a lookup tests each distinct range once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from server.api.mvccpb.kv_pb2 import Event
from server.mvcc.watcher import Watcher, WatchResponse

__all__ = ["EventBatch", "WatcherGroup", "new_watcher_batch"]

# distinct revisions one sync delivers to a watcher; the rest waits for the next pass
# (non-const so tests can shrink it)
WATCH_BATCH_MAX_REVS = 1000


@dataclass(slots=True)
class EventBatch:
    evs: list[Event] = field(default_factory=list)
    # distinct revisions in evs
    revs: int = 0
    # the first revision left out because the batch was full (0: nothing left out)
    more_rev: int = 0

    def add(self, ev: Event) -> None:
        if self.revs > WATCH_BATCH_MAX_REVS:
            return
        if not self.evs:
            self.revs = 1
            self.evs.append(ev)
            return
        if ev.kv.mod_revision > self.evs[-1].kv.mod_revision:
            self.revs += 1
            if self.revs > WATCH_BATCH_MAX_REVS:
                self.more_rev = ev.kv.mod_revision
                return
        self.evs.append(ev)


WatcherBatch = dict[Watcher, EventBatch]


def new_watcher_batch(wg: WatcherGroup, evs: list[Event]) -> WatcherBatch:
    """Events grouped per interested watcher, keeping only revisions >= each watcher's min_rev."""
    wb: WatcherBatch = {}
    if not wg.watchers:
        return wb
    for ev in evs:
        rev = ev.kv.mod_revision
        for w in wg.watchers_for(ev.kv.key):
            if rev >= w.min_rev:
                eb = wb.get(w)
                if eb is None:
                    eb = wb[w] = EventBatch()
                eb.add(ev)
    return wb


class WatcherGroup:
    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self._keys: dict[bytes, set[Watcher]] = {}
        # (key, end) -> watchers of exactly that range
        self._ranges: dict[tuple[bytes, bytes], set[Watcher]] = {}

    def __len__(self) -> int:
        return len(self.watchers)

    def __contains__(self, w: Watcher) -> bool:
        return w in self.watchers

    def add(self, w: Watcher) -> None:
        if w in self.watchers:
            raise AssertionError("add watcher twice")
        self.watchers.add(w)
        if w.end is None:
            ws = self._keys.get(w.key)
            if ws is None:
                self._keys[w.key] = {w}
            else:
                ws.add(w)
        else:
            slot = (w.key, w.end)
            rws = self._ranges.get(slot)
            if rws is None:
                self._ranges[slot] = {w}
            else:
                rws.add(w)

    def delete(self, w: Watcher) -> bool:
        if w not in self.watchers:
            return False
        self.watchers.discard(w)
        if w.end is None:
            bucket, slot = self._keys, w.key
            ws = bucket.get(slot)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del bucket[slot]
        else:
            rslot = (w.key, w.end)
            rws = self._ranges.get(rslot)
            if rws is not None:
                rws.discard(w)
                if not rws:
                    del self._ranges[rslot]
        return True

    def watchers_for(self, key: bytes) -> set[Watcher]:
        """The watchers interested in key (do not mutate the result)."""
        sets = [ws for (start, end), ws in self._ranges.items() if start <= key and (end == b"" or key < end)]
        hit = self._keys.get(key)
        if hit is not None:
            sets.append(hit)
        if len(sets) == 1:
            return sets[0]
        return set().union(*sets)

    def contains_key(self, key: bytes) -> bool:
        if key in self._keys:
            return True
        return any(start <= key and (end == b"" or key < end) for start, end in self._ranges)

    def choose(self, max_watchers: int, cur_rev: int, compact_rev: int) -> tuple[WatcherGroup, int]:
        """Up to max_watchers watchers to sync in one pass, and the smallest revision they need.
        Watchers whose min_rev was compacted get a compaction response and leave the group."""
        if len(self.watchers) < max_watchers:
            return self, self.choose_all(cur_rev, compact_rev)
        ret = WatcherGroup()
        for w in self.watchers:
            if max_watchers <= 0:
                break
            max_watchers -= 1
            ret.add(w)
        return ret, ret.choose_all(cur_rev, compact_rev)

    def choose_all(self, cur_rev: int, compact_rev: int) -> int:
        min_rev = sys.maxsize
        for w in list(self.watchers):
            if w.min_rev > cur_rev:
                if not w.restore:
                    raise AssertionError(
                        f"watcher min revision {w.min_rev} exceeds current revision {cur_rev}"
                    )
                w.restore = False
            if w.min_rev < compact_rev:
                if w.ch is None or w.ch.try_send(WatchResponse(w.id, compact_revision=compact_rev)):
                    w.compacted = True
                    self.delete(w)
                continue
            min_rev = min(min_rev, w.min_rev)
        return min_rev
