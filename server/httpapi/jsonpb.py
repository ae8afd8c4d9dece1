"""JSON <-> protobuf as etcd's grpc-gateway speaks it, byte for byte.

etcd v3.6 registers grpc-gateway v2's JSONPb marshaler with protojson's UseProtoNames and
DiscardUnknown. What that means on the wire, and what this module reproduces:

Responses (protojson.Marshal):
  * fields in declaration order under their .proto names (`create_revision`, `dbSize`);
  * fields at their zero value omitted, set messages always present (`"downgradeInfo":{}`);
  * 64-bit integers as strings, 32-bit ones as numbers, bytes as padded standard base64,
    enums by name (by number when unknown);
  * protojson's deliberately unstable whitespace, as the etcd v3.6.16 binary draws it:
    a space after every comma and none after colons (`{"a":"1", "b":"2"}`);
  * messages of a server stream are wrapped as {"result": ...} by encoding/json, which
    compacts them (no spaces) and escapes <, >, & and U+2028/U+2029 (`compact=True`).

Requests (encoding/json.Decoder then protojson.Unmarshal):
  * the body's first JSON value is taken (trailing bytes are ignored; an empty body is an
    empty request), its syntax checked by Go's encoding/json, whose error messages are
    reproduced ("unexpected EOF", "invalid character 'x' looking for beginning of value");
  * then protojson reads it: proto or JSON (camelCase) field names, unknown fields skipped,
    integers as numbers or strings, bytes as standard or URL-safe base64 with or without
    padding, enums by name or number, null for "unset"; its errors carry the position of
    the offending token and the "proto:" prefix with the non-breaking space etcd's binary
    draws (`proto:\u00a0(line 1:8): invalid value for bytes field key: "!!"`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import IntEnum
from typing import Any, Final, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "DecodeError",
    "NeedMore",
    "NoValue",
    "marshal",
    "marshal_status",
    "parse_first",
    "scan_value",
    "unmarshal",
    "wrap_stream",
]

M = TypeVar("M", bound=Message)

# protojson's random prefix, as drawn by the etcd v3.6.16 binary: a non-breaking space
PROTO_ERR_PREFIX: Final = "proto:\u00a0"
# encoding/json's and protojson's nesting limits
MAX_NESTING_DEPTH: Final = 10000
# petcd's own limit on nested messages (Python's stack is the bound, not protojson's 10000)
MAX_MESSAGE_DEPTH: Final = 250


class DecodeError(Exception):
    """A body the gateway refuses; str(e) is the message etcd puts in its InvalidArgument status."""


class NoValue(Exception):
    """io.EOF: nothing but whitespace is left in the body."""


class NeedMore(Exception):
    """The value is not complete yet: read more of the body (not raised once at EOF)."""


# -- Go's encoding/json: where the first value of a stream ends -------------------------------------

_WS: Final = frozenset(b" \t\r\n")
_STRING_STOP: Final = re.compile(rb'["\\\x00-\x1f]')
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_DIGITS: Final = frozenset(b"0123456789")
_LITERALS: Final = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_OBJECT, _ARRAY = 0, 1


class _Incomplete(Exception):
    pass


def _go_quote_rune(r: int) -> str:
    """strconv.Quote of one rune, without the quotes."""
    simple = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 92: "\\\\", 34: '\\"'}
    if r in simple:
        return simple[r]
    ch = chr(r)
    if r < 0x80:
        return ch if 0x20 <= r < 0x7F else f"\\x{r:02x}"
    if ch.isprintable() and r != 0xAD:
        return ch
    return f"\\u{r:04x}" if r < 0x10000 else f"\\U{r:08x}"


def _quote_char(c: int) -> str:
    """encoding/json's quoteChar: how a byte is named in a syntax error."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    return "'" + _go_quote_rune(c) + "'"


def _syntax(c: int, context: str) -> DecodeError:
    return DecodeError(f"invalid character {_quote_char(c)} {context}")


def _skip_ws(buf: bytes | bytearray, i: int) -> int:
    n = len(buf)
    while i < n and buf[i] in _WS:
        i += 1
    return i


def _scan_string(buf: bytes | bytearray, i: int) -> int:
    """buf[i] is '"': the index after the closing quote."""
    n = len(buf)
    j = i + 1
    while True:
        m = _STRING_STOP.search(buf, j)
        if m is None:
            raise _Incomplete
        k = m.start()
        c = buf[k]
        if c == 0x22:
            return k + 1
        if c != 0x5C:
            raise _syntax(c, "in string literal")
        if k + 1 >= n:
            raise _Incomplete
        e = buf[k + 1]
        if e in b'bfnrt\\/"':
            j = k + 2
        elif e == ord("u"):
            for t in range(2, 6):
                if k + t >= n:
                    raise _Incomplete
                if buf[k + t] not in _HEX:
                    raise _syntax(buf[k + t], "in \\u hexadecimal character escape")
            j = k + 6
        else:
            raise _syntax(e, "in string escape code")


def _scan_number(buf: bytes | bytearray, i: int) -> tuple[int, bool]:
    """The end of the number at i, and whether what was read is a whole number (relevant when
    the buffer ends inside it)."""
    n = len(buf)
    if buf[i] == ord("-"):
        i += 1
        if i >= n:
            return i, False
        if buf[i] not in _DIGITS:
            raise _syntax(buf[i], "in numeric literal")
    if buf[i] == ord("0"):
        i += 1
    else:
        while i < n and buf[i] in _DIGITS:
            i += 1
    if i < n and buf[i] == ord("."):
        i += 1
        if i >= n:
            return i, False
        if buf[i] not in _DIGITS:
            raise _syntax(buf[i], "after decimal point in numeric literal")
        while i < n and buf[i] in _DIGITS:
            i += 1
    if i < n and buf[i] in b"eE":
        i += 1
        if i < n and buf[i] in b"+-":
            i += 1
        if i >= n:
            return i, False
        if buf[i] not in _DIGITS:
            raise _syntax(buf[i], "in exponent of numeric literal")
        while i < n and buf[i] in _DIGITS:
            i += 1
    return i, True


def _scan_literal(buf: bytes | bytearray, i: int) -> int:
    word = _LITERALS[buf[i]]
    name = word.decode()
    for k in range(1, len(word)):
        if i + k >= len(buf):
            raise _Incomplete
        if buf[i + k] != word[k]:
            raise _syntax(buf[i + k], f"in literal {name} (expecting {_quote_char(word[k])})")
    return i + len(word)


def _object_key(buf: bytes | bytearray, i: int) -> int:
    """At an object key (after '{' or ','): the index after its ':'."""
    n = len(buf)
    i = _skip_ws(buf, i)
    if i >= n:
        raise _Incomplete
    if buf[i] != 0x22:
        raise _syntax(buf[i], "looking for beginning of object key string")
    i = _skip_ws(buf, _scan_string(buf, i))
    if i >= n:
        raise _Incomplete
    if buf[i] != ord(":"):
        raise _syntax(buf[i], "after object key")
    return i + 1


def _scan(buf: bytes | bytearray, i: int) -> tuple[int, bool]:
    """The end of the value starting at buf[i] (not whitespace), and whether it is a scalar at top
    level (those end only at the next byte or at EOF). Raises DecodeError or _Incomplete."""
    n = len(buf)
    stack: list[int] = []
    while True:
        # a value starts at i (possibly after whitespace)
        i = _skip_ws(buf, i)
        if i >= n:
            raise _Incomplete
        c = buf[i]
        if c == ord("{") or c == ord("["):
            if len(stack) >= MAX_NESTING_DEPTH:
                raise _syntax(c, "exceeded max depth")
            j = _skip_ws(buf, i + 1)
            if j >= n:
                raise _Incomplete
            if buf[j] == (ord("}") if c == ord("{") else ord("]")):
                i = j + 1
                if not stack:
                    return i, False
            elif c == ord("{"):
                stack.append(_OBJECT)
                i = _object_key(buf, i + 1)
                continue
            else:
                stack.append(_ARRAY)
                i = j
                continue
        elif c == 0x22:
            i = _scan_string(buf, i)
        elif c == ord("-") or c in _DIGITS:
            i, whole = _scan_number(buf, i)
            if i >= n and (stack or not whole):
                raise _Incomplete
        elif c in _LITERALS:
            i = _scan_literal(buf, i)
        else:
            raise _syntax(c, "looking for beginning of value")
        if not stack:
            return i, True
        # after a value inside a container
        while True:
            i = _skip_ws(buf, i)
            if i >= n:
                raise _Incomplete
            c = buf[i]
            if stack[-1] == _OBJECT:
                if c == ord(","):
                    i = _object_key(buf, i + 1)
                    break
                if c != ord("}"):
                    raise _syntax(c, "after object key:value pair")
            else:
                if c == ord(","):
                    i += 1
                    break
                if c != ord("]"):
                    raise _syntax(c, "after array element")
            stack.pop()
            i += 1
            if not stack:
                return i, False


def scan_value(buf: bytes | bytearray, pos: int = 0, *, eof: bool = True) -> tuple[int, int]:
    """Where the next JSON value of a stream lies: (start, end) in buf, whitespace excluded, as
    Go's json.Decoder reads it. NoValue when only whitespace is left at EOF, NeedMore when the
    value may go on past the bytes read so far, DecodeError for a syntax error."""
    start = _skip_ws(buf, pos)
    if start >= len(buf):
        if eof:
            raise NoValue
        raise NeedMore
    try:
        end, top_scalar = _scan(buf, start)
    except _Incomplete:
        if not eof:
            raise NeedMore from None
        raise DecodeError("unexpected EOF") from None
    if top_scalar and end >= len(buf) and not eof:
        raise NeedMore  # a scalar ends at the byte after it
    return start, end


# -- protojson's reader -----------------------------------------------------------------------------


class _K(IntEnum):
    EOF = 1
    NULL = 2
    BOOL = 3
    NUMBER = 4
    STRING = 5
    NAME = 6
    OBJECT_OPEN = 7
    OBJECT_CLOSE = 8
    ARRAY_OPEN = 9
    ARRAY_CLOSE = 10
    COMMA = 11


_SCALARS: Final = frozenset({_K.NULL, _K.BOOL, _K.NUMBER, _K.STRING})


class _Tok:
    __slots__ = ("kind", "pos", "raw", "value")

    def __init__(self, kind: _K, pos: int, raw: bytes, value: Any = None) -> None:
        self.kind = kind
        self.pos = pos
        self.raw = raw
        self.value = value

    @property
    def raw_string(self) -> str:
        return self.raw.decode("utf-8", "replace")


def _is_not_delim(c: int) -> bool:
    return c in b"-+._" or 0x61 <= c <= 0x7A or 0x41 <= c <= 0x5A or 0x30 <= c <= 0x39


def _parse_number(b: bytes, i: int = 0) -> int:
    """protojson's parseNumber: the length of the number at b[i:], 0 if there is none."""
    n = len(b)
    j = i
    if j < n and b[j] == ord("-"):
        j += 1
    if j >= n:
        return 0
    if b[j] == ord("0"):
        j += 1
    elif 0x31 <= b[j] <= 0x39:
        j += 1
        while j < n and b[j] in _DIGITS:
            j += 1
    else:
        return 0
    if j + 1 < n and b[j] == ord(".") and b[j + 1] in _DIGITS:
        j += 2
        while j < n and b[j] in _DIGITS:
            j += 1
    if j + 1 < n and b[j] in b"eE":
        j += 1
        if b[j] in b"+-":
            j += 1
            if j >= n:
                return 0
        while j < n and b[j] in _DIGITS:
            j += 1
    if j < n and _is_not_delim(b[j]):
        return 0
    return j - i


def _int_string(raw: bytes) -> str | None:
    """protojson's parseNumberParts + normalizeToIntString: the integer a JSON number denotes
    (1e3, 100.0e-2), or None if it is not one. Like Go, bytes after the parts are ignored."""
    n = len(raw)
    if n == 0:
        return None
    i = 0
    neg = raw[0] == ord("-")
    if neg:
        i = 1
        if i >= n:
            return None
    if raw[i] == ord("0"):
        intp = ""
        i += 1
    elif 0x31 <= raw[i] <= 0x39:
        j = i + 1
        while j < n and raw[j] in _DIGITS:
            j += 1
        intp, i = raw[i:j].decode(), j
    else:
        return None
    frac = ""
    if n - i >= 2 and raw[i] == ord(".") and raw[i + 1] in _DIGITS:
        j = i + 2
        while j < n and raw[j] in _DIGITS:
            j += 1
        frac, i = raw[i + 1 : j].decode().rstrip("0"), j
    exp_text = ""
    if n - i >= 2 and raw[i] in b"eE":
        j = i = i + 1
        if raw[j] in b"+-":
            j += 1
            if j >= n:
                return None
        while j < n and raw[j] in _DIGITS:
            j += 1
        exp_text = raw[i:j].decode()
    if not intp and not frac:
        return "0"
    exp = 0
    if exp_text:
        try:
            exp = int(exp_text)
        except ValueError:
            return None
        if not -(2**31) <= exp < 2**31:
            return None
    if exp >= 0:
        if len(frac) > exp or len(intp) + exp > 20:
            return None
        num = intp + frac + "0" * (exp - len(frac))
    else:
        if frac:
            return None
        index = len(intp) + exp
        if index < 0 or any(ch != "0" for ch in intp[index:]):
            return None
        num = intp[:index]
    return "-" + num if neg else num


def _go_parse_int(s: str, bits: int, signed: bool) -> int | None:
    if not s or not re.fullmatch(r"[+-]?[0-9]+" if signed else r"[0-9]+", s):
        return None
    v = int(s)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return v if lo <= v <= hi else None


_PJ_STRING_STOP: Final = re.compile(rb'["\\\x00-\x1f\x80-\xff]')


class _Reader:
    """protojson's internal/encoding/json Decoder over a value encoding/json already accepted."""

    def __init__(self, b: bytes) -> None:
        self.orig = b
        self.i = 0
        self.stack: list[_K] = []
        self.last: _K | None = None
        self.peeked: _Tok | DecodeError | None = None
        self._consume(0)

    # positions, errors

    def position(self, idx: int) -> tuple[int, int]:
        b = self.orig[:idx]
        line = b.count(b"\n") + 1
        nl = b.rfind(b"\n")
        if nl >= 0:
            b = b[nl + 1 :]
        return line, len(b.decode("utf-8", "surrogateescape")) + 1

    def error(self, pos: int, msg: str) -> DecodeError:
        line, col = self.position(pos)
        return DecodeError(f"{PROTO_ERR_PREFIX}(line {line}:{col}): {msg}")

    def syntax_error(self, pos: int, msg: str) -> DecodeError:
        line, col = self.position(pos)
        return DecodeError(f"{PROTO_ERR_PREFIX}syntax error (line {line}:{col}): {msg}")

    def unexpected(self, tok: _Tok) -> DecodeError:
        return self.syntax_error(tok.pos, f"unexpected token {tok.raw_string}")

    # tokens

    def _consume(self, n: int) -> None:
        self.i += n
        b, i = self.orig, self.i
        while i < len(b) and b[i] in _WS:
            i += 1
        self.i = i

    def _token(self, kind: _K, size: int, value: Any = None) -> _Tok:
        tok = _Tok(kind, self.i, self.orig[self.i : self.i + size], value)
        self._consume(size)
        return tok

    def _value_next(self) -> bool:
        if not self.stack:
            return self.last is None
        if self.stack[-1] == _K.OBJECT_OPEN:
            return self.last == _K.NAME
        return self.last in (_K.ARRAY_OPEN, _K.COMMA)

    def _parse_next(self) -> _Tok:
        b, i = self.orig, self.i
        if i >= len(b):
            return self._token(_K.EOF, 0)
        c = b[i]
        for word, kind, value in (
            (b"null", _K.NULL, None),
            (b"true", _K.BOOL, True),
            (b"false", _K.BOOL, False),
        ):
            if c == word[0]:
                n = len(word)
                if b.startswith(word, i) and not (i + n < len(b) and _is_not_delim(b[i + n])):
                    return self._token(kind, n, value)
                break
        if c == ord("-") or c in _DIGITS:
            n = _parse_number(b, i)
            if n:
                return self._token(_K.NUMBER, n)
        elif c == 0x22:
            s, n = self._parse_string()
            return self._token(_K.STRING, n, s)
        else:
            single = {
                ord("{"): _K.OBJECT_OPEN,
                ord("}"): _K.OBJECT_CLOSE,
                ord("["): _K.ARRAY_OPEN,
                ord("]"): _K.ARRAY_CLOSE,
                ord(","): _K.COMMA,
            }.get(c)
            if single is not None:
                return self._token(single, 1)
        m = re.match(rb"[-+._a-zA-Z0-9]{1,32}|.", b[i:], re.S)
        shown = m.group(0).decode("utf-8", "replace") if m else ""
        raise self.syntax_error(i, f"invalid value {shown}")

    def _parse_string(self) -> tuple[str, int]:
        b, start = self.orig, self.i
        i = start + 1
        out: list[str] = []
        while True:
            if i >= len(b):
                raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
            m = _PJ_STRING_STOP.search(b, i)
            if m is None:
                raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
            k = m.start()
            out.append(b[i:k].decode("ascii"))
            c = b[k]
            if c == 0x22:
                return "".join(out), k + 1 - start
            if c >= 0x80:
                # a run of multi-byte UTF-8
                j = k
                while j < len(b) and b[j] >= 0x80:
                    j += 1
                try:
                    out.append(b[k:j].decode("utf-8"))
                except UnicodeDecodeError:
                    raise self.syntax_error(start, "invalid UTF-8 in string") from None
                i = j
                continue
            if c < 0x20:
                raise self.syntax_error(start, f"invalid character {_go_quote(bytes([c]))} in string")
            # backslash
            if k + 1 >= len(b):
                raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
            e = chr(b[k + 1])
            simple = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
            if e in simple:
                out.append(simple[e])
                i = k + 2
                continue
            if e != "u":
                raise self.syntax_error(start, f"invalid escape code {_go_quote(b[k : k + 2])} in string")
            if k + 6 > len(b):
                raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
            r = _hex16(b[k + 2 : k + 6])
            if r is None:
                raise self.syntax_error(start, f"invalid escape code {_go_quote(b[k : k + 6])} in string")
            i = k + 6
            if 0xD800 <= r < 0xE000:
                if i + 6 > len(b):
                    raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
                low = _hex16(b[i + 2 : i + 6])
                if (
                    b[i] != 0x5C
                    or b[i + 1] != ord("u")
                    or low is None
                    or not (0xD800 <= r < 0xDC00 and 0xDC00 <= low < 0xE000)
                ):
                    raise self.syntax_error(start, f"invalid escape code {_go_quote(b[i : i + 6])} in string")
                r = 0x10000 + ((r - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            out.append(chr(r))

    def read(self) -> _Tok:
        if self.peeked is not None:
            tok, self.peeked = self.peeked, None
            if isinstance(tok, DecodeError):
                raise tok
            return tok
        while True:
            tok = self._read_one()
            if tok.kind != _K.COMMA:
                return tok

    def peek(self) -> _Tok:
        if self.peeked is None:
            try:
                self.peeked = self.read()
            except DecodeError as e:
                self.peeked = e
        if isinstance(self.peeked, DecodeError):
            raise self.peeked
        return self.peeked

    def _read_one(self) -> _Tok:
        tok = self._parse_next()
        k = tok.kind
        if k == _K.EOF:
            # (Go's condition also tests the last token, but its precedence makes that a no-op)
            if self.stack:
                raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
        elif k in (_K.NULL, _K.BOOL, _K.NUMBER):
            if not self._value_next():
                raise self.unexpected(tok)
        elif k == _K.STRING:
            if not self._value_next():
                if self.last not in (_K.OBJECT_OPEN, _K.COMMA):
                    raise self.unexpected(tok)
                if self.i >= len(self.orig):
                    raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
                if self.orig[self.i] != ord(":"):
                    ch = chr(self.orig[self.i])
                    raise self.syntax_error(
                        self.i, f'unexpected character {ch}, missing ":" after field name'
                    )
                tok.kind = _K.NAME
                self._consume(1)
        elif k in (_K.OBJECT_OPEN, _K.ARRAY_OPEN):
            if not self._value_next():
                raise self.unexpected(tok)
            self.stack.append(k)
        elif k == _K.OBJECT_CLOSE:
            if not self.stack or self.last in (_K.NAME, _K.COMMA) or self.stack[-1] != _K.OBJECT_OPEN:
                raise self.unexpected(tok)
            self.stack.pop()
        elif k == _K.ARRAY_CLOSE:
            if not self.stack or self.last == _K.COMMA or self.stack[-1] != _K.ARRAY_OPEN:
                raise self.unexpected(tok)
            self.stack.pop()
        elif k == _K.COMMA and (
            not self.stack or self.last not in (*_SCALARS, _K.OBJECT_CLOSE, _K.ARRAY_CLOSE)
        ):
            raise self.unexpected(tok)
        self.last = tok.kind
        return tok


def _hex16(b: bytes) -> int | None:
    if len(b) != 4 or any(c not in _HEX for c in b):
        return None
    return int(b, 16)


def _go_quote(b: bytes) -> str:
    """Go's %q of a byte slice."""
    out = []
    s = b.decode("utf-8", "surrogateescape")
    for ch in s:
        r = ord(ch)
        out.append(f"\\x{r - 0xDC00:02x}" if 0xDC80 <= r <= 0xDCFF else _go_quote_rune(r))
    return '"' + "".join(out) + '"'


# -- protojson.Unmarshal -------------------------------------------------------------------------

F = FieldDescriptor
_KIND_NAMES: Final = {
    F.TYPE_BOOL: "bool",
    F.TYPE_INT32: "int32",
    F.TYPE_SINT32: "sint32",
    F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_INT64: "int64",
    F.TYPE_SINT64: "sint64",
    F.TYPE_SFIXED64: "sfixed64",
    F.TYPE_UINT32: "uint32",
    F.TYPE_FIXED32: "fixed32",
    F.TYPE_UINT64: "uint64",
    F.TYPE_FIXED64: "fixed64",
    F.TYPE_FLOAT: "float",
    F.TYPE_DOUBLE: "double",
    F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes",
    F.TYPE_ENUM: "enum",
    F.TYPE_MESSAGE: "message",
    F.TYPE_GROUP: "group",
}
_INTS: Final = {
    F.TYPE_INT32: (32, True),
    F.TYPE_SINT32: (32, True),
    F.TYPE_SFIXED32: (32, True),
    F.TYPE_INT64: (64, True),
    F.TYPE_SINT64: (64, True),
    F.TYPE_SFIXED64: (64, True),
    F.TYPE_UINT32: (32, False),
    F.TYPE_FIXED32: (32, False),
    F.TYPE_UINT64: (64, False),
    F.TYPE_FIXED64: (64, False),
}
# Go's unicode.IsSpace
_GO_SPACE: Final = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_B64_STD: Final = re.compile(r"[A-Za-z0-9+/]*")
_B64_URL: Final = re.compile(r"[A-Za-z0-9\-_]*")


class _Invalid(Exception):
    pass


def _go_base64(s: str) -> bytes | None:
    """protojson's bytes: standard or (with - or _) URL alphabet, padded when len % 4 == 0,
    unpadded otherwise; CR and LF ignored; non-zero trailing bits accepted (Go's default)."""
    url = "-" in s or "_" in s
    padded = len(s) % 4 == 0
    data = s.replace("\r", "").replace("\n", "")
    body = data
    if padded:
        if len(data) % 4:
            return None
        stripped = data.rstrip("=")
        pad = len(data) - len(stripped)
        if pad > 2 or (pad and len(stripped) % 4 == 1):
            return None
        body = stripped
    if not (_B64_URL if url else _B64_STD).fullmatch(body) or len(body) % 4 == 1:
        return None
    if url:
        body = body.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


class _Unmarshaler:
    def __init__(self, r: _Reader) -> None:
        self.r = r
        self.depth = 0

    def message(self, m: Message) -> None:
        self.depth += 1
        if self.depth > MAX_MESSAGE_DEPTH:
            raise DecodeError(PROTO_ERR_PREFIX + "exceeded max recursion depth")
        r = self.r
        tok = r.read()
        if tok.kind != _K.OBJECT_OPEN:
            raise r.unexpected(tok)
        desc = m.DESCRIPTOR
        seen: set[int] = set()
        seen_oneofs: set[str] = set()
        while True:
            tok = r.read()
            if tok.kind == _K.OBJECT_CLOSE:
                self.depth -= 1
                return
            if tok.kind != _K.NAME:
                raise r.unexpected(tok)
            name: str = tok.value
            fd = _by_json_name(desc).get(name) or desc.fields_by_name.get(name)
            if fd is None:
                self.skip()
                continue
            if fd.number in seen:
                raise r.error(tok.pos, f"duplicate field {tok.raw_string}")
            seen.add(fd.number)
            try:
                if r.peek().kind == _K.NULL:
                    r.read()
                    continue
            except DecodeError:
                pass
            if fd.is_repeated:
                if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                    raise r.error(tok.pos, f"map field {tok.raw_string} is not supported")
                self.list(m, fd)
                continue
            oneof = fd.containing_oneof
            if oneof is not None:
                if oneof.full_name in seen_oneofs:
                    raise r.error(
                        tok.pos, f"error parsing {tok.raw_string}, oneof {oneof.full_name} is already set"
                    )
                seen_oneofs.add(oneof.full_name)
            if fd.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
                sub = getattr(m, fd.name)
                sub.SetInParent()
                self.message(sub)
            else:
                ok, value = self.scalar(fd)
                if ok:
                    setattr(m, fd.name, value)

    def list(self, m: Message, fd: Any) -> None:
        r = self.r
        tok = r.read()
        if tok.kind != _K.ARRAY_OPEN:
            raise r.unexpected(tok)
        values = getattr(m, fd.name)
        while True:
            if r.peek().kind == _K.ARRAY_CLOSE:
                r.read()
                return
            if fd.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
                self.message(values.add())
            else:
                ok, value = self.scalar(fd)
                if ok:
                    values.append(value)

    def skip(self) -> None:
        r = self.r
        depth = 0
        while True:
            tok = r.read()
            if tok.kind in (_K.OBJECT_CLOSE, _K.ARRAY_CLOSE):
                depth -= 1
            elif tok.kind in (_K.OBJECT_OPEN, _K.ARRAY_OPEN):
                depth += 1
                if depth > MAX_NESTING_DEPTH:
                    raise DecodeError(PROTO_ERR_PREFIX + "exceeded max recursion depth")
            elif tok.kind == _K.EOF:
                raise DecodeError(PROTO_ERR_PREFIX + "unexpected EOF")
            if depth == 0:
                return

    def scalar(self, fd: Any) -> tuple[bool, Any]:
        """(True, value), (False, None) for a value to drop (an unknown enum name), or the error."""
        r = self.r
        tok = r.read()
        try:
            return True, _scalar_value(fd, tok)
        except _Invalid:
            pass
        except _Drop:
            return False, None
        kind = _KIND_NAMES.get(fd.type, "unknown")
        raise r.error(tok.pos, f"invalid value for {kind} field {fd.json_name}: {tok.raw_string}")


class _Drop(Exception):
    pass


def _int_token(tok: _Tok, bits: int, signed: bool) -> int:
    if tok.kind == _K.NUMBER:
        raw = tok.raw
    elif tok.kind == _K.STRING:
        s: str = tok.value
        if s.strip(_GO_SPACE) != s:
            raise _Invalid
        b = s.encode()
        n = _parse_number(b)
        if not n:
            raise _Invalid
        raw = b[:n]
    else:
        raise _Invalid
    text = _int_string(raw)
    v = None if text is None else _go_parse_int(text, bits, signed)
    if v is None:
        raise _Invalid
    return v


def _float_token(tok: _Tok) -> float:
    if tok.kind == _K.NUMBER:
        return float(tok.raw)
    if tok.kind == _K.STRING:
        s: str = tok.value
        special = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
        if s in special:
            return special[s]
        if s.strip(_GO_SPACE) != s:
            raise _Invalid
        b = s.encode()
        n = _parse_number(b)
        if not n:
            raise _Invalid
        return float(b[:n])
    raise _Invalid


def _scalar_value(fd: Any, tok: _Tok) -> Any:
    t = fd.type
    if t == F.TYPE_BOOL:
        if tok.kind == _K.BOOL:
            return tok.value
        raise _Invalid
    if t in _INTS:
        bits, signed = _INTS[t]
        return _int_token(tok, bits, signed)
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return _float_token(tok)
    if t == F.TYPE_STRING:
        if tok.kind == _K.STRING:
            return tok.value
        raise _Invalid
    if t == F.TYPE_BYTES:
        if tok.kind == _K.STRING:
            b = _go_base64(tok.value)
            if b is not None:
                return b
        raise _Invalid
    if t == F.TYPE_ENUM:
        if tok.kind == _K.STRING:
            ev = fd.enum_type.values_by_name.get(tok.value)
            if ev is not None:
                return ev.number
            raise _Drop  # unknown names are discarded, like unknown fields
        if tok.kind == _K.NUMBER:
            text = _int_string(tok.raw)
            v = None if text is None else _go_parse_int(text, 32, True)
            if v is not None:
                return v
        raise _Invalid
    raise _Invalid


_json_names: dict[str, dict[str, FieldDescriptor]] = {}


def _by_json_name(desc: Any) -> dict[str, FieldDescriptor]:
    names = _json_names.get(desc.full_name)
    if names is None:
        names = _json_names[desc.full_name] = {f.json_name: f for f in desc.fields}
    return names


def unmarshal(raw: bytes, m: Message) -> None:
    """protojson.Unmarshal (DiscardUnknown) of one JSON value into m (cleared first)."""
    m.Clear()
    r = _Reader(bytes(raw))
    try:
        _Unmarshaler(r).message(m)
    except RecursionError:
        raise DecodeError(PROTO_ERR_PREFIX + "exceeded max recursion depth") from None
    tok = r.read()
    if tok.kind != _K.EOF:
        raise r.unexpected(tok)


def parse_first(body: bytes, cls: type[M]) -> M:
    """The request in a unary call's body, as the gateway decodes it: the first JSON value (an
    empty body is an empty request)."""
    m = cls()
    try:
        start, end = scan_value(body)
    except NoValue:
        return m
    unmarshal(body[start:end], m)
    return m


# -- protojson.Marshal ------------------------------------------------------------------------------

_ZERO: Final = (0, False, "", b"")


def _string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _value(fd: Any, v: Any, sep: str) -> str:
    t = fd.type
    if t in (F.TYPE_MESSAGE, F.TYPE_GROUP):
        return _message(v, sep)
    if t in _INTS:
        return f'"{v}"' if _INTS[t][0] == 64 else str(v)
    if t == F.TYPE_BOOL:
        return "true" if v else "false"
    if t == F.TYPE_STRING:
        return _string(v)
    if t == F.TYPE_BYTES:
        return '"' + base64.b64encode(v).decode() + '"'
    if t == F.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(v)
        return f'"{ev.name}"' if ev is not None else str(v)
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        if v != v:
            return '"NaN"'
        if v in (float("inf"), float("-inf")):
            return '"Infinity"' if v > 0 else '"-Infinity"'
        return repr(float(v)).removesuffix(".0")
    raise TypeError(f"unsupported field type {t}")


def _message(m: Message, sep: str) -> str:
    parts: list[str] = []
    for fd in m.DESCRIPTOR.fields:
        v = getattr(m, fd.name)
        if fd.is_repeated:
            if not v:
                continue
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                raise TypeError("map fields are not supported")
            body = "[" + sep.join(_value(fd, x, sep) for x in v) + "]"
        elif fd.has_presence:
            if not m.HasField(fd.name):
                continue
            body = _value(fd, v, sep)
        else:
            if v in _ZERO and not (isinstance(v, float) and str(v).startswith("-")):
                continue
            body = _value(fd, v, sep)
        parts.append(f'"{fd.name}":{body}')
    return "{" + sep.join(parts) + "}"


_HTML_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_HTML_RE: Final = re.compile("[<>&\u2028\u2029]")


def _escape_html(s: str) -> str:
    return _HTML_RE.sub(lambda m: _HTML_ESCAPES[m.group(0)], s)


def marshal(m: Message, *, compact: bool = False) -> str:
    """protojson.Marshal(m) as etcd's gateway writes it; compact=True gives the form a message
    takes inside a stream's {"result": ...} wrapper (encoding/json's compaction)."""
    if compact:
        return _escape_html(_message(m, ","))
    return _message(m, ", ")


def marshal_status(code: int, message: str, *, compact: bool = False) -> str:
    """A google.rpc.Status as the gateway writes errors: {"code":3, "message":"..."}."""
    parts = []
    if code:
        parts.append(f'"code":{code}')
    if message:
        parts.append(f'"message":{_string(message)}')
    if compact:
        return _escape_html("{" + ",".join(parts) + "}")
    return "{" + ", ".join(parts) + "}"


def wrap_stream(key: str, inner: str) -> str:
    """A stream chunk: {"result": <compact message>} or {"error": <compact status>}."""
    return '{"' + key + '":' + inner + "}"
