"""The real etcdctl as a test client (petcd_harness.etcdctl, re-exported for the test suite)."""

from petcd_harness.etcdctl import Etcdctl

__all__ = ["Etcdctl"]
