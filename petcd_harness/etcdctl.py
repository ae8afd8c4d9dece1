"""The real etcdctl as a test client."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from petcd_harness.paths import peer

__all__ = ["Etcdctl", "Result"]


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        """etcdctl's final "Error: ..." line (its retry warnings are JSON log lines)."""
        lines = [ln for ln in self.err.splitlines() if ln.startswith("Error:")]
        return lines[-1] if lines else ""


class Etcdctl:
    def __init__(self, endpoints: str, binary: str | None = None, env: dict[str, str] | None = None) -> None:
        self.endpoints = endpoints
        self.binary = binary or peer("etcdctl")
        self.env = {**os.environ, "ETCDCTL_API": "3", **(env or {})}

    def __call__(self, *args: str, input: bytes | str | None = None, timeout: float = 60.0) -> Result:
        data = input.encode() if isinstance(input, str) else input
        p = subprocess.run(
            [self.binary, f"--endpoints={self.endpoints}", *args],
            input=data,
            capture_output=True,
            env=self.env,
            timeout=timeout,
        )
        return Result(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    def ok(self, *args: str, input: bytes | str | None = None) -> str:
        r = self(*args, input=input)
        if r.rc != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed ({r.rc}): {r.err}")
        return r.out
