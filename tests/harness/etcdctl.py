"""The real etcdctl as a test client (petcd_harness.etcdctl, re-exported for the test suite)."""

from petcd_harness.etcdctl import Etcdctl, Result

__all__ = ["Etcdctl", "Result"]
