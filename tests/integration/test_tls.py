"""Transport security with etcd's flags, driven by the real etcdctl.

We test these aspects:
- https client URLs with --cert-file/--key-file: etcdctl verifies the server against the CA
  (grpc-go requires ALPN h2, which the handshake must negotiate);
- --client-cert-auth with --trusted-ca-file: no client certificate, or one from another CA, is
  refused; a certificate from the trusted CA is accepted;
- --auto-tls: a generated self-signed certificate;
- https peer URLs with --peer-client-cert-auth: a 3-member cluster forms and replicates over TLS.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import petcd_command
from tests.harness.procs import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _files(tmp: Path, ca: trustme.CA, name: str) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
    paths = {"ca": tmp / "ca.pem", "cert": tmp / f"{name}.pem", "key": tmp / f"{name}-key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return {k: str(v) for k, v in paths.items()}


def _start(tmp: Path, name: str, flags: list[str], port: int) -> subprocess.Popen[bytes]:
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [*petcd_command(), f"--name={name}", f"--data-dir={tmp / name}", *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait(ctl: Etcdctl, *args: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctl(*args, "endpoint", "health").rc == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("member did not become healthy over TLS")


@pytest.fixture
def tls_member(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[str, dict[str, str]]]:
    f = _files(tmp_path, ca, "server")
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    proc = _start(
        tmp_path,
        "tls",
        [
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=tls=http://127.0.0.1:{peer}",
            f"--cert-file={f['cert']}",
            f"--key-file={f['key']}",
            f"--trusted-ca-file={f['ca']}",
            "--client-cert-auth",
        ],
        port,
    )
    try:
        client = _files(tmp_path, ca, "client")
        _wait(Etcdctl(url), f"--cacert={client['ca']}", f"--cert={client['cert']}", f"--key={client['key']}")
        yield url, client
    finally:
        proc.terminate()
        proc.wait(10)


def test_client_cert_auth(tls_member: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, f = tls_member
    ctl = Etcdctl(url)
    auth = [f"--cacert={f['ca']}", f"--cert={f['cert']}", f"--key={f['key']}"]
    assert ctl(*auth, "put", "k", "v").out == "OK\n"
    assert ctl(*auth, "get", "k", "--print-value-only").out == "v\n"
    # no client certificate: the handshake is refused
    r = ctl(f"--cacert={f['ca']}", "--dial-timeout=2s", "--command-timeout=3s", "get", "k")
    assert r.rc != 0
    # a certificate from another CA: refused
    (tmp_path / "other").mkdir()
    other = _files(tmp_path / "other", trustme.CA(), "intruder")
    r = ctl(
        f"--cacert={f['ca']}",
        f"--cert={other['cert']}",
        f"--key={other['key']}",
        "--dial-timeout=2s",
        "--command-timeout=3s",
        "get",
        "k",
    )
    assert r.rc != 0
    # the server is verified against the CA: a client trusting another CA refuses it
    r = ctl(
        f"--cacert={other['ca']}",
        f"--cert={f['cert']}",
        f"--key={f['key']}",
        "--dial-timeout=2s",
        "--command-timeout=3s",
        "get",
        "k",
    )
    assert r.rc != 0


def test_auto_tls(tmp_path: Path) -> None:
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    proc = _start(
        tmp_path,
        "auto",
        [
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=auto=http://127.0.0.1:{peer}",
            "--auto-tls",
        ],
        port,
    )
    try:
        ctl = Etcdctl(url)
        _wait(ctl, "--insecure-skip-tls-verify")
        assert ctl("--insecure-skip-tls-verify", "put", "a", "1").out == "OK\n"
        assert (tmp_path / "auto" / "fixtures" / "client" / "cert.pem").exists()
    finally:
        proc.terminate()
        proc.wait(10)


def test_peer_tls_cluster(tmp_path: Path, ca: trustme.CA) -> None:
    f = _files(tmp_path, ca, "peer")
    ports = [(free_port(), free_port()) for _ in range(3)]
    initial = ",".join(f"m{i}=https://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs = []
    try:
        for i, (c, p) in enumerate(ports):
            procs.append(
                _start(
                    tmp_path,
                    f"m{i}",
                    [
                        f"--listen-client-urls=http://127.0.0.1:{c}",
                        f"--advertise-client-urls=http://127.0.0.1:{c}",
                        f"--listen-peer-urls=https://127.0.0.1:{p}",
                        f"--initial-advertise-peer-urls=https://127.0.0.1:{p}",
                        f"--initial-cluster={initial}",
                        f"--peer-cert-file={f['cert']}",
                        f"--peer-key-file={f['key']}",
                        f"--peer-trusted-ca-file={f['ca']}",
                        "--peer-client-cert-auth",
                        "--heartbeat-interval=50",
                        "--election-timeout=500",
                    ],
                    c,
                )
            )
        endpoints = ",".join(f"http://127.0.0.1:{c}" for c, _ in ports)
        ctl = Etcdctl(endpoints)
        _wait(Etcdctl(f"http://127.0.0.1:{ports[0][0]}"))
        assert ctl("put", "over", "tls").out == "OK\n"
        for c, _ in ports:
            got = Etcdctl(f"http://127.0.0.1:{c}")("get", "over", "--print-value-only")
            assert got.out == "tls\n"
        members = ctl("member", "list").out
        assert members.count("https://127.0.0.1:") == 3
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
