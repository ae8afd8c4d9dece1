"""The harness's errors: each says in one line what failed and where to look.

MissingBinary     a peer binary (or kwok's stages) is not where the lookup rule says
PortInUse         a port asked for is taken
ComponentFailed   a component exited or never became ready; names its log and quotes the
                  line of it that most likely says why
ClusterRunning    another launcher owns the state directory
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ClusterRunning", "ComponentFailed", "HarnessError", "MissingBinary", "PortInUse", "reason_in_log"]


class HarnessError(Exception):
    """A failure the harness explains in one line (str(e)); no traceback is needed."""


class MissingBinary(HarnessError):
    def __init__(self, name: str, searched: Sequence[Path | str]) -> None:
        self.name = name
        where = ", ".join(str(p) for p in searched)
        super().__init__(
            f"{name} not found (looked in {where}): build it with `make peers` in a petcd checkout, "
            "or point --peers-dir or PETCD_PEERS_DIR at a directory holding it"
        )


class PortInUse(HarnessError):
    def __init__(self, component: str, port: int) -> None:
        self.component, self.port = component, port
        super().__init__(f"{component}: port {port} on 127.0.0.1 is in use")


class ComponentFailed(HarnessError):
    """`component` exited (returncode set) or was not ready in time (returncode None)."""

    def __init__(
        self, component: str, log: Path | None, returncode: int | None = None, what: str = ""
    ) -> None:
        self.component, self.log, self.returncode = component, log, returncode
        if returncode is not None:
            head = f"{component} exited with status {returncode}{' ' + what if what else ''}"
        else:
            head = f"{component} {what or 'failed'}"
        reason = reason_in_log(log)
        tail = f": {reason}" if reason else ""
        see = f" (log: {log})" if log is not None else ""
        super().__init__(f"{head}{see}{tail}")


class ClusterRunning(HarnessError):
    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory, self.pid = directory, pid
        who = f" (launcher pid {pid})" if pid else ""
        super().__init__(
            f"a cluster is already running from {directory}{who}: stop it first (Ctrl-C, or petcd-harness down)"
        )


# what a failing component's last words look like, most telling first: Go's "Error:" and
# "panic:", klog's E/F lines, slog's level=ERROR; then any line that says error or failed
_ERROR_LINES = (
    re.compile(r'^(Error:|panic:|fatal error:|[EF]\d{4} )|"level":"(ERROR|FATAL|error|fatal)"'),
    re.compile(r"\b(error|failed|fatal)\b", re.I),
)


def reason_in_log(log: Path | None, limit: int = 300) -> str:
    """The last line of the log that reads like the reason it failed (else its last line)."""
    if log is None or not log.is_file():
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()[-200:] if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("---- start ")]
    for pattern in _ERROR_LINES:
        found = [ln for ln in lines if pattern.search(ln)]
        if found:
            lines = found
            break
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."
