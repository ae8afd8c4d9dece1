"""Locks and elections on keys, leases and watches (etcd's client/v3/concurrency), as etcd's
v3lock and v3election servers use them over their in-process client (server/v3client.py).

A contender puts the key `<name>/<lease ID in hex>` attached to its lease, if that key does
not exist yet; keys under one name are ordered by creation revision, and the contender whose
key is the oldest holds the lock (leads the election). The others each wait for the deletion
of the newest key created before theirs, then look again. A key goes away when its owner
unlocks (resigns) or its lease expires, which hands the lock over. A waiter whose call is
cancelled deletes its own key (etcd does it with the client's context).

Sessions: etcd's servers open a session on the request's lease (a new 60 s lease when it is
0) and orphan it at once, so nobody keeps the lease alive but its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.mvccpb.kv_pb2 import Event, KeyValue
from server.errors import EtcdError
from server.v3client import Client

__all__ = [
    "DEFAULT_SESSION_TTL",
    "ClientError",
    "Election",
    "ElectionNoLeaderError",
    "ElectionNotLeaderError",
    "LostWatcherError",
    "Mutex",
    "SessionExpiredError",
    "session",
]

DEFAULT_SESSION_TTL = 60


class ClientError(EtcdError):
    """An error of etcd's client-side concurrency package: etcd's servers return its message
    with code UNKNOWN, which is what server/v3rpc/errors.py answers for an error it has no row
    for."""

    message = ""

    def __init__(self) -> None:
        super().__init__(self.message)


class SessionExpiredError(ClientError):
    message = "mutex: session is expired"


class ElectionNotLeaderError(ClientError):
    message = "election: not leader"


class ElectionNoLeaderError(ClientError):
    message = "election: no leader"


class LostWatcherError(ClientError):
    message = "lost watcher waiting for delete"


async def session(client: Client, lease: int) -> int:
    """The lease of a session: the given one, or a new one of DEFAULT_SESSION_TTL seconds."""
    if lease == 0:
        return await client.lease_grant(DEFAULT_SESSION_TTL)
    return lease


def prefix_end(prefix: bytes) -> bytes:
    """clientv3's GetPrefixRangeEnd."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def _first_created(prefix: bytes) -> pb.RangeRequest:
    """clientv3.WithFirstCreate over a prefix: the oldest key."""
    return pb.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        sort_target=pb.RangeRequest.CREATE,
        sort_order=pb.RangeRequest.ASCEND,
        limit=1,
    )


def _lease_key(prefix: bytes, lease: int) -> bytes:
    return prefix + f"{lease:x}".encode()


def _create_revision_is(key: bytes, rev: int) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=rev)


async def _wait_delete(client: Client, key: bytes, rev: int) -> None:
    async with contextlib.aclosing(client.watch(pb.WatchCreateRequest(key=key, start_revision=rev))) as w:
        async for wr in w:
            if any(ev.type == Event.DELETE for ev in wr.events):
                return
    raise LostWatcherError()


async def _wait_deletes(client: Client, prefix: bytes, max_create_rev: int) -> None:
    """Until every key under prefix created at or before max_create_rev is gone."""
    while True:
        resp = await client.range(
            pb.RangeRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                sort_target=pb.RangeRequest.CREATE,
                sort_order=pb.RangeRequest.DESCEND,
                limit=1,
                max_create_revision=max_create_rev,
            )
        )
        if not resp.kvs:
            return
        await _wait_delete(client, resp.kvs[0].key, resp.header.revision)


async def _finish(cleanup: Awaitable[object]) -> None:
    """Run a cleanup to its end even when the caller is cancelled meanwhile; its own failure is
    ignored (etcd ignores it too)."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        raise
    except Exception:
        return


class Mutex:
    def __init__(self, client: Client, lease: int, name: bytes) -> None:
        self._c = client
        self._lease = lease
        self.prefix = name + b"/"
        self.key = b""
        self._rev = -1
        self.header: pb.ResponseHeader | None = None

    async def lock(self) -> None:
        self.key = _lease_key(self.prefix, self._lease)
        acquire = asyncio.ensure_future(self._try_acquire())
        try:
            resp = await asyncio.shield(acquire)
        except asyncio.CancelledError:
            # the key may be written already: remove it once the txn is done (etcd leaves it)
            await _finish(self._unlock_after(acquire))
            raise
        self._rev = resp.header.revision
        if not resp.succeeded:  # this lease already waits for (or holds) the lock
            self._rev = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        if not owner or owner[0].create_revision == self._rev:
            self.header = resp.header
            return
        try:
            await _wait_deletes(self._c, self.prefix, self._rev - 1)
            got = await self._c.range(pb.RangeRequest(key=self.key))
        except BaseException:
            await _finish(self.unlock())
            raise
        if not got.kvs:  # the lease expired while waiting
            raise SessionExpiredError()
        self.header = got.header

    async def _unlock_after(self, acquire: asyncio.Future[pb.TxnResponse]) -> None:
        resp = await acquire
        if resp.succeeded:
            await self.unlock()

    async def _try_acquire(self) -> pb.TxnResponse:
        return await self._c.txn(
            pb.TxnRequest(
                compare=[_create_revision_is(self.key, 0)],
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=self.key, lease=self._lease)),
                    pb.RequestOp(request_range=_first_created(self.prefix)),
                ],
                failure=[
                    pb.RequestOp(request_range=pb.RangeRequest(key=self.key)),
                    pb.RequestOp(request_range=_first_created(self.prefix)),
                ],
            )
        )

    async def unlock(self) -> None:
        await self._c.delete_range(pb.DeleteRangeRequest(key=self.key))
        self.key = b"\x00"
        self._rev = -1


class Election:
    def __init__(
        self, client: Client, lease: int, prefix: bytes, leader_key: bytes, leader_rev: int, leading: bool
    ) -> None:
        self._c = client
        self._lease = lease
        self.prefix = prefix
        self.key = leader_key
        self.rev = leader_rev
        self._leading = leading
        self.header: pb.ResponseHeader | None = None

    @classmethod
    def new(cls, client: Client, lease: int, name: bytes) -> Election:
        return cls(client, lease, name + b"/", b"", 0, leading=False)

    @classmethod
    def resume(cls, client: Client, lease: int, name: bytes, key: bytes, rev: int) -> Election:
        """etcd's ResumeElection: leading with whatever key it is given (whose prefix is the bare
        name: only Proclaim and Resign use it)."""
        return cls(client, lease, name, key, rev, leading=True)

    async def campaign(self, value: bytes) -> None:
        key = _lease_key(self.prefix, self._lease)
        resp = await self._c.txn(
            pb.TxnRequest(
                compare=[_create_revision_is(key, 0)],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=self._lease))],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
            )
        )
        self.key, self.rev, self._leading = key, resp.header.revision, True
        if not resp.succeeded:  # this lease campaigns already: keep its place, post the new value
            kv = resp.responses[0].response_range.kvs[0]
            self.rev = kv.create_revision
            if kv.value != value:
                try:
                    await self.proclaim(value)
                except BaseException:
                    await _finish(self.resign())
                    raise
        try:
            await _wait_deletes(self._c, self.prefix, self.rev - 1)
        except asyncio.CancelledError:
            await _finish(self.resign())
            raise
        except BaseException:
            self._leading = False
            raise
        self.header = resp.header

    async def proclaim(self, value: bytes) -> None:
        if not self._leading:
            raise ElectionNotLeaderError()
        resp = await self._c.txn(
            pb.TxnRequest(
                compare=[_create_revision_is(self.key, self.rev)],
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=self.key, value=value, lease=self._lease))
                ],
            )
        )
        if not resp.succeeded:
            self.key = b""
            raise ElectionNotLeaderError()
        self.header = resp.header

    async def resign(self) -> None:
        if not self._leading:
            return
        try:
            resp = await self._c.txn(
                pb.TxnRequest(
                    compare=[_create_revision_is(self.key, self.rev)],
                    success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self.key))],
                )
            )
            self.header = resp.header
        finally:
            self.key = b""
            self._leading = False

    async def leader(self) -> pb.RangeResponse:
        resp = await self._c.range(_first_created(self.prefix))
        if not resp.kvs:
            raise ElectionNoLeaderError()
        return resp

    async def observe(self) -> AsyncGenerator[tuple[pb.ResponseHeader, KeyValue], None]:
        """The leader's key at each change: the current leader first (or the first one elected),
        then each value it proclaims, and so on with each following leader. Ends quietly when
        the store refuses (etcd's observer does)."""
        try:
            while True:
                resp = await self._c.range(_first_created(self.prefix))
                if resp.kvs:
                    header, kv = resp.header, resp.kvs[0]
                else:
                    header, kv = await self._first_put(resp.header.revision)
                yield header, kv
                async with contextlib.aclosing(self._until_deleted(kv.key, header.revision + 1)) as puts:
                    async for header, kv in puts:
                        yield header, kv
        except EtcdError:
            return

    async def _until_deleted(
        self, key: bytes, rev: int
    ) -> AsyncGenerator[tuple[pb.ResponseHeader, KeyValue], None]:
        """The puts of key from rev on, until it is deleted."""
        async with contextlib.aclosing(
            self._c.watch(pb.WatchCreateRequest(key=key, start_revision=rev))
        ) as w:
            async for wr in w:
                for ev in wr.events:
                    if ev.type == Event.DELETE:
                        return
                    yield wr.header, ev.kv
        raise LostWatcherError()

    async def _first_put(self, rev: int) -> tuple[pb.ResponseHeader, KeyValue]:
        creq = pb.WatchCreateRequest(key=self.prefix, range_end=prefix_end(self.prefix), start_revision=rev)
        async with contextlib.aclosing(self._c.watch(creq)) as w:
            async for wr in w:
                for ev in wr.events:
                    if ev.type == Event.PUT:
                        header = pb.ResponseHeader()
                        header.CopyFrom(wr.header)
                        header.revision = ev.kv.mod_revision
                        return header, ev.kv
        raise LostWatcherError()
