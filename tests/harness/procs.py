"""Members as real processes (petcd_harness.procs, re-exported for the test suite)."""

from petcd_harness.procs import Member, free_port, wait_ready

__all__ = ["Member", "free_port", "wait_ready"]
