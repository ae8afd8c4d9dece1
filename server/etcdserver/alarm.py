"""Cluster alarms (etcd's server/etcdserver/api/v3alarm): which member raised which alarm,
replicated through the log and stored in the backend's alarm bucket (key: the AlarmMember
record, value empty)."""

from __future__ import annotations

from server.api.etcdserverpb import rpc_pb2 as pb
from server.backend.backend import Backend
from server.backend.schema import Bucket

__all__ = ["AlarmStore"]


class AlarmStore:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # alarm type -> member IDs that raised it
        self._types: dict[int, set[int]] = {}
        self.reload()

    def reload(self) -> None:
        self._types.clear()
        for key, _ in self._backend.read_tx().iterate(Bucket.ALARM):
            m = pb.AlarmMember.FromString(key)
            self._types.setdefault(m.alarm, set()).add(m.memberID)

    def activate(self, member_id: int, alarm: int) -> pb.AlarmMember | None:
        """The new alarm, or None if it was already raised."""
        members = self._types.setdefault(alarm, set())
        if member_id in members:
            return None
        members.add(member_id)
        m = pb.AlarmMember(memberID=member_id, alarm=alarm)  # type: ignore[arg-type]
        self._backend.batch_tx().put(Bucket.ALARM, m.SerializeToString(), b"")
        return m

    def deactivate(self, member_id: int, alarm: int) -> pb.AlarmMember | None:
        """The cleared alarm, or None if it was not raised."""
        members = self._types.get(alarm)
        if not members or member_id not in members:
            return None
        members.discard(member_id)
        m = pb.AlarmMember(memberID=member_id, alarm=alarm)  # type: ignore[arg-type]
        self._backend.batch_tx().delete(Bucket.ALARM, m.SerializeToString())
        return m

    def get(self, alarm: int = pb.NONE) -> list[pb.AlarmMember]:
        """Alarms of one type, or all of them for NONE; ordered by type, then member."""
        types = sorted(self._types) if alarm == pb.NONE else [alarm]
        return [
            pb.AlarmMember(memberID=mid, alarm=t)  # type: ignore[arg-type]
            for t in types
            for mid in sorted(self._types.get(t, ()))
        ]

    def active(self, alarm: int) -> bool:
        return bool(self._types.get(alarm))
