"""A launcher's state directory (.cluster/ for `petcd-harness up`): who owns it, which processes
it started, and files that appear whole or not at all.

    state = StateDir(Path(".cluster"))
    state.acquire()               # ClusterRunning if a live launcher holds it; then reap()
    state.record("kwok", pid)     # pids/kwok.pid: "<pid> <start time>"
    state.write("kubeconfig", text)   # atomically (a temporary file renamed over it)
    state.release()

The owner holds an flock on launcher.lock for its lifetime, so a launcher killed with -9 gives
the directory up at once. Its processes normally die with it (procs.spawn), but whatever is
still alive under a recorded pid (same pid and same start time, so never a recycled pid) is
stopped by the next acquire(): SIGTERM to its process group, SIGKILL after a few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import IO

from petcd_harness.errors import ClusterRunning

__all__ = ["StateDir", "start_time"]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None
    if there is no such process (or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


class StateDir:
    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir)
        self.pids = self.dir / "pids"
        self._lock: IO[str] | None = None

    # -- ownership ---------------------------------------------------------------------------------

    def acquire(self) -> list[str]:
        """Own the directory; returns what reap() stopped."""
        self.pids.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / "launcher.lock", "a+")  # noqa: SIM115 - held for the owner's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            f.close()
            raise ClusterRunning(self.dir, int(text) if text.isdigit() else None) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f
        return self.reap()

    @property
    def owned(self) -> bool:
        """Whether this object holds the directory (between acquire() and release())."""
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.truncate(0)
            self._lock.close()
            self._lock = None

    def owner(self) -> int | None:
        """The pid of the live launcher holding the directory, if any."""
        path = self.dir / "launcher.lock"
        if not path.exists():
            return None
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else None
            return None

    # -- processes ---------------------------------------------------------------------------------

    def record(self, name: str, pid: int) -> None:
        started = start_time(pid)
        if started is not None:
            self.write(f"pids/{name}.pid", f"{pid} {started}\n")

    def reap(self, grace: float = 5.0) -> list[str]:
        """Stop every recorded process that is still the one recorded; forget all records."""
        alive: dict[str, int] = {}
        for path in sorted(self.pids.glob("*.pid")) if self.pids.is_dir() else []:
            try:
                pid, started = (int(x) for x in path.read_text().split())
            except ValueError:
                pid, started = 0, -1
            if pid > 0 and start_time(pid) == started:
                alive[path.stem] = pid
            path.unlink()
        for pid in alive.values():
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_exists(pid) for pid in alive.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in alive.values():
            _signal_group(pid, signal.SIGKILL)
        return [f"{name} (pid {pid})" for name, pid in alive.items()]

    # -- files -------------------------------------------------------------------------------------

    def write(self, name: str, text: str, mode: int = 0o600) -> Path:
        """Write dir/name whole: a reader sees the old file, no file, or the new one."""
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()


def _exists(pid: int) -> bool:
    return start_time(pid) is not None


def _signal_group(pid: int, sig: int) -> None:
    """Signal pid's process group if pid leads one (a supervised process does), else pid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
