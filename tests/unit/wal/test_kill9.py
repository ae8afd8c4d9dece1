"""Process crash test: a child appends and fsyncs batches, reporting each acknowledged index;
the parent SIGKILLs it at random moments, optionally throws away part of what was written
after the last acknowledgement (what a power loss could lose), and checks on reopen that every
acknowledged entry is there, intact and in order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from server.wal import WAL

ROOT = Path(__file__).resolve().parents[3]

CHILD = textwrap.dedent(
    """
    import random, sys
    sys.path.insert(0, sys.argv[2])
    from server.raft.raftpb import Entry, HardState
    from server.wal import WAL, exist

    def payload(i):
        return (b"%d;" % i) * (i % 97)

    d = sys.argv[1]
    if exist(d):
        w = WAL.open(d, segment_size=48 * 1024)
        entries = w.read_all().entries
        last = entries[-1].index if entries else 0
    else:
        w = WAL.create(d, b"kill9", segment_size=48 * 1024)
        last = 0
    print("ready", last, flush=True)
    rng = random.Random()
    while True:
        n = rng.randint(1, 30)
        batch = [Entry(term=1, index=last + k, data=payload(last + k)) for k in range(1, n + 1)]
        w.save(HardState(term=1, vote=1, commit=last), batch, must_sync=True)
        last += n
        print(last, w.segment_paths[-1], w.tail_offset, flush=True)
    """
)


def payload(i: int) -> bytes:
    return (b"%d;" % i) * (i % 97)


def check(waldir: str, acked: int) -> int:
    w = WAL.open_for_read(waldir)
    try:
        entries = w.read_all().entries
    finally:
        w.close()
    assert [e.index for e in entries] == list(range(1, len(entries) + 1))
    assert len(entries) >= acked, f"acknowledged {acked}, found {len(entries)}"
    for e in entries:
        assert e.data == payload(e.index), e.index
    return len(entries)


def test_sigkill_never_loses_acknowledged_entries(tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    waldir = str(tmp_path / "wal")
    acked = 0
    deadline = time.monotonic() + 5.0
    cycles = 0
    while cycles < 3 or (cycles < 6 and time.monotonic() < deadline):
        cycles += 1
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, waldir, str(ROOT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready and ready[0] == "ready", child.stderr.read() if child.stderr else ""
        assert int(ready[1]) >= acked, f"seed {seed}: reopened at {ready[1]}, acked {acked}"
        time.sleep(rng.uniform(0.01, 0.15))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        last_line = None
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                acked = int(parts[0])
                last_line = parts
        # Emulate what a power loss could do to the writes after the last fsync: the file size
        # reverting to some point past the acknowledged offset, or some 512-byte sectors after it
        # never reaching the disk (reading back as zeros; the synced part of the first one stays).
        if last_line is not None and rng.random() < 0.6:
            path, off = last_line[1], int(last_line[2])
            newest = sorted(n for n in os.listdir(waldir) if n.endswith(".wal"))[-1]
            size = os.path.getsize(path)
            if os.path.basename(path) == newest and size > off:
                if rng.random() < 0.5:
                    os.truncate(path, rng.randint(off, size))
                else:
                    lose = rng.uniform(0.05, 0.5)
                    with open(path, "r+b") as f:
                        for sector in range(off - off % 512, size, 512):
                            if rng.random() < lose:
                                lo = max(off, sector)
                                f.seek(lo)
                                f.write(bytes(min(size, sector + 512) - lo))
        check(waldir, acked)
    assert acked > 0, f"seed {seed}"
    # The final state is also appendable after the last crash.
    w = WAL.open(waldir, segment_size=48 * 1024)
    with w:
        n = len(w.read_all().entries)
    assert n >= acked
