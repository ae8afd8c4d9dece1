"""scripts/check_lock.py: the venv must hold exactly requirements.lock, and the lock must satisfy
pyproject.toml (what `make venv` and `.ci/run` enforce)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from tests.harness.paths import ROOT


def _check_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check_lock = _check_lock()


@pytest.mark.parametrize(
    ("locked", "have", "wanted", "expected"),
    [
        ({"grpcio": "1.85.4"}, {"grpcio": "1.85.4"}, ["grpcio>=1.85.4"], []),
        (
            {"grpcio": "1.85.4"},
            {"grpcio": "1.85.1"},
            [],
            ["grpcio: lock pins 1.85.4, venv has 1.85.1"],
        ),
        ({}, {"six": "1.16.0"}, [], ["six: lock pins nothing, venv has 1.16.0"]),
        ({"six": "1.16.0"}, {}, [], ["six: lock pins 1.16.0, venv has nothing"]),
        (
            {"grpcio": "1.85.1"},
            {"grpcio": "1.85.1"},
            ["grpcio>=1.85.4,<2"],
            ["grpcio: pyproject.toml wants <2,>=1.85.4, lock pins 1.85.1"],
        ),
        ({}, {}, ["lmdb>=3"], ["lmdb: pyproject.toml wants >=3, lock pins nothing"]),
        ({}, {}, ['pywin32; sys_platform == "win32"'], []),
    ],
)
def test_problems(
    locked: dict[str, str], have: dict[str, str], wanted: list[str], expected: list[str]
) -> None:
    assert check_lock.problems(locked, have, [Requirement(r) for r in wanted]) == expected


def test_pins_reads_hashed_lines(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text(
        "# comment\nGrpcIO==1.85.4 \\\n    --hash=sha256:00\n    # via petcd\nsix==1.16.0 ; python_version >= '3'\n"
    )
    assert check_lock.pins(lock) == {"grpcio": "1.85.4", "six": "1.16.0"}


def test_the_lock_satisfies_pyproject_and_pins_the_generators() -> None:
    locked = check_lock.pins(ROOT / "requirements.lock")
    assert check_lock.problems(locked, locked, check_lock.declared()) == []
    for generator in ("grpcio-tools", "mypy-protobuf", "protobuf", "pip", "setuptools"):
        assert generator in locked, generator
