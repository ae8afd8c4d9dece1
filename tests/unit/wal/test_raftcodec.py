"""raftcodec: dataclass <-> raftpb protobuf round trips, etcd byte compatibility, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.api.raftpb import raft_pb2, raftcodec
from server.api.raftpb.raftcodec import RaftCodecError
from server.raft.raftpb import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.tuples(u64) | st.lists(u64, max_size=5).map(tuple)
entries = st.builds(Entry, term=u64, index=u64, type=st.sampled_from(EntryType), data=st.binary(max_size=64))
hard_states = st.builds(HardState, term=u64, vote=u64, commit=u64)
conf_states = st.builds(
    ConfState, voters=ids, learners=ids, voters_outgoing=ids, learners_next=ids, auto_leave=st.booleans()
)
snapshots = st.builds(
    Snapshot,
    data=st.binary(max_size=64),
    metadata=st.builds(SnapshotMetadata, conf_state=conf_states, index=u64, term=u64),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=u64,
    frm=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=u64,
    vote=u64,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=u64,
    context=st.binary(max_size=16),
)
conf_changes = st.builds(
    ConfChange, type=st.sampled_from(ConfChangeType), node_id=u64, context=st.binary(max_size=16), id=u64
)


@given(entries)
def test_entry_round_trip(e: Entry) -> None:
    assert raftcodec.unmarshal_entry(raftcodec.marshal_entry(e)) == e
    assert raftcodec.unmarshal_entry(raftcodec.marshal_entry(e), strict=True) == e


@given(hard_states)
def test_hard_state_round_trip(s: HardState) -> None:
    assert raftcodec.unmarshal_hard_state(raftcodec.marshal_hard_state(s)) == s


@given(conf_states)
def test_conf_state_round_trip(cs: ConfState) -> None:
    assert raftcodec.unmarshal_conf_state(raftcodec.marshal_conf_state(cs)) == cs


@given(snapshots)
def test_snapshot_round_trip(s: Snapshot) -> None:
    assert raftcodec.unmarshal_snapshot(raftcodec.marshal_snapshot(s), strict=True) == s


@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert raftcodec.unmarshal_message(raftcodec.marshal_message(m)) == m


def test_entry_bytes_match_etcd() -> None:
    # gogoproto output for raftpb.Entry{Index: 1, Data: "waldata1"} (from etcd's wal tests).
    want = b"\x08\x00\x10\x00\x18\x01\x22\x08waldata1"
    assert raftcodec.marshal_entry(Entry(term=0, index=1, data=b"waldata1")) == want
    # Empty data is omitted (a Go nil slice), zero scalars are not.
    assert raftcodec.marshal_entry(Entry(term=0, index=0)) == b"\x08\x00\x10\x00\x18\x00"


def test_hard_state_always_emits_scalars() -> None:
    assert raftcodec.marshal_hard_state(HardState()) == b"\x08\x00\x10\x00\x18\x00"


def test_message_with_entries_and_snapshot() -> None:
    snap = Snapshot(
        data=b"state machine",
        metadata=SnapshotMetadata(conf_state=ConfState(voters=(1, 2, 3), learners=(4,)), index=100, term=7),
    )
    m = Message(
        type=MessageType.MsgSnap,
        to=2,
        frm=1,
        term=7,
        entries=(Entry(term=7, index=101, data=b"a"), Entry(term=7, index=102, type=EntryType.CONF_CHANGE)),
        snapshot=snap,
        context=b"ctx",
    )
    b = raftcodec.marshal_message(m)
    pb = raft_pb2.Message()
    pb.ParseFromString(b)
    assert getattr(pb, "from") == 1
    assert pb.snapshot.metadata.index == 100
    assert list(pb.snapshot.metadata.conf_state.voters) == [1, 2, 3]
    assert [e.Index for e in pb.entries] == [101, 102]
    assert raftcodec.unmarshal_message(b) == m


def test_message_without_snapshot_omits_it() -> None:
    pb = raftcodec.message_to_pb(Message(type=MessageType.MsgApp, to=2, frm=1))
    assert not pb.HasField("snapshot")
    assert not pb.HasField("context")
    assert raftcodec.message_from_pb(pb).snapshot is None
    # An explicitly present empty snapshot (older peers always sent one) decodes as present.
    pb.snapshot.SetInParent()
    assert raftcodec.message_from_pb(pb).snapshot == Snapshot()


def test_unknown_enum_values_are_rejected() -> None:
    # Outside the .proto enum: protobuf would read these as 0 (EntryNormal, MsgHup, AddNode).
    with pytest.raises(RaftCodecError, match="entry type"):
        raftcodec.unmarshal_entry(b"\x08\x07\x10\x00\x18\x03")
    with pytest.raises(RaftCodecError, match="message type"):
        raftcodec.unmarshal_message(b"\x08\x63")
    # In the .proto enum but not supported by this server's raft.
    with pytest.raises(RaftCodecError, match="message type"):
        raftcodec.unmarshal_message(raft_pb2.Message(type=raft_pb2.MsgStorageAppend).SerializeToString())


def test_garbage_is_rejected() -> None:
    with pytest.raises(RaftCodecError, match="cannot decode Entry"):
        raftcodec.unmarshal_entry(b"\x0a\xff\xff")
    with pytest.raises(RaftCodecError):
        raftcodec.unmarshal_message(b"\xff" * 12)
    assert isinstance(RaftCodecError("x"), ValueError)


def test_strict_rejects_unknown_fields() -> None:
    # Entry bytes with data read as a HardState: field 4 is unknown there.
    b = raftcodec.marshal_entry(Entry(term=1, index=5, data=b"xyz"))
    assert raftcodec.unmarshal_hard_state(b) == HardState(term=0, vote=1, commit=5)
    with pytest.raises(RaftCodecError, match="does not define"):
        raftcodec.unmarshal_hard_state(b, strict=True)
    # Nested unknown fields count too.
    pb = raft_pb2.Snapshot()
    pb.metadata.conf_state.ParseFromString(b"\x08\x01\xa0\x06\x01")  # voters=[1], field 100
    with pytest.raises(RaftCodecError):
        raftcodec.unmarshal_snapshot(pb.SerializeToString(), strict=True)
    assert raftcodec.unmarshal_snapshot(pb.SerializeToString()).metadata.conf_state.voters == (1,)
