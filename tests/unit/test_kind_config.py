"""kind-config.yaml: a kind cluster on petcd as external etcd (kind cannot run here, so we check
the file against kind's and kubeadm's own rules).

We test these aspects:
- the file parses and uses only kind v1alpha4 fields (kind decodes strictly: unknown fields
  are errors), with one control-plane node (external etcd and several control planes do not
  mix in kind);
- each kubeadmConfigPatches entry is a ClusterConfiguration merge patch whose etcd section
  passes kubeadm's ValidateEtcd rules (encoded below from
  cmd/kubeadm/app/apis/kubeadm/validation/validation.go), and the validator itself rejects
  what kubeadm rejects;
- the RFC 7386 merge of the patch onto the ClusterConfiguration kind generates (v1beta3 for
  k8s <= 1.35, v1beta4 from 1.36) yields etcd.external and no etcd.local, and kubeadm's
  defaulting would not add etcd.local;
- the certificate paths are under the containerPath of a read-only extraMount, and the
  endpoint uses https;
- scripts/kind-etcd-certs.sh writes the files the patch names, with the endpoint's host in the
  server certificate's SANs (that petcd and kube-apiserver accept them is tests/e2e/test_tls.py).
"""

from __future__ import annotations

import copy
import ipaddress
import posixpath
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KIND_CONFIG = ROOT / "kind-config.yaml"

# --- kind v1alpha4 (sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go) ----------------------

CLUSTER_FIELDS = {
    "kind",
    "apiVersion",
    "name",
    "nodes",
    "networking",
    "featureGates",
    "runtimeConfig",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
    "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
}
NODE_FIELDS = {
    "role",
    "image",
    "labels",
    "extraMounts",
    "extraPortMappings",
    "gpus",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}
MOUNT_FIELDS = {"containerPath", "hostPath", "readOnly", "selinuxRelabel", "propagation"}
NODE_ROLES = {"control-plane", "worker"}
PROPAGATION = {"None", "HostToContainer", "Bidirectional"}


def validate_kind_cluster(doc: dict[str, Any]) -> list[str]:
    errs: list[str] = []
    if doc.get("kind") != "Cluster":
        errs.append("kind must be Cluster")
    if doc.get("apiVersion") != "kind.x-k8s.io/v1alpha4":
        errs.append("apiVersion must be kind.x-k8s.io/v1alpha4")
    errs += [f"unknown field {k!r}" for k in doc if k not in CLUSTER_FIELDS]
    nodes = doc.get("nodes") or [{"role": "control-plane"}]
    for i, n in enumerate(nodes):
        errs += [f"nodes[{i}]: unknown field {k!r}" for k in n if k not in NODE_FIELDS]
        if n.get("role", "control-plane") not in NODE_ROLES:
            errs.append(f"nodes[{i}]: {n.get('role')!r} is not a valid node role")
        for j, m in enumerate(n.get("extraMounts") or []):
            where = f"nodes[{i}].extraMounts[{j}]"
            errs += [f"{where}: unknown field {k!r}" for k in m if k not in MOUNT_FIELDS]
            if not isinstance(m.get("containerPath"), str) or not m["containerPath"].startswith("/"):
                errs.append(f"{where}: containerPath must be an absolute path")
            if not isinstance(m.get("hostPath"), str) or not m["hostPath"]:
                errs.append(f"{where}: hostPath is required")
            if "readOnly" in m and not isinstance(m["readOnly"], bool):
                errs.append(f"{where}: readOnly must be a boolean")
            if "propagation" in m and m["propagation"] not in PROPAGATION:
                errs.append(f"{where}: bad propagation")
        for p in n.get("kubeadmConfigPatches") or []:
            if not isinstance(p, str):
                errs.append(f"nodes[{i}]: kubeadmConfigPatches entries are YAML strings")
    if not any(n.get("role", "control-plane") == "control-plane" for n in nodes):
        errs.append("must have at least one control-plane node")
    for p in doc.get("kubeadmConfigPatches") or []:
        if not isinstance(p, str):
            errs.append("kubeadmConfigPatches entries are YAML strings")
    return errs


# --- kubeadm ValidateEtcd -----------------------------------------------------------------


def validate_etcd(etcd: dict[str, Any] | None) -> list[str]:
    """kubeadm's ValidateEtcd on a ClusterConfiguration's etcd section (after defaulting)."""
    etcd = etcd or {}
    local, external = etcd.get("local"), etcd.get("external")
    if local is None and external is None:
        return ["either .Etcd.Local or .Etcd.External is required"]
    if local is not None and external is not None:
        return [".Etcd.Local and .Etcd.External are mutually exclusive"]
    errs: list[str] = []
    if external is not None:
        ca, cert, key = (external.get(k, "") for k in ("caFile", "certFile", "keyFile"))
        require_https = bool(ca or cert or key)
        if bool(cert) != bool(key):
            errs.append(
                "either both or none of .Etcd.External.CertFile and .Etcd.External.KeyFile must be set"
            )
        if cert and key and not ca:
            errs.append(
                "setting .Etcd.External.CertFile and .Etcd.External.KeyFile requires .Etcd.External.CAFile"
            )
        endpoints = external.get("endpoints") or []
        if not endpoints:
            errs.append("etcd.external.endpoints: Required value")  # +required in the API types
        for url in endpoints:
            scheme = urlsplit(url).scheme
            if require_https and scheme != "https":
                errs.append(f"{url}: the URL must be using the HTTPS scheme")
            if not scheme:
                errs.append(f"{url}: the URL without scheme is not allowed")
        for name, path in (("caFile", ca), ("certFile", cert), ("keyFile", key)):
            if path and not posixpath.isabs(path):
                errs.append(f"etcd.external.{name}: path is not absolute")
    return errs


def default_etcd(cc: dict[str, Any]) -> dict[str, Any]:
    """kubeadm's SetDefaults_Etcd: local etcd only when neither local nor external is set."""
    cc = copy.deepcopy(cc)
    etcd = cc.setdefault("etcd", {})
    if etcd.get("local") is None and etcd.get("external") is None:
        etcd["local"] = {"dataDir": "/var/lib/etcd"}
    return cc


# --- RFC 7386 and kind's patch matching (pkg/internal/patch) --------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def patch_matches(patch: dict[str, Any], obj: dict[str, Any]) -> bool:
    """kind matches a merge patch to a document by kind, and by apiVersion only if the patch
    sets one."""
    if patch.get("kind") != obj.get("kind"):
        return False
    return "apiVersion" not in patch or patch["apiVersion"] == obj.get("apiVersion")


def apply_kind_patches(docs: list[dict[str, Any]], patches: list[str]) -> list[dict[str, Any]]:
    out = copy.deepcopy(docs)
    for raw in patches:
        p = yaml.safe_load(raw)
        for i, d in enumerate(out):
            if patch_matches(p, d):
                out[i] = merge_patch(d, p)
    return out


# The ClusterConfiguration kind generates (pkg/cluster/internal/kubeadm/config.go templates,
# rendered for a single control-plane IPv4 cluster); no etcd section in either version.
GENERATED_V1BETA3 = """\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
metadata:
  name: config
kubernetesVersion: v1.35.0
clusterName: "petcd"
controlPlaneEndpoint: "petcd-control-plane:6443"
apiServer:
  certSANs: [localhost, "127.0.0.1"]
  extraArgs:
    "runtime-config": ""
controllerManager:
  extraArgs:
    enable-hostpath-provisioner: "true"
scheduler:
  extraArgs: {}
networking:
  podSubnet: "10.244.0.0/16"
  serviceSubnet: "10.96.0.0/16"
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
metadata:
  name: config
bootstrapTokens:
- token: "abcdef.0123456789abcdef"
localAPIEndpoint:
  advertiseAddress: "172.18.0.2"
  bindPort: 6443
nodeRegistration:
  criSocket: "unix:///run/containerd/containerd.sock"
skipPhases:
  - "preflight"
"""
GENERATED_V1BETA4 = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
metadata:
  name: config
kubernetesVersion: v1.37.2
clusterName: "petcd"
controlPlaneEndpoint: "petcd-control-plane:6443"
apiServer:
  certSANs: [localhost, "127.0.0.1"]
  extraArgs:
    - name: "runtime-config"
      value: ""
controllerManager:
  extraArgs:
    - name: "enable-hostpath-provisioner"
      value: "true"
networking:
  podSubnet: "10.244.0.0/16"
  serviceSubnet: "10.96.0.0/16"
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
metadata:
  name: config
localAPIEndpoint:
  advertiseAddress: "172.18.0.2"
  bindPort: 6443
skipPhases:
  - "preflight"
"""


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    doc = yaml.safe_load(KIND_CONFIG.read_text())
    assert isinstance(doc, dict)
    return doc


def _cluster_patches(config: dict[str, Any]) -> list[dict[str, Any]]:
    patches = [yaml.safe_load(p) for p in config.get("kubeadmConfigPatches", [])]
    for n in config.get("nodes", []):
        patches += [yaml.safe_load(p) for p in n.get("kubeadmConfigPatches", [])]
    return [p for p in patches if p.get("kind") == "ClusterConfiguration"]


def test_kind_v1alpha4_fields(config: dict[str, Any]) -> None:
    assert validate_kind_cluster(config) == []
    roles = [n.get("role", "control-plane") for n in config["nodes"]]
    assert roles.count("control-plane") == 1


def test_kind_validator_rejects_what_kind_rejects() -> None:
    assert "kind must be Cluster" in validate_kind_cluster(
        {"kind": "Config", "apiVersion": "kind.x-k8s.io/v1alpha4"}
    )
    bad = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [
            {
                "role": "external-etcd",
                "extraMounts": [{"hostPath": "/x", "containerPath": "rel", "readonly": True}],
            }
        ],
    }
    errs = validate_kind_cluster(bad)
    assert "nodes[0]: 'external-etcd' is not a valid node role" in errs
    assert "nodes[0].extraMounts[0]: unknown field 'readonly'" in errs  # the field is readOnly
    assert "nodes[0].extraMounts[0]: containerPath must be an absolute path" in errs
    assert "must have at least one control-plane node" in errs


def test_patch_is_a_valid_external_etcd(config: dict[str, Any]) -> None:
    patches = _cluster_patches(config)
    assert len(patches) == 1
    patch = patches[0]
    assert set(patch) <= {"kind", "apiVersion", "etcd"}
    assert patch.get("apiVersion") in (None, "kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4")
    assert set(patch["etcd"]) == {"external"}
    ext = patch["etcd"]["external"]
    assert set(ext) <= {"endpoints", "caFile", "certFile", "keyFile"}
    assert validate_etcd(patch["etcd"]) == []
    for url in ext["endpoints"]:
        u = urlsplit(url)
        assert u.scheme == "https" and u.port and u.hostname
        assert not ipaddress.ip_address(u.hostname).is_loopback, "kind nodes cannot reach the host's loopback"


@pytest.mark.parametrize(
    ("etcd", "error"),
    [
        ({}, "either .Etcd.Local or .Etcd.External is required"),
        ({"local": {}, "external": {"endpoints": ["http://a:2379"]}}, "mutually exclusive"),
        ({"external": {}}, "endpoints: Required value"),
        (
            {"external": {"endpoints": ["http://a:2379"], "caFile": "/ca.crt"}},
            "must be using the HTTPS scheme",
        ),
        ({"external": {"endpoints": ["https://a:2379"], "certFile": "/c.crt"}}, "either both or none"),
        (
            {"external": {"endpoints": ["https://a:2379"], "certFile": "/c", "keyFile": "/k"}},
            "requires .Etcd.External.CAFile",
        ),
        ({"external": {"endpoints": ["https://a:2379"], "caFile": "ca.crt"}}, "caFile: path is not absolute"),
        ({"external": {"endpoints": ["//a:2379"]}}, "without scheme"),
    ],
)
def test_etcd_validator_rejects_what_kubeadm_rejects(etcd: dict[str, Any], error: str) -> None:
    errs = validate_etcd(etcd)
    assert any(error in e for e in errs), errs


def test_etcd_validator_accepts_plain_http_without_tls_files() -> None:
    assert validate_etcd({"external": {"endpoints": ["http://172.18.0.1:2379"]}}) == []


@pytest.mark.parametrize("generated", [GENERATED_V1BETA3, GENERATED_V1BETA4], ids=["v1beta3", "v1beta4"])
def test_patch_onto_kind_generated_config(config: dict[str, Any], generated: str) -> None:
    docs = list(yaml.safe_load_all(generated))
    assert "etcd" not in docs[0]
    patches = list(config.get("kubeadmConfigPatches", []))
    for n in config["nodes"]:
        if n.get("role", "control-plane") == "control-plane":
            patches += n.get("kubeadmConfigPatches", [])
    merged = apply_kind_patches(docs, patches)
    cc = default_etcd(merged[0])
    assert cc["kind"] == "ClusterConfiguration"
    assert cc["apiVersion"] == docs[0]["apiVersion"]  # the patch keeps kind's version
    assert "external" in cc["etcd"] and "local" not in cc["etcd"]
    assert validate_etcd(cc["etcd"]) == []
    # everything else kind generated is untouched, and other documents are not patched
    assert {k: v for k, v in cc.items() if k != "etcd"} == docs[0]
    assert merged[1:] == docs[1:]
    # without the patch kubeadm would default to a local etcd
    assert "local" in default_etcd(docs[0])["etcd"]


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"etcd": {"local": {"dataDir": "/x"}}}, {"etcd": {"local": None, "external": {}}}) == {
        "etcd": {"external": {}}
    }


def test_cert_paths_are_mounted_read_only(config: dict[str, Any]) -> None:
    ext = _cluster_patches(config)[0]["etcd"]["external"]
    mounts = [
        m
        for n in config["nodes"]
        if n.get("role", "control-plane") == "control-plane"
        for m in n.get("extraMounts", [])
    ]
    for name in ("caFile", "certFile", "keyFile"):
        path = ext[name]
        owner = [m for m in mounts if posixpath.commonpath([m["containerPath"], path]) == m["containerPath"]]
        assert owner, f"{name} {path} is not under any extraMount's containerPath"
        assert owner[0].get("readOnly") is True
        # kubeadm mounts the directory into the static pod unless it is one it already mounts
        assert not path.startswith(("/etc/ssl/certs/", "/etc/pki", "/etc/kubernetes/pki/"))
    names = {posixpath.basename(ext[k]) for k in ("caFile", "certFile", "keyFile")}
    assert names == {"ca.crt", "client.crt", "client.key"}


def test_cert_script_writes_what_the_patch_names(config: dict[str, Any], tmp_path: Path) -> None:
    ext = _cluster_patches(config)[0]["etcd"]["external"]
    host = urlsplit(ext["endpoints"][0]).hostname
    assert host is not None
    out = tmp_path / "certs"
    r = subprocess.run(
        [str(ROOT / "scripts" / "kind-etcd-certs.sh"), str(out), host],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "--client-cert-auth" in r.stdout and f"https://{host}:2379" in r.stdout
    for name in ("caFile", "certFile", "keyFile"):
        assert (out / posixpath.basename(ext[name])).is_file()

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {host, "127.0.0.1"} <= ips
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    client = x509.load_pem_x509_certificate((out / "client.crt").read_bytes())
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
