"""The `petcd-harness up` launcher (what `make cluster` runs) as a user drives it: signals, kill -9,
bad input. petcd only: the launcher's behaviour does not depend on the datastore.

We test these aspects:
- the kubeconfig appears only when the cluster is ready (it works at once: nodes Ready) and
  disappears when the launcher stops;
- kill -9 of the launcher: every component dies with it; the next `up` on the same directory
  starts (this time with 3 members over TLS, whose endpoints and client certificate the
  kubeconfig carries, and a controller-manager flag); SIGINT then stops every process it
  started, with status 0;
- a component that hangs on SIGTERM (and has a child of its own) while the launcher waits for
  readiness: `petcd-harness down` (SIGTERM to the launcher) still stops everything, the hung one
  with SIGKILL;
- bad input, one line on stderr naming the component (and its log) and nothing left running:
  the apiserver's port in use, a missing peer binary, the apiserver exiting at start (a bad
  flag), the controller-manager exiting at start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from petcd_harness.controlplane import ExistingCluster
from petcd_harness.etcdctl import Etcdctl
from petcd_harness.paths import PEERS, peer
from petcd_harness.state import start_time
from tests.e2e.conftest import running_under
from tests.framework.wait import wait_until

LAUNCHER = str(Path(sys.executable).parent / "petcd-harness")
PEER_NAMES = [
    "etcd",
    "etcdctl",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
]


class Launcher:
    def __init__(self, dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.dir = dir
        self.out, self.err = dir.parent / f"{dir.name}.out", dir.parent / f"{dir.name}.err"
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen(
                [LAUNCHER, "up", "--dir", str(dir), *args],
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
            )

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.err.read_text()

    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def wait_ready(self, stale: str = "", timeout: float = 180) -> None:
        """Until the kubeconfig exists (and is not the stale one a killed launcher left)."""

        def ready() -> bool:
            assert self.proc.poll() is None, f"the launcher exited: {self.stderr()}"
            return self.kubeconfig().exists() and self.kubeconfig().read_text() != stale

        wait_until(ready, timeout=timeout, interval=0.2, what="the kubeconfig")

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text().split()[0]) for p in (self.dir / "pids").glob("*.pid")}


def gone(pids: dict[str, int]) -> bool:
    return all(start_time(pid) is None for pid in pids.values())


@pytest.fixture
def peers_with(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A peers directory of links to the real binaries; tests replace or drop some. Yields the
    environment that points the launcher at it (and keeps $PATH from supplying the others)."""
    d = tmp_path / "peers" / "bin"
    d.mkdir(parents=True)
    for name in PEER_NAMES:
        (d / name).symlink_to(peer(name))
    (tmp_path / "peers" / "kwok").mkdir()
    (tmp_path / "peers" / "kwok" / "stages.yaml").symlink_to(PEERS.parent / "kwok" / "stages.yaml")
    yield {"PETCD_PEERS_DIR": str(d), "PATH": "/usr/bin:/bin"}


def fake(peers_env: dict[str, str], name: str, script: str) -> None:
    path = Path(peers_env["PETCD_PEERS_DIR"]) / name
    path.unlink()
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_kill_9_then_up_again_then_sigint(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    first = Launcher(d, "--nodes", "1")
    first.wait_ready()
    cfg = json.loads(first.kubeconfig().read_text())  # whole, never half-written
    assert cfg["current-context"] == "petcd"
    nodes = subprocess.run(
        [peer("kubectl"), f"--kubeconfig={first.kubeconfig()}", "get", "nodes", "-o", "json"],
        capture_output=True,
        check=True,
    )
    (node,) = json.loads(nodes.stdout)["items"]
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    pids = first.pids()
    assert set(pids) == {
        "petcd-default",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }

    first.proc.kill()
    first.wait()
    wait_until(lambda: gone(pids), timeout=10, what="every component to die with the launcher")

    stale = first.kubeconfig().read_text()  # nothing could remove it
    # other options this time: 3 members over TLS, a controller-manager flag
    second = Launcher(
        d, "--nodes", "1", "--members", "3", "--tls", "--controller-manager-flag=--kube-api-qps=55"
    )
    second.wait_ready(stale)
    pids = second.pids()
    assert {"petcd-m0", "petcd-m1", "petcd-m2"} <= set(pids)
    cmdline = Path(f"/proc/{pids['kube-controller-manager']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[-2:] == [b"--kube-api-qps=55", b""]  # after the defaults: it wins
    ext = ExistingCluster(second.kubeconfig()).extension
    assert len(ext["etcd-endpoints"]) == 3 and all(u.startswith("https://") for u in ext["etcd-endpoints"])
    tls = {
        "ETCDCTL_CACERT": ext["etcd-cacert"],
        "ETCDCTL_CERT": ext["etcd-cert"],
        "ETCDCTL_KEY": ext["etcd-key"],
    }
    keys = Etcdctl(",".join(ext["etcd-endpoints"]), env=tls).ok(
        "get", "/registry/minions/", "--prefix", "--keys-only"
    )
    assert keys.split() == ["/registry/minions/petcd-worker"]
    second.proc.send_signal(signal.SIGINT)
    assert second.wait() == 0, second.stderr()
    assert gone(pids), pids
    assert not second.kubeconfig().exists()
    assert running_under(d) == []
    assert "Traceback" not in second.stderr()


def test_sigterm_stops_a_component_that_hangs(tmp_path: Path, peers_with: dict[str, str]) -> None:
    child = tmp_path / "child.pid"
    # a kwok that ignores SIGTERM and has a child of its own; its nodes never become Ready
    fake(peers_with, "kwok", f"trap '' TERM\nsleep 1000 &\necho $! > {child}\nexec sleep 1000\n")
    d = tmp_path / "cluster"
    launcher = Launcher(d, "--nodes", "1", env=peers_with)
    wait_until(
        lambda: "kwok" in launcher.pids() and child.exists(), timeout=180, interval=0.2, what="kwok started"
    )
    pids = launcher.pids()
    pids["kwok's child"] = int(child.read_text())
    down = subprocess.run([LAUNCHER, "down", "--dir", str(d)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert down.stdout == f"stopped the cluster running from {d} (launcher pid {launcher.proc.pid})\n"
    assert launcher.wait(timeout=10) == 0, launcher.stderr()
    assert gone(pids), pids
    assert running_under(d) == []


def one_line_error(launcher: Launcher) -> str:
    assert launcher.wait() == 1
    lines = launcher.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("petcd-harness: error: ")
    return lines[0]


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        launcher = Launcher(tmp_path / "cluster", "--port", str(port))
        line = one_line_error(launcher)
    assert line == f"petcd-harness: error: kube-apiserver: port {port} on 127.0.0.1 is in use"
    assert running_under(tmp_path / "cluster") == []


def test_missing_binary(tmp_path: Path, peers_with: dict[str, str]) -> None:
    (Path(peers_with["PETCD_PEERS_DIR"]) / "kube-scheduler").unlink()
    line = one_line_error(Launcher(tmp_path / "cluster", env=peers_with))
    assert line.startswith(
        f"petcd-harness: error: kube-scheduler not found (looked in {peers_with['PETCD_PEERS_DIR']}, $PATH)"
    )
    assert running_under(tmp_path / "cluster") == []


def test_apiserver_exits_at_start(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    line = one_line_error(Launcher(d, "--", "--no-such-flag"))
    log = d / "kube" / "kube-apiserver.log"
    assert line.startswith(
        f"petcd-harness: error: kube-apiserver exited with status 1 at start (log: {log}): "
    )
    assert "unknown flag: --no-such-flag" in line
    assert running_under(d) == []


def test_controller_manager_exits_at_start(tmp_path: Path, peers_with: dict[str, str]) -> None:
    fake(
        peers_with,
        "kube-controller-manager",
        'echo "I0101 00:00:00.000000 1 serving.go] starting"\n'
        'echo "E0101 00:00:00.000000 1 run.go] failed to listen: address already in use"\n'
        "exit 3\n",
    )
    d = tmp_path / "cluster"
    line = one_line_error(Launcher(d, "--nodes", "1", "--timeout", "600", env=peers_with))
    log = d / "kube" / "kube-controller-manager.log"
    assert line == (
        f"petcd-harness: error: kube-controller-manager exited with status 3 at start (log: {log}): "
        "E0101 00:00:00.000000 1 run.go] failed to listen: address already in use"
    )
    assert running_under(d) == []
