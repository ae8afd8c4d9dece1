"""Fixtures that start real processes: petcd, a real etcd v3.6, and the real etcdctl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.framework.differential import Differential
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


def _flags(node: pytest.Item | pytest.Collector) -> tuple[str, ...]:
    marker = node.get_closest_marker("flags")
    return tuple(marker.args) if marker else ()


@pytest.fixture
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Differential]:
    """A fresh petcd and a fresh etcd, (petcd, etcd), started with the flags of the test's or
    module's `flags` marker (tests/framework/differential.py)."""
    with Differential.start(tmp_path, *_flags(request.node)) as d:
        yield d


@pytest.fixture(scope="module")
def module_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Differential]:
    """pair, shared by a module's tests (which then send both the same requests in the same
    order, so the two stores stay alike)."""
    with Differential.start(tmp_path_factory.mktemp("pair"), *_flags(request.node)) as d:
        yield d
