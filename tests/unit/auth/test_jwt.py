"""JWT tokens (server/auth/jwt.py) and --auth-token parsing (server/auth/token_provider.py), with
a fake wall clock. Interoperability with etcd's own tokens is tested in
tests/integration/test_auth_jwt.py."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.auth.errors import (
    InvalidAuthMethodError,
    InvalidAuthOptsError,
    KeyMismatchError,
    MissingKeyError,
    VerifyOnlyError,
)
from server.auth.jwt import TokenJWT
from server.auth.simple_token import TokenSimple
from server.auth.token_provider import new_token_provider

METHODS = [f"{f}{b}" for f in ("RS", "PS", "ES", "HS") for b in ("256", "384", "512")]
CURVES = {"256": ec.SECP256R1(), "384": ec.SECP384R1(), "512": ec.SECP521R1()}


@cache
def pems(method: str, n: int = 0) -> tuple[bytes, bytes]:
    """(private, public) PEM for method; n tells several pairs apart."""
    if method.startswith("HS"):
        secret = f"secret-{n}".encode()
        return secret, b""
    key = (
        rsa.generate_private_key(65537, 2048)
        if method[:2] in ("RS", "PS")
        else ec.generate_private_key(CURVES[method[2:]])
    )
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def provider(
    method: str, clock: Clock, *, priv: bool = True, pub: bool = True, n: int = 0, ttl: str = ""
) -> TokenJWT:
    files = {"priv": pems(method, n)[0] if priv else b"", "pub": pems(method, n)[1] if pub else b""}
    opts = {"sign-method": method, **({"ttl": ttl} if ttl else {})}
    opts |= {"priv-key": "priv"} if files["priv"] else {}
    opts |= {"pub-key": "pub"} if files["pub"] else {}
    return TokenJWT(opts, wall=clock, read=lambda name: files[name])


def parts(token: str) -> list[object]:
    h, c, s = token.split(".")
    return [json.loads(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))) for x in (h, c)] + [s]


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_and_refusals(method: str) -> None:
    clock = Clock()
    t = provider(method, clock, ttl="10s")
    token = t.assign("alice", "", 7, 42)
    header, claims, _ = parts(token)
    assert header == {"alg": method, "typ": "JWT"}
    assert claims == {"exp": int(clock.now) + 10, "revision": 42, "username": "alice"}
    assert (
        token.split(".")[0]
        == base64.urlsafe_b64encode(b'{"alg":"%s","typ":"JWT"}' % method.encode()).rstrip(b"=").decode()
    )
    assert t.info(token, 99) == ("alice", 42)  # the token's revision, not the store's

    h, c, s = token.split(".")
    forged = (
        base64.urlsafe_b64encode(json.dumps(dict(claims, username="root")).encode()).rstrip(b"=").decode()
    )
    assert t.info(f"{h}.{forged}.{s}", 0) is None
    assert t.info(f"{h}.{c}.{s[:-4]}AAAA", 0) is None
    assert t.info(f"{h}.{c}", 0) is None
    assert t.info("not.a.token", 0) is None
    assert provider(method, clock, n=1).info(token, 0) is None  # another key

    clock.now += 9.5
    assert t.info(token, 0) == ("alice", 42)
    clock.now += 0.5
    assert t.info(token, 0) is None  # exp reached


@pytest.mark.parametrize("method", [m for m in METHODS if not m.startswith("HS")])
def test_a_public_key_alone_verifies_but_cannot_sign(method: str) -> None:
    clock = Clock()
    signer, checker = provider(method, clock), provider(method, clock, priv=False)
    assert checker.verify_only and not signer.verify_only
    assert checker.info(signer.assign("bob", "", 1, 3), 0) == ("bob", 3)
    with pytest.raises(VerifyOnlyError) as e:
        checker.assign("bob", "", 1, 3)
    assert str(e.value) == "auth: token signing attempted with verify-only key"


def test_an_algorithm_other_than_the_configured_one_is_refused() -> None:
    clock = Clock()
    hs = provider("HS256", clock)
    rs = provider("RS256", clock)
    token = hs.assign("alice", "", 1, 1)
    _, c, s = token.split(".")
    as_rs = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    assert rs.info(token, 0) is None and rs.info(f"{as_rs}.{c}.{s}", 0) is None
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    assert hs.info(f"{none}.{c}.", 0) is None


@pytest.mark.parametrize(
    ("opts", "files", "error", "message"),
    [
        ({}, {}, InvalidAuthMethodError, "auth: invalid auth signature method"),
        ({"sign-method": "XY256"}, {}, InvalidAuthMethodError, "auth: invalid auth signature method"),
        ({"sign-method": "RS256"}, {}, MissingKeyError, "auth: missing key data"),
        ({"sign-method": "HS256", "pub-key": "p"}, {"p": b"x"}, MissingKeyError, "auth: missing key data"),
        (
            {"sign-method": "RS256", "priv-key": "a", "pub-key": "b"},
            {"a": pems("RS256")[0], "b": pems("RS256", 1)[1]},
            KeyMismatchError,
            "auth: public and private keys don't match",
        ),
        (
            {"sign-method": "ES384", "priv-key": "a"},
            {"a": pems("ES256")[0]},
            InvalidAuthOptsError,
            "auth: invalid auth options: ES384 needs a key on curve secp384r1",
        ),
        (
            {"sign-method": "ES256", "priv-key": "a"},
            {"a": pems("RS256")[0]},
            InvalidAuthOptsError,
            "auth: invalid auth options: key type does not fit sign method ES256",
        ),
        (
            {"sign-method": "RS256", "priv-key": "a"},
            {"a": b"not a pem"},
            InvalidAuthOptsError,
            "auth: invalid auth options",
        ),
        (
            {"sign-method": "RS256", "priv-key": "gone"},
            {},
            InvalidAuthOptsError,
            "auth: invalid auth options",
        ),
        (
            {"sign-method": "HS256", "priv-key": "a", "ttl": "5 min"},
            {"a": b"s"},
            InvalidAuthOptsError,
            "auth: invalid auth options",
        ),
    ],
)
def test_bad_options(
    opts: dict[str, str], files: dict[str, bytes], error: type[Exception], message: str
) -> None:
    def read(name: str) -> bytes:
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]

    with pytest.raises(error) as e:
        TokenJWT(opts, read=read)
    assert str(e.value).startswith(message)


def test_ttl_defaults_to_five_minutes_and_takes_go_durations() -> None:
    clock = Clock()
    assert provider("HS256", clock).ttl == 300
    assert provider("HS256", clock, ttl="1h30m").ttl == 5400


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ("magic", "unknown token type 'magic'"),
        ("", "unknown token type ''"),
        ("jwt,sign-method", "'sign-method' is not key=value"),
        ("jwt,sign-method=HS256,sign-method=HS384", "sign-method is given twice"),
    ],
)
def test_auth_token_flag_parsing(opts: str, message: str) -> None:
    with pytest.raises(InvalidAuthOptsError) as e:
        new_token_provider(opts, 300)
    assert str(e.value) == f"auth: invalid auth options: {message}"


def test_auth_token_flag_selects_the_provider(tmp_path: Path) -> None:
    assert isinstance(new_token_provider("simple", 300), TokenSimple)
    (tmp_path / "k").write_bytes(b"secret")
    p = new_token_provider(f"jwt,sign-method=HS256,priv-key={tmp_path / 'k'},ttl=1m,color=blue", 300)
    assert isinstance(p, TokenJWT) and p.ttl == 60 and p.unknown_options == ["color"]
