"""A member under a CORRUPT alarm, raised through Maintenance.Alarm as etcd's corruption checks
raise it: every request, then the same after the alarm is disarmed.

etcd refuses exactly what goes through its corrupt applier (server/etcdserver/apply/corrupt.go):
Put, DeleteRange, a writing Txn, Compact, LeaseGrant and LeaseRevoke, with DATA_LOSS
"etcdserver: corrupt cluster"; reads (served without the log), lease keep-alives and
time-to-live, alarms, status and hashes still answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from server.api.etcdserverpb import rpc_pb2 as pb
from tests.framework.client import Client, Outcome, outcome, without_identity
from tests.framework.member import Member, connect

__all__ = ["CORRUPT_ANSWERS", "under_corrupt_alarm"]

LEASE = 0x7E57
CORRUPT = ("error", "DATA_LOSS", "etcdserver: corrupt cluster")


def _put(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"1"))


def _steps(c: Client, me: int) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("put", lambda: c.put("a", "2")),
        ("put with a lease", lambda: c.put("c", "2", lease=LEASE)),
        ("get", lambda: c.get("a")),
        ("get serializable", lambda: c.get("a", serializable=True)),
        ("delete", lambda: c.delete("a")),
        ("txn with a put", lambda: c.txn(success=[_put(b"x")])),
        ("read-only txn", lambda: c.txn(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))])),
        ("compact", lambda: c.compact(1)),
        ("lease grant", lambda: c.grant(60, 2 * LEASE)),
        ("lease revoke", lambda: c.revoke(LEASE)),
        ("lease time-to-live", lambda: c.time_to_live(LEASE, keys=True)),
        ("lease keep-alive", lambda: c.keep_alive_once(LEASE)),
        ("lease list", c.leases),
        ("alarm list", lambda: c.alarm(pb.AlarmRequest.GET)),
        ("status errors", lambda: c.status().errors),
        ("hash kv", lambda: c.hash_kv()),
    ]


def under_corrupt_alarm(m: Member) -> list[tuple[str, Outcome]]:
    """Every step's outcome under the alarm, then after disarming it (step names say which),
    with the member ID and the TTLs that tick away replaced."""
    with connect(m) as c:
        c.put("a", "1")
        c.grant(60, LEASE)
        c.put("b", "2", lease=LEASE)
        me = c.member_id()

        def norm(resp: Any) -> str:
            text = without_identity(resp) if hasattr(resp, "DESCRIPTOR") else repr(list(resp))
            text = text.replace(str(me), "<member-id>")
            return re.sub(r"\bTTL: \d+", "TTL: <ttl>", text)

        out = [("raise", outcome(lambda: c.alarm(pb.AlarmRequest.ACTIVATE, pb.CORRUPT, me), norm))]
        out += [(name, outcome(step, norm)) for name, step in _steps(c, me)]
        out.append(("disarm", outcome(lambda: c.alarm(pb.AlarmRequest.DEACTIVATE, pb.CORRUPT, me), norm)))
        out += [(f"{name}, disarmed", outcome(step, norm)) for name, step in _steps(c, me)]
        return out


# the steps etcd refuses under the alarm; disarmed, it refuses none of them
CORRUPT_ANSWERS = {
    "put": CORRUPT,
    "put with a lease": CORRUPT,
    "delete": CORRUPT,
    "txn with a put": CORRUPT,
    "compact": CORRUPT,
    "lease grant": CORRUPT,
    "lease revoke": CORRUPT,
}
