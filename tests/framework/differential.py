"""Differential tests: petcd and a real etcd, started with the same flags, given the same script
in the same order (always petcd first); their results must be equal.

    with Differential.start(tmp_path, "--unsafe-no-fsync") as d:
        d.same(lambda m: outcome(lambda: connect(m).put("k", "v")))

Real etcd is the specification: a difference is petcd's bug until shown otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.framework.member import Member
from tests.harness.procs import Member as ProcessMember

__all__ = ["Differential"]

T = TypeVar("T")


@dataclass
class Differential:
    petcd: Member
    etcd: Member

    @classmethod
    @contextlib.contextmanager
    def start(cls, tmp: Path, *flags: str) -> Iterator[Differential]:
        """A fresh petcd and a fresh etcd with the same flags, started in parallel."""
        petcd, etcd = ProcessMember.petcd(tmp, *flags), ProcessMember.etcd(tmp, *flags)
        try:
            with ThreadPoolExecutor(2) as ex:
                for fut in [ex.submit(m.start) for m in (petcd, etcd)]:
                    fut.result()
            yield cls(petcd, etcd)
        finally:
            petcd.stop()
            etcd.kill()  # a real etcd takes a second to stop gracefully after watch streams

    @property
    def members(self) -> tuple[Member, Member]:
        return self.petcd, self.etcd

    def run(self, script: Callable[[Member], T]) -> tuple[T, T]:
        """(petcd's result, etcd's result), petcd first; a failing check says which server."""
        out: list[T] = []
        for m in self.members:
            try:
                out.append(script(m))
            except AssertionError as e:
                raise AssertionError(f"[{m.kind}] {e}") from e
        return out[0], out[1]

    def same(self, script: Callable[[Member], T], norm: Callable[[Member, T], object] | None = None) -> T:
        """Run script on both; the results (through norm, if given) must be equal. Returns
        petcd's."""
        got, want = self.run(script)
        if norm is not None:
            assert norm(self.petcd, got) == norm(self.etcd, want), f"petcd: {got!r}\netcd:  {want!r}"
        else:
            assert got == want, f"petcd: {got!r}\netcd:  {want!r}"
        return got
