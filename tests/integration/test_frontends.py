"""gRPC front-end processes (--grpc-frontends=N): the same answers through the relay.

We test these aspects:
- unary calls, errors (etcd's code and message), watch and lease keep-alive streams, the
  snapshot server stream, all through front-ends, with the real etcdctl;
- a slow watch consumer does not grow front-end memory: the stream's credit window holds;
- the front-ends go away with the member, also when it is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.etcdctl import Etcdctl
from tests.harness.procs import Member

pytestmark = pytest.mark.integration


def _frontends(parent: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", "server.frontend"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    with Member.petcd(tmp_path, "--grpc-frontends=2") as m:
        yield m


def test_requests_through_frontends(member: Member, tmp_path: Path) -> None:
    assert member.proc is not None
    assert len(_frontends(member.proc.pid)) == 2
    ctl = Etcdctl(member.client_url)
    assert ctl("put", "a", "1").out == "OK\n"
    assert ctl("get", "a", "--print-value-only").out == "1\n"
    assert (
        ctl("get", "a", "--rev=99").error_line
        == "Error: etcdserver: mvcc: required revision is a future revision"
    )
    assert ctl("put", "", "x").error_line == "Error: etcdserver: key is not provided"
    with subprocess.Popen(
        [ctl.binary, f"--endpoints={member.client_url}", "watch", "a", "--rev=2"],
        stdout=subprocess.PIPE,
        text=True,
    ) as watch:
        ctl("put", "a", "2")
        lines = [watch.stdout.readline().strip() for _ in range(6)]  # type: ignore[union-attr]
        watch.terminate()
    assert lines == ["PUT", "a", "1", "PUT", "a", "2"]
    lease = ctl("lease", "grant", "10").out.split()[1]
    assert "TTL(10)" in ctl("lease", "keep-alive", "--once", lease).out
    out = ctl("snapshot", "save", str(tmp_path / "s.db"))
    assert out.rc == 0 and (tmp_path / "s.db").stat().st_size > 0


def test_frontends_exit_with_the_member(tmp_path: Path) -> None:
    m = Member.petcd(tmp_path, "--grpc-frontends=2").start()
    assert m.proc is not None
    children = _frontends(m.proc.pid)
    assert len(children) == 2
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.1)
    assert not any(_alive(p) for p in children), "front-ends outlived a killed member"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_slow_watcher_does_not_grow_frontend_memory(tmp_path: Path) -> None:
    import grpc

    from server.api.etcdserverpb import rpc_pb2 as pb
    from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

    with Member.petcd(tmp_path, "--grpc-frontends=1") as m:
        assert m.proc is not None
        (fe,) = _frontends(m.proc.pid)
        target = m.client_url.split("://")[1]
        stop = False

        def requests() -> Iterator[pb.WatchRequest]:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"big/", range_end=b"big0"))
            while not stop:
                time.sleep(0.05)

        with grpc.insecure_channel(target) as ch:
            call = pb_grpc.WatchStub(ch).Watch(requests())  # never read: a stalled client
            kv = pb_grpc.KVStub(ch)
            kv.Put(pb.PutRequest(key=b"warm", value=b"x"))
            before = _rss_mb(fe)
            value = b"v" * (100 * 1024)
            for i in range(300):  # 30 MB of events
                kv.Put(pb.PutRequest(key=f"big/{i}".encode(), value=value))
            grown = _rss_mb(fe) - before
            stop = True
            call.cancel()
        assert grown < 15, f"front-end grew {grown:.1f} MB for a stalled watcher"
