"""The snapshot file envelope, etcd's snappb.Snapshot:

    message snapshot {
        optional uint32 crc  = 1;   // CRC-32C (Castagnoli) of `data`
        optional bytes  data = 2;   // a marshalled raftpb.Snapshot
    }

No generated module exists for it, and it is two fields, so it is encoded by hand here (crc
always emitted, data when non-empty, as gogoproto does). The parser skips unknown fields and
rejects anything that is not well-formed protobuf wire format.
"""

from __future__ import annotations

__all__ = ["WireError", "marshal", "unmarshal"]


class WireError(ValueError):
    """Bytes that are not a well-formed snappb.Snapshot."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def marshal(crc: int, data: bytes) -> bytes:
    out = b"\x08" + _varint(crc)
    if data:
        out += b"\x12" + _varint(len(data)) + data
    return out


def unmarshal(buf: bytes) -> tuple[int, bytes]:
    """Return (crc, data); absent fields read as 0 and b""."""
    crc = 0
    data = b""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if field == 1:
                if value > 0xFFFFFFFF:
                    raise WireError("crc does not fit in 32 bits")
                crc = value
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise WireError(f"field {field} runs {pos + n - len(buf)} bytes past the end")
            if field == 2:
                data = buf[pos : pos + n]
            pos += n
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise WireError("truncated fixed-width field")
            pos += width
        else:
            raise WireError(f"unsupported wire type {wire}")
        if field in (1, 2) and wire != (0 if field == 1 else 2):
            raise WireError(f"field {field} has wire type {wire}")
    return crc, data
