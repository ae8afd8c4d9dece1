"""Fixtures shared by the WAL tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def waldir(tmp_path: Path) -> str:
    return str(tmp_path / "wal")
