"""The auth store: users, roles, permissions, root rules, revisions, persistence and simple
tokens with an injected clock (etcd's auth/store_test.go and simple_token_test.go)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from server.api.authpb import auth_pb2 as authpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth import errors as ae
from server.auth.apply_auth import check_txn
from server.auth.simple_token import TokenSimple, token_index
from server.auth.store import AuthInfo, AuthStore, hash_password
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, decode_uint64

READ, WRITE, READWRITE = authpb.Permission.READ, authpb.Permission.WRITE, authpb.Permission.READWRITE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def be(tmp_path: Path) -> Iterator[LmdbBackend]:
    b = LmdbBackend(str(tmp_path / "db"), map_size=1 << 26, fsync=False)
    yield b
    b.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(be: LmdbBackend, clock: Clock) -> AuthStore:
    return AuthStore(be, TokenSimple(10, clock=clock), bcrypt_cost=4)


def hashed(pw: str) -> str:
    return base64.b64encode(hash_password(pw, 4)).decode()


def add_user(s: AuthStore, name: str, pw: str = "pw", *roles: str) -> None:
    s.user_add(pb.AuthUserAddRequest(name=name, hashedPassword=hashed(pw)))
    for r in roles:
        s.user_grant_role(pb.AuthUserGrantRoleRequest(user=name, role=r))


def grant(s: AuthStore, role: str, t: authpb.Permission.Type.ValueType, key: bytes, end: bytes = b"") -> None:
    s.role_grant_permission(
        pb.AuthRoleGrantPermissionRequest(
            name=role, perm=authpb.Permission(permType=t, key=key, range_end=end)
        )
    )


def enabled(s: AuthStore) -> AuthStore:
    add_user(s, "root", "rootpw", "root")
    s.auth_enable()
    return s


def test_fresh_store_has_revision_one(store: AuthStore, be: LmdbBackend) -> None:
    assert store.revision == 1 and not store.enabled
    assert decode_uint64(be.read_tx().get(Bucket.AUTH, b"authRevision") or b"") == 1


def test_enable_needs_root_user_with_root_role(store: AuthStore) -> None:
    with pytest.raises(ae.RootUserNotExistError):
        store.auth_enable()
    add_user(store, "root")
    with pytest.raises(ae.RootRoleNotExistError):
        store.auth_enable()
    rev = store.revision
    # role root need not exist to be granted
    store.user_grant_role(pb.AuthUserGrantRoleRequest(user="root", role="root"))
    store.auth_enable()
    assert store.enabled and store.revision == rev + 1  # enabling does not bump the revision
    store.auth_enable()  # already enabled: ignored
    store.auth_disable()
    assert not store.enabled and store.revision == rev + 2


def test_root_rules_while_enabled(store: AuthStore) -> None:
    store.role_add(pb.AuthRoleAddRequest(name="root"))
    enabled(store)
    with pytest.raises(ae.InvalidAuthMgmtError):
        store.user_delete(pb.AuthUserDeleteRequest(name="root"))
    with pytest.raises(ae.InvalidAuthMgmtError):
        store.role_delete(pb.AuthRoleDeleteRequest(role="root"))
    with pytest.raises(ae.InvalidAuthMgmtError):
        store.user_revoke_role(pb.AuthUserRevokeRoleRequest(name="root", role="root"))
    store.auth_disable()
    store.user_revoke_role(pb.AuthUserRevokeRoleRequest(name="root", role="root"))
    store.role_delete(pb.AuthRoleDeleteRequest(role="root"))
    store.user_delete(pb.AuthUserDeleteRequest(name="root"))
    assert store.user_list(pb.AuthUserListRequest()).users == []


def test_user_and_role_errors(store: AuthStore) -> None:
    with pytest.raises(ae.UserEmptyError):
        store.user_add(pb.AuthUserAddRequest(name=""))
    add_user(store, "alice")
    with pytest.raises(ae.UserAlreadyExistError):
        add_user(store, "alice")
    with pytest.raises(ae.UserNotFoundError):
        store.user_get(pb.AuthUserGetRequest(name="bob"))
    with pytest.raises(ae.RoleEmptyError):
        store.role_add(pb.AuthRoleAddRequest(name=""))
    store.role_add(pb.AuthRoleAddRequest(name="r"))
    with pytest.raises(ae.RoleAlreadyExistError):
        store.role_add(pb.AuthRoleAddRequest(name="r"))
    with pytest.raises(ae.RoleNotFoundError):
        store.user_grant_role(pb.AuthUserGrantRoleRequest(user="alice", role="nope"))
    with pytest.raises(ae.UserNotFoundError):
        store.user_grant_role(pb.AuthUserGrantRoleRequest(user="bob", role="r"))
    with pytest.raises(ae.RoleNotGrantedError):
        store.user_revoke_role(pb.AuthUserRevokeRoleRequest(name="alice", role="r"))
    with pytest.raises(ae.PermissionNotGivenError):
        store.role_grant_permission(pb.AuthRoleGrantPermissionRequest(name="r"))
    with pytest.raises(ae.InvalidAuthMgmtError):
        grant(store, "r", READ, b"b", b"a")
    with pytest.raises(ae.RoleNotFoundError):
        grant(store, "nope", READ, b"a")
    with pytest.raises(ae.PermissionNotGrantedError):
        store.role_revoke_permission(pb.AuthRoleRevokePermissionRequest(role="r", key=b"a"))
    with pytest.raises(ae.NoPasswordUserError):
        store.user_add(pb.AuthUserAddRequest(name="bad", hashedPassword="!!notbase64"))


def test_every_change_bumps_the_revision(store: AuthStore) -> None:
    steps = [
        lambda: add_user(store, "alice"),
        lambda: store.role_add(pb.AuthRoleAddRequest(name="r")),
        lambda: grant(store, "r", READ, b"a"),
        lambda: store.user_grant_role(pb.AuthUserGrantRoleRequest(user="alice", role="r")),
        lambda: store.user_change_password(
            pb.AuthUserChangePasswordRequest(name="alice", hashedPassword=hashed("x"))
        ),
        lambda: store.role_revoke_permission(pb.AuthRoleRevokePermissionRequest(role="r", key=b"a")),
        lambda: store.user_revoke_role(pb.AuthUserRevokeRoleRequest(name="alice", role="r")),
        lambda: store.role_delete(pb.AuthRoleDeleteRequest(role="r")),
        lambda: store.user_delete(pb.AuthUserDeleteRequest(name="alice")),
    ]
    for step in steps:
        rev = store.revision
        step()
        assert store.revision == rev + 1
    rev = store.revision
    add_user(store, "bob")
    store.role_add(pb.AuthRoleAddRequest(name="r"))
    store.user_grant_role(pb.AuthUserGrantRoleRequest(user="bob", role="r"))
    store.user_grant_role(pb.AuthUserGrantRoleRequest(user="bob", role="r"))  # already granted: no change
    assert store.revision == rev + 3


def test_grant_permission_sorts_and_updates(store: AuthStore) -> None:
    store.role_add(pb.AuthRoleAddRequest(name="r"))
    grant(store, "r", READ, b"m")
    grant(store, "r", WRITE, b"c", b"d")
    grant(store, "r", READ, b"x", b"\x00")
    grant(store, "r", READWRITE, b"c", b"d")  # same key and end: type updated
    perms = store.role_get(pb.AuthRoleGetRequest(role="r")).perm
    assert [(p.key, p.range_end, p.permType) for p in perms] == [
        (b"c", b"d", READWRITE),
        (b"m", b"", READ),
        (b"x", b"\x00", READ),
    ]
    store.role_add(pb.AuthRoleAddRequest(name="root"))
    assert [
        (p.key, p.range_end, p.permType) for p in store.role_get(pb.AuthRoleGetRequest(role="root")).perm
    ] == [(b"", b"\x00", READWRITE)]


def test_role_delete_revokes_it_from_users(store: AuthStore) -> None:
    store.role_add(pb.AuthRoleAddRequest(name="r"))
    store.role_add(pb.AuthRoleAddRequest(name="s"))
    add_user(store, "alice", "pw", "s", "r")
    assert list(store.user_get(pb.AuthUserGetRequest(name="alice")).roles) == ["r", "s"]
    store.role_delete(pb.AuthRoleDeleteRequest(role="r"))
    assert list(store.user_get(pb.AuthUserGetRequest(name="alice")).roles) == ["s"]
    assert list(store.role_list(pb.AuthRoleListRequest()).roles) == ["s"]


def test_permissions(store: AuthStore) -> None:
    store.role_add(pb.AuthRoleAddRequest(name="r"))
    grant(store, "r", READ, b"a")
    grant(store, "r", WRITE, b"b", b"c")
    grant(store, "r", READWRITE, b"p/", b"p0")
    add_user(store, "alice", "pw", "r")
    # auth off: everything goes, even without a user
    store.is_put_permitted(None, b"zzz")
    enabled(store)
    ai = AuthInfo("alice", store.revision)
    store.is_range_permitted(ai, b"a", b"")
    store.is_put_permitted(ai, b"bx")
    store.is_delete_range_permitted(ai, b"b", b"c")
    store.is_range_permitted(ai, b"p/", b"p0")
    for check in (
        lambda: store.is_put_permitted(ai, b"a"),
        lambda: store.is_range_permitted(ai, b"b", b""),
        lambda: store.is_range_permitted(ai, b"a", b"b"),
        lambda: store.is_delete_range_permitted(ai, b"b", b"\x00"),
        lambda: store.is_range_permitted(AuthInfo("ghost", store.revision), b"a", b""),
    ):
        with pytest.raises(ae.PermissionDeniedError):
            check()
    with pytest.raises(ae.UserEmptyError):
        store.is_range_permitted(AuthInfo("", 0), b"a", b"")
    with pytest.raises(ae.AuthOldRevisionError):
        store.is_range_permitted(AuthInfo("alice", store.revision - 1), b"a", b"")
    store.is_range_permitted(AuthInfo("root", store.revision), b"anything", b"\x00")
    # admin
    store.is_admin_permitted(AuthInfo("root", 1))
    with pytest.raises(ae.PermissionDeniedError):
        store.is_admin_permitted(ai)
    with pytest.raises(ae.UserNotFoundError):
        store.is_admin_permitted(AuthInfo("ghost", 1))
    with pytest.raises(ae.UserEmptyError):
        store.is_admin_permitted(None)


def test_txn_checks_every_key_nested(store: AuthStore) -> None:
    store.role_add(pb.AuthRoleAddRequest(name="r"))
    grant(store, "r", READ, b"a")
    grant(store, "r", WRITE, b"b")
    add_user(store, "alice", "pw", "r")
    enabled(store)
    ai = AuthInfo("alice", store.revision)

    class NoLeases:
        def lookup(self, lease_id: int) -> None:
            return None

    def txn(**kw: object) -> pb.TxnRequest:
        return pb.TxnRequest(**kw)  # type: ignore[arg-type]

    ok = txn(
        compare=[pb.Compare(key=b"a")],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"b"))],
        failure=[
            pb.RequestOp(request_txn=txn(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))]))
        ],
    )
    check_txn(store, ai, NoLeases(), ok)
    for bad in (
        txn(compare=[pb.Compare(key=b"b")]),
        txn(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"b", prev_kv=True))]),
        txn(failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a"))]),
        txn(
            failure=[
                pb.RequestOp(request_txn=txn(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"a"))]))
            ]
        ),
    ):
        with pytest.raises(ae.PermissionDeniedError):
            check_txn(store, ai, NoLeases(), bad)


def test_authenticate_and_passwords(store: AuthStore) -> None:
    with pytest.raises(ae.AuthNotEnabledError):
        store.check_password("root", "rootpw")
    enabled(store)
    add_user(store, "alice", "secret")
    assert store.check_password("alice", "secret") == store.revision
    with pytest.raises(ae.AuthFailedError):
        store.check_password("alice", "wrong")
    with pytest.raises(ae.AuthFailedError):
        store.check_password("nobody", "x")
    store.user_add(pb.AuthUserAddRequest(name="cert", options=authpb.UserAddOptions(no_password=True)))
    with pytest.raises(ae.NoPasswordUserError):
        store.check_password("cert", "")
    with pytest.raises(ae.AuthFailedError):
        store.authenticate("cert", "prefix", 7)
    token = store.authenticate("alice", "abcdefghijklmnop", 42).token
    assert token == "abcdefghijklmnop.42" and token_index(token) == 42
    assert store.auth_info_from_token(token) == AuthInfo("alice", store.revision)
    # a stored hash is Go's bcrypt form; a hash given by the client is kept as it is
    user = store.get_user("alice")
    assert user is not None and user.password.startswith(b"$2a$04$")
    assert bcrypt.checkpw(b"secret", user.password)
    # a plain password in the entry (etcd < 3.5) is hashed when applied
    store.user_add(pb.AuthUserAddRequest(name="old", password="oldpw"))
    assert store.check_password("old", "oldpw") == store.revision
    # changing the password drops the user's tokens
    store.user_change_password(pb.AuthUserChangePasswordRequest(name="alice", hashedPassword=hashed("new")))
    assert store.auth_info_from_token(token) is None
    assert store.check_password("alice", "new") == store.revision


def test_simple_token_ttl_restarts_on_use(clock: Clock) -> None:
    t = TokenSimple(10, clock=clock)
    assert t.assign("alice", "p", 1) == "p.1" and t.info("p.1") is None  # disabled: not installed
    t.enable()
    t.assign("alice", "p", 2)
    clock.now += 9
    assert t.info("p.2") == ("alice", 0)  # used: lives 10 s more
    clock.now += 9
    assert t.info("p.2") == ("alice", 0)
    clock.now += 10.5
    assert t.info("p.2") is None and len(t) == 0
    t.assign("bob", "q", 3)
    t.assign("bob", "r", 4)
    t.assign("carol", "s", 5)
    t.invalidate_user("bob")
    assert (t.info("q.3"), t.info("s.5")) == (None, ("carol", 0))
    t.disable()
    assert t.info("s.5") is None


def test_default_ttl_and_token_syntax() -> None:
    assert TokenSimple(0).ttl == 300
    assert len(TokenSimple().gen_token_prefix()) == 16
    for bad in ("bogus", "a.b.1", "abc.x", "abc.", "abc.-1", "abc.+1", f"abc.{1 << 64}"):
        assert token_index(bad) is None, bad
    assert token_index("abc.0") == 0


def test_tokens_live_through_the_store_clock(be: LmdbBackend, clock: Clock) -> None:
    s = enabled(AuthStore(be, TokenSimple(5, clock=clock), bcrypt_cost=4))
    token = s.authenticate("root", "pppppppppppppppp", 3).token
    clock.now += 6
    assert s.auth_info_from_token(token) is None
    token = s.authenticate("root", "qqqqqqqqqqqqqqqq", 4).token
    s.auth_disable()
    assert s.auth_info_from_token(token) is None


def test_persistence_and_recover(be: LmdbBackend, tmp_path: Path) -> None:
    s = AuthStore(be, bcrypt_cost=4)
    s.role_add(pb.AuthRoleAddRequest(name="r"))
    grant(s, "r", READ, b"a")
    add_user(s, "alice", "pw", "r")
    enabled(s)
    be.force_commit()
    again = AuthStore(be, bcrypt_cost=4)
    assert again.enabled and again.revision == s.revision
    assert list(again.user_list(pb.AuthUserListRequest()).users) == ["alice", "root"]
    again.is_range_permitted(AuthInfo("alice", again.revision), b"a", b"")
    # the stored form is etcd's
    tx = be.read_tx()
    assert tx.get(Bucket.AUTH, b"authEnabled") == b"\x01"
    user = authpb.User.FromString(tx.get(Bucket.AUTH_USERS, b"alice") or b"")
    assert (user.name, list(user.roles), user.HasField("options")) == (b"alice", ["r"], True)
    role = authpb.Role.FromString(tx.get(Bucket.AUTH_ROLES, b"r") or b"")
    assert [(p.key, p.permType) for p in role.keyPermission] == [(b"a", READ)]


def test_invalid_bcrypt_cost_falls_back_to_default(be: LmdbBackend) -> None:
    assert AuthStore(be, bcrypt_cost=3).bcrypt_cost == 10
    assert AuthStore(be, bcrypt_cost=32).bcrypt_cost == 10
