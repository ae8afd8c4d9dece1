"""TreeIndex: the ordered key -> keyIndex map (etcd's index_test.go, scenario by scenario).

Key ranges: end None is the single key; end b"" every key >= key; otherwise [key, end).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from server.mvcc.index import TreeIndex
from server.mvcc.key_index import RevisionNotFoundError
from server.mvcc.revision import Revision

R = Revision
Gen = tuple[Revision, int, list[Revision]]
EMPTY: Gen = (R(0, 0), 0, [])


def tree_state(ti: TreeIndex) -> dict[bytes, tuple[Revision, list[Gen]]]:
    out: dict[bytes, tuple[Revision, list[Gen]]] = {}
    for key in list(ti._tree.keys()):
        ki = ti.key_index(key)
        assert ki is not None
        out[key] = (ki.modified, [(g.created, g.ver, list(g.revs)) for g in ki.generations])
    return out


# -- get (TestIndexGet) ----------------------------------------------------------------------------
#
#   foo: {empty} {2.0[1], 4.0[2], 6.0(t)[3]}


@pytest.mark.parametrize(
    ("at", "want"),
    [
        (0, None),
        (1, None),
        (2, (R(2), R(2), 1)),
        (3, (R(2), R(2), 1)),
        (4, (R(4), R(2), 2)),
        (5, (R(4), R(2), 2)),
        (6, None),
        (7, None),
    ],
    ids=lambda v: str(v),
)
def test_get(at: int, want: tuple[Revision, Revision, int] | None) -> None:
    ti = TreeIndex()
    ti.put(b"foo", R(2))
    ti.put(b"foo", R(4))
    ti.tombstone(b"foo", R(6))
    if want is None:
        with pytest.raises(RevisionNotFoundError):
            ti.get(b"foo", at)
    else:
        assert ti.get(b"foo", at) == want


def test_get_unknown_key() -> None:
    ti = TreeIndex()
    ti.put(b"foo", R(2))
    with pytest.raises(RevisionNotFoundError):
        ti.get(b"bar", 2)
    assert ti.key_index(b"bar") is None


# -- range (TestIndexRange) ------------------------------------------------------------------------

ALL_KEYS = [b"foo", b"foo1", b"foo2"]
ALL_REVS = [R(1), R(2), R(3)]


@pytest.mark.parametrize(
    ("key", "end", "want_keys", "want_revs"),
    [
        pytest.param(b"bar", None, [], [], id="single-missing"),
        pytest.param(b"foo", None, ALL_KEYS[:1], ALL_REVS[:1], id="single-found"),
        pytest.param(b"foo", b"foo1", ALL_KEYS[:1], ALL_REVS[:1], id="first"),
        pytest.param(b"foo", b"foo2", ALL_KEYS[:2], ALL_REVS[:2], id="first-two"),
        pytest.param(b"foo", b"fop", ALL_KEYS, ALL_REVS, id="all"),
        pytest.param(b"foo1", b"fop", ALL_KEYS[1:], ALL_REVS[1:], id="last-two"),
        pytest.param(b"foo2", b"fop", ALL_KEYS[2:], ALL_REVS[2:], id="last"),
        pytest.param(b"foo3", b"fop", [], [], id="nothing"),
        pytest.param(b"foo", b"foo", [], [], id="key-equals-end"),
        pytest.param(b"fop", b"foo", [], [], id="end-before-key"),
        pytest.param(b"foo1", b"", ALL_KEYS[1:], ALL_REVS[1:], id="from-key"),
        pytest.param(b"", b"", ALL_KEYS, ALL_REVS, id="everything"),
        pytest.param(b"\x00", b"", ALL_KEYS, ALL_REVS, id="from-zero"),
        pytest.param(b"g", b"", [], [], id="from-after-all"),
    ],
)
def test_range(key: bytes, end: bytes | None, want_keys: list[bytes], want_revs: list[Revision]) -> None:
    ti = TreeIndex()
    for k, r in zip(ALL_KEYS, ALL_REVS, strict=True):
        ti.put(k, r)
    keys, revs = ti.range(key, end, 3)
    assert keys == want_keys
    assert revs == want_revs


def test_range_skips_keys_not_alive() -> None:
    ti = TreeIndex()
    ti.put(b"a", R(1))
    ti.put(b"b", R(2))
    ti.tombstone(b"a", R(3))
    ti.put(b"c", R(4))
    assert ti.range(b"a", b"", 1) == ([b"a"], [R(1)])
    assert ti.range(b"a", b"", 2) == ([b"a", b"b"], [R(1), R(2)])
    assert ti.range(b"a", b"", 3) == ([b"b"], [R(2)])
    assert ti.range(b"a", b"", 4) == ([b"b", b"c"], [R(2), R(4)])
    assert ti.range(b"a", None, 3) == ([], [])


# -- tombstone (TestIndexTombstone) ----------------------------------------------------------------


def test_tombstone() -> None:
    ti = TreeIndex()
    ti.put(b"foo", R(1))
    ti.tombstone(b"foo", R(2))
    with pytest.raises(RevisionNotFoundError):
        ti.get(b"foo", 2)
    with pytest.raises(RevisionNotFoundError):
        ti.tombstone(b"foo", R(3))
    with pytest.raises(RevisionNotFoundError):
        ti.tombstone(b"missing", R(3))


# -- revisions and count (TestIndexRevision) -------------------------------------------------------
#
#   foo:  1, 6      foo1: 2, 5      foo2: 3, 4


def _revision_tree() -> TreeIndex:
    ti = TreeIndex()
    for k, m in [(b"foo", 1), (b"foo1", 2), (b"foo2", 3), (b"foo2", 4), (b"foo1", 5), (b"foo", 6)]:
        ti.put(k, R(m))
    return ti


REVISIONS_TABLE: list[tuple[str, bytes, bytes | None, int, int, list[int], int]] = [
    # id, key, end, at, limit, revs, total
    ("single-missing", b"bar", None, 6, 0, [], 0),
    ("single-found", b"foo", None, 6, 0, [6], 1),
    # various ranges, fixed at, unlimited
    ("range-1", b"foo", b"foo1", 6, 0, [6], 1),
    ("range-2", b"foo", b"foo2", 6, 0, [6, 5], 2),
    ("range-3", b"foo", b"fop", 6, 0, [6, 5, 4], 3),
    ("range-last-2", b"foo1", b"fop", 6, 0, [5, 4], 2),
    ("range-last-1", b"foo2", b"fop", 6, 0, [4], 1),
    ("range-none", b"foo3", b"fop", 6, 0, [], 0),
    ("from-key", b"foo1", b"", 6, 0, [5, 4], 2),
    ("everything", b"", b"", 6, 0, [6, 5, 4], 3),
    # fixed range, various at
    ("at-1", b"foo1", b"fop", 1, 0, [], 0),
    ("at-2", b"foo1", b"fop", 2, 0, [2], 1),
    ("at-3", b"foo1", b"fop", 3, 0, [2, 3], 2),
    ("at-4", b"foo1", b"fop", 4, 0, [2, 4], 2),
    ("at-5", b"foo1", b"fop", 5, 0, [5, 4], 2),
    ("at-6", b"foo1", b"fop", 6, 0, [5, 4], 2),
    # fixed range and at, various limits: the total ignores the limit
    ("limit-1", b"foo", b"fop", 6, 1, [6], 3),
    ("limit-2", b"foo", b"fop", 6, 2, [6, 5], 3),
    ("limit-3", b"foo", b"fop", 6, 3, [6, 5, 4], 3),
    ("limit-4", b"foo", b"fop", 6, 4, [6, 5, 4], 3),
    ("limit-neg", b"foo", b"fop", 6, -1, [6, 5, 4], 3),
    ("at-3-limit-1", b"foo", b"fop", 3, 1, [1], 3),
    ("at-3-limit-2", b"foo", b"fop", 3, 2, [1, 2], 3),
    ("at-3-limit-3", b"foo", b"fop", 3, 3, [1, 2, 3], 3),
    ("single-limit-1", b"foo", None, 6, 1, [6], 1),
]


@pytest.mark.parametrize(
    ("key", "end", "at", "limit", "want_revs", "want_total"),
    [pytest.param(*row[1:], id=row[0]) for row in REVISIONS_TABLE],
)
def test_revisions_and_count(
    key: bytes, end: bytes | None, at: int, limit: int, want_revs: list[int], want_total: int
) -> None:
    ti = _revision_tree()
    revs, total = ti.revisions(key, end, at, limit)
    assert revs == [R(m) for m in want_revs]
    assert total == want_total
    assert ti.count_revisions(key, end, at) == want_total


# -- range_since ---------------------------------------------------------------------------------


def test_range_since() -> None:
    ti = TreeIndex()
    ti.put(b"a", R(1))
    ti.put(b"b", R(2))
    ti.put(b"a", R(3))
    ti.put(b"a", R(3, 1))
    ti.tombstone(b"b", R(4))
    ti.put(b"c", R(4, 1))
    ti.put(b"b", R(5))
    # single key
    assert ti.range_since(b"a", None, 0) == [R(1), R(3, 1)]
    assert ti.range_since(b"b", None, 3) == [R(4), R(5)]
    assert ti.range_since(b"z", None, 0) == []
    # a range: every change from rev on, in revision order across keys
    assert ti.range_since(b"a", b"c", 2) == [R(2), R(3, 1), R(4), R(5)]
    assert ti.range_since(b"a", b"", 4) == [R(4), R(4, 1), R(5)]
    assert ti.range_since(b"b", b"", 0) == [R(2), R(4), R(4, 1), R(5)]
    assert ti.range_since(b"a", b"", 6) == []


# -- restore and key_index -------------------------------------------------------------------------


def test_restore_and_key_index() -> None:
    ti = TreeIndex()
    ti.restore(b"foo", R(5), R(7), 2)
    assert len(ti) == 1
    ki = ti.key_index(b"foo")
    assert ki is not None
    assert ki.get(7) == (R(7), R(5), 2)
    ti.put(b"foo", R(8))
    assert ti.get(b"foo", 8) == (R(8), R(5), 3)


# -- compact and keep (TestIndexCompactAndKeep) ----------------------------------------------------
#
#   key "foo"   modified 10       {10.0}              {1.0, 5.0, 9.0(t)}
#   key "foo1"  modified 10.1     {10.1}              {2.0, 6.0, 7.0(t)}
#   key "foo2"  modified 8        {empty}             {3.0, 4.0, 8.0(t)}


def build_tree_index() -> TreeIndex:
    ti = TreeIndex()
    ti.put(b"foo", R(1))
    ti.put(b"foo1", R(2))
    ti.put(b"foo2", R(3))
    ti.put(b"foo2", R(4))
    ti.put(b"foo", R(5))
    ti.put(b"foo1", R(6))
    ti.tombstone(b"foo1", R(7))
    ti.tombstone(b"foo2", R(8))
    ti.tombstone(b"foo", R(9))
    ti.put(b"foo", R(10))
    ti.put(b"foo1", R(10, 1))
    return ti


FOO_G0: Gen = (R(1), 3, [R(1), R(5), R(9)])
FOO_G1: Gen = (R(10), 1, [R(10)])
FOO1_G0: Gen = (R(2), 3, [R(2), R(6), R(7)])
FOO1_G1: Gen = (R(10, 1), 1, [R(10, 1)])
FOO2_G0: Gen = (R(3), 3, [R(3), R(4), R(8)])

State = dict[bytes, tuple[Revision, list[Gen]]]


def _state(foo: list[Gen] | None, foo1: list[Gen] | None, foo2: list[Gen] | None) -> State:
    out: State = {}
    if foo is not None:
        out[b"foo"] = (R(10), foo)
    if foo1 is not None:
        out[b"foo1"] = (R(10, 1), foo1)
    if foo2 is not None:
        out[b"foo2"] = (R(8), foo2)
    return out


def _r(*revs: Revision | int) -> set[Revision]:
    return {r if isinstance(r, Revision) else R(r) for r in revs}


# atRev -> (tree after compact(atRev), compact's available set, keep(atRev) afterwards)
COMPACT_TABLE: list[tuple[int, State, set[Revision], set[Revision]]] = [
    (1, _state([FOO_G0, FOO_G1], [FOO1_G0, FOO1_G1], [FOO2_G0, EMPTY]), _r(1), _r(1)),
    (2, _state([FOO_G0, FOO_G1], [FOO1_G0, FOO1_G1], [FOO2_G0, EMPTY]), _r(1, 2), _r(1, 2)),
    (3, _state([FOO_G0, FOO_G1], [FOO1_G0, FOO1_G1], [FOO2_G0, EMPTY]), _r(1, 2, 3), _r(1, 2, 3)),
    (
        4,
        _state([FOO_G0, FOO_G1], [FOO1_G0, FOO1_G1], [(R(3), 3, [R(4), R(8)]), EMPTY]),
        _r(1, 2, 4),
        _r(1, 2, 4),
    ),
    (
        5,
        _state([(R(1), 3, [R(5), R(9)]), FOO_G1], [FOO1_G0, FOO1_G1], [(R(3), 3, [R(4), R(8)]), EMPTY]),
        _r(2, 4, 5),
        _r(2, 4, 5),
    ),
    (
        6,
        _state(
            [(R(1), 3, [R(5), R(9)]), FOO_G1],
            [(R(2), 3, [R(6), R(7)]), FOO1_G1],
            [(R(3), 3, [R(4), R(8)]), EMPTY],
        ),
        _r(6, 4, 5),
        _r(6, 4, 5),
    ),
    (
        7,
        _state(
            [(R(1), 3, [R(5), R(9)]), FOO_G1],
            [(R(2), 3, [R(7)]), FOO1_G1],
            [(R(3), 3, [R(4), R(8)]), EMPTY],
        ),
        _r(7, 4, 5),
        _r(4, 5),  # keep leaves out foo1's tombstone at 7
    ),
    (
        8,
        _state([(R(1), 3, [R(5), R(9)]), FOO_G1], [FOO1_G1], [(R(3), 3, [R(8)]), EMPTY]),
        _r(8, 5),
        _r(5),
    ),
    (9, _state([(R(1), 3, [R(9)]), FOO_G1], [FOO1_G1], None), _r(9), _r()),
    (10, _state([FOO_G1], [FOO1_G1], None), _r(R(10), R(10, 1)), _r(R(10), R(10, 1))),
]


def _row(at: int) -> tuple[State, set[Revision], set[Revision]]:
    j = min(at, len(COMPACT_TABLE)) - 1
    _, state, available, keep = COMPACT_TABLE[j]
    return state, available, keep


@pytest.mark.parametrize("at", range(1, 20), ids=lambda a: f"compact-{a}")
def test_compact_once(at: int) -> None:
    state, available, keep = _row(at)
    ti = build_tree_index()
    before = tree_state(ti)
    assert ti.keep(at) == keep
    assert tree_state(ti) == before, "keep must not change the index"
    assert ti.compact(at) == available
    assert ti.keep(at) == keep
    assert tree_state(ti) == state
    assert len(ti) == len(state)


def test_compact_continuous() -> None:
    ti = build_tree_index()
    for at in range(1, 20):
        state, available, keep = _row(at)
        assert ti.compact(at) == available, at
        assert ti.keep(at) == keep, at
        assert tree_state(ti) == state, at


def test_keep_before_compact_matches_keep_after() -> None:
    """keep(n) on the uncompacted tree equals keep(n) after compact(n): compaction changes no
    hash."""
    for at in range(1, 20):
        _, _, keep = _row(at)
        assert build_tree_index().keep(at) == keep, at


def test_compact_removes_empty_keys() -> None:
    ti = TreeIndex()
    ti.put(b"a", R(1))
    ti.tombstone(b"a", R(2))
    ti.put(b"b", R(3))
    assert ti.compact(2) == {R(2)}
    assert ti.key_index(b"a") is not None, "the tombstone at the compaction revision stays"
    assert ti.compact(3) == {R(3)}
    assert ti.key_index(b"a") is None
    assert len(ti) == 1
    assert ti.range(b"", b"", 3) == ([b"b"], [R(3)])
    # a removed key can be created again
    ti.put(b"a", R(4))
    assert ti.get(b"a", 4) == (R(4), R(4), 1)


# -- model: ranges and counts against a dict of key -> history ------------------------------------

KEYS = [b"a", b"ab", b"b", b"ba", b"c"]


@st.composite
def tree_histories(draw: st.DrawFn) -> list[tuple[int, list[tuple[bytes, bool]]]]:
    """Transactions (main revision, [(key, is_delete)]) with distinct keys per transaction and
    deletes only of live keys."""
    alive: set[bytes] = set()
    txns: list[tuple[int, list[tuple[bytes, bool]]]] = []
    main = 1
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        main += 1
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
        ops: list[tuple[bytes, bool]] = []
        for k in keys:
            delete = k in alive and draw(st.booleans())
            ops.append((k, delete))
            if delete:
                alive.discard(k)
            else:
                alive.add(k)
        txns.append((main, ops))
    return txns


@settings(max_examples=100)
@given(
    tree_histories(),
    st.sampled_from([(b"a", None), (b"a", b"b"), (b"ab", b""), (b"", b""), (b"b", b"c"), (b"zz", None)]),
    st.integers(min_value=0, max_value=4),
    st.data(),
)
def test_model_ranges(
    txns: list[tuple[int, list[tuple[bytes, bool]]]],
    rng: tuple[bytes, bytes | None],
    limit: int,
    data: st.DataObject,
) -> None:
    ti = TreeIndex()
    # model: key -> list of (main, sub, deleted)
    model: dict[bytes, list[tuple[Revision, bool]]] = {}
    for main, ops in txns:
        for sub, (k, delete) in enumerate(ops):
            if delete:
                ti.tombstone(k, R(main, sub))
            else:
                ti.put(k, R(main, sub))
            model.setdefault(k, []).append((R(main, sub), delete))
    last = txns[-1][0]
    compact = data.draw(st.integers(min_value=0, max_value=last), label="compact")
    ti.compact(compact)
    key, end = rng

    def in_range(k: bytes) -> bool:
        if end is None:
            return k == key
        return k >= key and (end == b"" or k < end)

    for at in range(compact, last + 2):
        want: list[tuple[bytes, Revision]] = []
        for k in sorted(model):
            if not in_range(k):
                continue
            seen = [(r, d) for r, d in model[k] if r.main <= at]
            if seen and not seen[-1][1]:
                want.append((k, seen[-1][0]))
        keys, revs = ti.range(key, end, at)
        assert list(zip(keys, revs, strict=True)) == want, at
        got_revs, total = ti.revisions(key, end, at, limit)
        assert total == len(want)
        assert got_revs == [r for _, r in (want[:limit] if limit > 0 else want)]
        assert ti.count_revisions(key, end, at) == len(want)
