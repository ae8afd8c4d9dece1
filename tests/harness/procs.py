"""Members as real processes (petcd_harness.procs, re-exported for the test suite)."""

from petcd_harness.procs import (
    Member,
    Process,
    check_alive,
    free_port,
    log_tail,
    running,
    running_pair,
    wait_ready,
)

__all__ = [
    "Member",
    "Process",
    "check_alive",
    "free_port",
    "log_tail",
    "running",
    "running_pair",
    "wait_ready",
]
