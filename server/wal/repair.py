"""Cutting a torn tail off the last segment.

The decoder decides what is a torn tail (see decoder.py); this module removes it. Before the
file is truncated its original contents (up to the last non-zero byte) are copied to
`<segment>.broken` (replacing an older copy), so nothing is destroyed without a trace, and the cut
is logged with its offset and size. On a full disk (where a crash under a write load leaves a
torn tail most often) only the bytes that are cut are saved, and if even they do not fit they are
logged: a torn record was never acknowledged, and a member must still start once it is cut. A writable WAL does this by itself in read_all(); repair() does the same offline, for
tools that want to fix a directory without opening it for writing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from server.wal.decoder import Decoder, SegmentSource, TornTail, read_segment
from server.wal.util import FILE_MODE, fsync_dir, read_wal_names

__all__ = ["repair", "truncate_torn_tail"]

log = logging.getLogger(__name__)


def truncate_torn_tail(torn: TornTail, fd: int | None = None) -> None:
    """Back up the segment to `<path>.broken`, truncate it at `torn.offset` and fsync it.

    `fd` is an open read-write descriptor of the segment, if the caller has one (the WAL holds
    the segment's lock through it); otherwise the file is opened here.
    """
    own = fd is None
    if fd is None:
        fd = os.open(torn.path, os.O_RDWR)
    try:
        # Everything up to the last non-zero byte; the zeros after it carry no information.
        original = read_segment(SegmentSource(torn.path, fd))[: torn.offset + torn.nonzero_bytes]
        saved = _save_backup(torn, original)
        os.ftruncate(fd, torn.offset)
        os.fsync(fd)
        fsync_dir(os.path.dirname(torn.path) or ".")
    finally:
        if own:
            os.close(fd)
    log.warning(
        "WAL torn tail truncated: %s cut at offset %d (file was %d bytes, %d of them written "
        "after the cut); reason: %s; original saved as %s",
        torn.path,
        torn.offset,
        torn.file_size,
        torn.nonzero_bytes,
        torn.reason,
        saved,
    )


def _save_backup(torn: TornTail, original: bytes) -> str:
    """Write `<segment>.broken`: the whole original, or on a full disk the bytes after the cut.
    Returns what was saved, for the log."""
    broken = torn.path + ".broken"
    cut = original[torn.offset :]
    for data, what in ((original, broken), (cut, f"{broken} (only the {len(cut)} bytes cut)")):
        try:
            _write_file(broken, data)
            return what
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(broken)
    log.error(
        "disk full: the %d bytes cut from %s are not saved; they were: %s", len(cut), torn.path, cut.hex()
    )
    return "nowhere (disk full; the cut bytes are in the log)"


def _write_file(path: str, data: bytes) -> None:
    bfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(bfd, view[written:])
        os.fsync(bfd)
    finally:
        os.close(bfd)


def repair(dirpath: str) -> TornTail | None:
    """Cut a torn tail off the last segment of the WAL in `dirpath`.

    Returns what was cut, or None when the segment was already clean. Raises WALNotFoundError
    when there is no WAL and WALCorruptError when the damage is not a torn tail (the decoder
    starts its CRC chain at the last segment's own CRC record, so only that segment is read).
    """
    names = read_wal_names(dirpath)
    path = os.path.join(dirpath, names[-1])
    dec = Decoder([SegmentSource(path)])
    while dec.decode() is not None:
        pass
    if dec.torn is None:
        log.info("WAL repair: %s has no torn tail", path)
        return None
    truncate_torn_tail(dec.torn)
    return dec.torn
