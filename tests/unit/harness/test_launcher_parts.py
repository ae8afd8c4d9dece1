"""The launcher's parts that need no cluster: the state directory (ownership, pid records and the
clean-up after a killed launcher, atomic writes), where peer binaries are found, one-line
errors from a component's log, kubeconfigs and ExistingCluster, ClusterConfig's checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from petcd_harness import paths
from petcd_harness.apiserver import kubeconfig
from petcd_harness.controlplane import ClusterConfig, ExistingCluster
from petcd_harness.errors import ClusterRunning, ComponentFailed, HarnessError, MissingBinary, reason_in_log
from petcd_harness.state import StateDir, start_time


def orphan() -> subprocess.Popen[bytes]:
    """A process in a session of its own, as a killed launcher's component would be."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    first, second = StateDir(tmp_path), StateDir(tmp_path)
    first.acquire()
    with pytest.raises(ClusterRunning) as e:
        second.acquire()
    assert e.value.pid == os.getpid()
    assert str(e.value) == (
        f"a cluster is already running from {tmp_path} (launcher pid {os.getpid()}): "
        "stop it first (Ctrl-C, or petcd-harness down)"
    )
    assert second.owner() == os.getpid()
    first.release()
    assert second.owner() is None
    second.acquire()
    second.release()


def test_acquire_stops_what_a_killed_launcher_left(tmp_path: Path) -> None:
    left = orphan()
    StateDir(tmp_path).record("kube-scheduler", left.pid)  # the launcher died without stopping it
    state = StateDir(tmp_path)
    assert state.acquire() == [f"kube-scheduler (pid {left.pid})"]
    assert left.wait(5) == -15  # SIGTERM first
    assert list((tmp_path / "pids").iterdir()) == []
    state.release()


def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    other = orphan()
    try:
        started = start_time(other.pid)
        assert started is not None
        (tmp_path / "pids").mkdir()
        (tmp_path / "pids" / "kwok.pid").write_text(f"{other.pid} {started - 1}\n")  # not this process
        assert StateDir(tmp_path).reap() == []
        assert other.poll() is None
        assert not (tmp_path / "pids" / "kwok.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_writes_are_atomic(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    path = state.write("kubeconfig", "one\n")
    state.write("kubeconfig", "two\n")
    assert path.read_text() == "two\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["kubeconfig"]


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (
            "I0101 starting\nE0101 run.go] failed to listen: bind\nI0101 shutting down\n",
            "E0101 run.go] failed to listen: bind",
        ),
        ("Error: unknown flag: --bogus\n", "Error: unknown flag: --bogus"),
        (
            '{"level":"info","msg":"x"}\n{"level":"error","msg":"no stages found"}\n',
            '{"level":"error","msg":"no stages found"}',
        ),
        ("listening\ncould not open the WAL: error 5\nbye\n", "could not open the WAL: error 5"),
        ("just the end\n", "just the end"),
        ("", ""),
    ],
)
def test_the_reason_is_the_last_error_line(tmp_path: Path, log: str, reason: str) -> None:
    path = tmp_path / "c.log"
    path.write_text(f"---- start /bin/c --flag\n{log}")
    assert reason_in_log(path) == reason


def test_component_failed_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "kwok.log"
    log.write_text('{"level":"error","msg":"no stages found"}\n')
    e = ComponentFailed("kwok", log, 1, "at start")
    assert (
        str(e)
        == f'kwok exited with status 1 at start (log: {log}): {{"level":"error","msg":"no stages found"}}'
    )
    e = ComponentFailed("kwok", log, None, "not ready: node petcd-worker is not Ready")
    assert str(e).startswith(f"kwok not ready: node petcd-worker is not Ready (log: {log}): ")


def test_peers_come_from_the_given_directory_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "bin"
    given.mkdir()
    (given / "kwok").write_text("#!/bin/sh\n")
    (given / "kwok").chmod(0o755)
    (given / "not-executable").write_text("")
    monkeypatch.setenv("PETCD_PEERS_DIR", str(given))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert paths.peer("kwok") == str(given / "kwok")
    assert paths.peer("sh") in ("/usr/bin/sh", "/bin/sh")  # then $PATH
    with pytest.raises(MissingBinary) as e:
        paths.peer("not-executable")
    assert str(e.value).startswith(f"not-executable not found (looked in {given}, $PATH): ")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths.set_peers_dir(elsewhere)  # --peers-dir beats the environment
    try:
        with pytest.raises(MissingBinary):
            paths.peer("kwok")
    finally:
        paths.set_peers_dir(None)


def test_existing_cluster_reads_the_etcd_endpoints_from_the_kubeconfig(tmp_path: Path) -> None:
    ext = {"petcd": {"datastore": "petcd", "etcd-endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}}
    ours = tmp_path / "ours"
    ours.write_text(kubeconfig("https://127.0.0.1:6443", b"CA", "token", "petcd", ext))
    assert ExistingCluster(ours).etcd_endpoints == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    theirs = tmp_path / "theirs.yaml"  # kind's, say: YAML, no extension
    theirs.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kind-kind\n"
        "clusters: [{name: kind-kind, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: kind-kind, context: {cluster: kind-kind, user: kind-kind}}]\n"
    )
    assert ExistingCluster(theirs).etcd_endpoints == []
    with pytest.raises(HarnessError, match="does not exist"):
        ExistingCluster(tmp_path / "missing")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"datastore": "zookeeper"}, "datastore must be petcd or etcd, not 'zookeeper'"),
        ({"members": 2}, "members must be 1 or 3, not 2"),
        ({"nodes": -1}, "nodes must be 0 or more, not -1"),
        ({"controller_managers": 0}, "controller_managers must be 1 or more, not 0"),
    ],
)
def test_cluster_config_refuses_what_it_cannot_start(fields: dict[str, object], message: str) -> None:
    with pytest.raises(HarnessError) as e:
        ClusterConfig(**fields)  # type: ignore[arg-type]
    assert str(e.value) == message
