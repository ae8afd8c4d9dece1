"""The process harness: ports that no outgoing connection can take, and errors that say why a
member died."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from petcd_harness.procs import _ephemeral_low, free_port, wait_ready


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < _ephemeral_low() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_free_port_skips_a_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        picks = iter([taken, taken + 1 if taken + 1 < _ephemeral_low() else taken - 1])
        monkeypatch.setattr("petcd_harness.procs._rng.randrange", lambda lo, hi: next(picks))
        monkeypatch.setattr("petcd_harness.procs._handed_out", set())
        assert free_port() != taken


def test_a_member_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("starting\nlisten tcp 127.0.0.1:2380: bind: address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    proc.wait()
    with pytest.raises(RuntimeError) as e:
        wait_ready(f"http://127.0.0.1:{free_port()}", 5, proc, log)
    assert str(e.value).startswith("member exited with 1 before it was ready; its log ends:\n")
    assert str(e.value).endswith("bind: address already in use")
