"""Where the real components live (petcd_harness.paths, re-exported for the test suite), and what
only the test suite needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from petcd_harness.paths import PEERS, VENV_BIN, peer, petcd_command

__all__ = ["PEERS", "ROOT", "VENV_BIN", "debian_etcd", "peer", "petcd_command"]

ROOT = Path(__file__).resolve().parents[2]


def debian_etcd() -> tuple[str, str] | None:
    """Debian's etcd 3.4 (etcd, etcdctl), when installed."""
    etcd, ctl = shutil.which("etcd", path="/usr/bin"), shutil.which("etcdctl", path="/usr/bin")
    return (etcd, ctl) if etcd and ctl and os.access(etcd, os.X_OK) else None
