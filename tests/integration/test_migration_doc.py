"""docs/migration.md's offline command blocks, run verbatim with bash (the `sh` blocks of a
section, in order; etcdctl, etcdutl, etcd from .peers/bin and petcd from the venv on PATH) against
a source cluster holding a history; the hashes the blocks print must agree and the new cluster
must serve the source's keys with their revisions."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import PEERS, ROOT, VENV_BIN
from tests.harness.procs import Member, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOC = ROOT / "docs" / "migration.md"


def section_script(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    assert blocks, f"no sh blocks under {title!r}"
    return "\n".join(blocks)


def write_history(ctl: Etcdctl) -> None:
    for i in range(30):
        ctl.ok("put", f"/registry/pods/p{i % 7}", f"v{i}")
    ctl.ok("del", "/registry/pods/p3")
    ctl.ok("compaction", "20")
    lease = ctl.ok("lease", "grant", "600").split()[1]
    ctl.ok("put", "/registry/leases/l", "x", f"--lease={lease}")


def hashes(table: str) -> list[str]:
    """The HASH column of `etcdctl endpoint hashkv -w table`."""
    return [row.split("|")[2].strip() for row in table.splitlines() if row.startswith("| http")]


@pytest.fixture
def run_section(tmp_path: Path) -> Iterator[object]:
    groups: list[int] = []

    def run(title: str, **env: str) -> str:
        p = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", section_script(title)],
            cwd=tmp_path,
            env={**os.environ, **env, "PATH": f"{PEERS}:{VENV_BIN}:{os.environ['PATH']}", "ETCDCTL_API": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the member the block starts in the background stays in this group
        )
        groups.append(p.pid)
        out, _ = p.communicate(timeout=240)
        text = out.decode(errors="replace")
        assert p.returncode == 0, f"the {title!r} commands failed:\n{text}"
        return text

    yield run
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


def new_member_env() -> dict[str, str]:
    return {
        "NAME": "m1",
        "PEER_URL": f"http://127.0.0.1:{free_port()}",
        "CLIENT_URL": f"http://127.0.0.1:{free_port()}",
    }


@pytest.mark.parametrize(
    ("source", "title", "var"),
    [("petcd", "petcd to etcd, offline", "PETCD"), ("etcd", "etcd to petcd, offline", "ETCD")],
    ids=["petcd-to-etcd", "etcd-to-petcd"],
)
def test_offline_move(tmp_path: Path, run_section: object, source: str, title: str, var: str) -> None:
    with Member(source, tmp_path / "source") as src:
        ctl = Etcdctl(src.client_url)
        write_history(ctl)
        env = new_member_env()
        out = run_section(title, **{var: src.client_url}, **env)  # type: ignore[operator]
        source_hash, target_hash = hashes(out)
        assert source_hash == target_hash, out
        dst = Etcdctl(env["CLIENT_URL"])
        for args in (
            ("get", "--prefix", "/registry", "-w", "json"),
            ("get", "/registry/pods/p1", "--rev=25"),
        ):
            want, got = ctl.ok(*args), dst.ok(*args)
            if "-w" in args:
                want, got = re.sub(r'"header":\{[^}]*\},', "", want), re.sub(r'"header":\{[^}]*\},', "", got)
            assert got == want
        assert "compacted" in dst("get", "/registry/pods/p1", "--rev=10").err
