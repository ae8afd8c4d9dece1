"""Differential tests: petcd and a real etcd, started with the same flags, given the same script
(always petcd first); their results must be equal.

    with Differential.start(tmp_path, "--unsafe-no-fsync") as d:
        d.same(lambda m: outcome(lambda: connect(m).put("k", "v")))
        petcd, etcd = d                      # (petcd, etcd), in that order everywhere

tests/integration/conftest.py gives it as the `pair` fixture. Real etcd is the specification:
a difference is petcd's bug until shown otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests.framework.client import Client
from tests.harness.normalize import Normalizer
from tests.harness.procs import Member

__all__ = ["Differential", "normalizer"]

T = TypeVar("T")


class Differential(Sequence[Member]):
    """(petcd, etcd): a sequence of the two members, petcd first."""

    def __init__(self, petcd: Member, etcd: Member) -> None:
        assert (petcd.kind, etcd.kind) == ("petcd", "etcd")
        self.petcd = petcd
        self.etcd = etcd

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        tmp: Path,
        *flags: str,
        petcd_flags: Sequence[str] = (),
        etcd_flags: Sequence[str] = (),
    ) -> Iterator[Differential]:
        """A fresh petcd and a fresh etcd with the same flags (plus each one's own), started in
        parallel in directories under tmp; both stopped on exit."""
        petcd = Member.petcd(tmp, *flags, *petcd_flags)
        etcd = Member.etcd(tmp, *flags, *etcd_flags)
        try:
            with ThreadPoolExecutor(2) as ex:
                for fut in [ex.submit(m.start) for m in (petcd, etcd)]:
                    fut.result()
            yield cls(petcd, etcd)
        finally:
            petcd.stop()
            etcd.kill()  # a real etcd takes a second to stop gracefully after watch streams

    # -- a sequence of (petcd, etcd) -----------------------------------------------------------

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Member:  # type: ignore[override]
        return (self.petcd, self.etcd)[i]

    # -- running scripts -----------------------------------------------------------------------

    def run(self, script: Callable[[Member], T]) -> tuple[T, T]:
        """(petcd's result, etcd's result), petcd first; a failing check says which server."""
        return _labelled(script, self.petcd), _labelled(script, self.etcd)

    def run_concurrently(self, script: Callable[[Member], T]) -> tuple[T, T]:
        """run(), both at once: for scripts that wait (leases expiring, watches)."""
        with ThreadPoolExecutor(2) as ex:
            fp = ex.submit(_labelled, script, self.petcd)
            fe = ex.submit(_labelled, script, self.etcd)
            return fp.result(), fe.result()

    async def arun(self, script: Callable[[Member], Awaitable[T]]) -> tuple[T, T]:
        """An async script on both at once."""

        async def run(m: Member) -> T:
            try:
                return await script(m)
            except AssertionError as e:
                raise AssertionError(f"[{m.kind}] {e}") from e

        got, want = await asyncio.gather(run(self.petcd), run(self.etcd))
        return got, want

    def same(self, script: Callable[[Member], T], norm: Callable[[Member, T], object] | None = None) -> T:
        """Run script on both; the results (through norm(member, result), if given) must be
        equal. Returns petcd's."""
        got, want = self.run(script)
        if norm is not None:
            assert norm(self.petcd, got) == norm(self.etcd, want), f"petcd: {got!r}\netcd:  {want!r}"
        else:
            assert got == want, f"petcd: {got!r}\netcd:  {want!r}"
        return got


def _labelled(script: Callable[[Member], T], m: Member) -> T:
    try:
        return script(m)
    except AssertionError as e:
        raise AssertionError(f"[{m.kind}] {e}") from e


def normalizer(m: Member) -> Normalizer:
    """What legitimately differs between the two members' outputs: ports, and the member and
    cluster IDs derived from them."""
    with Client(m.client_url.split("://", 1)[1]) as c:
        header = c.status().header
    return (
        Normalizer()
        .name(m.client_port, "<client-port>")
        .name(m.peer_port, "<peer-port>")
        .name(int(header.member_id), "<member-id>")
        .name(int(header.cluster_id), "<cluster-id>")
    )
