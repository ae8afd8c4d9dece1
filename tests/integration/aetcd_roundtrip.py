"""A put/get/txn/watch/lease round trip with the aetcd client (run by test_aetcd_client.py).

Run in its own process: aetcd ships its own copy of etcd's protos under the same protobuf
package names as petcd's, so it must not share a process with petcd's generated code.

    python tests/integration/aetcd_roundtrip.py HOST PORT

Prints one JSON object per step ({"step": ..., ...facts}) and finally "ROUNDTRIP OK"; any failed
check raises, printing a traceback and exiting non-zero.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from typing import Any

import aetcd


def report(step: str, **facts: Any) -> None:
    print(json.dumps({"step": step, **facts}, default=str), flush=True)


async def next_events(watch: aetcd.Watch, n: int, timeout: float = 10.0) -> list[aetcd.Event]:
    out: list[aetcd.Event] = []

    async def collect() -> None:
        async for ev in watch:
            out.append(ev)
            if len(out) == n:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


def ev_facts(evs: list[aetcd.Event]) -> list[list[Any]]:
    return [
        [
            ev.kind,
            ev.kv.key.decode(),
            ev.kv.value.decode(),
            ev.kv.mod_revision,
            # aetcd wraps the (possibly empty) prev_kv message whenever prev_kv was asked for
            ev.prev_kv.value.decode() if ev.prev_kv and ev.prev_kv.key else None,
        ]
        for ev in evs
    ]


async def main(host: str, port: int) -> None:
    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        # -- put / get / delete / txn ---------------------------------------------------------------
        r = await c.put(b"rt/a", b"1")
        rev0 = r.header.revision
        r = await c.put(b"rt/a", b"2", prev_kv=True)
        assert r.prev_kv is not None and r.prev_kv.value == b"1", r
        got = await c.get(b"rt/a")
        assert got is not None and got.value == b"2" and got.version == 2, got
        assert await c.get(b"rt/missing") is None
        await c.put(b"rt/b", b"3")
        rng = await c.get_prefix(b"rt/")
        assert [kv.key for kv in rng] == [b"rt/a", b"rt/b"], list(rng)
        ok, responses = await c.transaction(
            compare=[c.transactions.value(b"rt/a") == b"2"],
            success=[c.transactions.put(b"rt/c", b"txn"), c.transactions.get(b"rt/a")],
            failure=[],
        )
        assert ok and responses[1][0][0] == b"2", (ok, responses)
        ok, _ = await c.transaction(compare=[c.transactions.version(b"rt/a") == 99], success=[], failure=[])
        assert not ok
        d = await c.delete(b"rt/c", prev_kv=True)
        assert d is not None and d.deleted == 1 and d.prev_kv is not None and d.prev_kv.value == b"txn", d
        report("kv", first_revision=rev0, keys=[kv.key.decode() for kv in rng])

        # -- watch: live events, prev_kv, a txn revision, delete ---------------------------------
        w = await c.watch(b"w/", range_end=b"w0", prev_kv=True)
        base = (await c.put(b"w/x", b"1")).header.revision
        await c.put(b"w/x", b"2")
        await c.transaction(
            compare=[],
            success=[c.transactions.put(b"w/y", b"3"), c.transactions.put(b"w/z", b"4")],
            failure=[],
        )
        await c.delete(b"w/x")
        evs = await next_events(w, 5)
        await w.cancel()
        facts = ev_facts(evs)
        assert facts == [
            ["PUT", "w/x", "1", base, None],
            ["PUT", "w/x", "2", base + 1, "1"],
            ["PUT", "w/y", "3", base + 2, None],
            ["PUT", "w/z", "4", base + 2, None],
            ["DELETE", "w/x", "", base + 3, "2"],
        ], facts
        report("watch", events=facts)

        # -- watch from history, watch_once ----------------------------------------------------
        h = await c.watch(b"w/x", start_revision=base)
        hist = ev_facts(await next_events(h, 3))
        await h.cancel()
        assert [e[:4] for e in hist] == [
            ["PUT", "w/x", "1", base],
            ["PUT", "w/x", "2", base + 1],
            ["DELETE", "w/x", "", base + 3],
        ], hist
        once = asyncio.create_task(c.watch_once(b"w/once", timeout=10))
        deadline = time.monotonic() + 10
        while not once.done() and time.monotonic() < deadline:
            await c.put(b"w/once", b"hello")  # until the watch exists and sees one
            await asyncio.sleep(0.1)
        ev = await once
        assert ev.kind == "PUT" and ev.kv.value == b"hello", ev
        try:
            await c.watch_once(b"w/never", timeout=0.5)
            raise AssertionError("watch_once did not time out")
        except aetcd.WatchTimeoutError:
            pass
        report("watch_history", events=hist)

        # -- leases: grant, attach, keys, keep-alive, revoke, expiry -----------------------------
        lease = await c.lease(30)
        assert lease.ttl == 30 and lease.id > 0, lease
        await c.put(b"l/a", b"1", lease=lease)
        await c.put(b"l/b", b"2", lease=lease.id)
        got = await c.get(b"l/a")
        assert got is not None and got.lease == lease.id, got
        assert sorted(await lease.keys()) == [b"l/a", b"l/b"]
        assert 28 <= await lease.remaining_ttl() <= 30 and await lease.granted_ttl() == 30
        reply = await lease.refresh()
        assert reply.TTL == 30, reply
        assert reply.ID == lease.id, reply  # noqa: SIM300
        await lease.revoke()
        assert await c.get(b"l/a") is None and await c.get(b"l/b") is None
        info = await c.get_lease_info(lease.id)
        assert info.TTL == -1, info
        chosen = await c.lease(30, lease_id=0x5EED)
        assert chosen.id == 0x5EED
        try:
            await c.lease(30, lease_id=0x5EED)
            raise AssertionError("a duplicate lease ID was granted")
        except aetcd.ClientError as e:
            dup_error = f"{type(e).__name__}: {e}"
        await chosen.revoke()
        short = await c.lease(2)
        exp = await c.watch(b"exp/", range_end=b"exp0")
        await c.put(b"exp/1", b"1", lease=short)
        await c.put(b"exp/2", b"2", lease=short)
        evs = await next_events(exp, 4, timeout=15)  # 2 puts, then 2 deletes when it expires
        await exp.cancel()
        deletes = [e for e in evs if e.kind == "DELETE"]
        assert len(deletes) == 2 and deletes[0].kv.mod_revision == deletes[1].kv.mod_revision, ev_facts(evs)
        assert await c.get(b"exp/1") is None
        # (revisions vary: watch_once above wrote until its watch saw a put)
        report("lease", duplicate_error=dup_error, expired=[e[:3] for e in ev_facts(deletes)])

        # -- compaction: a watch on a compacted revision fails -----------------------------------
        status = await c.status()
        cur = (await c.put(b"rt/last", b"x")).header.revision
        await c.compact(cur, physical=True)
        try:
            cw = await c.watch(b"rt/a", start_revision=rev0)
            await next_events(cw, 1, timeout=10)
            raise AssertionError("a watch on a compacted revision did not fail")
        except aetcd.RevisionCompactedError as e:
            compacted = str(e)
        report("compaction", compacted_error=compacted, version=status.version)

        # -- snapshot (python-etcd3's and aetcd's test_snapshot: the file is for etcdutl) -----------
        with tempfile.NamedTemporaryFile(prefix="aetcd-snapshot-", suffix=".db", delete=False) as f:
            await c.snapshot(f)
        report("snapshot", path=f.name)
    print("ROUNDTRIP OK", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
