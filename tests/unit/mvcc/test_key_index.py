"""keyIndex: the generations of one key (etcd's key_index_test.go, scenario by scenario).

Most tables use etcd's standard history (newTestKeyIndex):

    put(2.0) put(4.0) tombstone(6.0) put(8.0) put(10.0) tombstone(12.0) put(14.0) put(15.1) tombstone(16.0)

    key: "foo"
    modified: 16
    generations:
        {empty}
        {14.0[1], 15.1[2], 16.0(t)[3]}
        {8.0[1],  10.0[2], 12.0(t)[3]}
        {2.0[1],  4.0[2],  6.0(t)[3]}

([n] is the version of the key at that revision, (t) a tombstone.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from server.mvcc.key_index import Generation, KeyIndex, RevisionNotFoundError
from server.mvcc.revision import Revision

R = Revision
# (created, ver, revs) of one generation, oldest generation first like etcd's tables
Gen = tuple[Revision, int, list[Revision]]
EMPTY: Gen = (R(0, 0), 0, [])

G1: Gen = (R(2), 3, [R(2), R(4), R(6)])
G2: Gen = (R(8), 3, [R(8), R(10), R(12)])
G3: Gen = (R(14), 3, [R(14), R(15, 1), R(16)])
TOMBSTONES = {6, 12, 16}


def new_test_key_index() -> KeyIndex:
    ki = KeyIndex(b"foo")
    ki.put(2, 0)
    ki.put(4, 0)
    ki.tombstone(6, 0)
    ki.put(8, 0)
    ki.put(10, 0)
    ki.tombstone(12, 0)
    ki.put(14, 0)
    ki.put(15, 1)
    ki.tombstone(16, 0)
    return ki


def gens(ki: KeyIndex) -> list[Gen]:
    return [(g.created, g.ver, list(g.revs)) for g in ki.generations]


def snapshot(ki: KeyIndex) -> tuple[bytes, Revision, list[Gen]]:
    return ki.key, ki.modified, gens(ki)


def test_standard_history_layout() -> None:
    ki = new_test_key_index()
    assert ki.modified == R(16)
    assert gens(ki) == [G1, G2, G3, EMPTY]
    assert not ki.is_empty()


# -- put / restore / tombstone (TestKeyIndexPut, TestKeyIndexRestore, TestKeyIndexTombstone) ------


def test_put() -> None:
    ki = KeyIndex(b"foo")
    ki.put(5, 0)
    assert snapshot(ki) == (b"foo", R(5), [(R(5), 1, [R(5)])])
    ki.put(7, 0)
    assert snapshot(ki) == (b"foo", R(7), [(R(5), 2, [R(5), R(7)])])


@pytest.mark.parametrize(
    ("main", "sub"),
    [pytest.param(7, 0, id="same"), pytest.param(6, 9, id="older-main"), pytest.param(3, 0, id="much-older")],
)
def test_put_not_after_modified_is_rejected(main: int, sub: int) -> None:
    ki = KeyIndex(b"foo")
    ki.put(7, 0)
    with pytest.raises(AssertionError):
        ki.put(main, sub)
    assert snapshot(ki) == (b"foo", R(7), [(R(7), 1, [R(7)])])


def test_put_same_main_larger_sub() -> None:
    ki = KeyIndex(b"foo")
    ki.put(7, 0)
    ki.put(7, 1)
    assert snapshot(ki) == (b"foo", R(7, 1), [(R(7), 2, [R(7), R(7, 1)])])


def test_restore() -> None:
    ki = KeyIndex(b"foo")
    ki.restore(R(5), R(7), 2)
    assert snapshot(ki) == (b"foo", R(7), [(R(5), 2, [R(7)])])
    # the restored generation answers like the original one from its newest revision on
    assert ki.get(7) == (R(7), R(5), 2)
    assert ki.get(100) == (R(7), R(5), 2)
    with pytest.raises(RevisionNotFoundError):
        ki.get(6)
    # and keeps growing
    ki.put(9, 0)
    assert ki.get(9) == (R(9), R(5), 3)
    ki.tombstone(10, 0)
    assert gens(ki) == [(R(5), 4, [R(7), R(9), R(10)]), EMPTY]


def test_restore_on_non_empty_is_rejected() -> None:
    ki = KeyIndex(b"foo")
    ki.put(1, 0)
    with pytest.raises(AssertionError):
        ki.restore(R(5), R(7), 2)


def test_tombstone() -> None:
    ki = KeyIndex(b"foo")
    ki.put(5, 0)
    ki.tombstone(7, 0)
    assert snapshot(ki) == (b"foo", R(7), [(R(5), 2, [R(5), R(7)]), EMPTY])

    ki.put(8, 0)
    ki.put(9, 0)
    ki.tombstone(15, 0)
    assert snapshot(ki) == (
        b"foo",
        R(15),
        [(R(5), 2, [R(5), R(7)]), (R(8), 3, [R(8), R(9), R(15)]), EMPTY],
    )

    # tombstone on an empty (current) generation: the key does not exist
    with pytest.raises(RevisionNotFoundError):
        ki.tombstone(16, 0)
    assert ki.modified == R(15)
    assert len(ki.generations) == 3


@pytest.mark.parametrize(
    "ki",
    [pytest.param(KeyIndex(b"foo"), id="no-generations"), pytest.param(None, id="compacted-away")],
)
def test_tombstone_on_empty_key_index_is_rejected(ki: KeyIndex | None) -> None:
    if ki is None:
        ki = KeyIndex(b"foo")
        ki.put(1, 0)
        ki.tombstone(2, 0)
        ki.compact(3, set())
        assert ki.is_empty()
    with pytest.raises((AssertionError, IndexError)):
        ki.tombstone(5, 0)


# -- get (TestKeyIndexGet) -------------------------------------------------------------------------

NOT_FOUND = None

# After compact(4) on the standard history:
#
#     {empty}
#     {14.0[1], 15.1[2], 16.0(t)[3]}
#     {8.0[1],  10.0[2], 12.0(t)[3]}
#     {4.0[2],  6.0(t)[3]}             <- 2.0 compacted away
GET_AFTER_COMPACT_4: list[tuple[int, tuple[Revision, Revision, int] | None]] = [
    (17, NOT_FOUND),
    (16, NOT_FOUND),
    # generation 3
    (15, (R(15, 1), R(14), 2)),
    (14, (R(14), R(14), 1)),
    (13, NOT_FOUND),
    (12, NOT_FOUND),
    # generation 2
    (11, (R(10), R(8), 2)),
    (10, (R(10), R(8), 2)),
    (9, (R(8), R(8), 1)),
    (8, (R(8), R(8), 1)),
    (7, NOT_FOUND),
    (6, NOT_FOUND),
    # generation 1
    (5, (R(4), R(2), 2)),
    (4, (R(4), R(2), 2)),
    (3, NOT_FOUND),  # 2.0 was compacted
    (2, NOT_FOUND),
    (1, NOT_FOUND),
    (0, NOT_FOUND),
]


@pytest.mark.parametrize(("at", "want"), [pytest.param(a, w, id=f"at-{a}") for a, w in GET_AFTER_COMPACT_4])
def test_get_after_compact(at: int, want: tuple[Revision, Revision, int] | None) -> None:
    ki = new_test_key_index()
    ki.compact(4, set())
    if want is None:
        with pytest.raises(RevisionNotFoundError):
            ki.get(at)
    else:
        assert ki.get(at) == want


# The uncompacted history differs only at 2 and 3.
GET_UNCOMPACTED = [(a, w) for a, w in GET_AFTER_COMPACT_4 if a not in (2, 3)] + [
    (3, (R(2), R(2), 1)),
    (2, (R(2), R(2), 1)),
]


@pytest.mark.parametrize(("at", "want"), [pytest.param(a, w, id=f"at-{a}") for a, w in GET_UNCOMPACTED])
def test_get_uncompacted(at: int, want: tuple[Revision, Revision, int] | None) -> None:
    ki = new_test_key_index()
    if want is None:
        with pytest.raises(RevisionNotFoundError):
            ki.get(at)
    else:
        assert ki.get(at) == want


def test_get_live_key_fast_path() -> None:
    """A key whose current generation is not empty answers reads at or after its last
    modification with the newest revision."""
    ki = KeyIndex(b"foo")
    ki.put(2, 0)
    ki.put(3, 4)
    ki.put(5, 0)
    for at in (5, 6, 1000):
        assert ki.get(at) == (R(5), R(2), 3)
    assert ki.get(4) == (R(3, 4), R(2), 2)
    assert ki.get(3) == (R(3, 4), R(2), 2)
    assert ki.get(2) == (R(2), R(2), 1)
    with pytest.raises(RevisionNotFoundError):
        ki.get(1)


def test_get_on_empty_key_index() -> None:
    ki = KeyIndex(b"foo")
    ki.put(1, 0)
    ki.tombstone(2, 0)
    ki.compact(3, set())
    assert ki.is_empty()
    with pytest.raises(RevisionNotFoundError):
        ki.get(5)


# -- since (TestKeyIndexSince) ---------------------------------------------------------------------

ALL_SINCE = [R(4), R(6), R(8), R(10), R(12), R(14), R(15, 1), R(16)]
SINCE_TABLE: list[tuple[int, list[Revision]]] = [
    (17, []),
    (16, ALL_SINCE[7:]),
    (15, ALL_SINCE[6:]),
    (14, ALL_SINCE[5:]),
    (13, ALL_SINCE[5:]),
    (12, ALL_SINCE[4:]),
    (11, ALL_SINCE[4:]),
    (10, ALL_SINCE[3:]),
    (9, ALL_SINCE[3:]),
    (8, ALL_SINCE[2:]),
    (7, ALL_SINCE[2:]),
    (6, ALL_SINCE[1:]),
    (5, ALL_SINCE[1:]),
    (4, ALL_SINCE),
    (3, ALL_SINCE),
    (2, ALL_SINCE),
    (1, ALL_SINCE),
    (0, ALL_SINCE),
]


@pytest.mark.parametrize(("rev", "want"), [pytest.param(r, w, id=f"since-{r}") for r, w in SINCE_TABLE])
def test_since_after_compact(rev: int, want: list[Revision]) -> None:
    ki = new_test_key_index()
    ki.compact(4, set())
    assert ki.since(rev) == want


def test_since_keeps_only_largest_sub_of_a_main() -> None:
    """Several changes of one key in one transaction: only the last is visible outside."""
    ki = KeyIndex(b"foo")
    ki.put(2, 0)
    ki.put(3, 0)
    ki.put(3, 1)
    ki.put(3, 5)
    ki.tombstone(4, 0)
    ki.put(5, 2)
    assert ki.since(0) == [R(2), R(3, 5), R(4), R(5, 2)]
    assert ki.since(3) == [R(3, 5), R(4), R(5, 2)]
    assert ki.since(4) == [R(4), R(5, 2)]
    assert ki.since(6) == []


# -- compact and keep (TestKeyIndexCompactAndKeep) -------------------------------------------------
#
# compact(n) on the standard history, for n = 1..17. Each row: the generations that remain and
# the revisions the backend must keep (`available`).
#
#   n    generations after compact(n)                                          available
#   1    {2,4,6(t)} {8,10,12(t)} {14,15.1,16(t)} {}                             {}
#   2    {2,4,6(t)} {8,10,12(t)} {14,15.1,16(t)} {}                             {2}
#   4    {4,6(t)}   {8,10,12(t)} {14,15.1,16(t)} {}                             {4}
#   6    {6(t)}     {8,10,12(t)} {14,15.1,16(t)} {}                             {6}   tombstone kept
#   7               {8,10,12(t)} {14,15.1,16(t)} {}                             {}
#   ...
#   16                                    {16(t)} {}                            {16}
#   17                                            {}                            {}    key removable

COMPACT_TABLE: list[tuple[int, list[Gen], set[Revision]]] = [
    (1, [G1, G2, G3, EMPTY], set()),
    (2, [G1, G2, G3, EMPTY], {R(2)}),
    (3, [G1, G2, G3, EMPTY], {R(2)}),
    (4, [(R(2), 3, [R(4), R(6)]), G2, G3, EMPTY], {R(4)}),
    (5, [(R(2), 3, [R(4), R(6)]), G2, G3, EMPTY], {R(4)}),
    (6, [(R(2), 3, [R(6)]), G2, G3, EMPTY], {R(6)}),
    (7, [G2, G3, EMPTY], set()),
    (8, [G2, G3, EMPTY], {R(8)}),
    (9, [G2, G3, EMPTY], {R(8)}),
    (10, [(R(8), 3, [R(10), R(12)]), G3, EMPTY], {R(10)}),
    (11, [(R(8), 3, [R(10), R(12)]), G3, EMPTY], {R(10)}),
    (12, [(R(8), 3, [R(12)]), G3, EMPTY], {R(12)}),
    (13, [G3, EMPTY], set()),
    (14, [G3, EMPTY], {R(14)}),
    (15, [(R(14), 3, [R(15, 1), R(16)]), EMPTY], {R(15, 1)}),
    (16, [(R(14), 3, [R(16)]), EMPTY], {R(16)}),
    (17, [EMPTY], set()),
]


def expected_keep(at: int, available: set[Revision]) -> set[Revision]:
    """keep() is compact()'s available set, except that a tombstone at exactly `at` is not kept
    (hash compatibility with etcd versions that dropped it)."""
    return set() if at in TOMBSTONES else available


def compact_params() -> list[object]:
    return [pytest.param(n, g, a, id=f"compact-{n}") for n, g, a in COMPACT_TABLE]


@pytest.mark.parametrize(("at", "want_gens", "want_available"), compact_params())
def test_compact_once(at: int, want_gens: list[Gen], want_available: set[Revision]) -> None:
    ki = new_test_key_index()
    kept: set[Revision] = set()
    ki.keep(at, kept)
    assert snapshot(ki) == snapshot(new_test_key_index()), "keep must not change the keyIndex"
    assert kept == expected_keep(at, want_available)

    available: set[Revision] = set()
    ki.compact(at, available)
    assert gens(ki) == want_gens
    assert available == want_available
    assert ki.modified == R(16)
    assert ki.is_empty() is (at == 17)


def test_compact_continuous() -> None:
    """compact(1), compact(2), ... on the same keyIndex goes through the same states."""
    ki = new_test_key_index()
    for at, want_gens, want_available in COMPACT_TABLE:
        before = copy.deepcopy(snapshot(ki))
        kept: set[Revision] = set()
        ki.keep(at, kept)
        assert snapshot(ki) == before
        assert kept == expected_keep(at, want_available), at

        available: set[Revision] = set()
        ki.compact(at, available)
        assert gens(ki) == want_gens, at
        assert available == want_available, at
        if ki.is_empty():
            break


@pytest.mark.parametrize("start", [pytest.param(s, id=f"jump-from-{s}") for s in (1, 3, 5, 7, 9, 11, 13, 15)])
def test_compact_jumps(start: int) -> None:
    """Compacting at `start` first and then jumping straight to each later non-tombstone revision
    ends in the same state as compacting there once."""
    for at, want_gens, want_available in COMPACT_TABLE:
        if at <= start or at in TOMBSTONES:
            continue
        ki = new_test_key_index()
        ki.compact(start, set())
        kept: set[Revision] = set()
        ki.keep(at, kept)
        assert kept == want_available, at
        available: set[Revision] = set()
        ki.compact(at, available)
        assert gens(ki) == want_gens, at
        assert available == want_available, at


@pytest.mark.parametrize("at", sorted(TOMBSTONES))
def test_keep_vs_compact_at_tombstone(at: int) -> None:
    """At a tombstone revision, compact() keeps the tombstone (a watcher starting right after
    must see the delete) while keep() leaves it out (etcd's hash compatibility rule)."""
    ki = new_test_key_index()
    kept: set[Revision] = set()
    ki.keep(at, kept)
    available: set[Revision] = set()
    ki.compact(at, available)
    assert kept == set()
    assert available == {R(at)}
    # the tombstone is still the oldest revision of its generation
    assert any(g.revs and g.revs[0] == R(at) for g in ki.generations)


def test_keep_on_current_generation_keeps_newest() -> None:
    """keep() only drops a revision that ends a finished generation, never the newest revision
    of the live key."""
    ki = KeyIndex(b"foo")
    ki.put(2, 0)
    ki.put(4, 0)
    kept: set[Revision] = set()
    ki.keep(4, kept)
    assert kept == {R(4)}
    kept = set()
    ki.keep(9, kept)
    assert kept == {R(4)}


def test_keep_on_empty_key_index_is_noop() -> None:
    ki = KeyIndex(b"foo")
    ki.put(1, 0)
    ki.tombstone(2, 0)
    ki.compact(3, set())
    kept: set[Revision] = set()
    ki.keep(5, kept)
    assert kept == set()


def test_compact_on_empty_key_index_is_rejected() -> None:
    ki = KeyIndex(b"foo")
    ki.put(1, 0)
    ki.tombstone(2, 0)
    ki.compact(3, set())
    with pytest.raises(AssertionError):
        ki.compact(4, set())


def test_compact_on_further_rev() -> None:
    """TestKeyIndexCompactOnFurtherRev: compacting past the last modification of a live key
    keeps its newest revision."""
    ki = KeyIndex(b"foo")
    ki.put(1, 0)
    ki.put(2, 0)
    available: set[Revision] = set()
    ki.compact(3, available)
    assert snapshot(ki) == (b"foo", R(2), [(R(1), 2, [R(2)])])
    assert available == {R(2)}
    # version and create revision survive the compaction
    assert ki.get(3) == (R(2), R(1), 2)


# -- is_empty, find_generation, walk -------------------------------------------------------------


ZERO = R(0)


def _ki_with(generations: list[Generation], modified: Revision = ZERO) -> KeyIndex:
    ki = KeyIndex(b"foo")
    ki.generations = generations
    ki.modified = modified
    return ki


@pytest.mark.parametrize(
    ("ki", "want"),
    [
        pytest.param(_ki_with([Generation()]), True, id="one-empty-generation"),
        pytest.param(_ki_with([Generation(2, R(1), [R(2)])], R(2)), False, id="live"),
        pytest.param(_ki_with([Generation(2, R(1), [R(1), R(2)]), Generation()], R(2)), False, id="deleted"),
        pytest.param(_ki_with([]), False, id="no-generations"),
    ],
)
def test_is_empty(ki: KeyIndex, want: bool) -> None:
    assert ki.is_empty() is want


@pytest.mark.parametrize(
    ("g", "want"),
    [
        pytest.param(Generation(), True, id="empty"),
        pytest.param(Generation(1, R(1), [R(1)]), False, id="one"),
    ],
)
def test_generation_is_empty(g: Generation, want: bool) -> None:
    assert g.is_empty() is want


# TestKeyIndexFindGeneration on the uncompacted standard history: None in the gaps between a
# tombstone and the next creation (the key did not exist), and before the first creation.
FIND_GENERATION: list[tuple[int, int | None]] = [
    (0, None),
    (1, None),
    (2, 0),
    (3, 0),
    (4, 0),
    (5, 0),
    (6, None),
    (7, None),
    (8, 1),
    (9, 1),
    (10, 1),
    (11, 1),
    (12, None),
    (13, None),
    (14, 2),
    (15, 2),
    (16, None),
    (17, None),
]


@pytest.mark.parametrize(("rev", "want"), [pytest.param(r, w, id=f"rev-{r}") for r, w in FIND_GENERATION])
def test_find_generation(rev: int, want: int | None) -> None:
    ki = new_test_key_index()
    g = ki.find_generation(rev)
    if want is None:
        assert g is None
    else:
        assert g is ki.generations[want]


def test_find_generation_live_current() -> None:
    ki = KeyIndex(b"foo")
    ki.put(3, 0)
    ki.tombstone(5, 0)
    ki.put(7, 0)
    assert ki.find_generation(2) is None
    assert ki.find_generation(4) is ki.generations[0]
    assert ki.find_generation(5) is None
    assert ki.find_generation(6) is None
    assert ki.find_generation(7) is ki.generations[1]
    assert ki.find_generation(100) is ki.generations[1]


# TestGenerationWalk: index of the newest revision <= at_rev in {2, 4, 6}
@pytest.mark.parametrize(
    ("at", "want"),
    [(7, 2), (6, 2), (5, 1), (4, 1), (3, 0), (2, 0), (1, -1), (0, -1)],
    ids=lambda v: str(v),
)
def test_generation_walk_back_to(at: int, want: int) -> None:
    g = Generation(3, R(2), [R(2), R(4), R(6)])
    assert g.walk_back_to(at) == want


# -- a model of one key's history ------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    rev: Revision
    tombstone: bool


@st.composite
def histories(draw: st.DrawFn) -> list[Change]:
    """A valid history of one key: increasing revisions, deletes only of a live key."""
    n = draw(st.integers(min_value=1, max_value=14))
    main = draw(st.integers(min_value=1, max_value=3))
    alive = False
    out: list[Change] = []
    for _ in range(n):
        main += draw(st.integers(min_value=1, max_value=3))
        sub = draw(st.sampled_from([0, 0, 0, 1, 3]))
        tomb = alive and draw(st.booleans())
        out.append(Change(R(main, sub), tomb))
        alive = not tomb
    return out


def model_get(history: list[Change], at: int) -> tuple[Revision, Revision, int] | None:
    created: Revision | None = None
    ver = 0
    result: tuple[Revision, Revision, int] | None = None
    for c in history:
        if c.rev.main > at:
            break
        if c.tombstone:
            created, ver, result = None, 0, None
            continue
        if created is None:
            created = c.rev
        ver += 1
        result = (c.rev, created, ver)
    return result


def build(history: list[Change]) -> KeyIndex:
    ki = KeyIndex(b"k")
    for c in history:
        if c.tombstone:
            ki.tombstone(c.rev.main, c.rev.sub)
        else:
            ki.put(c.rev.main, c.rev.sub)
    return ki


@settings(max_examples=200)
@given(histories(), st.data())
def test_model_get_compact_keep(history: list[Change], data: st.DataObject) -> None:
    """For any history and compaction revision c: compact(c) adds exactly the newest revision
    <= c when the key was alive at c or deleted exactly at c; keep(c) the same minus such a
    tombstone; and every get at >= c answers as before the compaction."""
    last = history[-1].rev.main
    ki = build(history)
    for at in range(0, last + 2):
        want = model_get(history, at)
        if want is None:
            with pytest.raises(RevisionNotFoundError):
                ki.get(at)
        else:
            assert ki.get(at) == want, at

    c = data.draw(st.integers(min_value=0, max_value=last + 2), label="compact")
    older = [ch for ch in history if ch.rev.main <= c]
    newest = older[-1] if older else None
    if newest is None or (newest.tombstone and newest.rev.main < c):
        want_available: set[Revision] = set()
    else:
        want_available = {newest.rev}
    want_keep = set() if newest is not None and newest.tombstone else want_available

    kept: set[Revision] = set()
    ki.keep(c, kept)
    assert kept == want_keep
    available: set[Revision] = set()
    ki.compact(c, available)
    assert available == want_available

    for at in range(c, last + 2):
        want = model_get(history, at)
        if want is None:
            with pytest.raises(RevisionNotFoundError):
                ki.get(at)
        else:
            assert ki.get(at) == want, at
    # since(c) lists every remaining change from c on
    visible = [ch.rev for ch in history if ch.rev.main >= c]
    assert ki.since(c) == visible
    # the key is removable exactly when nothing at or after c remains to be read or watched
    assert ki.is_empty() is (history[-1].tombstone and history[-1].rev.main < c)
