"""The history of one key (etcd's server/storage/mvcc/key_index.go).

A keyIndex keeps every revision of a key that MVCC still has, grouped in generations. A
generation is the life of the key from a creation to its deletion: each put appends a revision
to the current generation; a delete (tombstone) appends its revision and then opens a new,
empty generation. Example: put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0) gives

    generations:
        {empty}                  <- current generation: the key does not exist now
        {4.0, 5.0(t)}
        {1.0, 2.0, 3.0(t)}

compact(n) removes the revisions <= n of each generation except the largest one, and drops
generations left empty; the key goes away once only the empty current generation remains:

    compact(2): {empty} {4.0, 5.0(t)} {2.0, 3.0(t)}
    compact(4): {empty} {4.0, 5.0(t)}
    compact(5): {empty} {5.0(t)}
    compact(6): {empty}  -> the key is removed from the tree index

A tombstone at exactly the compaction revision is kept: a watcher that starts right after it
must still see the delete.
"""

from __future__ import annotations

from server.errors import EtcdError
from server.mvcc.revision import Revision

__all__ = ["Generation", "KeyIndex", "RevisionNotFoundError"]

_ZERO = Revision(0, 0)


class RevisionNotFoundError(EtcdError):
    """mvcc: revision not found"""


class Generation:
    """One life of a key: created at revs[0], version counts the puts (and the tombstone)."""

    __slots__ = ("created", "revs", "ver")

    def __init__(self, ver: int = 0, created: Revision = _ZERO, revs: list[Revision] | None = None):
        self.ver = ver
        self.created = created
        self.revs: list[Revision] = revs if revs is not None else []

    def is_empty(self) -> bool:
        return not self.revs

    def walk_back_to(self, at_rev: int) -> int:
        """Index of the newest revision whose main <= at_rev, or -1."""
        revs = self.revs
        for i in range(len(revs) - 1, -1, -1):
            if revs[i].main <= at_rev:
                return i
        return -1

    def __repr__(self) -> str:
        return (
            f"Generation(ver={self.ver}, created={tuple(self.created)}, revs={[tuple(r) for r in self.revs]})"
        )


class KeyIndex:
    __slots__ = ("generations", "key", "modified")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified = Revision(0, 0)
        self.generations: list[Generation] = []

    def put(self, main: int, sub: int) -> None:
        rev = Revision(main, sub)
        if rev <= self.modified:
            raise AssertionError(f"put with an unexpected smaller revision {rev} <= {self.modified}")
        if not self.generations:
            self.generations.append(Generation())
        g = self.generations[-1]
        if not g.revs:
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Rebuild the current generation from the newest stored record of the key."""
        if self.generations:
            raise AssertionError("restore on a non-empty keyIndex")
        self.modified = modified
        self.generations.append(Generation(ver, created, [modified]))

    def restore_tombstone(self, main: int, sub: int) -> None:
        """Rebuild a key whose oldest surviving record is its tombstone (everything before it was
        compacted): a generation holding only the tombstone, then the empty current one."""
        self.restore(_ZERO, Revision(main, sub), 1)
        self.generations.append(Generation())

    def tombstone(self, main: int, sub: int) -> None:
        """Record a delete and open a new generation."""
        if self.is_empty():
            raise AssertionError(f"tombstone on an empty keyIndex {self.key!r}")
        if self.generations[-1].is_empty():
            raise RevisionNotFoundError()
        self.put(main, sub)
        self.generations.append(Generation())

    def get(self, at_rev: int) -> tuple[Revision, Revision, int]:
        """(modified, created, version) of the key as of at_rev; RevisionNotFoundError if it did
        not exist then."""
        g = self.generations[-1]
        if g.revs and self.modified.main <= at_rev:
            return self.modified, g.created, g.ver
        found = self.find_generation(at_rev)
        if found is None:
            raise RevisionNotFoundError()
        n = found.walk_back_to(at_rev)
        if n == -1:
            raise RevisionNotFoundError()
        return found.revs[n], found.created, found.ver - (len(found.revs) - n - 1)

    def since(self, rev: int) -> list[Revision]:
        """Revisions with main >= rev, oldest first; of several revisions with the same main
        only the one with the largest sub (the one visible from outside) is returned."""
        since = Revision(rev, 0)
        gens = self.generations
        gi = len(gens) - 1
        while gi > 0:
            g = gens[gi]
            if g.revs and since > g.created:
                break
            gi -= 1
        out: list[Revision] = []
        last = 0
        for g in gens[gi:]:
            for r in g.revs:
                if since > r:
                    continue
                if r.main == last:
                    out[-1] = r
                    continue
                out.append(r)
                last = r.main
        return out

    def compact(self, at_rev: int, available: set[Revision]) -> None:
        """Drop revisions <= at_rev except the largest of each generation (see module doc);
        adds the revisions to keep in the backend to available."""
        if self.is_empty():
            raise AssertionError(f"compact on an empty keyIndex {self.key!r}")
        gen_idx, rev_idx = self._do_compact(at_rev, available)
        g = self.generations[gen_idx]
        if g.revs and rev_idx != -1:
            del g.revs[:rev_idx]
        del self.generations[:gen_idx]

    def keep(self, at_rev: int, available: set[Revision]) -> None:
        """Add to available what compact(at_rev) would keep, without changing anything. Unlike
        compact, a tombstone at exactly at_rev is not kept: hashes stay equal to those of etcd
        versions that deleted it."""
        if self.is_empty():
            return
        gen_idx, rev_idx = self._do_compact(at_rev, available)
        g = self.generations[gen_idx]
        if g.revs and rev_idx == len(g.revs) - 1 and gen_idx != len(self.generations) - 1:
            available.discard(g.revs[rev_idx])

    def _do_compact(self, at_rev: int, available: set[Revision]) -> tuple[int, int]:
        gens = self.generations
        gen_idx = 0
        # the first generation that contains at_rev or was created after it
        while gen_idx < len(gens) - 1 and gens[gen_idx].revs[-1].main < at_rev:
            gen_idx += 1
        g = gens[gen_idx]
        rev_idx = g.walk_back_to(at_rev)
        if rev_idx != -1:
            available.add(g.revs[rev_idx])
        return gen_idx, rev_idx

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and not self.generations[0].revs

    def find_generation(self, rev: int) -> Generation | None:
        """The generation alive at rev, or None when the key did not exist then (before its
        first creation or in the gap after a tombstone)."""
        gens = self.generations
        last = len(gens) - 1
        for cg in range(last, -1, -1):
            g = gens[cg]
            if not g.revs:
                continue
            if cg != last and g.revs[-1].main <= rev:
                return None
            if g.revs[0].main <= rev:
                return g
        return None

    def __repr__(self) -> str:
        return f"KeyIndex({self.key!r}, modified={tuple(self.modified)}, generations={self.generations})"
