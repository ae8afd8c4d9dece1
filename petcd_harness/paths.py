"""Where the real components are found: etcd, etcdctl, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl, kwok (the "peers"), and kwok's stage definitions.

The rule: the directory given by `--peers-dir` (CLI), `--kube-peers-dir` (pytest) or
`PETCD_PEERS_DIR`, or else `.peers/bin` of the checkout this package runs from (what
`make peers` builds); then `$PATH`.

kwok's stages (node Ready and heartbeat, pod Ready/Complete/Delete, as kwokctl uses them) are
`$PETCD_KWOK_STAGES`, else `kwok/stages.yaml` next to the directory kwok was found in
(`make peers` writes `.peers/kwok/stages.yaml`).

A missing binary is one line naming it and where it was looked for (MissingBinary).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from petcd_harness.errors import MissingBinary

__all__ = ["CHECKOUT", "PEERS", "kwok_stages", "peer", "peers_dirs", "petcd_command", "set_peers_dir"]

# the checkout this package was installed from (editable installs); not meaningful otherwise
CHECKOUT = Path(__file__).resolve().parents[1]
PEERS = CHECKOUT / ".peers" / "bin"
VENV_BIN = Path(sys.executable).parent

_peers_dir: Path | None = None


def set_peers_dir(path: str | Path | None) -> None:
    """The directory given on the command line (--peers-dir); it beats PETCD_PEERS_DIR."""
    global _peers_dir
    _peers_dir = Path(path).resolve() if path else None


def peers_dirs() -> list[Path]:
    """The directory searched before $PATH (none outside a checkout unless one is given)."""
    if _peers_dir is not None:
        return [_peers_dir]
    if os.environ.get("PETCD_PEERS_DIR"):
        return [Path(os.environ["PETCD_PEERS_DIR"])]
    return [PEERS] if PEERS.is_dir() else []


def peer(name: str) -> str:
    """The path of a real binary by the rule above, or MissingBinary."""
    for d in peers_dirs():
        path = d / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise MissingBinary(name, [*peers_dirs(), Path("$PATH")])


def kwok_stages() -> Path:
    if os.environ.get("PETCD_KWOK_STAGES"):
        path = Path(os.environ["PETCD_KWOK_STAGES"])
    else:
        path = Path(peer("kwok")).parent.parent / "kwok" / "stages.yaml"
    if not path.is_file():
        raise MissingBinary("kwok stages (stages.yaml)", [path])
    return path


def petcd_command() -> list[str]:
    """How to run petcd: the console script next to this Python, else the module."""
    exe = VENV_BIN / "petcd"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "server.etcdmain"]
