"""The WAL's record types and the snapshot marker value.

A WAL is a sequence of walpb.Record{type, crc, data}; `type` says how to read `data`:

    METADATA  opaque bytes given to create(); repeated at the head of every segment
    ENTRY     a raftpb.Entry
    STATE     a raftpb.HardState
    CRC       no data; `crc` carries the running CRC of everything before it (segment heads)
    SNAPSHOT  a walpb.Snapshot marker: "a snapshot at (index, term) exists; entries follow it"

The numbering is etcd's (server/storage/wal/wal.go), so the files are interchangeable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from server.api.raftpb import raftcodec
from server.api.walpb import record_pb2
from server.raft.raftpb import ConfState

__all__ = ["RecordType", "WALSnapshot", "marshal_wal_snapshot", "unmarshal_wal_snapshot"]


class RecordType(enum.IntEnum):
    METADATA = 1
    ENTRY = 2
    STATE = 3
    CRC = 4
    SNAPSHOT = 5


KNOWN_RECORD_TYPES = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True, slots=True)
class WALSnapshot:
    """A snapshot marker (etcd's walpb.Snapshot).

    `conf_state` is None only for the empty marker create() writes (index 0) and for markers
    written by etcd releases older than 3.5; save_snapshot() refuses a non-initial marker
    without one, as etcd does.
    """

    index: int = 0
    term: int = 0
    conf_state: ConfState | None = None


def marshal_wal_snapshot(s: WALSnapshot) -> bytes:
    pb = record_pb2.Snapshot(index=s.index, term=s.term)
    if s.conf_state is not None:
        pb.conf_state.CopyFrom(raftcodec.conf_state_to_pb(s.conf_state))
    return pb.SerializeToString()


def unmarshal_wal_snapshot(data: bytes, *, strict: bool = False) -> WALSnapshot:
    pb = record_pb2.Snapshot()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise raftcodec.RaftCodecError(f"walpb: cannot decode Snapshot marker: {exc}") from exc
    if strict and raftcodec.has_unknown_fields(pb):
        raise raftcodec.RaftCodecError("walpb: Snapshot marker has fields it does not define")
    cs = raftcodec.conf_state_from_pb(pb.conf_state) if pb.HasField("conf_state") else None
    return WALSnapshot(index=pb.index, term=pb.term, conf_state=cs)
