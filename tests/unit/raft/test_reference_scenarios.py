"""Cross-check against etcd-io/raft's own interaction scenarios.

The scripts in etcd-io/raft's testdata/ (the version etcd v3.6 builds with: tools/peers/etcd's
go.mod) are run through our InteractionEnv and the outputs are compared with etcd's expected
outputs, ignoring log lines (whose wording is ours) and the text of proposal errors. Only
scenarios that stay within what this implementation supports are listed (no ConfChangeV2, no
asynchronous storage writes). Nothing is copied: the files are read in place from the Go module
cache, where `make raft-testdata` (part of `make peers` and `make test-fast`) downloads them.
The test is skipped only on a machine without Go.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.harness.paths import ROOT

from .datadriven import parse
from .interaction_env import InteractionEnv

RAFT_MODULE = "go.etcd.io/raft/v3"

SCENARIOS = [
    "campaign.txt",
    "checkquorum.txt",
    "confchange_v1_add_single.txt",
    "confchange_v1_remove_leader.txt",
    "confchange_v1_remove_leader_stepdown.txt",
    "forget_leader.txt",
    "forget_leader_prevote_checkquorum.txt",
    "forget_leader_read_only_lease_based.txt",
    "heartbeat_resp_recovers_from_probing.txt",
    "lagging_commit.txt",
    "prevote.txt",
    "prevote_checkquorum.txt",
    "probe_and_replicate.txt",
    "replicate_pause.txt",
    "single_node.txt",
    "slow_follower_after_compaction.txt",
    "snapshot_succeed_via_app_resp.txt",
    "snapshot_succeed_via_app_resp_behind.txt",
]

_LOG_LINE = re.compile(r"^\s*(DEBUG|INFO|WARN|ERROR|FATAL) ")


def normalize(out: str) -> str:
    lines = []
    for ln in out.rstrip("\n").split("\n"):
        if _LOG_LINE.match(ln):
            continue
        if ln.startswith("ProposalDroppedError"):
            ln = "raft proposal dropped"
        lines.append(ln)
    s = "\n".join(lines).strip("\n")
    return "ok" if s in ("", "ok") else s


@cache
def reference() -> Path:
    """etcd-io/raft's testdata in the Go module cache (go env GOMODCACHE), as resolved by the
    module that builds etcd."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: etcd-io/raft's scenarios cannot be located")
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
    found = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", RAFT_MODULE],
        cwd=ROOT / "tools" / "peers" / "etcd",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    testdata = Path(found) / "testdata"
    assert found and testdata.is_dir(), f"{RAFT_MODULE} is not in the module cache: run `make raft-testdata`"
    return testdata


@pytest.mark.parametrize("name", SCENARIOS)
def test_matches_etcd_raft(name: str) -> None:
    _, cases = parse(reference() / name)
    env = InteractionEnv()
    for d in cases:
        got = normalize(env.handle(d))
        want = normalize(d.expected)
        assert got == want, f"{d.pos}: {d.cmd}"
