"""The replicated state machine without a member around it: mvcc, lessor, alarms, auth store and
quota over one LmdbBackend, and the applier wired to them as EtcdServer wires it. No raft, no
network, no clock but a fake one: what every member does with one committed entry."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.simple_token import TokenSimple
from server.auth.store import AuthStore, hash_password
from server.backend.lmdb_backend import LmdbBackend
from server.etcdserver.alarm import AlarmStore
from server.etcdserver.apply import Applier, ApplierOptions, ApplyResult
from server.etcdserver.quota import BackendQuota
from server.lease.lessor import Lessor
from server.mvcc.watchable_store import WatchableStore

MEMBER = 0x1234


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    def __init__(self) -> None:
        self.attributes: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.version = ""

    def update_attributes(self, member_id: int, name: str, client_urls: tuple[str, ...]) -> None:
        self.attributes[member_id] = (name, client_urls)

    def set_version(self, version: str) -> None:
        self.version = version


class StateMachine:
    def __init__(self, path: Path, *, quota_bytes: int = 0) -> None:
        self.clock = FakeClock()
        self.backend = LmdbBackend(str(path / "db"), map_size=1 << 26, fsync=False)
        self.lessor = Lessor.open(self.backend, min_ttl=1, clock=self.clock)
        self.kv, _ = WatchableStore.open(self.backend, self.lessor)
        self.lessor.set_range_deleter(self.kv.write)
        self.alarms = AlarmStore(self.backend)
        self.auth = AuthStore(self.backend, TokenSimple(clock=self.clock), bcrypt_cost=4)
        self.quota = BackendQuota(self.backend, quota_bytes)
        self.cluster = FakeCluster()
        self.index = 0
        self.raised: list[pb.AlarmMember] = []
        self.applier = Applier(
            ApplierOptions(
                kv=self.kv,
                lessor=self.lessor,
                alarms=self.alarms,
                auth=self.auth,
                quota=self.quota,
                cluster=self.cluster,
                consistent_index=lambda: self.index,
                on_alarm_raised=self.raised.append,
            )
        )

    def close(self) -> None:
        self.backend.close()

    def apply(self, user: str = "", need_result: bool = True, **field: Any) -> ApplyResult:
        """Apply one entry carrying field (as EtcdServer proposes it, with the user's name and
        the current auth revision in its header)."""
        r = rpb.InternalRaftRequest(**field)
        if user:
            r.header.username = user
            r.header.auth_revision = self.auth.revision
        result = self.applier.apply(r, need_result=need_result)
        self.index += 1
        return result

    def ok(self, user: str = "", **field: Any) -> Any:
        """apply() that must succeed: the response."""
        result = self.apply(user, **field)
        assert result.err is None, result.err
        assert isinstance(result.resp, Message)
        return result.resp

    def raise_alarm(self, alarm: int) -> None:
        self.ok(alarm=pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=MEMBER, alarm=alarm))  # type: ignore[arg-type]

    def enable_auth(self, *users: tuple[str, str]) -> None:
        """root (with the root role), then each (user, role) pair; then auth on."""
        for name, role in (("root", "root"), *users):
            hashed = base64.b64encode(hash_password("pw", 4)).decode()
            self.ok(auth_user_add=pb.AuthUserAddRequest(name=name, hashedPassword=hashed))
            if role != "root" and self.auth.get_role(role) is None:
                self.ok(auth_role_add=pb.AuthRoleAddRequest(name=role))
            self.ok(auth_user_grant_role=pb.AuthUserGrantRoleRequest(user=name, role=role))
        self.ok(auth_enable=pb.AuthEnableRequest())
