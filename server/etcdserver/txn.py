"""Range, Put, DeleteRange and Txn over MVCC (etcd's server/etcdserver/txn).

These run inside the apply loop (writes) or directly on a read view (reads); they take the
replicated request messages and return response messages without headers filled beyond the
revision (the gRPC edge adds cluster/member IDs and term).

Work is done once: a put reads the key's previous record once, inside its write transaction,
and only when it needs it (ignore_value, ignore_lease, prev_kv); a txn applied where nobody
waits for its answer skips its ranges (etcd's SkipRangeExecution): they change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.mvccpb.kv_pb2 import KeyValue
from server.etcdserver.errors import KeyNotFoundError
from server.lease.lessor import NO_LEASE, LeaseNotFoundError
from server.mvcc.kv import KV, CompactedError, FutureRevError, RangeOptions, ReadView, TxnRead, TxnWrite

__all__ = ["LeaseLookup", "delete_range", "is_txn_readonly", "mk_gte_range", "put", "range_", "txn"]


class LeaseLookup(Protocol):
    def lookup(self, lease_id: int) -> object | None: ...


def mk_gte_range(range_end: bytes) -> bytes | None:
    """The request's range_end in MVCC's convention: b"" (single key) -> None;
    b"\\0" (every key >= key) -> b""; otherwise unchanged."""
    if not range_end:
        return None
    if range_end == b"\x00":
        return b""
    return range_end


# -- Range ----------------------------------------------------------------------------------------

_SORT_KEYS: dict[int, Callable[[KeyValue], object]] = {
    pb.RangeRequest.KEY: lambda kv: kv.key,
    pb.RangeRequest.VERSION: lambda kv: kv.version,
    pb.RangeRequest.CREATE: lambda kv: kv.create_revision,
    pb.RangeRequest.MOD: lambda kv: kv.mod_revision,
    pb.RangeRequest.VALUE: lambda kv: kv.value,
}


# the options of a range at the view's revision with every key's record (the common read)
_LATEST = RangeOptions()


def range_(rv: ReadView, r: pb.RangeRequest) -> pb.RangeResponse:
    if not (
        r.limit
        or r.sort_order
        or r.sort_target
        or r.keys_only
        or r.min_mod_revision
        or r.max_mod_revision
        or r.min_create_revision
        or r.max_create_revision
    ):
        # nothing to filter, sort, cut or strip: MVCC's answer as it is
        ro = RangeOptions(rev=r.revision, count=r.count_only) if r.revision or r.count_only else _LATEST
        rr = rv.range(r.key, mk_gte_range(r.range_end), ro)
        resp = pb.RangeResponse(kvs=rr.kvs, count=rr.count)
        resp.header.revision = rr.rev
        return resp
    filtered = bool(
        r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision
    )
    limit = 0 if (r.sort_order != pb.RangeRequest.NONE or filtered) else r.limit
    if limit > 0:
        limit += 1  # one more to know whether there are more
    rr = rv.range(
        r.key, mk_gte_range(r.range_end), RangeOptions(limit=limit, rev=r.revision, count=r.count_only)
    )
    kvs = rr.kvs
    if filtered:
        kvs = [
            kv
            for kv in kvs
            if not (r.max_mod_revision and kv.mod_revision > r.max_mod_revision)
            and not (r.min_mod_revision and kv.mod_revision < r.min_mod_revision)
            and not (r.max_create_revision and kv.create_revision > r.max_create_revision)
            and not (r.min_create_revision and kv.create_revision < r.min_create_revision)
        ]
    order = r.sort_order
    if r.sort_target != pb.RangeRequest.KEY and order == pb.RangeRequest.NONE:
        order = pb.RangeRequest.ASCEND
    elif r.sort_target == pb.RangeRequest.KEY and order == pb.RangeRequest.ASCEND:
        order = pb.RangeRequest.NONE  # MVCC already returns keys in ascending order
    if order != pb.RangeRequest.NONE:
        kvs = sorted(kvs, key=_SORT_KEYS[r.sort_target], reverse=order == pb.RangeRequest.DESCEND)  # type: ignore[arg-type]
    resp = pb.RangeResponse(count=rr.count)
    resp.header.revision = rr.rev
    if r.limit > 0 and len(kvs) > r.limit:
        kvs = kvs[: r.limit]
        resp.more = True
    if r.keys_only:
        for kv in kvs:
            kv.ClearField("value")
    resp.kvs.extend(kvs)
    return resp


# -- Put / DeleteRange ----------------------------------------------------------------------------


def put(kv: KV, lessor: LeaseLookup, p: pb.PutRequest) -> pb.PutResponse:
    """etcd's txn.Put: the lease must exist, then the put runs in its own write transaction."""
    if p.lease != NO_LEASE and lessor.lookup(p.lease) is None:
        raise LeaseNotFoundError()
    tw = kv.write()
    try:
        return _put(tw, p)
    finally:
        tw.end()


def _put(tw: TxnWrite, p: pb.PutRequest) -> pb.PutResponse:
    value, lease = p.value, p.lease
    prev: KeyValue | None = None
    if p.ignore_value or p.ignore_lease or p.prev_kv:
        kvs = tw.range(p.key, None, RangeOptions()).kvs
        prev = kvs[0] if kvs else None
        if (p.ignore_value or p.ignore_lease) and prev is None:
            raise KeyNotFoundError()
    resp = pb.PutResponse()
    if prev is not None:
        if p.ignore_value:
            value = prev.value
        if p.ignore_lease:
            lease = prev.lease
        if p.prev_kv:
            resp.prev_kv.CopyFrom(prev)
    resp.header.revision = tw.put(p.key, value, lease)
    return resp


def delete_range(kv: KV, dr: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
    tw = kv.write()
    try:
        return _delete_range(tw, dr)
    finally:
        tw.end()


def _delete_range(tw: TxnWrite, dr: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
    end = mk_gte_range(dr.range_end)
    resp = pb.DeleteRangeResponse()
    if dr.prev_kv:
        resp.prev_kvs.extend(tw.range(dr.key, end, RangeOptions()).kvs)
    resp.deleted, resp.header.revision = tw.delete_range(dr.key, end)
    return resp


def _check_put(rv: ReadView, lessor: LeaseLookup, p: pb.PutRequest) -> None:
    """Errors a txn's put would hit, found before anything is written (etcd's checkPut)."""
    if (p.ignore_value or p.ignore_lease) and not rv.range(p.key, None, RangeOptions()).kvs:
        raise KeyNotFoundError()
    if p.lease != NO_LEASE and lessor.lookup(p.lease) is None:
        raise LeaseNotFoundError()


# -- Txn ------------------------------------------------------------------------------------------


def is_txn_readonly(r: pb.TxnRequest) -> bool:
    return all(op.HasField("request_range") for op in (*r.success, *r.failure))


def txn(kv: KV, lessor: LeaseLookup, r: pb.TxnRequest, *, skip_ranges: bool = False) -> pb.TxnResponse:
    """Evaluate the compares (nested txns too) on one view, check the chosen branches, then run
    them in one write transaction (or a read view when there is nothing to write). skip_ranges:
    nobody reads the answer, so the ranges are not executed (their responses stay empty)."""
    is_write = not is_txn_readonly(r)
    view = kv.read()
    path = _compare_to_path(view, r)
    _check_txn(view, lessor, r, path)
    tx: TxnRead | TxnWrite = kv.write() if is_write else view
    try:
        resp, _ = _execute(tx, r, path, skip_ranges)
        resp.header.revision = tx.rev()
    finally:
        tx.end()
    return resp


def _branch(r: pb.TxnRequest, succeeded: bool) -> Sequence[pb.RequestOp]:
    return r.success if succeeded else r.failure


def _compare_to_path(rv: ReadView, r: pb.TxnRequest) -> list[bool]:
    """The outcome of every txn's compares, depth first in op order: path[0] is this txn's."""
    ok = all(_apply_compare(rv, c) for c in r.compare)
    path = [ok]
    for op in _branch(r, ok):
        if op.HasField("request_txn"):
            path.extend(_compare_to_path(rv, op.request_txn))
    return path


def _apply_compare(rv: ReadView, c: pb.Compare) -> bool:
    try:
        kvs = rv.range(c.key, mk_gte_range(c.range_end), RangeOptions()).kvs
    except (CompactedError, FutureRevError):
        return False
    if not kvs:
        if c.target == pb.Compare.VALUE:
            return False
        return _compare_kv(c, KeyValue())
    return all(_compare_kv(c, kv) for kv in kvs)


def _compare_kv(c: pb.Compare, kv: KeyValue) -> bool:
    t = c.target
    a: object
    b: object
    if t == pb.Compare.VALUE:
        a, b = kv.value, c.value
    elif t == pb.Compare.CREATE:
        a, b = kv.create_revision, c.create_revision
    elif t == pb.Compare.MOD:
        a, b = kv.mod_revision, c.mod_revision
    elif t == pb.Compare.VERSION:
        a, b = kv.version, c.version
    elif t == pb.Compare.LEASE:
        a, b = kv.lease, c.lease
    else:
        return True
    result = (a > b) - (a < b)  # type: ignore[operator]
    res = c.result
    if res == pb.Compare.EQUAL:
        return result == 0
    if res == pb.Compare.NOT_EQUAL:
        return result != 0
    if res == pb.Compare.GREATER:
        return result > 0
    if res == pb.Compare.LESS:
        return result < 0
    return True


def _check_txn(rv: ReadView, lessor: LeaseLookup, r: pb.TxnRequest, path: list[bool]) -> int:
    """Raise the error the chosen branches would hit; returns how many nested txns it saw."""
    count = 0
    rest = path[1:]
    for op in _branch(r, path[0]):
        which = op.WhichOneof("request")
        if which == "request_range":
            rr = op.request_range
            if rr.revision > rv.rev():
                raise FutureRevError()
            if 0 < rr.revision < rv.first_rev():
                raise CompactedError()
        elif which == "request_put":
            _check_put(rv, lessor, op.request_put)
        elif which == "request_txn":
            n = _check_txn(rv, lessor, op.request_txn, rest)
            count += n + 1
            rest = rest[n + 1 :]
    return count


def _execute(
    tx: TxnRead | TxnWrite, r: pb.TxnRequest, path: list[bool], skip_ranges: bool
) -> tuple[pb.TxnResponse, int]:
    succeeded = path[0]
    resp = pb.TxnResponse(succeeded=succeeded)
    count = 0
    rest = path[1:]
    for op in _branch(r, succeeded):
        out = resp.responses.add()
        which = op.WhichOneof("request")
        if which == "request_range":
            if skip_ranges:
                out.response_range.SetInParent()
            else:
                out.response_range.CopyFrom(range_(tx, op.request_range))
        elif which == "request_put":
            out.response_put.CopyFrom(_put(tx, op.request_put))  # type: ignore[arg-type]
        elif which == "request_delete_range":
            out.response_delete_range.CopyFrom(_delete_range(tx, op.request_delete_range))  # type: ignore[arg-type]
        elif which == "request_txn":
            sub, n = _execute(tx, op.request_txn, rest, skip_ranges)
            sub.header.SetInParent()  # etcd sends nested txns an empty header
            out.response_txn.CopyFrom(sub)
            count += n + 1
            rest = rest[n + 1 :]
    return resp, count
