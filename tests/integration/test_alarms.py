"""Alarms side by side with a real etcd v3.6.

We test these aspects:
- a CORRUPT alarm raised through Maintenance.Alarm: every KV, lease, alarm and maintenance
  request answers as etcd's (refused with DATA_LOSS exactly where etcd's corrupt applier
  refuses, LeaseGrant and LeaseRevoke included), and again once the alarm is disarmed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.common.alarms import CORRUPT_ANSWERS, under_corrupt_alarm
from tests.framework.differential import Differential

pytestmark = pytest.mark.integration


def test_corrupt_alarm_like_etcd(tmp_path: Path) -> None:
    with Differential.start(tmp_path, "--unsafe-no-fsync") as d:
        answers = d.same(under_corrupt_alarm)
    assert {name: got for name, got in answers if got[0] == "error"} == CORRUPT_ANSWERS
