"""The lessor (etcd's lease/lessor_test.go), with a fake clock, over the state machine's backend.

We test these aspects:
- grant: the minimum TTL, the maximum, ID 0 and duplicates refused; leases persist and are
  reloaded (keys reattached by MVCC's restore);
- only the primary tracks expiry: renew on a non-primary is refused, a demoted lessor keeps
  leases forever, a promoted one gives every lease a fresh TTL (plus the extension);
- expiry: a lease past its TTL is reported once, and again after the retry interval until
  revoked; renewing an expired lease is refused;
- revoke deletes every key of the lease in one revision, and the lease record;
- checkpoints: the remaining TTL survives a restart and a promotion; renew clears it;
- promotion spreads mass expiry: no more than 3/4 of the revoke rate per second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.lease.lessor import (
    EXPIRED_LEASE_RETRY_INTERVAL,
    LEASE_REVOKE_RATE,
    MAX_LEASE_TTL,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    Lessor,
    NotPrimaryError,
)
from server.mvcc.watchable_store import WatchableStore
from tests.framework.state_machine import StateMachine


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[StateMachine]:
    s = StateMachine(tmp_path)
    yield s
    s.close()


def test_grant_limits(sm: StateMachine) -> None:
    le = sm.lessor
    le.min_ttl = 5
    assert le.grant(1, 2).ttl == 5, "below the minimum: the minimum"
    assert le.grant(2, MAX_LEASE_TTL).ttl == MAX_LEASE_TTL
    with pytest.raises(LeaseTTLTooLargeError):
        le.grant(3, MAX_LEASE_TTL + 1)
    with pytest.raises(LeaseExistsError):
        le.grant(1, 10)
    with pytest.raises(LeaseNotFoundError):
        le.grant(0, 10)
    assert [x.id for x in le.leases()] == [1, 2]


def test_only_the_primary_renews_and_expires(sm: StateMachine) -> None:
    le = sm.lessor
    le.grant(1, 10)
    with pytest.raises(NotPrimaryError):
        le.renew(1)
    sm.clock.now += 1000
    assert le.expired_leases() == [], "a non-primary lessor keeps leases forever"
    le.promote(0.0)
    assert le.renew(1) == 10
    sm.clock.now += 9
    assert le.expired_leases() == []
    sm.clock.now += 2
    assert le.expired_leases() == [1]
    assert le.expired_leases() == [], "reported once..."
    sm.clock.now += EXPIRED_LEASE_RETRY_INTERVAL
    assert le.expired_leases() == [1], "...and again while not revoked"
    with pytest.raises(LeaseNotFoundError):
        le.renew(1)  # expired: its revocation is on its way
    le.demote()
    assert le.expired_leases() == []
    assert le.remaining(le.lookup(1)) == 10  # type: ignore[arg-type]


def test_promotion_gives_a_fresh_ttl_plus_the_extension(sm: StateMachine) -> None:
    le = sm.lessor
    le.grant(1, 10)
    sm.clock.now += 500
    le.promote(3.0)
    lease = le.lookup(1)
    assert lease is not None and le.remaining(lease) == 13
    sm.clock.now += 12
    assert le.expired_leases() == []
    sm.clock.now += 2
    assert le.expired_leases() == [1]


def test_revoke_deletes_the_keys_in_one_revision(sm: StateMachine) -> None:
    sm.ok(lease_grant=pb.LeaseGrantRequest(ID=7, TTL=60))
    for k in (b"a", b"b", b"c"):
        sm.ok(put=pb.PutRequest(key=k, value=b"v", lease=7))
    sm.ok(put=pb.PutRequest(key=b"free", value=b"v"))
    rev = sm.kv.rev()
    assert sorted(sm.lessor.lookup(7).keys) == [b"a", b"b", b"c"]  # type: ignore[union-attr]
    sm.ok(lease_revoke=pb.LeaseRevokeRequest(ID=7))
    assert sm.kv.rev() == rev + 1
    left = sm.ok(range=pb.RangeRequest(key=b"\x00", range_end=b"\x00")).kvs
    assert [kv.key for kv in left] == [b"free"]
    assert sm.lessor.lookup(7) is None
    with pytest.raises(LeaseNotFoundError):
        sm.lessor.revoke(7)


def test_leases_and_their_keys_survive_a_restart(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path)
    sm.ok(lease_grant=pb.LeaseGrantRequest(ID=7, TTL=60))
    sm.ok(put=pb.PutRequest(key=b"k", value=b"v", lease=7))
    sm.ok(
        lease_checkpoint=pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=7, remaining_TTL=20)])
    )
    sm.close()
    sm = StateMachine(tmp_path)
    try:
        lease = sm.lessor.lookup(7)
        assert lease is not None and lease.ttl == 60 and lease.remaining_ttl == 20
        assert lease.keys == {b"k"}, "MVCC's restore reattaches the keys"
        assert sm.lessor.get_lease(b"k") == 7
        sm.lessor.promote(0.0)
        assert sm.lessor.remaining(lease) == 20, "the checkpointed TTL, not the granted one"
        sm.lessor.renew(7)
        assert lease.remaining_ttl == 0 and sm.lessor.remaining(lease) == 60
    finally:
        sm.close()


def test_a_reopened_lessor_alone_has_no_keys(sm: StateMachine) -> None:
    sm.ok(lease_grant=pb.LeaseGrantRequest(ID=7, TTL=60))
    sm.ok(put=pb.PutRequest(key=b"k", value=b"v", lease=7))
    sm.backend.force_commit()
    again = Lessor.open(sm.backend, min_ttl=1, clock=sm.clock)
    assert again.lookup(7) is not None and again.lookup(7).keys == set()  # type: ignore[union-attr]
    WatchableStore.open(sm.backend, again)
    assert again.lookup(7).keys == {b"k"}  # type: ignore[union-attr]


def test_promotion_spreads_a_mass_expiry(sm: StateMachine) -> None:
    le = sm.lessor
    n = 2 * LEASE_REVOKE_RATE
    for i in range(1, n + 1):
        le.grant(i, 10)
    le.promote(0.0)
    per_second: dict[int, int] = {}
    for lease in le.leases():
        second = int(le.remaining(lease))
        per_second[second] = per_second.get(second, 0) + 1
    assert sum(per_second.values()) == n
    assert max(per_second.values()) <= (3 * LEASE_REVOKE_RATE) // 4 + 1, per_second
