"""Transport security with etcd's flags (etcd's client/pkg/transport and embed/config.go).

Client side (https:// --listen-client-urls): --cert-file/--key-file serve TLS; with
--client-cert-auth a client must present a certificate signed by --trusted-ca-file (with auth
enabled, its CN is the user name). --auto-tls generates a self-signed certificate under the
data directory when no files are given. Peer side: the --peer-* twins, on https:// peer URLs.

gRPC's TLS (grpcio, BoringSSL) negotiates ALPN h2, which grpc-go clients require. Cipher
suites (--cipher-suites, Go's IANA names) and the protocol range (--tls-min-version,
--tls-max-version) apply to the HTTP and peer listeners through Python's ssl module and to gRPC
through BoringSSL's cipher list; BoringSSL always allows TLS 1.2 and 1.3 for gRPC.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from server.config import Config, ConfigError

__all__ = ["TLSInfo", "client_tls", "peer_tls"]

# Go's names -> OpenSSL's, for the suites Go supports with TLS 1.2 (TLS 1.3 suites are fixed)
GO_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
TLS_VERSIONS = {"": None, "TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TLSInfo:
    cert_file: str
    key_file: str
    trusted_ca_file: str
    client_cert_auth: bool
    cipher_suites: tuple[str, ...]
    min_version: str
    max_version: str

    @property
    def empty(self) -> bool:
        return not self.cert_file

    def openssl_ciphers(self) -> str | None:
        if not self.cipher_suites:
            return None
        unknown = [c for c in self.cipher_suites if c not in GO_CIPHERS]
        if unknown:
            raise ConfigError(f"unexpected TLS cipher suite {unknown[0]!r}")
        return ":".join(GO_CIPHERS[c] for c in self.cipher_suites)

    def server_context(self) -> ssl.SSLContext:
        """For the peer listeners."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._configure(ctx)
        if self.client_cert_auth:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def http_context(self) -> ssl.SSLContext:
        """For the HTTP/1.1 servers: ALPN http/1.1 only (aiohttp speaks no HTTP/2)."""
        ctx = self.server_context()
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For dialing peers: present our certificate, verify theirs against the CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._configure(ctx)
        if not self.trusted_ca_file:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # etcd's peers with --peer-auto-tls skip verification too
        return ctx

    def _configure(self, ctx: ssl.SSLContext) -> None:
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.trusted_ca_file:
            ctx.load_verify_locations(self.trusted_ca_file)
        low, high = TLS_VERSIONS.get(self.min_version), TLS_VERSIONS.get(self.max_version)
        if self.min_version not in TLS_VERSIONS or self.max_version not in TLS_VERSIONS:
            raise ConfigError(f"unsupported TLS version range {self.min_version!r}..{self.max_version!r}")
        ctx.minimum_version = low or ssl.TLSVersion.TLSv1_2
        if high is not None:
            ctx.maximum_version = high
        ciphers = self.openssl_ciphers()
        if ciphers:
            ctx.set_ciphers(ciphers)
        ctx.set_alpn_protocols(["h2", "http/1.1"])

    def grpc_credentials(self) -> grpc.ServerCredentials:
        ciphers = self.openssl_ciphers()
        if ciphers:
            # BoringSSL reads the list from the environment when gRPC creates its first context
            os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", ciphers)
        with open(self.key_file, "rb") as f:
            key = f.read()
        with open(self.cert_file, "rb") as f:
            cert = f.read()
        ca = None
        if self.trusted_ca_file:
            with open(self.trusted_ca_file, "rb") as f:
                ca = f.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=self.client_cert_auth and ca is not None
        )


def _hosts(urls: tuple[str, ...]) -> list[str]:
    return sorted({urlsplit(u).hostname or "localhost" for u in urls})


def self_signed(dirpath: str, hosts: list[str]) -> tuple[str, str]:
    """A self-signed certificate for hosts (etcd's --auto-tls), kept in dirpath."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = os.path.join(dirpath, "cert.pem"), os.path.join(dirpath, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    os.makedirs(dirpath, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in [*hosts, "localhost"]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def client_tls(cfg: Config) -> TLSInfo | None:
    """TLS for the client listeners, or None when every client URL is plain http."""
    if not any(u.startswith("https") for u in (*cfg.listen_client_urls, *cfg.listen_client_http_urls)):
        return None
    cert, key = cfg.cert_file, cfg.key_file
    if not cert and cfg.auto_tls:
        cert, key = self_signed(
            os.path.join(cfg.data_dir, "fixtures", "client"), _hosts(cfg.listen_client_urls)
        )
    if not cert or not key:
        raise ConfigError("TLS key/cert (--cert-file, --key-file) must be provided for https client URLs")
    return TLSInfo(
        cert,
        key,
        cfg.trusted_ca_file,
        cfg.client_cert_auth,
        cfg.cipher_suites,
        cfg.tls_min_version,
        cfg.tls_max_version,
    )


def peer_tls(cfg: Config) -> TLSInfo | None:
    """TLS for peer traffic, or None when the peer URLs are plain http."""
    if not any(u.startswith("https") for u in (*cfg.listen_peer_urls, *cfg.initial_advertise_peer_urls)):
        return None
    cert, key = cfg.peer_cert_file, cfg.peer_key_file
    if not cert and cfg.peer_auto_tls:
        cert, key = self_signed(os.path.join(cfg.data_dir, "fixtures", "peer"), _hosts(cfg.listen_peer_urls))
    if not cert or not key:
        raise ConfigError(
            "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for https peer URLs"
        )
    return TLSInfo(
        cert,
        key,
        cfg.peer_trusted_ca_file,
        cfg.peer_client_cert_auth,
        cfg.cipher_suites,
        cfg.tls_min_version,
        cfg.tls_max_version,
    )
