"""kube-apiserver talks to petcd (and to real etcd, for comparison) over mutual TLS.

We test these aspects:
- petcd serves gRPC on an https:// client URL with --cert-file/--key-file/--trusted-ca-file and
  --client-cert-auth; the apiserver connects with --etcd-cafile/--etcd-certfile/--etcd-keyfile
  (grpc-go refuses servers that do not negotiate ALPN h2: we check the negotiation directly
  too) and works (/readyz etcd check, writes, reads, watches);
- a client without a certificate signed by the trusted CA is refused;
- the certificates scripts/kind-etcd-certs.sh makes with openssl (the ones kind-config.yaml
  mounts) are accepted by petcd and by the real kube-apiserver.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from petcd_harness.certs import PKI, make_pki
from petcd_harness.etcdctl import Etcdctl
from tests.e2e.conftest import ROOT, KubeEnv, apply_manifests, configmap, kube_env, make_namespace

DATASTORE_OPTIONS = {"tls": True}
KUBE_OPTIONS = {"compaction_interval": "1m"}


def _host_port(env: KubeEnv) -> tuple[str, int]:
    u = urlsplit(env.ds.endpoints.split(",")[0])
    assert u.scheme == "https" and u.hostname and u.port
    return u.hostname, u.port


def test_apiserver_works_over_mutual_tls(env: KubeEnv) -> None:
    status, body = env.client.raw_get("/readyz?verbose")
    assert status == 200 and "[+]etcd ok" in body and "[+]etcd-readiness ok" in body, body
    assert "--etcd-cafile=" in " ".join(env.api.command())
    apply_manifests(env)
    ns = make_namespace(env)
    cm = env.client.create(f"/api/v1/namespaces/{ns}/configmaps", configmap("over-tls", a="1"))
    kv = env.ds.get_json(f"/registry/configmaps/{ns}/over-tls")["kvs"][0]
    assert int(kv["mod_revision"]) == int(cm["metadata"]["resourceVersion"])
    out = env.kubectl("get", "counters", "-A", "-o", "name", check=True).out.split()
    assert out == ["counter.petcd.example.com/demo"]


def test_alpn_h2_and_client_certificates(env: KubeEnv) -> None:
    assert env.ds.pki is not None
    pki = env.ds.pki
    host, port = _host_port(env)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        assert s.selected_alpn_protocol() == "h2"
        assert s.version() in ("TLSv1.2", "TLSv1.3")

    # no client certificate: refused
    ctl = Etcdctl(env.ds.endpoints, env={"ETCDCTL_CACERT": str(pki.ca)})
    r = ctl("get", "/registry/namespaces/default", "--dial-timeout=1s", "--command-timeout=2s", timeout=30)
    assert r.rc != 0
    # a certificate from another CA: refused
    other = make_pki(env.dir / "other-pki")
    ctl = Etcdctl(
        env.ds.endpoints,
        env={
            "ETCDCTL_CACERT": str(pki.ca),
            "ETCDCTL_CERT": str(other.client_cert),
            "ETCDCTL_KEY": str(other.client_key),
        },
    )
    r = ctl("get", "/registry/namespaces/default", "--dial-timeout=1s", "--command-timeout=2s", timeout=30)
    assert r.rc != 0
    # the right one
    assert (
        env.ds.ctl().ok("get", "/registry/namespaces/default", "--keys-only").strip()
        == "/registry/namespaces/default"
    )


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_kind_script_certificates(kind: str, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    r = subprocess.run(
        [str(ROOT / "scripts" / "kind-etcd-certs.sh"), str(certs), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    with kube_env(kind, tmp_path, tls=PKI(certs), compaction_interval="1m") as env:
        assert env.ds.endpoints.startswith("https://")
        status, body = env.client.raw_get("/readyz/etcd")
        assert (status, body) == (200, "ok")
        ns = make_namespace(env)
        env.kubectl("create", "configmap", "kind", "-n", ns, "--from-literal=k=v", check=True)
        got = env.kubectl("get", "configmap", "kind", "-n", ns, "-o", "jsonpath={.data.k}", check=True)
        assert got.out == "v"
