"""Where the real components live (petcd_harness.paths, re-exported for the test suite)."""

from __future__ import annotations

from pathlib import Path

from petcd_harness.paths import PEERS, peer, petcd_command

__all__ = ["PEERS", "ROOT", "peer", "petcd_command"]

ROOT = Path(__file__).resolve().parents[2]
