"""Watchers and watch streams (etcd's watcher.go).

A WatchStream is one client stream's set of watchers. All its watchers deliver into one
bounded Channel; when the channel is full a delivery fails and the store makes the watcher a
victim instead of waiting (writers never block on a slow reader).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from server.api.mvccpb.kv_pb2 import Event
from server.errors import EtcdError

__all__ = [
    "AUTO_WATCH_ID",
    "INVALID_WATCH_ID",
    "Channel",
    "DuplicateWatchIDError",
    "EmptyWatcherRangeError",
    "FilterFunc",
    "WatchResponse",
    "WatchStream",
    "Watchable",
    "Watcher",
    "WatcherNotExistError",
]

AUTO_WATCH_ID = 0
INVALID_WATCH_ID = -1
# responses a stream may hold before its watchers become victims (etcd's chanBufLen);
# non-const so tests can shrink it
CHAN_BUF_LEN = 128

FilterFunc = Callable[[Event], bool]


class WatcherNotExistError(EtcdError):
    """mvcc: watcher does not exist"""


class EmptyWatcherRangeError(EtcdError):
    """mvcc: watcher range is empty"""


class DuplicateWatchIDError(EtcdError):
    """mvcc: duplicate watch ID provided on the WatchStream"""


@dataclass(frozen=True, slots=True)
class WatchResponse:
    watch_id: int
    events: tuple[Event, ...] = ()
    # the store revision the response reflects: every event up to it has been sent
    revision: int = 0
    # non-zero: the watcher's start revision was compacted; it is canceled
    compact_revision: int = 0


class Channel:
    """The bounded queue between the store (producer) and a stream's sender (consumer).

    Event and progress responses count against the capacity; control responses (created,
    canceled) do not, and keep their order relative to everything else.
    """

    def __init__(self, capacity: int | None = None, on_ready: Callable[[], None] | None = None) -> None:
        self.capacity = CHAN_BUF_LEN if capacity is None else capacity
        self._items: deque[object] = deque()
        self._counted = 0
        self.on_ready = on_ready
        self.closed = False

    def try_send(self, wr: WatchResponse) -> bool:
        if self.closed:
            return True  # nobody listens any more: drop, do not make victims
        if self._counted >= self.capacity:
            return False
        self._items.append(wr)
        self._counted += 1
        if self.on_ready is not None:
            self.on_ready()
        return True

    def put_control(self, item: object) -> None:
        if self.closed:
            return
        self._items.append(item)
        if self.on_ready is not None:
            self.on_ready()

    def drain(self) -> list[object]:
        items = list(self._items)
        self._items.clear()
        self._counted = 0
        return items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(eq=False, slots=True)
class Watcher:
    """One watch: key range, filters, and how far it has been served.

    Invariant: every event with revision < min_rev has been delivered (or the watcher is
    compacted); the next delivery starts at min_rev.
    """

    key: bytes
    # None: the single key; b"": every key >= key; otherwise [key, end)
    end: bytes | None
    start_rev: int
    min_rev: int
    id: int
    ch: Channel | None
    filters: tuple[FilterFunc, ...] = ()
    victim: bool = False
    compacted: bool = False
    # re-added after a store restore (snapshot install): min_rev may exceed the current revision
    restore: bool = False

    def contains(self, key: bytes) -> bool:
        if self.end is None:
            return key == self.key
        return self.key <= key and (self.end == b"" or key < self.end)

    def send(self, wr: WatchResponse) -> bool:
        """Deliver without blocking; False when the stream's channel is full."""
        progress = not wr.events
        if self.filters:
            wr = WatchResponse(
                wr.watch_id,
                tuple(ev for ev in wr.events if not any(f(ev) for f in self.filters)),
                wr.revision,
                wr.compact_revision,
            )
        if not progress and not wr.events:
            return True  # everything filtered out
        if self.ch is None:
            return True
        return self.ch.try_send(wr)


class Watchable(Protocol):
    """What a watch stream needs from the store (etcd's watchable interface)."""

    def watch(
        self,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        watch_id: int,
        ch: Channel,
        filters: tuple[FilterFunc, ...] = (),
    ) -> Watcher: ...

    def cancel_watcher(self, w: Watcher) -> None: ...

    def progress_if_sync(self, watchers: dict[int, Watcher], response_id: int) -> bool: ...

    def rev(self) -> int: ...


@dataclass(eq=False)
class WatchStream:
    """A client stream's watchers (etcd's watchStream)."""

    store: Watchable
    ch: Channel
    next_id: int = 0
    closed: bool = False
    watchers: dict[int, Watcher] = field(default_factory=dict)

    def watch(
        self,
        watch_id: int,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        filters: tuple[FilterFunc, ...] = (),
    ) -> int:
        if end and key >= end:
            raise EmptyWatcherRangeError()
        if self.closed:
            raise EmptyWatcherRangeError()
        if watch_id == AUTO_WATCH_ID:
            while self.next_id in self.watchers:
                self.next_id += 1
            watch_id = self.next_id
            self.next_id += 1
        elif watch_id in self.watchers:
            raise DuplicateWatchIDError()
        self.watchers[watch_id] = self.store.watch(key, end, start_rev, watch_id, self.ch, filters)
        return watch_id

    def cancel(self, watch_id: int) -> None:
        w = self.watchers.pop(watch_id, None)
        if w is None or self.closed:
            raise WatcherNotExistError()
        self.store.cancel_watcher(w)

    def request_progress(self, watch_id: int) -> None:
        w = self.watchers.get(watch_id)
        if w is not None:
            self.store.progress_if_sync({watch_id: w}, watch_id)

    def request_progress_all(self) -> bool:
        return self.store.progress_if_sync(self.watchers, INVALID_WATCH_ID)

    def rev(self) -> int:
        return self.store.rev()

    def close(self) -> None:
        for w in self.watchers.values():
            self.store.cancel_watcher(w)
        self.watchers.clear()
        self.closed = True
        self.ch.closed = True
