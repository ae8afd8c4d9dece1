"""LmdbBackend against a dict model, as a hypothesis state machine.

Writes go to buffers, commits are queued on the writer thread and are waited for only now and
then, so reads run while sealed buffers are being written; whatever the timing, every read
(get, range with limits, iterate from any start, through read_tx and batch_tx) must equal the
model. Restarts (close, reopen) and defrags keep everything.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket

BUCKETS = [Bucket.KEY, Bucket.META]
KEYS = st.sampled_from([b"", b"a", b"ab", b"b", b"ba", b"c", b"\x00", b"\xff", b"a\x00"])
VALUES = st.binary(max_size=4)


class BackendMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="petcd-backend-model-")
        self.path = f"{self.dir}/db"
        self.backend = LmdbBackend(self.path, map_size=1 << 26, fsync=False)
        self.model: dict[Bucket, dict[bytes, bytes]] = {b: {} for b in BUCKETS}
        self.futures: list[concurrent.futures.Future[None]] = []
        self.pending = 0

    def teardown(self) -> None:
        self.backend.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _want(self, bucket: Bucket) -> list[tuple[bytes, bytes]]:
        return sorted(self.model[bucket].items())

    @rule(bucket=st.sampled_from(BUCKETS), key=KEYS.filter(bool), value=VALUES)
    def put(self, bucket: Bucket, key: bytes, value: bytes) -> None:
        self.backend.batch_tx().put(bucket, key, value)
        self.model[bucket][key] = value
        self.pending += 1

    @rule(bucket=st.sampled_from(BUCKETS), key=KEYS.filter(bool))
    def delete(self, bucket: Bucket, key: bytes) -> None:
        self.backend.batch_tx().delete(bucket, key)
        self.model[bucket].pop(key, None)
        self.pending += 1

    @rule()
    def commit(self) -> None:
        self.futures.append(self.backend.commit())
        self.pending = 0

    @precondition(lambda self: bool(self.futures))
    @rule(i=st.integers(min_value=0))
    def wait_commit(self, i: int) -> None:
        f = self.futures.pop(i % len(self.futures))
        assert f.result(timeout=30) is None

    @rule()
    def force_commit(self) -> None:
        self.backend.force_commit()
        self.pending = 0
        for f in self.futures:
            assert f.done(), "a later commit covers every earlier one"
        self.futures.clear()

    @rule()
    def reopen(self) -> None:
        self.backend.close()
        self.backend = LmdbBackend(self.path, map_size=1 << 26, fsync=False)
        self.futures.clear()
        self.pending = 0

    @precondition(lambda self: sum(map(len, self.model.values())) > 0)
    @rule()
    def defrag(self) -> None:
        self.backend.defrag()
        self.futures.clear()
        self.pending = 0

    # (the empty key: see test_lmdb_backend.py::test_get_empty_key_is_absent)
    @rule(bucket=st.sampled_from(BUCKETS), key=KEYS.filter(bool), batch=st.booleans())
    def get(self, bucket: Bucket, key: bytes, batch: bool) -> None:
        view = self.backend.batch_tx() if batch else self.backend.read_tx()
        assert view.get(bucket, key) == self.model[bucket].get(key)

    @rule(
        bucket=st.sampled_from(BUCKETS),
        start=KEYS,
        end=st.one_of(st.none(), KEYS),
        limit=st.integers(min_value=0, max_value=3),
        batch=st.booleans(),
    )
    def range(self, bucket: Bucket, start: bytes, end: bytes | None, limit: int, batch: bool) -> None:
        if end is None and not start:
            return
        view = self.backend.batch_tx() if batch else self.backend.read_tx()
        got = view.range(bucket, start, end, limit)
        if end is None:
            want = [(start, self.model[bucket][start])] if start in self.model[bucket] else []
        else:
            want = [(k, v) for k, v in self._want(bucket) if start <= k < end]
            if limit:
                want = want[:limit]
        assert got == want

    @rule(bucket=st.sampled_from(BUCKETS), start=KEYS)
    def iterate(self, bucket: Bucket, start: bytes) -> None:
        got = list(self.backend.read_tx().iterate(bucket, start))
        assert got == [(k, v) for k, v in self._want(bucket) if k >= start]

    @invariant()
    def everything(self) -> None:
        assert self.backend.pending() == self.pending
        for bucket in BUCKETS:
            assert list(self.backend.read_tx().iterate(bucket)) == self._want(bucket)
        assert list(self.backend.read_tx().iterate(Bucket.LEASE)) == []
        assert self.backend.size_in_use() <= self.backend.size()


BackendMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_backend_model = BackendMachine.TestCase
