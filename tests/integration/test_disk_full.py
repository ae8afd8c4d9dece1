"""A full disk and damaged files at start.

We test these aspects:
- the data directory on a 100 MB tmpfs (with a 16 MB filler file of ours on it) and a quota of
  1 GiB, so the filesystem fills long before the quota: under 4 writers of 32 KiB puts, every
  write gets a clean answer (etcd's "etcdserver: mvcc: database space exceeded", or "request
  timed out"), the NOSPACE alarm is raised (etcdctl alarm list), the member stays up, reads
  (serializable and linearizable) and deletes keep working, no acknowledged write is lost, also
  across a kill -9 and a restart on the full disk; when space returns (the filler deleted, the
  tmpfs made bigger), compact + defrag + alarm disarm bring writes back, and everything is still
  there after another kill -9;
- the same with only --wal-dir on the small tmpfs (the WAL fills first: segment cuts and appends
  fail with ENOSPC), except that what needs the log (linearizable reads, deletes) answers
  "request timed out" while it is full, and the restart cuts a torn tail without room for a full
  backup of the segment;
- files damaged while the member was down: a byte flipped in the middle of a WAL segment -> petcd
  refuses to start, exit code non-zero, an error naming the segment; the last WAL record torn
  (zeroed, or the file cut inside it) -> petcd starts, repairs the tail and keeps every
  acknowledged write; the LMDB file scrambled or cut short -> a clear error naming the file,
  never a silent start with data missing and never a crash by signal.

When tmpfs cannot be mounted (not root), ENOSPC is injected instead into the member's WAL writes
(os.pwrite/os.fdatasync/os.posix_fallocate under --wal-dir fail once a trigger file exists).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.framework.wait import wait_until
from tests.harness.etcdctl import Etcdctl
from tests.harness.procs import Member

pytestmark = pytest.mark.integration

NOSPACE = ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
TIMED_OUT = ("UNAVAILABLE", "etcdserver: request timed out")
FS_MB = 100
QUOTA = f"--quota-backend-bytes={1 << 30}"


# -- a small filesystem --------------------------------------------------------------------------


class SmallDisk:
    """A tmpfs of FS_MB at path, or (when mounting is not possible) a directory whose writes by the
    member fail with ENOSPC once fill() is called."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m", "tmpfs", str(path)], capture_output=True
        )
        self.mounted = r.returncode == 0
        self.trigger = path.parent / "enospc.trigger"
        self.injector = path.parent / "enospc-injector"
        self.env: dict[str, str] = {}
        if not self.mounted:
            self._write_injector()

    def _write_injector(self) -> None:
        self.injector.mkdir(exist_ok=True)
        (self.injector / "sitecustomize.py").write_text(_INJECTOR)
        pythonpath = os.pathsep.join(p for p in (str(self.injector), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {
            "PYTHONPATH": pythonpath,
            "PETCD_ENOSPC_DIR": str(self.path),
            "PETCD_ENOSPC_TRIGGER": str(self.trigger),
        }

    def fill(self) -> None:
        """Tmpfs: the writers fill it. Injected: from now on the member's writes there fail."""
        if not self.mounted:
            self.trigger.touch()

    def avail_mb(self) -> float:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize / 2**20

    def grow(self) -> None:
        """Space returns."""
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={FS_MB * 4}m", str(self.path)], check=True)
        else:
            self.trigger.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


_INJECTOR = """
import errno, os
_dir = os.environ.get("PETCD_ENOSPC_DIR")
_trigger = os.environ.get("PETCD_ENOSPC_TRIGGER")
if _dir and _trigger:
    def _under(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(_dir)
        except OSError:
            return False
    def _wrap(fn):
        def inner(fd, *a, **kw):
            if os.path.exists(_trigger) and _under(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return fn(fd, *a, **kw)
        return inner
    for _name in ("pwrite", "write", "fdatasync", "fsync", "posix_fallocate"):
        setattr(os, _name, _wrap(getattr(os, _name)))
"""


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    d = SmallDisk(tmp_path / "small")
    yield d
    d.close()


# -- a write load -----------------------------------------------------------------------------------


@dataclass
class Load:
    url: str
    acked: dict[bytes, int] = field(default_factory=dict)
    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    consecutive_nospace: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writer(self, w: int) -> None:
        with grpc.insecure_channel(self.url.split("://")[1]) as ch:
            kv = pb_grpc.KVStub(ch)
            n = 0
            while not self.stop.is_set():
                key = b"full/%d/%07d" % (w, n)
                n += 1
                try:
                    r = kv.Put(pb.PutRequest(key=key, value=os.urandom(32 * 1024)), timeout=15)
                except grpc.RpcError as e:
                    err = (e.code().name, e.details() or "")
                    with self.lock:
                        self.errors[err] = self.errors.get(err, 0) + 1
                        self.consecutive_nospace = self.consecutive_nospace + 1 if err == NOSPACE else 0
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.acked[key] = int(r.header.revision)
                    self.consecutive_nospace = 0

    def run_until_full(self, disk: SmallDisk, limit: float = 120.0) -> float:
        threads = [threading.Thread(target=self.writer, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        try:
            if not disk.mounted:
                time.sleep(2)
                disk.fill()
            while time.monotonic() - t0 < limit and self.consecutive_nospace < 40:
                time.sleep(0.2)
        finally:
            self.stop.set()
            for t in threads:
                t.join(30)
        return time.monotonic() - t0


def _kv(m: Member) -> tuple[grpc.Channel, pb_grpc.KVStub]:
    ch = grpc.insecure_channel(
        m.client_url.split("://")[1], options=[("grpc.max_receive_message_length", -1)]
    )
    return ch, pb_grpc.KVStub(ch)


def _found(m: Member, serializable: bool = False) -> dict[bytes, int]:
    ch, kv = _kv(m)
    with ch:
        r = kv.Range(
            pb.RangeRequest(key=b"full/", range_end=b"full0", keys_only=True, serializable=serializable),
            timeout=15,
        )
    return {x.key: int(x.mod_revision) for x in r.kvs}


def _lost(acked: dict[bytes, int], found: dict[bytes, int], deleted: set[bytes]) -> list[bytes]:
    return [k for k, r in acked.items() if k not in deleted and found.get(k) != r]


def _alarms(m: Member) -> str:
    return Etcdctl(m.client_url)("alarm", "list", timeout=20).out


def _try(fn: object, timeout: float = 10.0) -> tuple[str, ...]:
    try:
        fn(timeout)  # type: ignore[operator]
    except grpc.RpcError as e:
        return (e.code().name, e.details() or "")
    return ("OK",)


def fill_and_recover(m: Member, disk: SmallDisk, log_writable: bool) -> None:
    problems: list[str] = []
    m.start()
    load = Load(m.client_url)
    seconds = load.run_until_full(disk)
    print(
        f"full after {seconds:.0f} s: {len(load.acked)} puts acknowledged, errors {load.errors}, "
        f"{disk.avail_mb():.1f} MB free"
    )
    assert m.proc is not None and m.proc.poll() is None, f"petcd died on a full disk:\n{m.log()[-5000:]}"
    unclean = {e: n for e, n in load.errors.items() if e not in (NOSPACE, TIMED_OUT)}
    assert not unclean, f"writes got errors other than etcd's: {unclean}"
    assert load.errors.get(NOSPACE), f"writes were never refused with NOSPACE: {load.errors}"
    assert len(load.acked) > 100
    if disk.mounted:
        assert disk.avail_mb() < 5, "the filesystem did not fill: the test did not test anything"

    # full: the alarm, reads, deletes
    alarms = _alarms(m)
    if "alarm:NOSPACE" not in alarms:
        problems.append(f"no NOSPACE alarm in `etcdctl alarm list` while the disk is full ({alarms!r})")
    t0 = time.monotonic()
    lost = _lost(load.acked, _found(m, serializable=True), set())
    assert not lost, f"{len(lost)} acknowledged puts missing (serializable read), e.g. {lost[:3]}"
    try:
        lost = _lost(load.acked, _found(m), set())
        assert not lost, f"{len(lost)} acknowledged puts missing (linearizable read), e.g. {lost[:3]}"
    except grpc.RpcError as e:
        # a full WAL: nothing passes through the log, linearizable reads included (ReadIndex
        # answers come with the Ready whose persist is being retried); etcd stops instead
        if log_writable or (e.code().name, e.details()) != TIMED_OUT:
            problems.append(
                f"a linearizable read on the full disk failed after {time.monotonic() - t0:.1f} s: {e.details()}"
            )
    victim = next(iter(load.acked))
    ch, kv = _kv(m)
    with ch:
        d = _try(lambda t: kv.DeleteRange(pb.DeleteRangeRequest(key=victim), timeout=t))
    deleted = {victim}  # applied or maybe applied later: not counted as lost either way
    if d != ("OK",):
        assert d in (NOSPACE, TIMED_OUT), f"a delete on the full disk: {d}"
        if log_writable:
            problems.append(f"a delete on the full disk was refused: {d}")

    # kill -9 and restart on the full disk
    m.kill()
    try:
        m.start(timeout=60)
    except (RuntimeError, TimeoutError):
        m.kill()
        err = [ln for ln in m.log().splitlines() if ln.startswith("petcd: cannot start:")][-1:]
        problems.append(f"after a kill -9 on the full disk petcd does not start: {err}")
    else:
        # injected ENOSPC leaves not a byte for the WAL, so the restarted member cannot even vote
        # for itself (a new term is a WAL record): only a serializable read can answer
        found = wait_until(
            lambda: _found(m, serializable=not disk.mounted),
            30,
            what="a read after the restart on the full disk",
        )
        lost = _lost(load.acked, found, deleted)
        assert not lost, (
            f"{len(lost)} acknowledged puts lost across a restart on the full disk, e.g. {lost[:3]}"
        )

    # space returns: compact, defrag, disarm, write again
    (disk.path / "filler").unlink(missing_ok=True)
    disk.grow()
    if m.proc is None or m.proc.poll() is not None:
        m.start(timeout=60)
    ctl = Etcdctl(m.client_url)
    ch, kv = _kv(m)
    with ch:
        rev = wait_until(lambda: kv.Range(pb.RangeRequest(key=b"x"), timeout=10).header.revision, 30)
        for args in (("compact", str(rev)), ("defrag",), ("alarm", "disarm")):
            r = ctl(*args, timeout=60)
            assert r.rc == 0, f"etcdctl {' '.join(args)}: {r.err}"
        after = wait_until(
            lambda: kv.Put(pb.PutRequest(key=b"full/after", value=b"space is back"), timeout=10),
            30,
            what="a put after compact + defrag + disarm",
        )
    assert "NOSPACE" not in _alarms(m)
    m.kill()
    m.start(timeout=60)
    found = wait_until(lambda: _found(m), 30, what="a read after the last restart")
    lost = _lost(load.acked, found, deleted)
    assert not lost, f"{len(lost)} acknowledged puts lost, e.g. {lost[:3]}"
    assert found.get(b"full/after") == after.header.revision
    m.stop()
    assert not problems, "\n".join(problems)


def test_data_dir_fills_up(disk: SmallDisk) -> None:
    if disk.mounted:
        (disk.path / "filler").write_bytes(b"\0" * (16 << 20))
    m = Member("petcd", disk.path / "petcd.etcd", extra=(QUOTA,), env=disk.env)
    try:
        # injected ENOSPC hits the WAL only (LMDB writes from C): then it is a full WAL, too
        fill_and_recover(m, disk, log_writable=disk.mounted)
    finally:
        m.kill()


def test_wal_dir_fills_up(disk: SmallDisk, tmp_path: Path) -> None:
    """Only the WAL is on the small filesystem: its segment cuts and then its appends fail.
    What goes through the log (linearizable reads, deletes) times out with etcd's "request
    timed out" until there is room; serializable reads and `alarm list` answer."""
    m = Member.petcd(tmp_path, QUOTA, f"--wal-dir={disk.path}/wal", env=disk.env)
    try:
        fill_and_recover(m, disk, log_writable=False)
    finally:
        m.kill()


# -- damaged files at start ---------------------------------------------------------------------------


def _member_with_writes(tmp_path: Path, n: int = 300) -> tuple[Member, dict[bytes, int]]:
    m = Member.petcd(tmp_path)
    m.start()
    ch, kv = _kv(m)
    acked = {}
    with ch:
        for i in range(n):
            key = b"full/%04d" % i
            acked[key] = int(
                kv.Put(pb.PutRequest(key=key, value=os.urandom(200)), timeout=10).header.revision
            )
    return m, acked


def _segment(m: Member) -> tuple[Path, int]:
    """The last WAL segment and the end of the data written in it."""
    seg = sorted((m.data_dir / "member" / "wal").glob("*.wal"))[-1]
    data = seg.read_bytes()
    return seg, len(data.rstrip(b"\0"))


def _start_fails(m: Member) -> str:
    """Start m on damaged files: it must exit with an error (not a signal) and a one-line
    "petcd: cannot start: ..." on stderr, which is returned."""
    with contextlib.suppress(RuntimeError, TimeoutError):
        m.start(timeout=20)
    assert m.proc is not None
    if m.proc.poll() is None:
        m.kill()
        raise AssertionError(f"petcd started on damaged files:\n{m.log()[-3000:]}")
    return _exit_line(m)


def _exit_line(m: Member) -> str:
    assert m.proc is not None
    rc = m.proc.returncode
    log = m.log()
    assert rc is not None and rc > 0, f"petcd died by signal {-(rc or 0)} on damaged files:\n{log[-3000:]}"
    lines = [ln for ln in log.splitlines() if ln.startswith("petcd: cannot start:")]
    assert lines, f"no one-line error on stderr:\n{log[-3000:]}"
    return lines[-1]


def test_wal_bit_flip_refuses_to_start(tmp_path: Path) -> None:
    m, _ = _member_with_writes(tmp_path)
    m.kill()
    seg, end = _segment(m)
    with open(seg, "r+b") as f:
        f.seek(end // 2)
        b = f.read(1)
        f.seek(end // 2)
        f.write(bytes([b[0] ^ 0x10]))
    line = _start_fails(m)
    assert str(seg) in line and "corrupt" in line, line


@pytest.mark.parametrize("how", ["zeroed", "cut short"])
def test_wal_torn_tail_is_repaired(tmp_path: Path, how: str) -> None:
    m, acked = _member_with_writes(tmp_path)
    ch, kv = _kv(m)
    with ch:  # a last put whose record will be torn: as if the crash came before its fsync
        kv.Put(pb.PutRequest(key=b"unacked", value=b"x" * 1000), timeout=10)
    m.kill()
    seg, end = _segment(m)
    if how == "zeroed":
        with open(seg, "r+b") as f:
            f.seek(end - 12)
            f.write(b"\0" * 12)
    else:
        os.truncate(seg, end - 12)
    m.start(timeout=30)
    found = wait_until(lambda: _found(m), 30, what="a read after the repair")
    lost = _lost(acked, found, set())
    assert not lost, f"{len(lost)} acknowledged puts lost to the tail repair, e.g. {lost[:3]}"
    assert "torn tail" in m.log()
    m.stop()


@pytest.mark.parametrize("how", ["scrambled", "one page scrambled", "meta pages clobbered", "cut in half"])
def test_lmdb_damage_is_a_clear_error(tmp_path: Path, how: str) -> None:
    m, acked = _member_with_writes(tmp_path, 2000)
    m.stop()
    db = m.data_dir / "member" / "snap" / "db"
    data = bytearray(db.read_bytes())
    if how == "scrambled":
        for i in range(8192, len(data)):  # every page but the two meta pages
            data[i] ^= 0x5A
        db.write_bytes(data)
    elif how == "one page scrambled":
        page = len(data) // 2 // 4096 * 4096
        for i in range(page, page + 4096):
            data[i] ^= 0x5A
        db.write_bytes(data)
    elif how == "meta pages clobbered":
        data[:8192] = bytes(8192)
        db.write_bytes(data)
    else:
        os.truncate(db, len(data) // 2)
    try:
        m.start(timeout=20)
    except (RuntimeError, TimeoutError):
        if m.proc is not None and m.proc.poll() is None:
            m.kill()
            raise
        line = _exit_line(m)
        assert str(db) in line, f"the error does not name the file: {line}"
        return
    # it started: then nothing may be missing
    found = wait_until(lambda: _found(m), 30, what="a read")
    lost = _lost(acked, found, set())
    m.stop()
    assert not lost, f"petcd started on a damaged db with {len(lost)} acknowledged puts missing"
