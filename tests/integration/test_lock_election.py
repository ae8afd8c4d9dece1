"""etcd's Lock and Election services (v3lockpb, v3electionpb), petcd next to a real etcd v3.6:
the same calls on both, over gRPC and over the JSON gateway, with the answers compared after
normalizing IDs (cluster, member, lease IDs and the lease hex in keys).

We test these aspects:
- refusals: unknown lease, empty unlock key, no leader, a missing or stale leader key: etcd's
  code (UNKNOWN, as clientv3 hands errors back) and message;
- Lock: uncontended, the same lease twice (one acquisition), a new 60 s lease when none is
  given; two contenders: the second waits until the first unlocks, or until the first one's
  lease expires; a waiter whose call is cancelled removes its key;
- Election: campaign, a second campaigner waiting, proclaim, resign handing leadership over,
  Observe seeing every value and every leader change in order, Leader, a campaign with the same
  lease and another value (the value is proclaimed);
- the gateway routes /v3/lock/* and /v3/election/* (observe as a JSON-lines stream).
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.api.v3electionpb import v3election_pb2 as epb
from server.api.v3electionpb import v3election_pb2_grpc as epb_grpc
from server.api.v3lockpb import v3lock_pb2 as lockpb
from server.api.v3lockpb import v3lock_pb2_grpc as lockpb_grpc
from tests.framework.differential import Differential
from tests.framework.wait import wait_until
from tests.harness.procs import Member

pytestmark = pytest.mark.integration

WAIT = 30.0


class Side:
    """One server, its stubs, and what to normalize in its answers."""

    def __init__(self, m: Member) -> None:
        self.member = m
        self.channel = grpc.insecure_channel(m.client_url.split("://")[1])
        self.kv = pb_grpc.KVStub(self.channel)
        self.lease = pb_grpc.LeaseStub(self.channel)
        self.lock = lockpb_grpc.LockStub(self.channel)
        self.election = epb_grpc.ElectionStub(self.channel)
        status = pb_grpc.MaintenanceStub(self.channel).Status(pb.StatusRequest())
        self.names: dict[str, str] = {
            str(status.header.cluster_id): "<cluster>",
            str(status.header.member_id): "<member>",
        }

    def grant(self, label: str, ttl: int = 60) -> int:
        lease_id = int(self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl)).ID)
        self.name_lease(lease_id, label)
        return lease_id

    def name_lease(self, lease_id: int, label: str) -> None:
        self.names[str(lease_id)] = f"<{label}>"
        self.names[f"{lease_id:x}"] = f"<{label}>"

    def norm(self, text: str) -> str:
        for old in sorted(self.names, key=len, reverse=True):
            text = text.replace(old, self.names[old])
        return re.sub(r"raft_term: \d+", "raft_term: T", text)

    def show(self, msg: Message) -> str:
        return self.norm(text_format.MessageToString(msg, as_one_line=True))

    def call(self, fn: Callable[[], Message]) -> str:
        try:
            return self.show(fn())
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"

    def keys(self, prefix: bytes) -> list[str]:
        resp = self.kv.Range(pb.RangeRequest(key=prefix, range_end=prefix[:-1] + bytes([prefix[-1] + 1])))
        return [self.norm(kv.key.decode()) for kv in resp.kvs]

    def wait_keys(self, prefix: bytes, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.keys(prefix)) != n:
            assert time.monotonic() < deadline, f"{self.member.kind}: {self.keys(prefix)}"
            time.sleep(0.02)

    def watchers(self) -> int:
        """etcd_debugging_mvcc_watcher_total, from /metrics on the client port."""
        conn = http.client.HTTPConnection("127.0.0.1", self.member.client_port, timeout=WAIT)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        m = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)
        assert m, "no etcd_debugging_mvcc_watcher_total"
        return int(float(m.group(1)))

    def http(self, path: str, body: dict[str, Any]) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.member.client_port, timeout=WAIT)
        try:
            conn.request("POST", path, body=json.dumps(body).encode())
            r = conn.getresponse()
            return f"{r.status} {self.norm_json(r.read().decode())}"
        finally:
            conn.close()

    def norm_json(self, text: str) -> str:
        """norm, also inside the base64 of keys (which hold lease IDs in hex)."""

        def key(m: re.Match[str]) -> str:
            return f'"key":"b64({self.norm(base64.b64decode(m.group(1)).decode())})"'

        return self.norm(re.sub(r'"key":"([A-Za-z0-9+/=]+)"', key, text))


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, Side]]:
    with Differential.start(tmp_path_factory.mktemp("lock-election")) as (p, e):
        pair = Side(p), Side(e)
        yield pair
        for s in pair:
            s.channel.close()


def both(sides: tuple[Side, Side], scenario: Callable[[Side], list[str]]) -> list[str]:
    ours, theirs = scenario(sides[0]), scenario(sides[1])
    assert ours == theirs
    return ours


def test_refusals_match_etcd(sides: tuple[Side, Side]) -> None:
    def scenario(s: Side) -> list[str]:
        a = s.grant("a")
        campaign = s.election.Campaign(epb.CampaignRequest(name=b"refusals", lease=a, value=b"v"))
        stale = epb.LeaderKey(name=b"refusals", key=campaign.leader.key, rev=1, lease=a)
        keyless = epb.LeaderKey(name=b"refusals", rev=1, lease=a)
        return [
            s.call(lambda: s.lock.Lock(lockpb.LockRequest(name=b"refusals-lock", lease=424242))),
            s.call(lambda: s.lock.Unlock(lockpb.UnlockRequest(key=b""))),
            s.call(lambda: s.lock.Unlock(lockpb.UnlockRequest(key=b"no such key"))),
            s.call(lambda: s.election.Leader(epb.LeaderRequest(name=b"nobody"))),
            s.call(lambda: s.election.Proclaim(epb.ProclaimRequest(value=b"x"))),
            s.call(lambda: s.election.Resign(epb.ResignRequest())),
            s.call(lambda: s.election.Proclaim(epb.ProclaimRequest(leader=stale, value=b"x"))),
            s.call(lambda: s.election.Resign(epb.ResignRequest(leader=stale))),
            s.call(lambda: s.election.Proclaim(epb.ProclaimRequest(leader=keyless, value=b"x"))),
            s.call(lambda: s.election.Resign(epb.ResignRequest(leader=keyless))),
            s.call(lambda: s.election.Campaign(epb.CampaignRequest(name=b"refusals2", lease=424242))),
            s.show(campaign),
            s.call(lambda: s.election.Resign(epb.ResignRequest(leader=campaign.leader))),
        ]

    both(sides, scenario)


def test_lock_contenders_and_unlock(sides: tuple[Side, Side]) -> None:
    def scenario(s: Side) -> list[str]:
        a, b = s.grant("a"), s.grant("b")
        out = [s.call(lambda: s.lock.Lock(lockpb.LockRequest(name=b"mutex", lease=a)))]
        first = s.lock.Lock(lockpb.LockRequest(name=b"mutex", lease=a))
        out.append(s.show(first))  # the same lease again: the same key, no new acquisition
        waiting = s.lock.Lock.future(lockpb.LockRequest(name=b"mutex", lease=b))
        s.wait_keys(b"mutex/", 2)
        out.append(f"waiting: {not waiting.done()} {s.keys(b'mutex/')}")
        out.append(s.call(lambda: s.lock.Unlock(lockpb.UnlockRequest(key=first.key))))
        second = waiting.result(WAIT)
        out.append(s.show(second))
        out.append(s.call(lambda: s.lock.Unlock(lockpb.UnlockRequest(key=second.key))))
        out.append(str(s.keys(b"mutex/")))
        return out

    both(sides, scenario)


def test_lease_expiry_hands_the_lock_over(sides: tuple[Side, Side]) -> None:
    def scenario(s: Side) -> list[str]:
        a, b = s.grant("short", ttl=2), s.grant("b")
        out = [s.call(lambda: s.lock.Lock(lockpb.LockRequest(name=b"expiring", lease=a)))]
        waiting = s.lock.Lock.future(lockpb.LockRequest(name=b"expiring", lease=b))
        # nobody keeps lease a alive: it expires, its key goes, the waiter takes the lock
        resp = waiting.result(WAIT)
        out.append(s.norm(resp.key.decode()))
        out.append(str(s.keys(b"expiring/")))
        s.lock.Unlock(lockpb.UnlockRequest(key=resp.key))
        return out

    both(sides, scenario)


def test_cancelled_waiter_removes_its_key(sides: tuple[Side, Side]) -> None:
    def scenario(s: Side) -> list[str]:
        a, b = s.grant("a"), s.grant("b")
        held = s.lock.Lock(lockpb.LockRequest(name=b"cancel", lease=a))
        before = s.watchers()
        waiting = s.lock.Lock.future(lockpb.LockRequest(name=b"cancel", lease=b))
        s.wait_keys(b"cancel/", 2)
        # cancelled once it waits (watches the key before its own); a cancel that reaches
        # etcd's mutex during its acquiring txn leaves the key behind (etcd's Mutex.Lock)
        wait_until(lambda: s.watchers() > before, WAIT, what=f"{s.member.kind}: the waiter watching")
        waiting.cancel()
        s.wait_keys(b"cancel/", 1)
        out = [str(s.keys(b"cancel/"))]
        s.lock.Unlock(lockpb.UnlockRequest(key=held.key))
        return out

    both(sides, scenario)


def test_lock_without_a_lease_gets_a_60s_lease(sides: tuple[Side, Side]) -> None:
    for s in sides:
        resp = s.lock.Lock(lockpb.LockRequest(name=b"leaseless"))
        lease_id = int(resp.key.decode().rsplit("/", 1)[1], 16)
        ttl = s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True))
        assert ttl.grantedTTL == 60 and 55 <= ttl.TTL <= 60 and ttl.keys == [resp.key], s.member.kind
        s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))


def _observe(s: Side, name: bytes, into: queue.Queue[str]) -> grpc.RpcContext:
    stream = s.election.Observe(epb.LeaderRequest(name=name))

    def pump() -> None:
        try:
            for resp in stream:
                into.put(f"observed {s.show(resp)}")
        except grpc.RpcError as e:
            into.put(f"observe ended: {e.code().name}")

    threading.Thread(target=pump, daemon=True).start()
    return stream


def test_election_campaign_proclaim_resign_observe(sides: tuple[Side, Side]) -> None:
    def scenario(s: Side) -> list[str]:
        a, b = s.grant("a"), s.grant("b")
        seen: queue.Queue[str] = queue.Queue()
        stream = _observe(s, b"elect", seen)
        out = []
        first = s.election.Campaign(epb.CampaignRequest(name=b"elect", lease=a, value=b"a1"))
        out.append(s.show(first))
        out.append(seen.get(timeout=WAIT))
        second = s.election.Campaign.future(epb.CampaignRequest(name=b"elect", lease=b, value=b"b1"))
        s.wait_keys(b"elect/", 2)
        out.append(s.call(lambda: s.election.Proclaim(epb.ProclaimRequest(leader=first.leader, value=b"a2"))))
        out.append(seen.get(timeout=WAIT))
        out.append(s.call(lambda: s.election.Leader(epb.LeaderRequest(name=b"elect"))))
        out.append(s.call(lambda: s.election.Resign(epb.ResignRequest(leader=first.leader))))
        won = second.result(WAIT)
        out.append(s.show(won))
        out.append(seen.get(timeout=WAIT))
        # the same lease campaigns again with another value: it keeps its place, the value is posted
        again = s.election.Campaign(epb.CampaignRequest(name=b"elect", lease=b, value=b"b2"))
        out.append(s.show(again))
        out.append(seen.get(timeout=WAIT))
        out.append(s.call(lambda: s.election.Resign(epb.ResignRequest(leader=again.leader))))
        out.append(s.call(lambda: s.election.Leader(epb.LeaderRequest(name=b"elect"))))
        stream.cancel()
        return out

    both(sides, scenario)


def test_gateway_lock_and_election_routes(sides: tuple[Side, Side]) -> None:
    def scenario(s: Side) -> list[str]:
        a = s.grant("a")
        out = [
            s.http("/v3/lock/lock", {"name": "Z3c=", "lease": str(a)}),
            s.http("/v3/lock/lock", {"name": "Z3c=", "lease": 999}),
            s.http("/v3/lock/unlock", {"key": ""}),
            s.http("/v3/election/leader", {"name": "Z3dl"}),
            s.http("/v3/election/campaign", {"name": "Z3dl", "lease": a, "value": "djE="}),
            s.http("/v3/election/leader", {"name": "Z3dl"}),
            s.http("/v3/election/proclaim", {"value": "djI="}),
            s.http("/v3/election/resign", {}),
            s.http("/v3/election/campaign", {"name": "Z3dl", "lease": "x"}),
        ]
        key = s.kv.Range(pb.RangeRequest(key=b"gw/", range_end=b"gw0")).kvs[0].key.decode()
        out.append(s.http("/v3/lock/unlock", {"key": base64.b64encode(key.encode()).decode()}))
        # observe: a stream of JSON lines, the current leader's value first
        conn = http.client.HTTPConnection("127.0.0.1", s.member.client_port, timeout=WAIT)
        conn.request("POST", "/v3/election/observe", body=b'{"name":"Z3dl"}')
        r = conn.getresponse()
        out.append(f"{r.status} {r.getheader('Content-Type')} {s.norm_json(r.readline().decode())}")
        conn.close()
        return out

    both(sides, scenario)
