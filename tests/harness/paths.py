"""Where the real components live: built by `make peers` into .peers/bin (git-ignored)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers" / "bin"
VENV_BIN = Path(sys.executable).parent


def peer(name: str) -> str:
    """Path of a real binary (etcd, etcdctl, etcdutl, benchmark, kube-apiserver, kubectl)."""
    path = PEERS / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make peers` (make test does it)")
    return str(path)


def petcd_command() -> list[str]:
    exe = VENV_BIN / "petcd"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "server.etcdmain"]


def debian_etcd() -> tuple[str, str] | None:
    """Debian's etcd 3.4 (etcd, etcdctl), when installed."""
    etcd, ctl = shutil.which("etcd", path="/usr/bin"), shutil.which("etcdctl", path="/usr/bin")
    return (etcd, ctl) if etcd and ctl and os.access(etcd, os.X_OK) else None
