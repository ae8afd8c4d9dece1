"""The member's side of auth (server/etcdserver/v3_auth.py) through the gRPC API of a member in
this process: credentials, serialized reads, watches and leases checked where etcd checks them.

We test these aspects:
- with auth on, a call without a token is refused "user name is empty", a bad token "invalid auth
  token", a token whose user lacks the permission "permission denied"; the root role passes;
- a permission revoked is refused at once, with the same token;
- a watch the user may not read is created canceled with etcd's Go status string as the reason;
- keep-alive needs write permission on every key of the lease; time-to-live with keys needs
  read permission on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.api.authpb import auth_pb2 as authpb
from server.api.etcdserverpb import rpc_pb2 as pb
from tests.framework.client import Client, outcome
from tests.framework.member import InProcessMember, connect

DENIED = ("error", "PERMISSION_DENIED", "etcdserver: permission denied")
EMPTY = ("error", "INVALID_ARGUMENT", "etcdserver: user name is empty")


@pytest.fixture
def member(tmp_path: Path) -> Iterator[InProcessMember]:
    with InProcessMember(tmp_path, "--unsafe-no-fsync", "--bcrypt-cost=4") as m:
        yield m


def token(c: Client, name: str, password: str) -> str:
    return str(c.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=10).token)


def setup_auth(c: Client) -> None:
    """root (root role); alice with role r: read-write a/..a0, read-only b."""
    c.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
    c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    c.auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="alicepw"), timeout=10)
    c.auth.RoleAdd(pb.AuthRoleAddRequest(name="r"), timeout=10)
    for perm in (
        authpb.Permission(permType=authpb.Permission.READWRITE, key=b"a/", range_end=b"a0"),
        authpb.Permission(permType=authpb.Permission.READ, key=b"b"),
    ):
        c.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="r", perm=perm), timeout=10)
    c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="r"), timeout=10)
    c.put("b", "1")
    c.auth.AuthEnable(pb.AuthEnableRequest(), timeout=10)


def test_credentials(member: InProcessMember) -> None:
    with connect(member) as anon:
        setup_auth(anon)
        alice_token = token(anon, "alice", "alicepw")
        assert outcome(lambda: anon.put("a/1", "v")) == EMPTY
        assert outcome(lambda: anon.get("b"))[:2] == EMPTY[:2]
    with connect(member, token="bogus") as bad:
        assert outcome(lambda: bad.get("b")) == ("error", "UNAUTHENTICATED", "etcdserver: invalid auth token")
    with connect(member, token=alice_token) as alice:
        assert alice.put("a/1", "v").header.revision > 0
        assert alice.get("b").kvs[0].value == b"1"
        assert outcome(lambda: alice.put("b", "2")) == DENIED
        assert outcome(lambda: alice.get("c")) == DENIED
        assert outcome(lambda: alice.compact(1)) == DENIED
    with connect(member) as anon, connect(member, token=token(anon, "root", "rootpw")) as root:
        assert root.put("c", "1").header.revision > 0


def test_a_revoked_permission_is_honoured_at_once(member: InProcessMember) -> None:
    with connect(member) as anon:
        setup_auth(anon)
        alice_token, root_token = token(anon, "alice", "alicepw"), token(anon, "root", "rootpw")
    with connect(member, token=alice_token) as alice, connect(member, token=root_token) as root:
        assert alice.get("b").count == 1
        root.auth.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(role="r", key=b"b"), timeout=10)
        assert outcome(lambda: alice.get("b")) == DENIED
        assert alice.put("a/2", "v").header.revision > 0, "the token itself stays valid"


def test_a_watch_the_user_may_not_read_is_canceled(member: InProcessMember) -> None:
    with connect(member) as anon:
        setup_auth(anon)
        alice_token = token(anon, "alice", "alicepw")
    with connect(member, token=alice_token) as alice:
        call = alice.watch.Watch(
            iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"c"))]),
            timeout=10,
        )
        first = next(iter(call))
        call.cancel()
    assert (first.created, first.canceled) == (True, True)
    assert first.cancel_reason == "rpc error: code = PermissionDenied desc = etcdserver: permission denied"


def test_lease_permissions_follow_its_keys(member: InProcessMember) -> None:
    with connect(member) as anon:
        setup_auth(anon)
        alice_token, root_token = token(anon, "alice", "alicepw"), token(anon, "root", "rootpw")
    with connect(member, token=alice_token) as alice, connect(member, token=root_token) as root:
        mine = alice.grant(60).ID
        alice.put("a/leased", "v", lease=mine)
        assert alice.keep_alive_once(mine).TTL == 60
        assert list(alice.time_to_live(mine, keys=True).keys) == [b"a/leased"]
        theirs = root.grant(60).ID
        root.put("c", "v", lease=theirs)
        with pytest.raises(grpc.RpcError) as e:
            alice.keep_alive_once(theirs)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert outcome(lambda: alice.time_to_live(theirs, keys=True)) == DENIED
        assert outcome(lambda: alice.revoke(theirs)) == DENIED
        assert alice.time_to_live(theirs).TTL > 0, "without keys: any user"
