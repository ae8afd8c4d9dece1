"""The link between gRPC front-end processes and the member (core) process.

Python runs one thread of Python at a time, and terminating gRPC (HTTP/2, grpcio's asyncio
plumbing) costs more CPU per request than petcd's own work. So a member can start front-end
processes that share its client port (SO_REUSEPORT): each terminates gRPC for the connections
the kernel gives it and relays the calls, as raw protobuf bytes, over a Unix socket to the core,
which runs them through the same servicers and interceptors as its own gRPC server. The core
never parses HTTP/2 for those connections; front-ends never parse protobuf.

Frames, both ways:

    +----------------+---------+-----------------+-----------------------------------+
    | length: u32 BE | kind u8 | call id: u32 BE | body (length - 5 bytes)           |
    +----------------+---------+-----------------+-----------------------------------+

    front-end -> core
      CALL    body = method | metadata | request      unary call
      OPEN    body = method | metadata | [request]    streaming call (request: unary-stream)
      MSG     body = request                          next client message of a stream
      CLOSE   body = empty                            client finished sending
      CANCEL  body = empty                            client went away
    core -> front-end
      RESULT  body = status | response                end of a unary call
      SMSG    body = response                         a server message of a stream
      END     body = status                           end of a stream

    method   = u8 length + UTF-8 full method name ("/etcdserverpb.KV/Put")
    metadata = u16 length + "key=value\\n" lines (invocation metadata, plus ":cn" for a
               verified client certificate's common name and ":peer" for the client address)
    status   = u8 gRPC code + u16 length + UTF-8 message
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = [
    "CALL",
    "CANCEL",
    "CLOSE",
    "END",
    "MSG",
    "OPEN",
    "RESULT",
    "SMSG",
    "FrameReader",
    "decode_call",
    "decode_status",
    "encode_call",
    "encode_status",
    "frame",
]

CALL, OPEN, MSG, CLOSE, CANCEL, RESULT, SMSG, END = range(1, 9)

_HEAD = struct.Struct(">IBI")
_U16 = struct.Struct(">H")
MAX_FRAME = 1 << 31


def frame(kind: int, call_id: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(len(body) + 5, kind, call_id) + body


def encode_call(method: str, metadata: list[tuple[str, str]], payload: bytes = b"") -> bytes:
    m = method.encode()
    md = "".join(f"{k}={v}\n" for k, v in metadata).encode()
    return bytes([len(m)]) + m + _U16.pack(len(md)) + md + payload


def decode_call(body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    n = body[0]
    method = body[1 : 1 + n].decode()
    (md_len,) = _U16.unpack_from(body, 1 + n)
    start = 3 + n
    md_text = body[start : start + md_len].decode()
    metadata = [tuple(line.split("=", 1)) for line in md_text.splitlines() if "=" in line]
    return method, metadata, body[start + md_len :]  # type: ignore[return-value]


def encode_status(code: int, message: str, payload: bytes = b"") -> bytes:
    m = message.encode()
    return bytes([code]) + _U16.pack(len(m)) + m + payload


def decode_status(body: bytes) -> tuple[int, str, bytes]:
    (n,) = _U16.unpack_from(body, 1)
    return body[0], body[3 : 3 + n].decode(), body[3 + n :]


class FrameReader:
    """Splits a byte stream into frames; feed() calls on_frame(kind, call id, body) per frame."""

    def __init__(self, on_frame: Callable[[int, int, bytes], None]) -> None:
        self._buf = bytearray()
        self._on_frame = on_frame

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        while size - pos >= 4:
            (length,) = struct.unpack_from(">I", buf, pos)
            if size - pos - 4 < length:
                break
            kind, call_id = buf[pos + 4], int.from_bytes(buf[pos + 5 : pos + 9], "big")
            body = bytes(buf[pos + 9 : pos + 4 + length])
            pos += 4 + length
            self._on_frame(kind, call_id, body)
        if pos:
            del buf[:pos]
