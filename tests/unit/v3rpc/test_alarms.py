"""Alarms through the gRPC API of a member in this process.

We test these aspects:
- under a CORRUPT alarm the member refuses what etcd's corrupt applier refuses (LeaseGrant and
  LeaseRevoke included) and still answers reads, lease keep-alives, alarms and status; once
  disarmed it refuses nothing (tests/common/alarms.py; the same scenario runs against a real
  etcd in tests/integration/test_alarms.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.common.alarms import CORRUPT_ANSWERS, under_corrupt_alarm
from tests.framework.member import running


def test_corrupt_alarm_refuses_what_etcd_refuses(tmp_path: Path) -> None:
    with running("in-process", tmp_path) as m:
        answers = under_corrupt_alarm(m)
    refused = {name: got for name, got in answers if got[0] == "error"}
    assert refused == CORRUPT_ANSWERS
    assert len(answers) == 2 + 2 * 16
