"""bbolt's file format (go.etcd.io/bbolt, the B+tree file etcd keeps its buckets in): a reader
that walks any file bbolt writes and a writer that builds a compact one bottom-up.

Every integer is in the writing host's byte order; only little-endian files are accepted (a
big-endian host's file is refused, as bbolt itself could not open it here). A file is pages of
`page_size` bytes; a node larger than a page spans `overflow + 1` contiguous pages.

    page header (16)   id u64 | flags u16 | count u16 | overflow u32
    meta (pages 0, 1)  magic u32 | version u32 | page_size u32 | flags u32 | root bucket (16)
                       | freelist pgid u64 | high-water mark pgid u64 | txid u64
                       | checksum u64 = FNV-1a 64 of the 56 bytes before it
    leaf element (16)  flags u32 | pos u32 | ksize u32 | vsize u32
    branch element(16) pos u32 | ksize u32 | pgid u64
    bucket header (16) root pgid u64 | sequence u64

`pos` counts from the element's own first byte to its key; a leaf's value follows its key. A
branch element's key is the first key of its child. The current meta is the valid one with the
higher txid. A bucket is a leaf element with flag 0x01 whose value is a bucket header; root 0
means the bucket is inline: its single leaf page follows the header inside the value. Pages
below the high-water mark that no bucket reaches are free; the file may list them in a freelist
page or (etcd's NoFreelistSync) not at all, in which case bbolt rebuilds the list on open.

Invariants the reader checks on every page it visits (a bad file is refused with BboltError,
never read past): the page lies below the high-water mark and inside the file, its header names
it, its flags are the expected branch or leaf, every element lies inside the node, keys are
strictly increasing and inside the bounds the parent's branch keys set, and no page is reached
twice on one path (no loops). Memory stays bounded: the reader holds one path of pages from the
root, the writer one node under construction per tree level of each open bucket.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, Self

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "BboltError",
    "BboltReader",
    "BboltWriter",
    "BucketHandle",
    "BucketWriter",
    "is_bbolt",
]

MAGIC = 0xED0CDAED
VERSION = 2
PGID_NO_FREELIST = 0xFFFF_FFFF_FFFF_FFFF
BRANCH_PAGE, LEAF_PAGE, META_PAGE = 0x01, 0x02, 0x04  # and 0x10: a freelist page
BUCKET_LEAF_FLAG = 0x01
MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2
DEFAULT_PAGE_SIZE = 4096
# a page holds fewer than this many elements (bbolt's node.write refuses 0xFFFF: the count is u16)
_MAX_COUNT = 0xFFFF
MIN_PAGE_SIZE, MAX_PAGE_SIZE = 512, 1 << 24

_PAGE_HEADER = struct.Struct("<QHHI")
_META = struct.Struct("<IIIIQQQQQ")  # everything before the checksum (56 bytes)
_U64 = struct.Struct("<Q")
_BUCKET_HEADER = struct.Struct("<QQ")
_BRANCH_ELEM = struct.Struct("<IIQ")
_HEADER_SIZE = _PAGE_HEADER.size
_ELEM_SIZE = 16
_META_OFFSET = _HEADER_SIZE
_CHECKSUM_OFFSET = _META_OFFSET + _META.size
_MASK64 = (1 << 64) - 1


class BboltError(Exception):
    """The file is not a bbolt database this reader can trust (or the writer was misused)."""


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _MASK64
    return h


def is_bbolt(head: bytes) -> bool:
    """Whether a file starting with head (its first 4 KiB) looks like a bbolt file of either byte
    order: the meta magic right after page 0's header."""
    magic = head[_META_OFFSET : _META_OFFSET + 4]
    return magic in (MAGIC.to_bytes(4, "little"), MAGIC.to_bytes(4, "big"))


# -- reader ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meta:
    page_size: int
    root: int
    sequence: int
    freelist: int
    hwm: int
    txid: int


@dataclass(frozen=True, slots=True)
class BucketHandle:
    """A bucket found in the file: pass it to BboltReader.items()."""

    root: int
    sequence: int
    # the single leaf page of an inline bucket (root == 0)
    inline: bytes | None = field(default=None, repr=False)
    # pages on the way from the file's root to this bucket's entry (loop detection)
    ancestors: frozenset[int] = field(default=frozenset(), repr=False, compare=False)


def _parse_meta(page: bytes) -> _Meta | str:
    """The meta in a meta page, or why it is not valid."""
    if len(page) < _CHECKSUM_OFFSET + 8:
        return "too short"
    raw = page[_META_OFFSET:_CHECKSUM_OFFSET]
    magic, version, page_size, _flags, root, seq, freelist, hwm, txid = _META.unpack(raw)
    if magic != MAGIC:
        if magic == int.from_bytes(MAGIC.to_bytes(4, "little"), "big"):
            return "written on a big-endian host (bbolt files are not portable across byte orders)"
        return "no bbolt magic"
    if version != VERSION:
        return f"bbolt format version {version}, not {VERSION}"
    (checksum,) = _U64.unpack_from(page, _CHECKSUM_OFFSET)
    if checksum != fnv1a64(raw):
        return "meta page checksum mismatch"
    return _Meta(page_size, root, seq, freelist, hwm, txid)


class BboltReader:
    """Reads a bbolt file page by page (pread; nothing mapped, nothing cached).

    with BboltReader.open(path) as db:
        for name, bucket in db.items():          # top-level buckets
            for key, value in db.items(bucket):  # value: bytes, or a BucketHandle for a sub-bucket
                ...
    """

    def __init__(self, fd: int, name: str, meta: _Meta) -> None:
        self._fd = fd
        self.name = name
        self.page_size = meta.page_size
        self.txid = meta.txid
        # pages in use (the high-water mark): the database is size = hwm * page_size bytes
        self.hwm = meta.hwm
        self.size = meta.hwm * meta.page_size
        self.root = BucketHandle(meta.root, meta.sequence)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        name = os.fspath(path)
        fd = os.open(name, os.O_RDONLY)
        try:
            return cls(fd, name, cls._read_meta(fd, name))
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _read_meta(fd: int, name: str) -> _Meta:
        size = os.fstat(fd).st_size
        if size == 0:
            raise BboltError(f"{name}: empty file, not a bbolt database")
        head = os.pread(fd, DEFAULT_PAGE_SIZE, 0)
        first = _parse_meta(head)
        metas: list[_Meta] = []
        if isinstance(first, _Meta):
            page_size = first.page_size
            metas.append(first)
        else:
            # page 0 is damaged: find page 1 at every page size bbolt can have (as bbolt does)
            page_size = 0
            for shift in range(15):
                pos = 1024 << shift
                if pos >= size - 1024:
                    break
                second = _parse_meta(os.pread(fd, DEFAULT_PAGE_SIZE, pos))
                if isinstance(second, _Meta) and second.page_size == pos:
                    page_size = pos
                    break
            if not page_size:
                raise BboltError(f"{name}: not a bbolt database: {first}")
        if page_size & (page_size - 1) or not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
            raise BboltError(f"{name}: not a bbolt database: page size {page_size}")
        second = _parse_meta(os.pread(fd, DEFAULT_PAGE_SIZE, page_size))
        if isinstance(second, _Meta):
            metas.append(second)
        if not metas:
            raise BboltError(f"{name}: not a bbolt database: {second}")
        meta = max(metas, key=lambda m: m.txid)
        if meta.page_size != page_size:
            raise BboltError(f"{name}: the meta pages disagree on the page size")
        if not 2 <= meta.root < meta.hwm:
            raise BboltError(f"{name}: root page {meta.root} is outside the file's {meta.hwm} pages")
        if meta.freelist != PGID_NO_FREELIST and not 2 <= meta.freelist < meta.hwm:
            raise BboltError(f"{name}: freelist page {meta.freelist} is outside the file's {meta.hwm} pages")
        if size < meta.hwm * page_size:
            raise BboltError(
                f"{name}: truncated: the file has {size} bytes, its meta page needs {meta.hwm * page_size}"
            )
        return meta

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _error(self, where: str, what: str) -> BboltError:
        return BboltError(f"{self.name}: {where}: {what}")

    def _page(self, pgid: int) -> tuple[bytes, int, int]:
        """The node stored at pgid (all its pages), its flags and its element count."""
        where = f"page {pgid}"
        if not 2 <= pgid < self.hwm:
            raise self._error(where, f"referenced but outside the file's pages [2, {self.hwm})")
        ps = self.page_size
        buf = os.pread(self._fd, ps, pgid * ps)
        if len(buf) < ps:
            raise self._error(where, "the file ends inside it (truncated)")
        pid, flags, count, overflow = _PAGE_HEADER.unpack_from(buf)
        if pid != pgid:
            raise self._error(where, f"its header says page {pid}")
        if flags not in (BRANCH_PAGE, LEAF_PAGE):
            raise self._error(where, f"not a branch or leaf page (flags {flags:#x})")
        if overflow:
            if pgid + overflow >= self.hwm:
                raise self._error(where, f"spans {overflow + 1} pages, past the high-water mark")
            rest = os.pread(self._fd, overflow * ps, (pgid + 1) * ps)
            if len(rest) < overflow * ps:
                raise self._error(where, "the file ends inside it (truncated)")
            buf += rest
        if _HEADER_SIZE + count * _ELEM_SIZE > len(buf):
            raise self._error(where, f"{count} elements do not fit in the page")
        return buf, flags, count

    def items(self, bucket: BucketHandle | None = None) -> Iterator[tuple[bytes, bytes | BucketHandle]]:
        """Every entry of bucket (None: the top-level buckets) in key order."""
        prev: bytes | None = None
        for buf, where, count, lo, hi, path in self._leaves(self.root if bucket is None else bucket):
            fields = struct.unpack_from(f"<{4 * count}I", buf, _HEADER_SIZE)
            end = len(buf)
            for i in range(count):
                flags, pos, ksize, vsize = fields[4 * i : 4 * i + 4]
                start = _HEADER_SIZE + i * _ELEM_SIZE + pos
                if pos < _ELEM_SIZE or start + ksize + vsize > end:
                    raise self._error(where, f"element {i} points outside the page")
                key = buf[start : start + ksize]
                if prev is not None and key <= prev:
                    raise self._error(where, f"element {i}: key {key!r} is out of order after {prev!r}")
                if i == 0 and lo is not None and key < lo:
                    raise self._error(where, f"key {key!r} sorts before its parent's {lo!r}")
                if hi is not None and key >= hi:
                    raise self._error(
                        where, f"element {i}: key {key!r} is not below its parent's next key {hi!r}"
                    )
                prev = key
                value = buf[start + ksize : start + ksize + vsize]
                if flags & BUCKET_LEAF_FLAG:
                    yield key, self._bucket_handle(where, key, value, frozenset(path))
                else:
                    yield key, value

    def _leaves(
        self, b: BucketHandle
    ) -> Iterator[tuple[bytes, str, int, bytes | None, bytes | None, tuple[int, ...]]]:
        """The bucket's leaf nodes in key order: (node, where, count, lo, hi, path), the node's
        keys bounded by [lo, hi) from its parents, path the pages from the file's root to it."""
        if b.inline is not None:
            count = int(_PAGE_HEADER.unpack_from(b.inline)[2])
            if _HEADER_SIZE + count * _ELEM_SIZE > len(b.inline):
                raise self._error("inline bucket", f"{count} elements do not fit in it")
            yield b.inline, "inline bucket", count, None, None, tuple(b.ancestors)
            return
        base = tuple(b.ancestors)
        path: list[int] = []  # the pages above the one being visited, below the bucket's root
        stack: list[tuple[int, bytes | None, bytes | None, int]] = [(b.root, None, None, 0)]
        while stack:
            pgid, lo, hi, depth = stack.pop()
            del path[depth:]
            if pgid in path or pgid in base:
                raise self._error(f"page {pgid}", "reached twice on one path: the file has a loop")
            buf, flags, count = self._page(pgid)
            path.append(pgid)
            if flags == LEAF_PAGE:
                yield buf, f"page {pgid}", count, lo, hi, (*base, *path)
                continue
            keys, children = self._branch(pgid, buf, count, lo, hi)
            for i in range(count - 1, -1, -1):
                stack.append((children[i], keys[i], keys[i + 1] if i + 1 < count else hi, depth + 1))

    def _branch(
        self, pgid: int, buf: bytes, count: int, lo: bytes | None, hi: bytes | None
    ) -> tuple[list[bytes], list[int]]:
        where = f"page {pgid}"
        if count == 0:
            raise self._error(where, "a branch page without elements")
        keys: list[bytes] = []
        children: list[int] = []
        for i in range(count):
            off = _HEADER_SIZE + i * _ELEM_SIZE
            pos, ksize, child = _BRANCH_ELEM.unpack_from(buf, off)
            start = off + pos
            if pos < _ELEM_SIZE or start + ksize > len(buf):
                raise self._error(where, f"element {i} points outside the page")
            key = buf[start : start + ksize]
            prev = keys[-1] if keys else lo
            if prev is not None and (key < prev or (i > 0 and key == prev)):
                raise self._error(where, f"element {i}: key {key!r} is out of order after {prev!r}")
            if hi is not None and key >= hi:
                raise self._error(
                    where, f"element {i}: key {key!r} is not below its parent's next key {hi!r}"
                )
            keys.append(key)
            children.append(child)
        return keys, children

    def _bucket_handle(self, where: str, key: bytes, value: bytes, path: frozenset[int]) -> BucketHandle:
        if len(value) < _BUCKET_HEADER.size:
            raise self._error(where, f"bucket {key!r} has a {len(value)}-byte header")
        root, seq = _BUCKET_HEADER.unpack_from(value)
        if root:
            return BucketHandle(root, seq, None, path)
        page = value[_BUCKET_HEADER.size :]
        if len(page) < _HEADER_SIZE or _PAGE_HEADER.unpack_from(page)[1] != LEAF_PAGE:
            raise self._error(where, f"inline bucket {key!r} does not hold a leaf page")
        return BucketHandle(0, seq, page, path)


# -- writer ---------------------------------------------------------------------------------------


class _Node:
    """A node under construction: its elements (key, value or child pgid, flags) and its size
    as a page (header, elements, keys and values)."""

    __slots__ = ("elems", "size")

    def __init__(self) -> None:
        self.elems: list[tuple[bytes, bytes | int, int]] = []
        self.size = _HEADER_SIZE


def _node_bytes(node: _Node, pgid: int, leaf: bool, npages: int, page_size: int) -> bytes:
    """The node as npages pages, zero-padded (npages 0: an inline bucket's page, unpadded)."""
    elems = node.elems
    n = len(elems)
    flags = LEAF_PAGE if leaf else BRANCH_PAGE
    header = _PAGE_HEADER.pack(pgid, flags, n, max(npages - 1, 0))
    fields: list[int] = []
    data: list[bytes] = []
    pos = n * _ELEM_SIZE  # from element 0 to the first key; each element is 16 bytes further on
    if leaf:
        for key, value, eflags in elems:
            assert isinstance(value, bytes)
            fields += (eflags, pos, len(key), len(value))
            data += (key, value)
            pos += len(key) + len(value) - _ELEM_SIZE
        table = struct.pack(f"<{4 * n}I", *fields)
    else:
        parts = []
        for key, child, _ in elems:
            assert isinstance(child, int)
            parts.append(_BRANCH_ELEM.pack(pos, len(key), child))
            data.append(key)
            pos += len(key) - _ELEM_SIZE
        table = b"".join(parts)
    body = header + table + b"".join(data)
    return body + b"\0" * (npages * page_size - len(body)) if npages else body


class BboltWriter:
    """Writes a compact bbolt file from keys given in order, in bbolt's Tx.WriteTo layout: meta 0
    with txid, meta 1 with txid - 1, no freelist, length = high-water mark x page size.

        w = BboltWriter(f)                     # f: a seekable binary file
        with w.bucket(b"key") as b:            # top-level buckets in increasing name order
            b.put(k, v)                        # keys strictly increasing within a bucket
            with b.bucket(b"nested") as n:     # a sub-bucket, complete before the next key
                n.put(...)
        w.close()

    Pages are appended as nodes fill (each leaf when full, a branch level when its node is full,
    each bucket's top when it closes); only the two metas, written last, go back to the start.
    A bucket whose one leaf needs at most a quarter page is written inline, as bbolt does.
    """

    def __init__(
        self, out: BinaryIO, *, page_size: int = DEFAULT_PAGE_SIZE, fill_percent: float = 0.9, txid: int = 1
    ) -> None:
        if page_size & (page_size - 1) or not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size {page_size} is not a power of two in [512, 16 MiB]")
        if txid < 1:
            raise ValueError("txid must be at least 1 (meta 1 holds txid - 1)")
        self._out = out
        self._start = out.tell()
        self.page_size = page_size
        self._threshold = int(page_size * fill_percent)
        self._txid = txid
        self._next_pgid = 2
        self._root = BucketWriter(self, None, b"")
        self._closed = False
        out.write(b"\0" * (2 * page_size))  # the metas' place

    def bucket(self, name: bytes) -> BucketWriter:
        """A new top-level bucket."""
        return self._root.bucket(name)

    def close(self) -> int:
        """Write the top-level bucket and both metas; returns the database's length in bytes."""
        if self._closed:
            raise BboltError("writer already closed")
        root, _ = self._root.finish()
        self._closed = True
        hwm = self._next_pgid
        end = self._out.tell()
        ps = self.page_size
        metas = bytearray(2 * ps)
        for pgid, txid in ((0, self._txid), (1, self._txid - 1)):
            raw = _META.pack(MAGIC, VERSION, ps, 0, root, 0, PGID_NO_FREELIST, hwm, txid)
            off = pgid * ps
            _PAGE_HEADER.pack_into(metas, off, pgid, META_PAGE, 0, 0)
            metas[off + _META_OFFSET : off + _CHECKSUM_OFFSET] = raw
            _U64.pack_into(metas, off + _CHECKSUM_OFFSET, fnv1a64(raw))
        self._out.seek(self._start)
        self._out.write(metas)
        self._out.seek(end)
        return hwm * ps

    def _write_node(self, node: _Node, leaf: bool) -> int:
        """Append node as pages; returns its pgid."""
        npages = -(-node.size // self.page_size)
        pgid = self._next_pgid
        self._next_pgid += npages
        self._out.write(_node_bytes(node, pgid, leaf, npages, self.page_size))
        return pgid


class BucketWriter:
    """One bucket being written: put() pairs and bucket() sub-buckets in strictly increasing key
    order, then close() it (or leave its `with` block) before its parent goes on.

    The tree is built bottom-up: levels[0] is the leaf being filled, levels[i] the node of level
    i being filled. A full node is written and its first key and pgid go into the level above
    (a new level when there is none), so each level holds at most one node's worth of elements.
    """

    def __init__(self, writer: BboltWriter, parent: BucketWriter | None, name: bytes) -> None:
        self._w = writer
        self._parent = parent
        self._name = name
        self._levels = [_Node()]
        self._last: bytes | None = None
        self._has_sub = False
        self._child: BucketWriter | None = None
        self._done = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()

    def put(self, key: bytes, value: bytes) -> None:
        self._check_key(key)
        n = len(value)
        if n > MAX_VALUE_SIZE:
            raise BboltError(f"value of {n} bytes exceeds bbolt's {MAX_VALUE_SIZE}")
        self._add(0, key, value, 0, _ELEM_SIZE + len(key) + n)

    def bucket(self, name: bytes) -> BucketWriter:
        self._check_key(name)
        self._has_sub = True
        self._child = BucketWriter(self._w, self, name)
        return self._child

    def close(self) -> None:
        parent = self._parent
        if parent is None or parent._child is not self:
            raise BboltError("not an open sub-bucket")
        root, inline = self.finish()
        parent._child = None
        value = _BUCKET_HEADER.pack(root, 0) + inline
        parent._add(0, self._name, value, BUCKET_LEAF_FLAG, _ELEM_SIZE + len(self._name) + len(value))

    def finish(self) -> tuple[int, bytes]:
        """Write what is left; returns the root pgid, or 0 and the page of an inline bucket."""
        if self._child is not None:
            raise BboltError(f"sub-bucket {self._child._name!r} is still open")
        if self._done:
            raise BboltError("bucket already closed")
        self._done = True
        levels = self._levels
        leaf = levels[0]
        inlineable = self._parent is not None and not self._has_sub and leaf.size <= self._w.page_size // 4
        if len(levels) == 1 and inlineable:
            return 0, _node_bytes(leaf, 0, True, 0, self._w.page_size)
        i = 0
        while True:
            node = levels[i]
            top = i == len(levels) - 1
            if top and i > 0 and len(node.elems) == 1:  # the root is this level's only child
                child = node.elems[0][1]
                assert isinstance(child, int)
                return child, b""
            pgid = self._w._write_node(node, leaf=i == 0)
            if top:
                return pgid, b""
            self._push(i + 1, node.elems[0][0], pgid)
            i += 1

    def _check_key(self, key: bytes) -> None:
        if self._done:
            raise BboltError("bucket already closed")
        if self._child is not None:
            raise BboltError(f"sub-bucket {self._child._name!r} is still open")
        if not key:
            raise BboltError("empty key")
        if len(key) > MAX_KEY_SIZE:
            raise BboltError(f"key of {len(key)} bytes exceeds bbolt's {MAX_KEY_SIZE}")
        if self._last is not None and key <= self._last:
            raise BboltError(f"key {key!r} is not after {self._last!r}")
        self._last = key

    def _add(self, level: int, key: bytes, value: bytes | int, flags: int, size: int) -> None:
        """Add an element of size bytes (element, key, value) to the node of level."""
        node = self._levels[level]
        count = len(node.elems)
        # bbolt keeps at least two elements per node; the u16 count caps a page
        if (count >= 2 and node.size + size > self._w._threshold) or count == _MAX_COUNT - 1:
            pgid = self._w._write_node(node, leaf=level == 0)
            self._levels[level] = _Node()
            self._push(level + 1, node.elems[0][0], pgid)
            node = self._levels[level]
        node.elems.append((key, value, flags))
        node.size += size

    def _push(self, level: int, key: bytes, pgid: int) -> None:
        if level == len(self._levels):
            self._levels.append(_Node())
        self._add(level, key, pgid, 0, _ELEM_SIZE + len(key))
