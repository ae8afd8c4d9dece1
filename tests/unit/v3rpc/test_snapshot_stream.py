"""Maintenance.Snapshot does not hold up other requests: the database is built on a thread and
sent in chunks, so a put is served while a large snapshot is being built and while it is being
sent (an in-process member, its real gRPC server, an asyncio gRPC client)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.backend.bbolt import BboltReader, BucketHandle
from server.embed.etcd import Etcd
from tests.framework.wait import await_until
from tests.unit.httpapi.conftest import member_config

KEYS = 250_000  # about a second of building on an idle machine; a put takes milliseconds


async def test_puts_are_served_while_a_large_snapshot_is_built_and_sent(tmp_path: Path) -> None:
    cfg = member_config(tmp_path)
    async with Etcd(cfg) as e:
        store = e.server.kv
        w = store.write()
        for i in range(KEYS):
            w.put(b"k/%08d" % i, b"v" * 100, 0)
        w.end()
        e.server.backend.force_commit()
        snap_dir = Path(cfg.backend_path).parent
        async with grpc.aio.insecure_channel(f"127.0.0.1:{e.client_ports[0]}") as ch:
            kv, maint = pb_grpc.KVStub(ch), pb_grpc.MaintenanceStub(ch)
            stream = maint.Snapshot(pb.SnapshotRequest())
            events: list[str] = []

            async def first_chunk() -> pb.SnapshotResponse:
                r = await stream.read()
                events.append("chunk")
                return r  # type: ignore[return-value]

            first = asyncio.create_task(first_chunk())
            # the member is building the snapshot: its file exists and nothing has been sent
            await await_until(lambda: any(snap_dir.glob("snapshot-*.tmp")))
            await kv.Put(pb.PutRequest(key=b"during-build", value=b"1"), timeout=30)
            events.append("put")
            head = await first
            assert events == ["put", "chunk"], "the put waited for the snapshot to be built"
            # the client reads nothing for now: the stream waits, requests do not
            await kv.Put(pb.PutRequest(key=b"during-send", value=b"2"), timeout=30)
            blobs = [head.blob]
            assert head.remaining_bytes > 0
            while True:
                r = await stream.read()
                if r is grpc.aio.EOF:
                    break
                assert isinstance(r, pb.SnapshotResponse)
                blobs.append(r.blob)
    db, digest = b"".join(blobs[:-1]), blobs[-1]
    assert hashlib.sha256(db).digest() == digest and len(db) % 512 == 0
    (tmp_path / "s.db").write_bytes(db)
    with BboltReader.open(tmp_path / "s.db") as r:
        key = dict(r.items())[b"key"]
        assert isinstance(key, BucketHandle)
        assert sum(1 for _ in r.items(key)) >= KEYS
    assert not list(snap_dir.glob("snapshot-*.tmp"))  # the temporary file is gone
