"""ConfChange's hand-written encoding must be byte-identical to raftpb's protobuf encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.api.raftpb import raft_pb2
from server.raft.raftpb import ConfChange, ConfChangeDecodeError, ConfChangeType, Entry, EntryType
from server.raft.util import entry_size

u64 = st.integers(0, (1 << 64) - 1)
changes = st.builds(
    ConfChange,
    type=st.sampled_from(list(ConfChangeType)),
    node_id=u64,
    context=st.binary(max_size=40),
    id=u64,
)


def pb_encode(cc: ConfChange) -> bytes:
    m = raft_pb2.ConfChange(id=cc.id, type=raft_pb2.ConfChangeType.ValueType(cc.type), node_id=cc.node_id)
    if cc.context:
        m.context = cc.context
    return m.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(cc=changes)
def test_marshal_matches_protobuf(cc: ConfChange) -> None:
    assert cc.marshal() == pb_encode(cc)


@settings(max_examples=200, deadline=None)
@given(cc=changes)
def test_unmarshal_round_trips(cc: ConfChange) -> None:
    assert ConfChange.unmarshal(cc.marshal()) == cc
    assert ConfChange.unmarshal(pb_encode(cc)) == cc


def test_known_encoding() -> None:
    # What etcd writes for "add node 1" without context.
    assert ConfChange(ConfChangeType.ADD_NODE, 1).marshal() == b"\x08\x00\x10\x00\x18\x01"


def test_unmarshal_skips_unknown_fields_and_tolerates_missing_ones() -> None:
    # Field 9 (varint 7) and field 10 (bytes "zz") are unknown; ID is absent.
    data = b"\x10\x01\x18\x05\x48\x07\x52\x02zz"
    assert ConfChange.unmarshal(data) == ConfChange(ConfChangeType.REMOVE_NODE, 5)
    assert ConfChange.unmarshal(b"") == ConfChange(ConfChangeType.ADD_NODE, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\x18",  # truncated varint
        b"\x22\x05ab",  # truncated bytes
        b"\x10\x09",  # unknown change type
        b"\x0b",  # group wire type
        b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # overlong varint
    ],
)
def test_unmarshal_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ConfChangeDecodeError):
        ConfChange.unmarshal(data)


@settings(max_examples=100, deadline=None)
@given(term=u64, index=u64, data=st.binary(max_size=300), typ=st.sampled_from(list(EntryType)))
def test_entry_size_matches_protobuf(term: int, index: int, data: bytes, typ: EntryType) -> None:
    m = raft_pb2.Entry(Term=term, Index=index, Type=raft_pb2.EntryType.ValueType(typ))
    if data:
        m.Data = data
    assert entry_size(Entry(term=term, index=index, type=typ, data=data)) == m.ByteSize()
