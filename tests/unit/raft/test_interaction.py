"""Golden data-driven interaction tests: scripts in testdata/*.txt run against InteractionEnv.

Run with --rewrite to regenerate the expected outputs, then review every change by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .datadriven import run_test
from .interaction_env import InteractionEnv

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.name)
def test_interaction(path: Path, rewrite: bool) -> None:
    env = InteractionEnv()
    run_test(path, env.handle, rewrite)
