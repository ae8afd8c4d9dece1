"""A full disk in the middle of a save loses nothing and corrupts nothing.

We test these aspects:
- a batch whose write or fdatasync fails leaves the WAL as it was before the batch; the same
  batch saved again once space returns reads back exactly once;
- a segment cut that fails after the batch is durable keeps the batch, and the cut is retried
  on the next save.
"""

from __future__ import annotations

import errno
import os

import pytest

from server.raft.raftpb import HardState
from server.wal import WAL
from tests.unit.wal.helpers import ents, read_back, reopen, wal_files


def _enospc(*_: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail_in", ["fdatasync", "pwrite"])
def test_failed_batch_rolls_back(waldir: str, monkeypatch: pytest.MonkeyPatch, fail_in: str) -> None:
    with WAL.create(waldir, b"meta") as w:
        w.save(HardState(term=1, vote=1, commit=1), ents(1, 2))
        with monkeypatch.context() as m:
            if fail_in == "fdatasync":
                m.setattr(os, "fdatasync", _enospc)
            else:
                m.setattr(os, "pwrite", _enospc)
            with pytest.raises(OSError):
                w.save(HardState(term=1, vote=1, commit=2), ents(3, 40, data=b"x" * 300))
        w.save(HardState(term=1, vote=1, commit=2), ents(3, 40, data=b"x" * 300))
        w.save(HardState(term=1, vote=1, commit=41), ents(41, 41))
    _, st, es = read_back(waldir)
    assert st == HardState(term=1, vote=1, commit=41)
    assert es == ents(1, 2) + ents(3, 40, data=b"x" * 300) + ents(41, 41)


def test_failed_batch_then_restart_keeps_earlier_records(
    waldir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with WAL.create(waldir, b"meta") as w:
        w.save(HardState(term=1, vote=1, commit=1), ents(1, 2))
        real = os.fdatasync
        calls = {"n": 0}

        def flaky(fd: int) -> None:
            calls["n"] += 1
            real(fd)  # the bytes reach the disk, but the call reports failure
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdatasync", flaky)
        with pytest.raises(OSError):
            w.save(HardState(term=1, vote=1, commit=2), ents(3, 5))
        monkeypatch.undo()
    # the failed batch was never acknowledged: after a restart it may or may not be there,
    # but everything before it is, and the log is readable
    w2, (_, _, es) = reopen(waldir)
    w2.close()
    assert es[:2] == ents(1, 2)
    assert es in (ents(1, 2), ents(1, 5))


def test_failed_cut_keeps_the_batch_and_retries(waldir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with WAL.create(waldir, b"meta", segment_size=4096) as w:
        real_open = w._pipeline.open  # type: ignore[union-attr]
        failures = {"left": 1}

        def open_or_fail() -> tuple[str, int]:
            if failures["left"]:
                failures["left"] -= 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open()

        monkeypatch.setattr(w._pipeline, "open", open_or_fail)
        w.save(HardState(term=1, vote=1, commit=10), ents(1, 10, data=b"y" * 500))  # cut fails, batch kept
        assert len(wal_files(waldir)) == 1
        w.save(HardState(term=1, vote=1, commit=11), ents(11, 11))  # cut retried
        assert len(wal_files(waldir)) == 2
    _, st, es = read_back(waldir)
    assert es == ents(1, 10, data=b"y" * 500) + ents(11, 11)
    assert st.commit == 11
