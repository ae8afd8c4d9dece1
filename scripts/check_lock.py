"""Checks that this venv holds exactly what requirements.lock pins, and that the lock satisfies
pyproject.toml. Exit 1 with one line per difference; `make lock` is how the lock changes.

Usage: python scripts/check_lock.py [LOCKFILE]
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def pins(lock: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if m := PIN.match(line):
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def installed() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name != "petcd":
            out[name] = dist.version
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(r) for r in reqs]


def problems(locked: dict[str, str], have: dict[str, str], wanted: list[Requirement]) -> list[str]:
    out = []
    for name in sorted(locked.keys() | have.keys()):
        pin, got = locked.get(name), have.get(name)
        if pin != got:
            out.append(f"{name}: lock pins {pin or 'nothing'}, venv has {got or 'nothing'}")
    env = default_environment()
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pin = locked.get(canonicalize_name(req.name))
        if pin is None or not req.specifier.contains(pin, prereleases=True):
            out.append(
                f"{req.name}: pyproject.toml wants {req.specifier or 'it'}, lock pins {pin or 'nothing'}"
            )
    return out


def main() -> int:
    lock = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "requirements.lock"
    found = problems(pins(lock), installed(), declared())
    for line in found:
        print(f"{lock.name}: {line}", file=sys.stderr)
    if found:
        print(
            "the venv is not what the lock says: `make venv` rebuilds it, `make lock` updates the lock",
            file=sys.stderr,
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
