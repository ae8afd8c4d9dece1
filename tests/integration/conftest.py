"""Fixtures that start real processes: petcd, a real etcd v3.6, and the real etcdctl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.etcdctl import Etcdctl
from tests.harness.procs import Member

pytestmark = pytest.mark.integration


@pytest.fixture
def petcd(tmp_path: Path) -> Iterator[Member]:
    with Member.petcd(tmp_path) as m:
        yield m


@pytest.fixture
def real_etcd(tmp_path: Path) -> Iterator[Member]:
    with Member.etcd(tmp_path) as m:
        yield m


@pytest.fixture
def ctl(petcd: Member) -> Etcdctl:
    return Etcdctl(petcd.client_url)
