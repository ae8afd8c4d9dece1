"""Record framing and the append-side encoder.

Each record is one frame. A segment file is a run of frames, then (maybe) zeros:

      offset 0                                 8-byte aligned everywhere
      |
      v
    +--------------------+-------------------------------+---------+
    | length word (8 B)  | walpb.Record bytes (N bytes)  | pad (P) |  frame 1
    +--------------------+-------------------------------+---------+
    | length word (8 B)  | walpb.Record bytes            | pad     |  frame 2
    +--------------------+-------------------------------+---------+
    | ...                                                          |
    +--------------------------------------------------------------+
    | 00 00 00 ... (unwritten or preallocated space, if any)       |
    +--------------------------------------------------------------+

    length word, little-endian uint64:

      bit 63     62..59   58..56     55 .............................. 0
     +-------+---------+----------+-------------------------------------+
     | has   | unused  | P (pad   | N: size of the Record bytes          |
     | pad   | (0)     | bytes)   |                                      |
     +-------+---------+----------+-------------------------------------+

    P = (8 - N % 8) % 8 zero bytes follow the Record so the next length word starts 8-byte
    aligned; when P == 0 the whole top byte is 0. A length word therefore never straddles a
    sector boundary, so it is written whole or not at all; a zero word marks the end of data.

    walpb.Record = {type: int64, crc: uint32, data: bytes}

    crc is CRC-32C (Castagnoli) of `data`, seeded with the crc of the record before it, so each
    record's crc covers every record's data since the WAL was created:

        crc(r_i) = crc32c(data(r_i), crc(r_{i-1}))          crc(r_-1) = 0

    A CRC record (no data) is the first frame of every segment and stores the running crc at
    that point, so a reader that starts at a later segment can pick the chain up there, and a
    reader that crosses a segment boundary can check nothing was lost in between.

Invariants the encoder keeps: frames are only appended; `offset` is the logical end of the
segment (bytes written plus bytes still buffered); `crc` is the chain value after the last
encoded record. Nothing is durable until flush() and the caller's fdatasync.
"""

from __future__ import annotations

import os
import struct

import crc32c

from server.api.walpb import record_pb2
from server.wal.record import RecordType

__all__ = [
    "FRAME_HEADER_BYTES",
    "Encoder",
    "decode_frame_size",
    "encode_frame",
    "encode_frame_size",
]

FRAME_HEADER_BYTES = 8
# Writes are handed to the kernel once this much is buffered, even without a sync.
_FLUSH_BYTES = 1 << 20
_LEN = struct.Struct("<Q")
_ZEROS = b"\x00" * 8


def encode_frame_size(data_bytes: int) -> tuple[int, int]:
    """Return (length word, padding bytes) for a record of `data_bytes` bytes."""
    pad = (8 - data_bytes % 8) % 8
    word = data_bytes
    if pad:
        word |= (0x80 | pad) << 56
    return word, pad


def decode_frame_size(word: int) -> tuple[int, int]:
    """Return (record bytes, padding bytes) from a length word (no validation)."""
    rec_bytes = word & ((1 << 56) - 1)
    pad = (word >> 56) & 0x7 if word & (1 << 63) else 0
    return rec_bytes, pad


def encode_frame(record: bytes) -> bytes:
    word, pad = encode_frame_size(len(record))
    return _LEN.pack(word) + record + _ZEROS[:pad]


def serialize_record(rec_type: int, crc: int, data: bytes) -> bytes:
    rec = record_pb2.Record(type=rec_type, crc=crc)
    if data:
        rec.data = data
    return rec.SerializeToString()


class Encoder:
    """Appends framed, CRC-chained records to one open segment file descriptor.

    Writes are positional (pwrite at the encoder's own offset), so the descriptor's seek
    position is irrelevant and the decoder may pread through the same descriptor.
    """

    def __init__(self, fd: int, prev_crc: int, offset: int) -> None:
        self._fd = fd
        self._crc = prev_crc
        self._offset = offset
        self._flushed = offset  # the file offset the next flush writes at
        self._buf = bytearray()

    @property
    def crc(self) -> int:
        """The chain value after the last encoded record."""
        return self._crc

    @property
    def offset(self) -> int:
        """Logical end of the segment: written bytes plus buffered bytes."""
        return self._offset

    def checkpoint(self) -> tuple[int, int]:
        """The encoder's state, to roll back a batch that failed to reach the disk."""
        return self._crc, self._offset

    def rollback(self, state: tuple[int, int]) -> None:
        """Forget everything encoded since checkpoint(): the segment logically ends where it
        ended then. Bytes already written beyond that are overwritten by the next records (and,
        if none come, read back as a torn tail: they do not continue the CRC chain)."""
        self._crc, offset = state
        if self._flushed >= offset:
            self._buf.clear()
            self._flushed = offset
        else:
            del self._buf[offset - self._flushed :]
        self._offset = offset

    def encode(self, rec_type: RecordType, data: bytes = b"") -> None:
        if rec_type is not RecordType.CRC:
            self._crc = crc32c.crc32c(data, self._crc)
        frame = encode_frame(serialize_record(int(rec_type), self._crc, data))
        self._buf += frame
        self._offset += len(frame)
        if len(self._buf) >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand every buffered byte to the kernel (no fsync). On an error the bytes written so
        far count as flushed and the rest stays buffered."""
        buf = self._buf
        written = 0
        try:
            while written < len(buf):
                chunk = buf if written == 0 else bytes(buf[written:])
                written += os.pwrite(self._fd, chunk, self._flushed + written)
        finally:
            self._flushed += written
            del buf[:written]
