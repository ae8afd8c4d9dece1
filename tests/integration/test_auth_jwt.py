"""JWT auth tokens (--auth-token=jwt,...) against a real etcd v3.6 with the same keys: etcdctl
sessions side by side, tokens of one server accepted by the other, the same refusals for old,
expired and foreign tokens, verify-only keys, and the same refusal to start on bad options.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.harness.etcdctl import Etcdctl
from tests.harness.procs import Member
from tests.integration.test_auth_etcdctl import ROOT, SESSIONS, SETUP, session_mismatches

pytestmark = pytest.mark.integration


def write_keys(d: Path, method: str) -> tuple[Path, Path]:
    """A fresh key for method as PEM files: RSA 2048 for RS*/PS*, P-256 for ES256, and for HS*
    a random secret (the public file is then empty and unused)."""
    priv, pub = d / f"{method}.key", d / f"{method}.pub"
    if method.startswith("HS"):
        priv.write_bytes(os.urandom(32).hex().encode())
        pub.write_bytes(b"")
        return priv, pub
    key = (
        rsa.generate_private_key(65537, 2048)
        if method[:2] in ("RS", "PS")
        else ec.generate_private_key(ec.SECP256R1())
    )
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def jwt_flag(method: str, priv: Path | None, pub: Path | None, ttl: str = "") -> str:
    opts = [f"sign-method={method}"]
    opts += [f"priv-key={priv}"] if priv else []
    opts += [f"pub-key={pub}"] if pub else []
    opts += [f"ttl={ttl}"] if ttl else []
    return "--auth-token=jwt," + ",".join(opts)


def decode(token: str) -> tuple[dict[str, object], dict[str, object]]:
    def part(s: str) -> dict[str, object]:
        out: dict[str, object] = json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        return out

    h, c, _ = token.split(".")
    return part(h), part(c)


def _stub(m: Member) -> tuple[grpc.Channel, pb_grpc.AuthStub, pb_grpc.KVStub]:
    ch = grpc.insecure_channel(m.client_url.split("://", 1)[1])
    return ch, pb_grpc.AuthStub(ch), pb_grpc.KVStub(ch)


def outcome(fn: object, req: object, token: str) -> tuple[str, str]:
    try:
        fn(req, metadata=[("token", token)], timeout=10)  # type: ignore[operator]
        return ("OK", "")
    except grpc.RpcError as e:
        return (e.code().name, e.details() or "")


@pytest.fixture(params=["RS256"])
def jwt_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Member, Member]]:
    method = request.param
    priv, pub = write_keys(tmp_path, method)
    flags = ("--bcrypt-cost=4", jwt_flag(method, priv, None if method.startswith("HS") else pub, ttl="3s"))
    with Member.petcd(tmp_path, *flags) as p, Member.etcd(tmp_path, *flags) as e:
        yield p, e


@pytest.mark.parametrize("session", ["kv", "management"])
def test_etcdctl_sessions_with_jwt_tokens_match_etcd(jwt_pair: tuple[Member, Member], session: str) -> None:
    mismatches = session_mismatches(*jwt_pair, [*SETUP, *SESSIONS[session]])
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("jwt_pair", ["RS256", "HS256"], indirect=True)
def test_jwt_tokens_interoperate_with_etcd(jwt_pair: tuple[Member, Member]) -> None:
    """The same key on both servers: same header and claims, each server accepts the other's
    tokens, and both refuse old-revision, tampered and expired tokens alike."""
    p, e = jwt_pair
    for m in (p, e):
        for cmd in SETUP:
            Etcdctl(m.client_url)(*cmd.args, input=cmd.stdin)
        Etcdctl(m.client_url).ok(ROOT, "put", "a", "1")
    chans = [_stub(m) for m in (p, e)]
    try:
        tokens = [
            auth.Authenticate(pb.AuthenticateRequest(name="alice", password="alicepw")).token
            for _, auth, _ in chans
        ]
        (hp, cp), (he, ce) = decode(tokens[0]), decode(tokens[1])
        assert hp == he and hp["typ"] == "JWT" and hp["alg"] in ("RS256", "HS256")
        assert sorted(cp) == sorted(ce) == ["exp", "revision", "username"]
        assert (
            (cp["username"], cp["revision"]) == (ce["username"], ce["revision"]) == ("alice", ce["revision"])
        )
        assert abs(int(cp["exp"]) - int(ce["exp"])) <= 5  # type: ignore[call-overload]

        read = pb.RangeRequest(key=b"a")
        for token in tokens:  # either server's token on either server
            assert [outcome(kv.Range, read, token) for _, _, kv in chans] == [("OK", "")] * 2

        head, _, sig = tokens[1].split(".")
        forged = dict(ce, username="root")
        body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        results = [outcome(kv.Range, read, f"{head}.{body}.{sig}") for _, _, kv in chans]
        assert results[0] == results[1] == ("UNAUTHENTICATED", "etcdserver: invalid auth token"), results

        for m in (p, e):  # the auth store moves on: the tokens name an old revision
            Etcdctl(m.client_url).ok(ROOT, "role", "grant-permission", "r1", "read", "q")
        results = [outcome(kv.Range, read, tokens[0]) for _, _, kv in chans]
        assert (
            results[0] == results[1] == ("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
        ), results

        fresh = [
            auth.Authenticate(pb.AuthenticateRequest(name="alice", password="alicepw")).token
            for _, auth, _ in chans
        ]
        time.sleep(4.2)  # ttl=3s; exp is in whole seconds of the wall clock
        results = [outcome(kv.Range, read, fresh[1]) for _, _, kv in chans]
        assert results[0] == results[1] == ("UNAUTHENTICATED", "etcdserver: invalid auth token"), results
    finally:
        for ch, _, _ in chans:
            ch.close()


@pytest.mark.parametrize("method", ["ES256", "PS384"])
def test_a_verify_only_key_checks_tokens_but_cannot_issue_them(tmp_path: Path, method: str) -> None:
    priv, pub = write_keys(tmp_path, method)
    signer = (jwt_flag(method, priv, pub),)
    checker = (jwt_flag(method, None, pub),)
    with (
        Member.petcd(tmp_path, "--bcrypt-cost=4", *signer) as sp,
        Member.etcd(tmp_path, "--bcrypt-cost=4", *signer) as se,
    ):
        for m in (sp, se):
            for cmd in SETUP:
                Etcdctl(m.client_url)(*cmd.args, input=cmd.stdin)
        tokens = []
        for m in (sp, se):
            ch, auth, _ = _stub(m)
            with ch:
                tokens.append(auth.Authenticate(pb.AuthenticateRequest(name="root", password="rootpw")).token)
        # the same data directories, restarted with only the public key
        sp.stop()
        se.stop()
        sp.extra = se.extra = ("--bcrypt-cost=4", *checker)
        seen = []
        with sp, se:
            for m in (sp, se):
                ch, auth, kv = _stub(m)
                with ch:
                    login = outcome(
                        auth.Authenticate, pb.AuthenticateRequest(name="root", password="rootpw"), ""
                    )
                    seen.append((login, [outcome(kv.Range, pb.RangeRequest(key=b"a"), t) for t in tokens]))
    assert seen[0] == seen[1], seen
    assert seen[1] == (("UNKNOWN", "auth: token signing attempted with verify-only key"), [("OK", "")] * 2)


BAD_OPTIONS = {
    "unknown type": "--auth-token=magic",
    "no sign method": "--auth-token=jwt,priv-key={priv}",
    "unknown sign method": "--auth-token=jwt,sign-method=XY256,priv-key={priv}",
    "no key": "--auth-token=jwt,sign-method=RS256",
    "keys of two pairs": "--auth-token=jwt,sign-method=RS256,priv-key={priv},pub-key={other}",
    "not key=value": "--auth-token=jwt,sign-method=RS256,priv-key",
    "bad ttl": "--auth-token=jwt,sign-method=RS256,priv-key={priv},ttl=5 minutes",
    "missing key file": "--auth-token=jwt,sign-method=RS256,priv-key={priv}.gone",
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_auth_token_options_stop_the_member_like_etcd(tmp_path: Path, case: str) -> None:
    priv, _ = write_keys(tmp_path, "RS256")
    (tmp_path / "o").mkdir()
    _, other = write_keys(tmp_path / "o", "RS256")
    flag = BAD_OPTIONS[case].format(priv=priv, other=other)
    codes = []
    for make in (Member.petcd, Member.etcd):
        m = make(tmp_path, flag)
        p = subprocess.run(m.command(), capture_output=True, timeout=30)
        codes.append(p.returncode)
    assert codes[0] != 0 and codes[1] != 0, codes
