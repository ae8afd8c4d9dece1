"""The in-memory ordered index from key to keyIndex (etcd's treeIndex, index.go).

Key ranges follow etcd's convention: end None is the single key `key`; end b"" is every key
>= key; otherwise [key, end).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from sortedcontainers import SortedDict

from server.mvcc.key_index import KeyIndex, RevisionNotFoundError
from server.mvcc.revision import Revision

__all__ = ["Index", "TreeIndex"]


class Index(Protocol):
    def get(self, key: bytes, at_rev: int) -> tuple[Revision, Revision, int]: ...

    def range(self, key: bytes, end: bytes | None, at_rev: int) -> tuple[list[bytes], list[Revision]]: ...

    def revisions(
        self, key: bytes, end: bytes | None, at_rev: int, limit: int
    ) -> tuple[list[Revision], int]: ...

    def count_revisions(self, key: bytes, end: bytes | None, at_rev: int) -> int: ...

    def put(self, key: bytes, rev: Revision) -> None: ...

    def tombstone(self, key: bytes, rev: Revision) -> None: ...

    def restore(self, key: bytes, created: Revision, modified: Revision, ver: int) -> None: ...

    def key_index(self, key: bytes) -> KeyIndex | None: ...

    def restore_tombstone(self, key: bytes, rev: Revision) -> None: ...

    def range_since(self, key: bytes, end: bytes | None, rev: int) -> list[Revision]: ...

    def compact(self, rev: int) -> set[Revision]: ...

    def compact_keys(self, keys: Sequence[bytes], rev: int, available: set[Revision]) -> None: ...

    def keys(self) -> list[bytes]: ...

    def keep(self, rev: int) -> set[Revision]: ...

    def __len__(self) -> int: ...


class TreeIndex:
    def __init__(self) -> None:
        self._tree: SortedDict[bytes, KeyIndex] = SortedDict()

    def __len__(self) -> int:
        return len(self._tree)

    def keys(self) -> list[bytes]:
        """Every key, in order (a copy)."""
        return list(self._tree.keys())

    def _visit(self, key: bytes, end: bytes) -> Iterator[KeyIndex]:
        tree = self._tree
        keys = tree.irange(key, end, inclusive=(True, False)) if end else tree.irange(key)
        for k in keys:
            yield tree[k]

    def key_index(self, key: bytes) -> KeyIndex | None:
        return self._tree.get(key)

    def get(self, key: bytes, at_rev: int) -> tuple[Revision, Revision, int]:
        ki = self._tree.get(key)
        if ki is None:
            raise RevisionNotFoundError()
        return ki.get(at_rev)

    def range(self, key: bytes, end: bytes | None, at_rev: int) -> tuple[list[bytes], list[Revision]]:
        """Keys alive at at_rev and their revisions at that time."""
        if end is None:
            try:
                rev = self.get(key, at_rev)[0]
            except RevisionNotFoundError:
                return [], []
            return [key], [rev]
        keys: list[bytes] = []
        revs: list[Revision] = []
        for ki in self._visit(key, end):
            try:
                rev = ki.get(at_rev)[0]
            except RevisionNotFoundError:
                continue
            keys.append(ki.key)
            revs.append(rev)
        return keys, revs

    def revisions(self, key: bytes, end: bytes | None, at_rev: int, limit: int) -> tuple[list[Revision], int]:
        """Up to limit (0: all) revisions of the keys alive at at_rev, and how many keys there
        were in all."""
        if end is None:
            try:
                return [self.get(key, at_rev)[0]], 1
            except RevisionNotFoundError:
                return [], 0
        revs: list[Revision] = []
        total = 0
        for ki in self._visit(key, end):
            try:
                rev = ki.get(at_rev)[0]
            except RevisionNotFoundError:
                continue
            if limit <= 0 or len(revs) < limit:
                revs.append(rev)
            total += 1
        return revs, total

    def count_revisions(self, key: bytes, end: bytes | None, at_rev: int) -> int:
        return self.revisions(key, end, at_rev, 1)[1]

    def put(self, key: bytes, rev: Revision) -> None:
        ki = self._tree.get(key)
        if ki is None:
            ki = KeyIndex(key)
            self._tree[key] = ki
        ki.put(rev.main, rev.sub)

    def tombstone(self, key: bytes, rev: Revision) -> None:
        ki = self._tree.get(key)
        if ki is None:
            raise RevisionNotFoundError()
        ki.tombstone(rev.main, rev.sub)

    def restore(self, key: bytes, created: Revision, modified: Revision, ver: int) -> None:
        ki = KeyIndex(key)
        ki.restore(created, modified, ver)
        self._tree[key] = ki

    def restore_tombstone(self, key: bytes, rev: Revision) -> None:
        ki = KeyIndex(key)
        ki.restore_tombstone(rev.main, rev.sub)
        self._tree[key] = ki

    def range_since(self, key: bytes, end: bytes | None, rev: int) -> list[Revision]:
        """Every revision >= rev of the keys in the range, in revision order."""
        if end is None:
            ki = self._tree.get(key)
            return [] if ki is None else ki.since(rev)
        out: list[Revision] = []
        for ki in self._visit(key, end):
            out.extend(ki.since(rev))
        out.sort()
        return out

    def compact(self, rev: int) -> set[Revision]:
        """Compact every keyIndex at rev, dropping keys left empty; returns the revisions <= rev
        the backend must keep."""
        available: set[Revision] = set()
        self.compact_keys(self.keys(), rev, available)
        return available

    def compact_keys(self, keys: Sequence[bytes], rev: int, available: set[Revision]) -> None:
        """compact() for some keys, adding to available: a compaction may go a batch of keys at
        a time with writes in between (as etcd's does key by key), since writes only add
        revisions above rev, which compaction at rev leaves alone."""
        tree = self._tree
        for key in keys:
            ki = tree.get(key)
            if ki is None:
                continue
            ki.compact(rev, available)
            if ki.is_empty():
                del tree[key]

    def keep(self, rev: int) -> set[Revision]:
        available: set[Revision] = set()
        for ki in self._tree.values():
            ki.keep(rev, available)
        return available
