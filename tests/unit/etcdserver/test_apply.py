"""The applier (etcd's etcdserver/apply): its dispatch table and the refusals each operation
declares, applied in etcd's order (admin, corrupt, capped, auth, quota).

We test these aspects:
- every InternalRaftRequest field has an entry in the table (but downgrade_info_set, which
  petcd answers with an error on every member, as an unknown request);
- under a CORRUPT alarm, exactly etcd's applierV3Corrupt operations are refused, LeaseGrant and
  LeaseRevoke among them; under NOSPACE, exactly applierV3Capped's (Put, LeaseGrant, a Txn
  with a put); CORRUPT wins over NOSPACE; a refused entry changes nothing;
- an entry that does not fit the quota is applied and answered NoSpaceError;
- auth: admin entries need the root role (before any alarm), users may read themselves and
  their roles, KV entries are checked against the entry's user;
- a txn applied where nobody waits skips its ranges but applies its writes;
- a put reads the previous record once, in its write transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.api.authpb import auth_pb2 as authpb
from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth import errors as ae
from server.etcdserver.apply import OPS
from server.etcdserver.errors import CorruptError, KeyNotFoundError, NoSpaceError
from server.lease.lessor import LeaseNotFoundError
from tests.framework.state_machine import MEMBER, StateMachine


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[StateMachine]:
    s = StateMachine(tmp_path)
    yield s
    s.close()


def put(key: bytes = b"k", value: bytes = b"v", **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=value, **kw)


def txn_put(key: bytes = b"k") -> pb.TxnRequest:
    return pb.TxnRequest(success=[pb.RequestOp(request_put=put(key))])


def txn_delete(key: bytes = b"k") -> pb.TxnRequest:
    return pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))])


# one request per KV and lease operation; lease 7 exists before each case
REQUESTS: dict[str, dict[str, Any]] = {
    "put": {"put": put()},
    "range": {"range": pb.RangeRequest(key=b"k")},
    "delete_range": {"delete_range": pb.DeleteRangeRequest(key=b"k")},
    "txn with a put": {"txn": txn_put()},
    "txn without puts": {"txn": txn_delete()},
    "compaction": {"compaction": pb.CompactionRequest(revision=1)},
    "lease_grant": {"lease_grant": pb.LeaseGrantRequest(ID=8, TTL=60)},
    "lease_revoke": {"lease_revoke": pb.LeaseRevokeRequest(ID=7)},
    "lease_checkpoint": {
        "lease_checkpoint": pb.LeaseCheckpointRequest(
            checkpoints=[pb.LeaseCheckpoint(ID=7, remaining_TTL=30)]
        )
    },
    "alarm list": {"alarm": pb.AlarmRequest(action=pb.AlarmRequest.GET)},
}

# etcd's server/etcdserver/apply/corrupt.go and apply.go (applierV3Capped)
CORRUPT_REFUSES = {
    "put",
    "range",
    "delete_range",
    "txn with a put",
    "txn without puts",
    "compaction",
    "lease_grant",
    "lease_revoke",
}
NOSPACE_REFUSES = {"put", "txn with a put", "lease_grant"}


def test_every_internal_request_field_is_in_the_table() -> None:
    fields = {f.name for f in rpb.InternalRaftRequest.DESCRIPTOR.fields} - {"header", "ID"}
    assert fields - set(OPS) == {"downgrade_info_set"}
    assert set(OPS) <= fields


def test_an_unknown_request_is_an_error_result(sm: StateMachine) -> None:
    result = sm.apply(downgrade_info_set={"enabled": True})
    assert isinstance(result.err, ValueError)


@pytest.mark.parametrize("alarm", [pb.CORRUPT, pb.NOSPACE], ids=["CORRUPT", "NOSPACE"])
@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_alarms_refuse_etcds_operations(sm: StateMachine, alarm: int, case: str) -> None:
    sm.ok(put=put())
    sm.ok(lease_grant=pb.LeaseGrantRequest(ID=7, TTL=60))
    rev, leases = sm.kv.rev(), sorted(le.id for le in sm.lessor.leases())
    sm.raise_alarm(alarm)
    result = sm.apply(**REQUESTS[case])
    refused = CORRUPT_REFUSES if alarm == pb.CORRUPT else NOSPACE_REFUSES
    if case in refused:
        assert isinstance(result.err, CorruptError if alarm == pb.CORRUPT else NoSpaceError)
        assert result.resp is None
        # nothing changed
        assert (sm.kv.rev(), sorted(le.id for le in sm.lessor.leases())) == (rev, leases)
    else:
        assert result.err is None, result.err
        assert result.resp is not None


def test_corrupt_is_checked_before_nospace(sm: StateMachine) -> None:
    sm.raise_alarm(pb.NOSPACE)
    sm.raise_alarm(pb.CORRUPT)
    assert isinstance(sm.apply(put=put()).err, CorruptError)
    assert isinstance(sm.apply(lease_grant=pb.LeaseGrantRequest(ID=1, TTL=60)).err, CorruptError)


def test_disarming_corrupt_lets_leases_through_again(sm: StateMachine) -> None:
    sm.raise_alarm(pb.CORRUPT)
    assert isinstance(sm.apply(lease_grant=pb.LeaseGrantRequest(ID=1, TTL=60)).err, CorruptError)
    sm.ok(alarm=pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=MEMBER, alarm=pb.CORRUPT))
    assert sm.ok(lease_grant=pb.LeaseGrantRequest(ID=1, TTL=60)).ID == 1
    assert sm.ok(lease_revoke=pb.LeaseRevokeRequest(ID=1)) is not None


def test_raised_alarms_are_reported_once(sm: StateMachine) -> None:
    sm.raise_alarm(pb.CORRUPT)
    sm.raise_alarm(pb.CORRUPT)
    assert sm.raised == [pb.AlarmMember(memberID=MEMBER, alarm=pb.CORRUPT)]


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("put", put(value=b"x" * 2000)),
        ("txn", txn_put(b"big")),
        ("lease_grant", pb.LeaseGrantRequest(ID=3, TTL=60)),
    ],
)
def test_over_quota_is_applied_then_answered_nospace(tmp_path: Path, field: str, request_: Any) -> None:
    sm = StateMachine(tmp_path, quota_bytes=1)  # any cost exceeds it
    try:
        rev = sm.kv.rev()
        result = sm.apply(**{field: request_})
        assert isinstance(result.err, NoSpaceError)
        assert result.resp is not None
        assert sm.kv.rev() == rev + (0 if field == "lease_grant" else 1)
    finally:
        sm.close()


def test_an_error_is_not_masked_by_the_quota(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path, quota_bytes=1)
    try:
        assert isinstance(sm.apply(put=put(lease=99)).err, LeaseNotFoundError)
    finally:
        sm.close()


# -- auth ------------------------------------------------------------------------------------------


def test_admin_entries_need_the_root_role_even_before_alarms(sm: StateMachine) -> None:
    sm.enable_auth(("alice", "r"))
    sm.raise_alarm(pb.CORRUPT)
    assert isinstance(
        sm.apply("alice", auth_user_list=pb.AuthUserListRequest()).err, ae.PermissionDeniedError
    )
    assert isinstance(sm.apply(auth_status=pb.AuthStatusRequest()).err, ae.UserEmptyError)
    resp = sm.ok("root", auth_status=pb.AuthStatusRequest())
    assert (resp.enabled, resp.authRevision) == (True, sm.auth.revision)


def test_users_read_themselves_and_their_roles(sm: StateMachine) -> None:
    sm.enable_auth(("alice", "r"))
    assert list(sm.ok("alice", auth_user_get=pb.AuthUserGetRequest(name="alice")).roles) == ["r"]
    assert isinstance(
        sm.apply("alice", auth_user_get=pb.AuthUserGetRequest(name="root")).err, ae.PermissionDeniedError
    )
    sm.ok("alice", auth_role_get=pb.AuthRoleGetRequest(role="r"))
    assert isinstance(
        sm.apply("alice", auth_role_get=pb.AuthRoleGetRequest(role="root")).err, ae.PermissionDeniedError
    )


def test_kv_entries_are_checked_against_the_entrys_user(sm: StateMachine) -> None:
    sm.enable_auth(("alice", "r"))
    sm.ok(
        "root",
        auth_role_grant_permission=pb.AuthRoleGrantPermissionRequest(
            name="r", perm=authpb.Permission(permType=authpb.Permission.READWRITE, key=b"a/", range_end=b"a0")
        ),
    )
    sm.ok("alice", put=put(b"a/1"))
    assert isinstance(sm.apply("alice", put=put(b"b")).err, ae.PermissionDeniedError)
    assert isinstance(sm.apply("alice", txn=txn_put(b"b")).err, ae.PermissionDeniedError)
    assert isinstance(sm.apply(put=put(b"a/2")).err, ae.UserEmptyError)
    # a lease holding a key alice may not write cannot be revoked by her
    sm.ok("root", lease_grant=pb.LeaseGrantRequest(ID=5, TTL=60))
    sm.ok("root", put=put(b"b", lease=5))
    assert isinstance(
        sm.apply("alice", lease_revoke=pb.LeaseRevokeRequest(ID=5)).err, ae.PermissionDeniedError
    )
    sm.ok("root", lease_revoke=pb.LeaseRevokeRequest(ID=5))


def test_authenticate_takes_the_consistent_index(sm: StateMachine) -> None:
    sm.enable_auth()
    sm.index = 41
    resp = sm.ok(authenticate=rpb.InternalAuthenticateRequest(name="root", simple_token="tok"))
    assert resp.token == "tok.41"


# -- the write path ---------------------------------------------------------------------------------


def test_a_txn_nobody_waits_for_skips_its_ranges(sm: StateMachine) -> None:
    sm.ok(put=put(b"a", b"1"))
    t = pb.TxnRequest(
        success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"a")),
            pb.RequestOp(request_put=put(b"b", b"2")),
        ]
    )
    waited = sm.apply(txn=t).resp
    elsewhere = sm.apply(txn=t, need_result=False).resp
    assert isinstance(waited, pb.TxnResponse) and isinstance(elsewhere, pb.TxnResponse)
    assert [kv.value for kv in waited.responses[0].response_range.kvs] == [b"1"]
    assert elsewhere.responses[0].HasField("response_range")
    assert not elsewhere.responses[0].response_range.kvs
    assert (
        elsewhere.responses[1].response_put.header.revision
        == waited.responses[1].response_put.header.revision + 1
    )
    assert sm.kv.rev() == elsewhere.header.revision


def test_a_put_reads_its_previous_record_once(sm: StateMachine) -> None:
    sm.ok(lease_grant=pb.LeaseGrantRequest(ID=9, TTL=60))
    sm.ok(put=put(b"k", b"old", lease=9))
    before = sm.kv.stats.range
    resp = sm.ok(put=put(b"k", ignore_value=True, ignore_lease=True, prev_kv=True))
    assert sm.kv.stats.range == before + 1
    assert (resp.prev_kv.value, resp.prev_kv.lease) == (b"old", 9)
    got = sm.ok(range=pb.RangeRequest(key=b"k")).kvs[0]
    assert (got.value, got.lease) == (b"old", 9)
    before = sm.kv.stats.range
    sm.ok(put=put(b"k", b"new"))
    assert sm.kv.stats.range == before  # nothing asked for it: not read at all


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (put(b"absent", ignore_value=True), KeyNotFoundError),
        (put(b"absent", ignore_lease=True), KeyNotFoundError),
        (put(b"k", lease=404), LeaseNotFoundError),
        # etcd's Put checks the lease before the key
        (put(b"absent", ignore_value=True, lease=404), LeaseNotFoundError),
    ],
)
def test_put_errors_change_nothing(sm: StateMachine, request_: pb.PutRequest, error: type[Exception]) -> None:
    rev = sm.kv.rev()
    assert isinstance(sm.apply(put=request_).err, error)
    assert sm.kv.rev() == rev
