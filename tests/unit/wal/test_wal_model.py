"""Model-based test: random raft-like histories against an in-memory model of the log.

Steps append batches (with conflicting-suffix overwrites), save hard states and snapshot
markers, cut segments (tiny segment size), release and purge old segments, and reopen the WAL
at its latest snapshot, checking read_all against the model every time.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server.raft.raftpb import ConfState, Entry, HardState
from server.wal import WAL, WALSnapshot, purge_segments, valid_snapshot_entries


class WALModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="walmodel-")
        self.dir = self.root + "/wal"
        self.segment_size = 700
        self.w = WAL.create(
            self.dir, b"model-meta", segment_size=self.segment_size, preallocate=False, unsafe_no_sync=True
        )
        self.log: list[Entry] = []  # model: the live log after the latest snapshot, by index
        self.snap = WALSnapshot()  # latest snapshot marker
        self.state = HardState()
        self.term = 1
        self.markers: list[WALSnapshot] = [WALSnapshot()]

    def teardown(self) -> None:
        self.w.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def last_index(self) -> int:
        return self.log[-1].index if self.log else self.snap.index

    @rule(
        back=st.integers(min_value=0, max_value=6),
        count=st.integers(min_value=0, max_value=12),
        size=st.integers(min_value=0, max_value=150),
        new_term=st.booleans(),
        hs=st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 5))),
    )
    def save(self, back: int, count: int, size: int, new_term: bool, hs: tuple[int, int] | None) -> None:
        # Start anywhere from the current end back to just after the snapshot (never at or
        # below it: raft does not rewrite what a snapshot covers).
        start = max(self.snap.index + 1, self.last_index() + 1 - back)
        if start <= self.last_index() or new_term:
            self.term += 1
        batch = [Entry(term=self.term, index=start + i, data=bytes([i % 251]) * size) for i in range(count)]
        if batch:
            self.log = [e for e in self.log if e.index < start] + batch
        state = HardState()
        if hs is not None:
            vote, commit_back = hs
            state = HardState(
                term=self.term, vote=vote, commit=max(self.snap.index, self.last_index() - commit_back)
            )
        self.w.save(state, batch)
        if not state.is_empty():
            self.state = state

    @precondition(lambda self: self.last_index() > self.snap.index)
    @rule(ahead=st.integers(min_value=0, max_value=5), beyond=st.booleans())
    def snapshot(self, ahead: int, beyond: bool) -> None:
        if beyond:
            # A snapshot from the leader past the end of our log: the log restarts after it.
            index, term = self.last_index() + 1 + ahead, self.term
            self.log = []
        else:
            index = min(self.last_index(), self.snap.index + 1 + ahead)
            term = next(e.term for e in self.log if e.index == index)
            self.log = [e for e in self.log if e.index > index]
        self.snap = WALSnapshot(index=index, term=term, conf_state=ConfState(voters=(1, 2, 3)))
        self.markers.append(self.snap)
        self.w.save_snapshot(self.snap)

    @rule()
    def release_and_purge(self) -> None:
        self.w.release_lock_to(self.snap.index)
        purge_segments(self.dir, max_segments=1)

    @rule()
    def reopen(self) -> None:
        self.w.close()
        self.w = WAL.open(
            self.dir, self.snap, segment_size=self.segment_size, preallocate=False, unsafe_no_sync=True
        )
        md, state, entries = self.w.read_all()
        assert md == b"model-meta"
        assert state == self.state
        assert entries == self.log
        assert self.w.last_index >= self.last_index() or not self.log

    @invariant()
    def readable(self) -> None:
        # A read-only reader sees the same thing at any moment (after a flush).
        self.w.sync()
        r = WAL.open_for_read(self.dir, self.snap)
        try:
            md, state, entries = r.read_all()
        finally:
            r.close()
        assert (md, state, entries) == (b"model-meta", self.state, self.log)

    @invariant()
    def markers_survive(self) -> None:
        # Markers the WAL still holds are a suffix of those written, filtered by commit.
        self.w.sync()
        found = valid_snapshot_entries(self.dir)
        written = [m for m in self.markers if m.index <= self.state.commit]
        assert found == written[len(written) - len(found) :]
        assert self.snap.index > self.state.commit or self.snap in found


WALModel.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWALModel = WALModel.TestCase
