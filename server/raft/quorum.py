"""Quorum arithmetic: committed index and vote outcome for majority and joint configurations."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["AckedIndexer", "JointConfig", "MajorityConfig", "VoteResult"]

# Returns the index a voter has acknowledged, or None if it has not acknowledged anything.
AckedIndexer = Callable[[int], int | None]

_MAX_INDEX = (1 << 64) - 1


class VoteResult(enum.Enum):
    PENDING = 1
    LOST = 2
    WON = 3


@dataclass(frozen=True, slots=True)
class MajorityConfig:
    """A set of voters that decides by simple majority."""

    ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, ids: Iterable[int]) -> MajorityConfig:
        return cls(frozenset(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, voter_id: object) -> bool:
        return voter_id in self.ids

    def __str__(self) -> str:
        return "(" + " ".join(str(i) for i in sorted(self.ids)) + ")"

    def sorted(self) -> list[int]:
        """The voter IDs in ascending order."""
        return sorted(self.ids)

    def committed_index(self, acked: AckedIndexer) -> int:
        """The largest index acknowledged by a majority; voters without an ack count as 0.

        An empty configuration imposes no constraint and returns the maximum index, so that in
        a joint configuration an empty half defers to the other.
        """
        n = len(self.ids)
        if n == 0:
            return _MAX_INDEX
        srt = sorted((acked(i) or 0) for i in self.ids)
        # The element at n - (n//2 + 1) is acknowledged by itself and everything above it,
        # which is n//2 + 1 voters: a majority.
        return srt[n - (n // 2 + 1)]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON once a majority granted, LOST once a majority is out of reach, else PENDING.

        An empty configuration wins every vote (see committed_index).
        """
        if not self.ids:
            return VoteResult.WON
        granted = 0
        missing = 0
        for i in self.ids:
            v = votes.get(i)
            if v is None:
                missing += 1
            elif v:
                granted += 1
        q = len(self.ids) // 2 + 1
        if granted >= q:
            return VoteResult.WON
        if granted + missing >= q:
            return VoteResult.PENDING
        return VoteResult.LOST

    def describe(self, acked: AckedIndexer) -> str:
        """A table of each voter's acknowledged index, for debugging."""
        if not self.ids:
            return "<empty majority quorum>"
        n = len(self.ids)
        info = sorted(((acked(i) or 0), i, acked(i) is not None) for i in self.ids)
        bars: dict[int, int] = {}
        for pos, (idx, vid, _) in enumerate(info):
            bars[vid] = pos if pos > 0 and info[pos - 1][0] < idx else 0
        # Equal indices share the bar of the first of them.
        for pos in range(1, len(info)):
            if info[pos - 1][0] == info[pos][0]:
                bars[info[pos][1]] = bars[info[pos - 1][1]]
        lines = [" " * n + "    idx"]
        for idx, vid, ok in sorted(info, key=lambda t: t[1]):
            bar = bars[vid]
            head = "?" + " " * n if not ok else "x" * bar + ">" + " " * (n - bar)
            lines.append(f"{head} {idx:5d}    (id={vid})")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class JointConfig:
    """Two majority configurations that must both agree (joint consensus).

    Outside of a membership transition `outgoing` is empty and the incoming half decides alone.
    """

    incoming: MajorityConfig = field(default_factory=MajorityConfig)
    outgoing: MajorityConfig = field(default_factory=MajorityConfig)

    def __str__(self) -> str:
        if self.outgoing.ids:
            return f"{self.incoming}&&{self.outgoing}"
        return str(self.incoming)

    def ids(self) -> frozenset[int]:
        """Every voter of either half."""
        return self.incoming.ids | self.outgoing.ids

    def committed_index(self, acked: AckedIndexer) -> int:
        """The largest index committed in both halves."""
        return min(self.incoming.committed_index(acked), self.outgoing.committed_index(acked))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON only if both halves won; LOST if either lost; else PENDING."""
        r1 = self.incoming.vote_result(votes)
        r2 = self.outgoing.vote_result(votes)
        if r1 == r2:
            return r1
        if VoteResult.LOST in (r1, r2):
            return VoteResult.LOST
        return VoteResult.PENDING
