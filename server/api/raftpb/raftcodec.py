"""Conversion between raft's value types (server/raft/raftpb.py) and their raftpb wire encoding.

The raft core works on frozen dataclasses; the protobuf classes in server/api/raftpb/raft_pb2.py
only appear where a value crosses a process boundary: the WAL (entries, hard state, the snapshot
marker's ConfState), the snapshot files, and the peer transport (Message, which embeds entries
and a snapshot).

Encoding rules, chosen so the bytes match what etcd (gogoproto, proto2) produces:

* scalar fields gogoproto marks non-nullable are always emitted, even when zero;
* `bytes` fields are emitted only when non-empty (Go's nil slice); decoding an absent one
  yields b"";
* SnapshotMetadata.conf_state is always emitted; Message.snapshot is emitted only when the
  dataclass carries one (raft v3.6 made it a pointer), and decodes back to None when absent.

Decoding validates enum values against the dataclass enums and raises RaftCodecError (a
ValueError) for anything this server cannot represent, and for bytes that are not a valid
protobuf message at all.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage
from google.protobuf.unknown_fields import UnknownFieldSet

from server.api.raftpb import raft_pb2
from server.raft.raftpb import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

__all__ = [
    "RaftCodecError",
    "conf_state_from_pb",
    "conf_state_to_pb",
    "entry_from_pb",
    "entry_to_pb",
    "hard_state_from_pb",
    "hard_state_to_pb",
    "has_unknown_fields",
    "marshal_conf_state",
    "marshal_entry",
    "marshal_hard_state",
    "marshal_message",
    "marshal_snapshot",
    "message_from_pb",
    "message_to_pb",
    "snapshot_from_pb",
    "snapshot_metadata_from_pb",
    "snapshot_metadata_to_pb",
    "snapshot_to_pb",
    "unmarshal_conf_state",
    "unmarshal_entry",
    "unmarshal_hard_state",
    "unmarshal_message",
    "unmarshal_snapshot",
]

_P = TypeVar("_P", bound=PbMessage)

_ENTRY_TYPES = frozenset(int(t) for t in EntryType)
_MESSAGE_TYPES = frozenset(int(t) for t in MessageType)


class RaftCodecError(ValueError):
    """Bytes or a protobuf value that do not decode to a raft value this server understands."""


def has_unknown_fields(pb: PbMessage) -> bool:
    """True when `pb` or a message nested in it carries fields its schema does not define."""
    if len(UnknownFieldSet(pb)):
        return True
    for fd, value in pb.ListFields():
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            if any(has_unknown_fields(v) for v in value):
                return True
        elif has_unknown_fields(value):
            return True
    return False


def _check_enum_known(pb: PbMessage, field_number: int, what: str) -> None:
    """proto2 enums are closed: a value outside the .proto enum is parked among the unknown
    fields and the field reads as unset, with its default (0), which would silently turn, say,
    an unknown message type into MsgHup. Refuse it instead. (Only needed when the field is
    unset: a set enum field always holds a known value.)"""
    unknown = UnknownFieldSet(pb)
    for i in range(len(unknown)):
        if unknown[i].field_number == field_number:
            raise RaftCodecError(f"raftpb: unknown {what} {unknown[i].data}")


def _parse(cls: type[_P], data: bytes, what: str, strict: bool = False) -> _P:
    """Parse `data` as `cls`. `strict` also rejects unknown fields: the WAL uses it, because a
    record's CRC covers its data but not its type, and a payload read as the wrong type almost
    always shows up as fields that type does not have."""
    pb = cls()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise RaftCodecError(f"raftpb: cannot decode {what} ({len(data)} bytes): {exc}") from exc
    if strict and has_unknown_fields(pb):
        raise RaftCodecError(f"raftpb: {what} ({len(data)} bytes) has fields {what} does not define")
    return pb


# --- Entry -----------------------------------------------------------------------------------


def entry_to_pb(e: Entry) -> raft_pb2.Entry:
    pb = raft_pb2.Entry(Term=e.term, Index=e.index, Type=raft_pb2.EntryType.ValueType(e.type))
    if e.data:
        pb.Data = e.data
    return pb


def entry_from_pb(pb: raft_pb2.Entry) -> Entry:
    if not pb.HasField("Type"):
        _check_enum_known(pb, raft_pb2.Entry.TYPE_FIELD_NUMBER, f"entry type (entry index {pb.Index})")
    t = int(pb.Type)
    if t not in _ENTRY_TYPES:
        raise RaftCodecError(f"raftpb: unknown entry type {t} (entry index {pb.Index})")
    return Entry(term=pb.Term, index=pb.Index, type=EntryType(t), data=pb.Data)


def marshal_entry(e: Entry) -> bytes:
    return entry_to_pb(e).SerializeToString()


def unmarshal_entry(data: bytes, *, strict: bool = False) -> Entry:
    return entry_from_pb(_parse(raft_pb2.Entry, data, "Entry", strict))


# --- HardState -------------------------------------------------------------------------------


def hard_state_to_pb(s: HardState) -> raft_pb2.HardState:
    return raft_pb2.HardState(term=s.term, vote=s.vote, commit=s.commit)


def hard_state_from_pb(pb: raft_pb2.HardState) -> HardState:
    return HardState(term=pb.term, vote=pb.vote, commit=pb.commit)


def marshal_hard_state(s: HardState) -> bytes:
    return hard_state_to_pb(s).SerializeToString()


def unmarshal_hard_state(data: bytes, *, strict: bool = False) -> HardState:
    return hard_state_from_pb(_parse(raft_pb2.HardState, data, "HardState", strict))


# --- ConfState -------------------------------------------------------------------------------


def conf_state_to_pb(cs: ConfState) -> raft_pb2.ConfState:
    pb = raft_pb2.ConfState(
        voters=cs.voters,
        learners=cs.learners,
        voters_outgoing=cs.voters_outgoing,
        learners_next=cs.learners_next,
        auto_leave=cs.auto_leave,
    )
    return pb


def conf_state_from_pb(pb: raft_pb2.ConfState) -> ConfState:
    return ConfState(
        voters=tuple(pb.voters),
        learners=tuple(pb.learners),
        voters_outgoing=tuple(pb.voters_outgoing),
        learners_next=tuple(pb.learners_next),
        auto_leave=pb.auto_leave,
    )


def marshal_conf_state(cs: ConfState) -> bytes:
    return conf_state_to_pb(cs).SerializeToString()


def unmarshal_conf_state(data: bytes, *, strict: bool = False) -> ConfState:
    return conf_state_from_pb(_parse(raft_pb2.ConfState, data, "ConfState", strict))


# --- Snapshot --------------------------------------------------------------------------------


def snapshot_metadata_to_pb(m: SnapshotMetadata) -> raft_pb2.SnapshotMetadata:
    return raft_pb2.SnapshotMetadata(conf_state=conf_state_to_pb(m.conf_state), index=m.index, term=m.term)


def snapshot_metadata_from_pb(pb: raft_pb2.SnapshotMetadata) -> SnapshotMetadata:
    return SnapshotMetadata(conf_state=conf_state_from_pb(pb.conf_state), index=pb.index, term=pb.term)


def snapshot_to_pb(s: Snapshot) -> raft_pb2.Snapshot:
    pb = raft_pb2.Snapshot(metadata=snapshot_metadata_to_pb(s.metadata))
    if s.data:
        pb.data = s.data
    return pb


def snapshot_from_pb(pb: raft_pb2.Snapshot) -> Snapshot:
    return Snapshot(data=pb.data, metadata=snapshot_metadata_from_pb(pb.metadata))


def marshal_snapshot(s: Snapshot) -> bytes:
    return snapshot_to_pb(s).SerializeToString()


def unmarshal_snapshot(data: bytes, *, strict: bool = False) -> Snapshot:
    return snapshot_from_pb(_parse(raft_pb2.Snapshot, data, "Snapshot", strict))


# --- Message ---------------------------------------------------------------------------------


def message_to_pb(m: Message) -> raft_pb2.Message:
    pb = raft_pb2.Message(
        type=raft_pb2.MessageType.ValueType(m.type),
        to=m.to,
        term=m.term,
        logTerm=m.log_term,
        index=m.index,
        entries=[entry_to_pb(e) for e in m.entries],
        commit=m.commit,
        reject=m.reject,
        rejectHint=m.reject_hint,
        vote=m.vote,
    )
    # "from" is a Python keyword, so the generated class only exposes it through setattr.
    setattr(pb, "from", m.frm)
    if m.snapshot is not None:
        pb.snapshot.CopyFrom(snapshot_to_pb(m.snapshot))
    if m.context:
        pb.context = m.context
    return pb


def message_from_pb(pb: raft_pb2.Message) -> Message:
    if not pb.HasField("type"):
        _check_enum_known(pb, raft_pb2.Message.TYPE_FIELD_NUMBER, "message type")
    t = int(pb.type)
    if t not in _MESSAGE_TYPES:
        raise RaftCodecError(f"raftpb: unsupported message type {t}")
    return Message(
        type=MessageType(t),
        to=pb.to,
        frm=int(getattr(pb, "from")),
        term=pb.term,
        log_term=pb.logTerm,
        index=pb.index,
        entries=tuple(entry_from_pb(e) for e in pb.entries),
        commit=pb.commit,
        vote=pb.vote,
        snapshot=snapshot_from_pb(pb.snapshot) if pb.HasField("snapshot") else None,
        reject=pb.reject,
        reject_hint=pb.rejectHint,
        context=pb.context,
    )


def marshal_message(m: Message) -> bytes:
    return message_to_pb(m).SerializeToString()


def unmarshal_message(data: bytes) -> Message:
    return message_from_pb(_parse(raft_pb2.Message, data, "Message"))
