"""A throwaway PKI for TLS between kube-apiserver (or etcdctl) and petcd / etcd.

    pki = make_pki(tmp_path / "pki", extra_sans=["172.18.0.1"])
    pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key   # PEM file paths
    pki.etcd_server_flags()      # --cert-file ... --key-file ... --trusted-ca-file ... --client-cert-auth
    pki.apiserver_etcd_flags()   # --etcd-cafile ... --etcd-certfile ... --etcd-keyfile ...
    pki.etcdctl_env()            # ETCDCTL_CACERT / ETCDCTL_CERT / ETCDCTL_KEY

File names are those kind-config.yaml and scripts/kind-etcd-certs.sh use: ca.crt, server.crt,
server.key, client.crt, client.key (plus ca.key, which only the issuer needs). The server
certificate carries the SANs 127.0.0.1, ::1, localhost and any extra addresses; the client
certificate has CN "kube-apiserver-etcd-client" and the clientAuth usage (etcd checks it when
--client-cert-auth is on). Keys are ECDSA P-256, like kubeadm's and etcd's own auto-TLS.

Usable by people too: `python -m petcd_harness.certs DIR [SAN ...]` writes the set into DIR.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PKI", "issue", "make_pki", "sans"]

CLIENT_CN = "kube-apiserver-etcd-client"
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class PKI:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def etcd_server_flags(self) -> list[str]:
        """Flags for petcd or etcd serving TLS and requiring client certificates."""
        return [
            f"--cert-file={self.server_cert}",
            f"--key-file={self.server_key}",
            f"--trusted-ca-file={self.ca}",
            "--client-cert-auth",
        ]

    def apiserver_etcd_flags(self) -> list[str]:
        return [
            f"--etcd-cafile={self.ca}",
            f"--etcd-certfile={self.client_cert}",
            f"--etcd-keyfile={self.client_key}",
        ]

    def etcdctl_env(self) -> dict[str, str]:
        return {
            "ETCDCTL_CACERT": str(self.ca),
            "ETCDCTL_CERT": str(self.client_cert),
            "ETCDCTL_KEY": str(self.client_key),
        }


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def sans(names: Iterable[str]) -> list[x509.GeneralName]:
    """IP addresses become IPAddress SANs, anything else a DNSName."""
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    usages: Sequence[x509.ObjectIdentifier],
    names: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(sans(names)), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def _make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path, extra_sans: Iterable[str] = (), ca_cn: str = "petcd-test-ca") -> PKI:
    """Write ca.{crt,key}, server.{crt,key} and client.{crt,key} into directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pki = PKI(d)
    ca_cert, ca_key = _make_ca(ca_cn)
    pki.ca.write_bytes(_pem(ca_cert))
    _write_key(pki.ca_key, ca_key)
    names = ["127.0.0.1", "::1", "localhost", *[s for s in extra_sans if s]]
    srv, srv_key = issue(
        ca_cert,
        ca_key,
        "petcd-server",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        list(dict.fromkeys(names)),
    )
    pki.server_cert.write_bytes(_pem(srv))
    _write_key(pki.server_key, srv_key)
    cli, cli_key = issue(ca_cert, ca_key, CLIENT_CN, [ExtendedKeyUsageOID.CLIENT_AUTH])
    pki.client_cert.write_bytes(_pem(cli))
    _write_key(pki.client_key, cli_key)
    return pki


def issue_serving_cert(pki: PKI, cert_path: Path, key_path: Path, names: Sequence[str], cn: str) -> None:
    """Another server certificate from the same CA (kube-apiserver's serving cert)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert, key = issue(ca_cert, ca_key, cn, [ExtendedKeyUsageOID.SERVER_AUTH], names)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(_pem(cert))
    _write_key(key_path, key)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -m petcd_harness.certs DIR [EXTRA_SAN ...]", file=sys.stderr)
        sys.exit(2)
    p = make_pki(Path(sys.argv[1]), sys.argv[2:])
    for f in (p.ca, p.server_cert, p.server_key, p.client_cert, p.client_key):
        print(f)
