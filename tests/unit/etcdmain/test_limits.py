"""The petcd command lifts its open-files soft limit to the hard one (the Go runtime does it for
etcd): every connection and stream holds a descriptor, and a soft 1024 would refuse clients."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_open_files_soft_limit_is_raised_to_hard() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    code = (
        "import resource\n"
        "from server.etcdmain import _raise_open_files_limit\n"
        "_raise_open_files_limit()\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=lower, capture_output=True, text=True, check=True
    ).stdout.split()
    assert [int(x) for x in out] == [hard, hard]
