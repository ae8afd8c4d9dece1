"""`etcdctl make-mirror` between petcd and a real etcd v3.6, in both directions.

make-mirror first copies the source's key space at one revision (paginated Range requests at a
fixed revision), then watches the source from the next revision and replays every revision as
one Txn on the destination. We write keys on the source before mirroring (more than one page)
and while it runs (puts, overwrites, single and range deletes, multi-key txns, a large value),
wait until the destination has caught up, stop make-mirror and compare `etcdctl get --prefix ""`
of both: the same keys with the same values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.framework.differential import Differential
from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import peer
from tests.harness.procs import Member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.flags("--unsafe-no-fsync")]

BASE_KEYS = 1100  # more than make-mirror's page of 1000 keys
BIG = "x" * (100 * 1024)


def txn(ctl: Etcdctl, ops: list[str]) -> None:
    # no compares (an empty first line), the success ops, no failure ops
    ctl.ok("txn", input="\n" + "\n".join(ops) + "\n\n\n")


def dump(ctl: Etcdctl) -> str:
    return ctl.ok("get", "--prefix", "")


def pairs(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    return list(zip(lines[::2], lines[1::2], strict=True))


class MakeMirror:
    def __init__(self, src: Member, dest: Member, tmp: Path, *flags: str) -> None:
        self.log = tmp / f"make-mirror-{src.kind}-to-{dest.kind}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [peer("etcdctl"), f"--endpoints={src.client_url}", "make-mirror", *flags, dest.client_url],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ETCDCTL_API": "3"},
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        return int(self.proc.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_mirrored(src: Etcdctl, dest: Etcdctl, mm: MakeMirror, what: str, timeout: float = 30.0) -> str:
    """Poll until the destination's key space equals the source's."""
    deadline = time.monotonic() + timeout
    while True:
        want = dump(src)
        got = dump(dest)
        if got == want:
            return got
        assert mm.running(), f"make-mirror exited ({mm.proc.returncode}) {what}:\n{mm.output()}"
        if time.monotonic() > deadline:
            missing = set(want.splitlines()[::2]) - set(got.splitlines()[::2])
            raise AssertionError(
                f"destination not mirrored {what} after {timeout}s; missing keys {sorted(missing)[:10]}"
            )
        time.sleep(0.2)


def mirror_roundtrip(src: Member, dest: Member, tmp: Path) -> None:
    s, d = Etcdctl(src.client_url), Etcdctl(dest.client_url)
    # before mirroring: more keys than one page, overwritten and deleted ones, a large value
    for start in range(0, BASE_KEYS, 100):
        txn(s, [f"put base/{i:04} v{i}" for i in range(start, start + 100)])
    txn(s, [f"put base/{i:04} updated{i}" for i in range(0, 100, 3)])
    s.ok("del", "base/0001")
    s.ok("del", "--range", "base/0010", "base/0020")
    s.ok("put", "big", input=BIG)
    s.ok("put", "ключ", "значение")
    d.ok("put", "only/on/dest", "stays")  # make-mirror never deletes what it did not copy
    mm = MakeMirror(src, dest, tmp)
    try:
        # the base copy: every source key on the destination, next to its own key
        want = sorted([*pairs(dump(s)), ("only/on/dest", "stays")])
        deadline = time.monotonic() + 30
        while pairs(dump(d)) != want:
            assert mm.running(), f"make-mirror exited ({mm.proc.returncode}):\n{mm.output()}"
            assert time.monotonic() < deadline, "the base copy did not arrive"
            time.sleep(0.2)
        # while mirroring: every kind of write, each revision replayed as one txn
        s.ok("put", "live/a", "1")
        s.ok("put", "live/a", "2")
        txn(s, ["put live/b 1", "put live/c 1", "del base/0002", "put base/0003 txn"])
        s.ok("del", "--prefix", "base/01")  # 100 keys in one revision
        s.ok("del", "big")
        s.ok("put", "big2", input=BIG)
        for i in range(50):
            if i % 10:
                s.ok("put", f"live/n{i:02}", str(i))
            else:
                txn(s, [f"put live/n{i:02} {i}", f"put live/t{i} t"])
        s.ok("put", "zz/last", "end")
        s.ok("del", "only/on/dest")  # not on the source: a no-op there, the copy keeps it
        d.ok("del", "only/on/dest")
        wait_mirrored(s, d, mm, "after the live writes")
    finally:
        rc = mm.stop()
    assert rc == -signal.SIGTERM, mm.output()
    final_src, final_dest = dump(s), dump(d)
    assert final_dest == final_src
    keys = final_src.splitlines()[::2]
    assert "big" not in keys and "big2" in keys and "base/0100" not in keys and "base/0003" in keys
    # base: 1100 - 1 - 10 (base/0010..0019) + big + ключ; live: a, b, c, n00..n49, t0..t40 (5),
    # zz/last; minus base/0002, base/0100..0199 and big, plus big2
    assert len(keys) == BASE_KEYS - 1 - 10 + 2 + 3 + 50 + 5 + 1 - 1 - 100 - 1 + 1


def test_mirror_petcd_into_etcd(pair: Differential, tmp_path: Path) -> None:
    petcd, etcd = pair
    mirror_roundtrip(petcd, etcd, tmp_path)


def test_mirror_etcd_into_petcd(pair: Differential, tmp_path: Path) -> None:
    petcd, etcd = pair
    mirror_roundtrip(etcd, petcd, tmp_path)
