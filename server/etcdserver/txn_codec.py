"""Decoding transactions nested deeper than protobuf's C decoder goes.

etcd runs a txn nested up to 128 levels (each level spends one of --max-txn-ops). Python's
protobuf (upb) refuses to decode messages nested more than 100 deep, and a txn level is two
messages (TxnRequest -> RequestOp), so deep txns come back through this decoder: it walks the
recursive fields (TxnRequest.success/failure, RequestOp.request_txn, InternalRaftRequest.txn,
and the same in responses) by hand and lets upb decode every shallow part in place. Encoding
needs no help: upb's encoder has no such limit.

Beyond MAX_NESTING levels (where etcd refuses the txn anyway) decoding stops with TooDeepError.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb

__all__ = ["MAX_NESTING", "TooDeepError", "parse"]

# txn levels decoded at most (etcd refuses more than 128 with the default --max-txn-ops)
MAX_NESTING = 200

M = TypeVar("M", bound=Message)

# message type -> {field number: (attribute, repeated)} of the fields that can nest a txn
_RECURSIVE: dict[type[Message], dict[int, tuple[str, bool]]] = {
    rpb.InternalRaftRequest: {6: ("txn", False)},
    pb.TxnRequest: {2: ("success", True), 3: ("failure", True)},
    pb.RequestOp: {4: ("request_txn", False)},
    pb.TxnResponse: {3: ("responses", True)},
    pb.ResponseOp: {4: ("response_txn", False)},
}


class TooDeepError(ValueError):
    """A txn nested deeper than MAX_NESTING levels."""


def parse(cls: type[M], data: bytes) -> M:
    """cls.FromString(data), also for txns nested deeper than upb decodes."""
    try:
        return cls.FromString(data)
    except DecodeError as e:
        if "MaxDepth" not in str(e):
            raise
    msg = cls()
    _merge(msg, memoryview(data), 0)
    return msg


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _merge(msg: Any, buf: memoryview, depth: int) -> None:
    if depth > MAX_NESTING:
        raise TooDeepError(f"txn nested more than {MAX_NESTING} levels")
    recursive = _RECURSIVE.get(type(msg), {})
    rest = bytearray()
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if number in recursive:
                if pos + length > len(buf):
                    raise DecodeError("length past the end of the message")
                attr, repeated = recursive[number]
                child = getattr(msg, attr).add() if repeated else getattr(msg, attr)
                child.SetInParent()
                _merge(child, buf[pos : pos + length], depth + (type(msg) in (pb.RequestOp, pb.ResponseOp)))
                pos += length
                continue
            pos += length
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise DecodeError("field past the end of the message")
        rest += buf[start:pos]
    if rest:
        msg.MergeFromString(bytes(rest))
