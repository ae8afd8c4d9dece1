"""`petcd --version` prints etcd's four lines first, in etcd's words, then petcd's: tools that
read the version of "etcd" from its output (kwokctl's `Version: x.y.z` match, scripts) see the
etcd release petcd emulates."""

from __future__ import annotations

import re
import subprocess

from server.version import PETCD_VERSION, SERVER_VERSION
from tests.harness.paths import peer, petcd_command


def _version(cmd: list[str]) -> list[str]:
    return subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()


def test_version_starts_with_etcds_lines() -> None:
    ours, theirs = _version(petcd_command()), _version([peer("etcd")])
    keys = [line.split(":", 1)[0] for line in theirs]
    assert keys == ["etcd Version", "Git SHA", "Go Version", "Go OS/Arch"]
    assert [line.split(":", 1)[0] for line in ours[:4]] == keys
    assert ours[0] == f"etcd Version: {SERVER_VERSION}" == theirs[0]
    assert ours[3] == theirs[3]  # the platform, as Go names it
    assert f"petcd Version: {PETCD_VERSION}" in ours[4:]
    # kwokctl's parser (pkg/utils/version): the first "version: x.y.z" of the lowered output
    first = re.search(r"(kubernetes|version)?:? ?v?(\d+\.\d+\.\d+(-\S*)?)", "\n".join(ours).lower())
    assert first is not None and first.group(2) == SERVER_VERSION
