"""Reading records back: frame parsing, CRC chain verification, torn-tail detection.

The decoder walks a list of consecutive segments, yielding every record in order, and checks:

* every frame is well formed (see the picture in encoder.py) and its Record parses;
* every non-CRC record's crc equals crc32c(data, previous crc) -- the chain;
* every CRC record (the first frame of a segment) equals the running crc, unless it is the
  very first record read (a reader that starts at a later segment picks the chain up there);
* every segment starts with a CRC record followed by a METADATA record;
* every record type is known.

What happens at the first bad frame depends on where it is.

In any segment but the last one it is corruption: segments are truncated to their last record
and fsynced before the next one is created, so nothing there can be half-written.

In the last segment it may be the tail of a write the crash interrupted, which was never
acknowledged (acknowledgement waits for fdatasync, which covers every earlier byte too). The
bad frame at offset p is treated as such a torn tail, and everything from p on is dropped, when

  (a) only zero bytes follow p (unwritten or preallocated space), or
  (b) the bad frame contains an unwritten sector: some 512-byte sector it overlaps is all zero
      from the frame's bytes in it to the sector's end while written data lies further on.
      Pages reach the disk in any order, so one big write can persist later sectors but not an
      earlier one; that is only possible for data that was never synced (etcd's rule), or
  (c) no intact record follows p: no well-formed frame q after p whose crc chains from the bad
      frame's stored crc, or from a well-formed frame ending exactly at q. So a bad final
      record, or a final record cut short, is dropped, but a damaged record followed by
      records that still chain correctly -- data that was written and synced after it -- is
      reported as corruption instead of silently discarded.

Anything else raises WALCorruptError (CRCMismatchError for a chain mismatch) naming the segment
file and the offset of the bad frame. The residual blind spot of (c): when only one record
follows a damaged one and the damage hit the damaged record's length word or stored crc, there
is nothing left to chain from, and the two are dropped as a torn tail.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c
from google.protobuf.message import DecodeError

from server.api.walpb import record_pb2
from server.wal.encoder import FRAME_HEADER_BYTES, decode_frame_size
from server.wal.errors import CRCMismatchError, WALCorruptError
from server.wal.record import KNOWN_RECORD_TYPES, RecordType

__all__ = ["DecodedRecord", "Decoder", "SegmentSource", "TornTail", "classify_bad_tail"]

SECTOR_BYTES = 512
_LEN = struct.Struct("<Q")
_MAX_RECORD_BYTES = 1 << 40  # a length word beyond this cannot be real


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    type: int
    crc: int
    data: bytes
    path: str
    offset: int  # offset of the frame's length word in `path`


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn final write found at the end of the last segment."""

    path: str
    offset: int  # the last valid record ends here; everything after is to be discarded
    file_size: int
    nonzero_bytes: int  # bytes after `offset` up to the last non-zero byte of the file
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentSource:
    """A segment to decode: its path, and optionally an open fd to read it through."""

    path: str
    fd: int | None = None


@dataclass(frozen=True, slots=True)
class _Frame:
    rec: record_pb2.Record
    end: int  # offset just past the frame's padding


@dataclass(frozen=True, slots=True)
class _BadFrame:
    reason: str
    stored_crc: int | None = None  # the Record's crc when it parsed
    end: int | None = None  # frame end when the length word was plausible and fits the file
    crc_mismatch: tuple[int, int] | None = None  # (stored, computed)


def _parse_frame(buf: bytes, p: int) -> _Frame | _BadFrame | None:
    """Parse the frame at p: a _Frame, a _BadFrame, or None for a zero length word."""
    size = len(buf)
    if p + FRAME_HEADER_BYTES > size:
        return _BadFrame(f"short length word ({size - p} of {FRAME_HEADER_BYTES} bytes)")
    (word,) = _LEN.unpack_from(buf, p)
    if word == 0:
        return None
    rec_bytes, pad = decode_frame_size(word)
    top = word >> 56
    expected_pad = (8 - rec_bytes % 8) % 8
    if (top != 0 and top != 0x80 | pad) or pad != expected_pad or rec_bytes > _MAX_RECORD_BYTES:
        return _BadFrame(f"invalid length word {word:#018x}")
    end = p + FRAME_HEADER_BYTES + rec_bytes + pad
    if end > size:
        return _BadFrame(f"record of {rec_bytes} bytes extends {end - size} bytes past the end of the file")
    rec = record_pb2.Record()
    try:
        rec.ParseFromString(buf[p + FRAME_HEADER_BYTES : p + FRAME_HEADER_BYTES + rec_bytes])
    except DecodeError:
        return _BadFrame("record bytes do not parse", end=end)
    return _Frame(rec, end)


def _chain_ok(rec: record_pb2.Record, prev_crc: int) -> bool:
    return crc32c.crc32c(rec.data, prev_crc) == rec.crc


def _data_frame(buf: bytes, q: int, limit: int) -> _Frame | None:
    if q >= limit:
        return None
    f = _parse_frame(buf, q)
    if not isinstance(f, _Frame):
        return None
    if f.rec.type not in KNOWN_RECORD_TYPES or f.rec.type == RecordType.CRC:
        return None
    return f


def _find_intact_record(buf: bytes, p: int, limit: int, bad: _BadFrame) -> int | None:
    """Offset of the first record after p that provably continues the CRC chain, if any."""
    q = p + FRAME_HEADER_BYTES
    while q < limit:
        f = _data_frame(buf, q, limit)
        if f is not None:
            if bad.end == q and bad.stored_crc is not None and _chain_ok(f.rec, bad.stored_crc):
                return q
            nxt = _data_frame(buf, f.end, limit)
            if nxt is not None and _chain_ok(nxt.rec, f.rec.crc):
                return q
        q += FRAME_HEADER_BYTES
    return None


def _unwritten_sector(buf: bytes, p: int, end: int, written_end: int) -> int | None:
    """First sector overlapping [p, end) that is all zero from the frame's first byte in it to
    the sector's end, while written data lies beyond it; None if there is no such sector."""
    s = p - p % SECTOR_BYTES
    while s < end and s < written_end:
        lo = max(p, s)
        hi = min(s + SECTOR_BYTES, len(buf))
        if buf.count(0, lo, hi) == hi - lo:
            return lo
        s += SECTOR_BYTES
    return None


def classify_bad_tail(buf: bytes, p: int, bad: _BadFrame) -> tuple[bool, str]:
    """Decide whether the bad frame at p in the last segment is a torn tail.

    Returns (True, why) when everything from p on may be discarded, (False, why) when it is
    corruption. See the module docstring for the rules.
    """
    written_end = len(buf.rstrip(b"\x00"))
    if p >= written_end:
        return True, "only zero bytes follow"
    end = bad.end if bad.end is not None else len(buf)
    sector = _unwritten_sector(buf, p, end, written_end)
    if sector is not None:
        return True, f"the record has an unwritten (all-zero) sector at offset {sector}"
    intact = _find_intact_record(buf, p, written_end, bad)
    if intact is not None:
        return False, f"an intact record follows at offset {intact}"
    return True, "no intact record follows it"


def read_segment(src: SegmentSource) -> bytes:
    if src.fd is None:
        with open(src.path, "rb") as f:
            return f.read()
    size = os.fstat(src.fd).st_size
    chunks: list[bytes] = []
    off = 0
    while off < size:
        chunk = os.pread(src.fd, size - off, off)
        if not chunk:
            break
        chunks.append(chunk)
        off += len(chunk)
    return b"".join(chunks)


class Decoder:
    """Iterates the records of consecutive segments, verifying framing and the CRC chain.

    decode() returns the next record, or None at the end of the log. After None, `torn` tells
    whether the log ended in a torn tail (and where), and `last_offset` is the offset in the
    last segment just past the last valid record.
    """

    def __init__(self, segments: Sequence[SegmentSource]) -> None:
        self._segments = list(segments)
        self._i = -1
        self._buf = b""
        self._pos = 0
        self._nrec = 0
        self._crc = 0
        self._chained = False
        self._done = not self._segments
        self.torn: TornTail | None = None

    @property
    def last_crc(self) -> int:
        """The chain value after the last valid record."""
        return self._crc

    @property
    def last_offset(self) -> int:
        return self._pos

    def _path(self) -> str:
        return self._segments[self._i].path

    def _open_next(self) -> None:
        self._i += 1
        self._buf = read_segment(self._segments[self._i])
        self._pos = 0
        self._nrec = 0

    def _end_segment(self, p: int) -> None:
        """The current segment's data ends at p (end of file, or only zeros follow)."""
        if self._nrec < 2:
            raise WALCorruptError("segment ends before its CRC and METADATA header records", self._path(), p)
        self._pos = p
        if self._i == len(self._segments) - 1:
            self._done = True
        else:
            self._open_next()

    def decode(self) -> DecodedRecord | None:
        while not self._done:
            if self._i < 0:
                self._open_next()
            elif self._pos >= len(self._buf):
                self._end_segment(self._pos)
            else:
                rec = self._decode_at(self._pos)
                if rec is not None:
                    return rec
        return None

    def _decode_at(self, p: int) -> DecodedRecord | None:
        buf = self._buf
        f = _parse_frame(buf, p)
        if f is None:  # zero length word
            if buf.count(0, p) == len(buf) - p:
                self._end_segment(p)
                return None
            f = _BadFrame("zero length word followed by non-zero data", end=p + FRAME_HEADER_BYTES)
        if isinstance(f, _Frame):
            bad = self._check(f, p)
            if bad is None:
                rec = f.rec
                self._pos = f.end
                self._nrec += 1
                return DecodedRecord(rec.type, rec.crc, rec.data, self._path(), p)
            f = bad
        self._bad(p, f)
        return None

    def _check(self, f: _Frame, p: int) -> _BadFrame | None:
        rec = f.rec
        if rec.type == RecordType.CRC:
            if self._chained and rec.crc != self._crc:
                # A CRC record opens a segment, written and synced before the segment existed
                # under its name: a mismatch here is lost or altered data, never a torn write.
                raise CRCMismatchError(
                    self._path(), p, rec.crc, self._crc, "segment does not continue the previous one"
                )
            if self._nrec != 0:
                raise WALCorruptError("CRC record in the middle of a segment", self._path(), p)
            self._crc = rec.crc
            self._chained = True
            return None
        computed = crc32c.crc32c(rec.data, self._crc)
        if computed != rec.crc:
            return _BadFrame("crc mismatch", stored_crc=rec.crc, end=f.end, crc_mismatch=(rec.crc, computed))
        if rec.type not in KNOWN_RECORD_TYPES:
            raise WALCorruptError(f"unknown record type {rec.type}", self._path(), p)
        if self._nrec == 0:
            raise WALCorruptError(f"segment starts with a type {rec.type} record, not CRC", self._path(), p)
        if self._nrec == 1 and rec.type != RecordType.METADATA:
            raise WALCorruptError(
                f"second record of the segment is type {rec.type}, not METADATA", self._path(), p
            )
        self._crc = computed
        self._chained = True
        return None

    def _bad(self, p: int, bad: _BadFrame) -> None:
        path = self._path()
        last = self._i == len(self._segments) - 1
        if last and self._nrec >= 2:
            torn, why = classify_bad_tail(self._buf, p, bad)
            if torn:
                written_end = len(self._buf.rstrip(b"\x00"))
                self.torn = TornTail(
                    path=path,
                    offset=p,
                    file_size=len(self._buf),
                    nonzero_bytes=max(0, written_end - p),
                    reason=f"{bad.reason}; {why}",
                )
                self._pos = p
                self._done = True
                return
            detail = f"{why}, so this is not a torn final write"
        elif not last:
            detail = "not in the last segment, so this is not a torn final write"
        else:
            detail = "inside the segment header, which is synced before the segment is created"
        if bad.crc_mismatch is not None:
            stored, computed = bad.crc_mismatch
            raise CRCMismatchError(path, p, stored, computed, detail)
        raise WALCorruptError(f"{bad.reason}; {detail}", path, p)
