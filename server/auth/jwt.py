"""JWT tokens (etcd's server/auth/jwt.go and options.go): --auth-token=jwt,sign-method=RS256,
priv-key=<pem>,pub-key=<pem>,ttl=5m.

A token is a signed JWT whose claims are {"exp", "revision", "username"}: the auth revision when
it was issued and the expiry (issue time + ttl, in wall-clock seconds). Nothing is stored: any
member holding the key verifies any member's token, and a token stays valid until it expires.
Once the auth store has moved past the token's revision, permission checks refuse it with
"revision of auth store is old" and clients authenticate again.

    header.payload.signature      each part base64url without padding
    {"alg":"RS256","typ":"JWT"}   compact JSON, keys sorted (as Go marshals maps)

Sign methods: RS256/384/512, PS256/384/512 (RSA keys), ES256/384/512 (EC keys, signature r||s),
HS256/384/512 (the priv-key file's bytes are the secret). With only a public key the provider
verifies but cannot issue tokens.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from server.auth.errors import (
    InvalidAuthMethodError,
    InvalidAuthOptsError,
    KeyMismatchError,
    MissingKeyError,
    VerifyOnlyError,
)
from server.durations import parse_duration

__all__ = ["DEFAULT_TTL", "TokenJWT"]

DEFAULT_TTL = 300.0
KNOWN_OPTIONS = frozenset({"sign-method", "pub-key", "priv-key", "ttl"})

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "256": ec.SECP256R1,
    "384": ec.SECP384R1,
    "512": ec.SECP521R1,
}
METHODS = frozenset(f"{family}{bits}" for family in ("RS", "PS", "ES", "HS") for bits in _HASHES)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fits(key: Any, cls: type) -> bool:
    return key is None or isinstance(key, cls)


def _compact(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class _Keys:
    method: str
    private: Any  # rsa/ec private key, HMAC secret bytes, or None
    public: Any  # rsa/ec public key, HMAC secret bytes


def _load_private(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, password=None)


def _load_public(pem: bytes) -> Any:
    try:
        return serialization.load_pem_public_key(pem)
    except ValueError:
        return x509.load_pem_x509_certificate(pem).public_key()


def _keys(method: str, priv_pem: bytes, pub_pem: bytes) -> _Keys:
    if method.startswith("HS"):
        if not priv_pem:
            raise MissingKeyError()
        return _Keys(method, priv_pem, priv_pem)
    want, want_pub = (
        (rsa.RSAPrivateKey, rsa.RSAPublicKey)
        if method[:2] in ("RS", "PS")
        else (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)
    )
    priv: Any
    pub: Any
    try:
        priv = _load_private(priv_pem) if priv_pem else None
        pub = _load_public(pub_pem) if pub_pem else None
    except ValueError as e:
        raise InvalidAuthOptsError(str(e)) from e
    if not (_fits(priv, want) and _fits(pub, want_pub)):
        raise InvalidAuthOptsError(f"key type does not fit sign method {method}")
    if method.startswith("ES"):
        curve = _EC_CURVES[method[2:]]
        if any(k is not None and not isinstance(k.curve, curve) for k in (priv, pub)):
            raise InvalidAuthOptsError(f"{method} needs a key on curve {curve.name}")
    if priv is None:
        if pub is None:
            raise MissingKeyError()
        return _Keys(method, None, pub)
    if pub is not None and pub.public_numbers() != priv.public_key().public_numbers():
        raise KeyMismatchError()
    return _Keys(method, priv, priv.public_key())


class TokenJWT:
    """etcd's tokenJWT. The wall clock is injected (exp is a Unix time, as in etcd)."""

    def __init__(
        self,
        options: Mapping[str, str],
        *,
        wall: Callable[[], float] = time.time,
        read: Callable[[str], bytes] = lambda p: Path(p).read_bytes(),
    ) -> None:
        method = options.get("sign-method", "")
        if method not in METHODS:
            raise InvalidAuthMethodError()
        ttl = options.get("ttl", "")
        try:
            self.ttl = parse_duration(ttl) if ttl else DEFAULT_TTL
        except ValueError as e:
            raise InvalidAuthOptsError(str(e)) from e
        try:
            priv = read(options["priv-key"]) if options.get("priv-key") else b""
            pub = read(options["pub-key"]) if options.get("pub-key") else b""
        except OSError as e:
            raise InvalidAuthOptsError(str(e)) from e
        self._k = _keys(method, priv, pub)
        self._wall = wall
        self.unknown_options = sorted(set(options) - KNOWN_OPTIONS)

    @property
    def verify_only(self) -> bool:
        return self._k.private is None

    # -- the TokenProvider surface ------------------------------------------------------------

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass

    def invalidate_user(self, username: str) -> None:
        pass

    def gen_token_prefix(self) -> str:
        return ""

    def index_of(self, token: str) -> int | None:
        return 0

    def assign(self, username: str, prefix: str, index: int, revision: int) -> str:
        if self._k.private is None:
            raise VerifyOnlyError()
        header = _compact({"alg": self._k.method, "typ": "JWT"})
        claims = _compact({"exp": int(self._wall() + self.ttl), "revision": revision, "username": username})
        signing_input = f"{_b64(header)}.{_b64(claims)}"
        return f"{signing_input}.{_b64(self._sign(signing_input.encode()))}"

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        """(user name, auth revision) of a token signed with our key, unexpired; else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (binascii.Error, ValueError):
            return None
        if (
            not isinstance(header, dict)
            or header.get("alg") != self._k.method
            or not isinstance(claims, dict)
        ):
            return None
        if not self._verify(f"{parts[0]}.{parts[1]}".encode(), signature):
            return None
        now = self._wall()
        exp, nbf = claims.get("exp", now + 1), claims.get("nbf", now)
        if not (_is_number(exp) and _is_number(nbf) and nbf <= now < exp):
            return None
        username, rev = claims.get("username"), claims.get("revision")
        if not isinstance(username, str) or not _is_number(rev):
            return None
        return username, int(rev)

    # -- signatures -----------------------------------------------------------------------------

    def _hash(self) -> hashes.HashAlgorithm:
        return _HASHES[self._k.method[2:]]()

    def _sign(self, data: bytes) -> bytes:
        family, key = self._k.method[:2], self._k.private
        if family == "HS":
            return hmac.new(key, data, self._hash().name).digest()
        if family == "RS":
            return key.sign(data, padding.PKCS1v15(), self._hash())  # type: ignore[no-any-return]
        if family == "PS":
            h = self._hash()
            return key.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)  # type: ignore[no-any-return]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(self._hash())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def _verify(self, data: bytes, signature: bytes) -> bool:
        family, key = self._k.method[:2], self._k.public
        try:
            if family == "HS":
                return hmac.compare_digest(self._sign(data), signature)
            if family == "RS":
                key.verify(signature, data, padding.PKCS1v15(), self._hash())
            elif family == "PS":
                h = self._hash()
                key.verify(signature, data, padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
            else:
                size = (key.curve.key_size + 7) // 8
                if len(signature) != 2 * size:
                    return False
                r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
                key.verify(encode_dss_signature(r, s), data, ec.ECDSA(self._hash()))
            return True
        except InvalidSignature:
            return False
