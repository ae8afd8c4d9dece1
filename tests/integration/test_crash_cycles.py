"""kill -9 at random points of a concurrent write load loses no acknowledged write: the short CI
version of tests/soak/crash.py (python -m tests.soak.crash --cycles 60 [--cluster] for the soak).

We test these aspects:
- one member, 5 cycles: 8 writer threads put fresh keys; the member is killed with SIGKILL at a
  random point and restarted under the writers; then every acknowledged put is present with the
  revision it was acknowledged with, every key found was attempted, revisions are dense
  (2..current are exactly our puts: none lost in the middle, none applied twice) and never go back;
- a 3-member cluster, 5 cycles: writers to every member; a follower, then the leader, is killed
  (and the 5th cycle kills all three at once) and restarted while the writes go on; then every
  member has the same applied index and HashKV at the same revision, and every member serves
  every acknowledged put with its revision, densely.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.crash import run_cluster, run_single

pytestmark = pytest.mark.integration

CYCLES = 5


def test_single_member_kill9_cycles(tmp_path: Path) -> None:
    report = run_single(tmp_path, CYCLES, seed=11)
    print(report.summary())
    assert report.cycles == CYCLES and report.lost == 0
    assert report.acked > 200, "the load was too light to mean anything"


def test_cluster_kill9_follower_leader_and_all(tmp_path: Path) -> None:
    report = run_cluster(tmp_path, CYCLES, seed=12, all_every=5)
    print(report.summary())
    assert report.cycles == CYCLES and report.lost == 0
    assert report.kills == {"follower": 2, "leader": 2, "all": 1}
    assert report.acked > 200
