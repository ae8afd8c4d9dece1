"""The Python etcd client aetcd 1.0.0 against petcd (and the same script against a real etcd v3.6,
so the expectations are etcd's): put/get/txn/delete, watches (live with prev_kv, from history,
watch_once), leases (grant, attach, keys, keep-alive, revoke, duplicate ID, expiry seen by a
watcher), a watch on a compacted revision and a snapshot etcdutl reads.

aetcd ships its own copy of etcd's protos under the same protobuf package names as petcd's
generated code, so it is never imported here: aetcd_roundtrip.py runs in a subprocess.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.harness.paths import peer
from tests.harness.procs import Member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = Path(__file__).with_name("aetcd_roundtrip.py")


def roundtrip(m: Member) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    host, port = m.client_url.split("://", 1)[1].rsplit(":", 1)
    p = subprocess.run([sys.executable, str(SCRIPT), host, port], capture_output=True, text=True, timeout=90)
    steps = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            steps[obj.pop("step")] = obj
    return p, steps


def test_aetcd_roundtrip(petcd: Member, real_etcd: Member) -> None:
    """The script passes against petcd, and against a real etcd with the same facts (revisions
    included); petcd and real_etcd are the shared fixtures of conftest.py."""
    with ThreadPoolExecutor(2) as ex:
        fp, fe = ex.submit(roundtrip, petcd), ex.submit(roundtrip, real_etcd)
        (pp, steps_p), (pe, steps_e) = fp.result(), fe.result()
    assert pe.returncode == 0, f"the script fails against a real etcd:\n{pe.stdout}\n{pe.stderr}"
    assert pp.returncode == 0 and pp.stdout.endswith("ROUNDTRIP OK\n"), f"{pp.stdout}\n{pp.stderr}"
    assert list(steps_p) == ["kv", "watch", "watch_history", "lease", "compaction", "snapshot"]
    # aetcd maps "etcdserver: lease already exists" to its DuplicateLeaseError
    assert steps_e["lease"]["duplicate_error"].startswith("DuplicateLeaseError")
    for step in ("kv", "watch", "watch_history", "lease"):
        assert steps_p[step] == steps_e[step], step
    # the compaction revision depends on how many puts watch_once needed
    compacted = [re.sub(r"\d+$", "N", steps["compaction"]["compacted_error"]) for steps in (steps_p, steps_e)]
    assert compacted[0] == compacted[1] == "revision was already compacted below N", compacted
    # the snapshot the client saved is one etcdutl reads (it said "invalid database" to LMDB files)
    for steps in (steps_p, steps_e):
        path = Path(steps["snapshot"]["path"])
        try:
            st = subprocess.run(
                [peer("etcdutl"), "snapshot", "status", str(path), "-w", "json"], capture_output=True
            )
            assert st.returncode == 0, st.stderr
            assert json.loads(st.stdout)["revision"] > 0
        finally:
            path.unlink()
