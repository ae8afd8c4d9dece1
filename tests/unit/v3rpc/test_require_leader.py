"""A bidirectional stream carrying hasleader=true (server/v3rpc/interceptor.py), on a member
whose leader we set by hand, election timeout 0.1 s.

We test these aspects:
- responses pass through as the handler yields them while the member has a leader;
- the member without a leader for more than an election timeout: the stream ends with etcd's
  "no leader" status, whether the handler was waiting for its next response or the consumer
  held the stream; the handler's cleanup runs and the task is left uncancelled;
- a leader back within the timeout keeps the stream;
- a cancel from outside stays a cancel (no status of ours), the handler's cleanup runs;
- a stream opened without a leader is refused at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from server.v3rpc.interceptor import CallDetails, EtcdInterceptor

TIMEOUT = 0.1
NO_LEADER = (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")


class Status:
    def __init__(self) -> None:
        self.leader_id = 1
        self.is_learner = False


class Auth:
    enabled = False


class Context:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.status = (code, details)
        raise grpc.aio.AbortError("Locally aborted.")


class Handler:
    """The inner handler: yields what is put in its queue (None ends it)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    async def stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        try:
            while (item := await self.queue.get()) is not None:
                yield item
        finally:
            self.closed = True


async def wrapped(status: Status, handler: Handler) -> Any:
    interceptor = EtcdInterceptor(status, Auth(), election_timeout_s=TIMEOUT, client_cert_auth=False)  # type: ignore[arg-type]
    inner: Any = grpc.stream_stream_rpc_method_handler(handler.stream)

    async def continuation(_: grpc.HandlerCallDetails) -> Any:
        return inner

    details = CallDetails("/etcdserverpb.Watch/Watch", (("hasleader", "true"),))
    out: Any = await interceptor.intercept_service(continuation, details)
    assert out is not inner
    return out.stream_stream


async def consume(stream: Any, context: Context, got: list[Any], hold: asyncio.Event | None = None) -> None:
    async for resp in stream(None, context):
        got.append(resp)
        if hold is not None:
            await hold.wait()


async def test_responses_pass_while_there_is_a_leader() -> None:
    status, handler, context = Status(), Handler(), Context()
    got: list[Any] = []
    for i in range(3):
        handler.queue.put_nowait(i)
    handler.queue.put_nowait(None)
    await consume(await wrapped(status, handler), context, got)
    assert got == [0, 1, 2]
    assert context.status is None and handler.closed


async def test_no_leader_ends_a_waiting_stream() -> None:
    status, handler, context = Status(), Handler(), Context()
    got: list[Any] = []
    handler.queue.put_nowait("a")
    task = asyncio.create_task(consume(await wrapped(status, handler), context, got))
    await asyncio.sleep(TIMEOUT)
    status.leader_id = 0
    with pytest.raises(grpc.aio.AbortError):
        await asyncio.wait_for(task, 10 * TIMEOUT)
    assert got == ["a"]
    assert context.status == NO_LEADER
    assert handler.closed
    assert task.cancelling() == 0


async def test_no_leader_ends_a_held_stream_when_it_resumes() -> None:
    status, handler, context = Status(), Handler(), Context()
    got: list[Any] = []
    hold = asyncio.Event()
    handler.queue.put_nowait("a")
    handler.queue.put_nowait("b")
    task = asyncio.create_task(consume(await wrapped(status, handler), context, got, hold))
    while not got:
        await asyncio.sleep(0)
    status.leader_id = 0
    await asyncio.sleep(3 * TIMEOUT)
    assert not task.done() and got == ["a"]  # the consumer's wait is not cut short
    hold.set()
    with pytest.raises(grpc.aio.AbortError):
        await asyncio.wait_for(task, 10 * TIMEOUT)
    assert got == ["a"]
    assert context.status == NO_LEADER
    assert handler.closed


async def test_a_leader_back_in_time_keeps_the_stream() -> None:
    status, handler, context = Status(), Handler(), Context()
    got: list[Any] = []
    task = asyncio.create_task(consume(await wrapped(status, handler), context, got))
    await asyncio.sleep(TIMEOUT / 10)  # the stream is open
    for _ in range(5):
        status.leader_id = 0
        await asyncio.sleep(TIMEOUT / 2)
        status.leader_id = 1
        await asyncio.sleep(TIMEOUT)
    handler.queue.put_nowait("a")
    handler.queue.put_nowait(None)
    await asyncio.wait_for(task, 10 * TIMEOUT)
    assert got == ["a"] and context.status is None


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    status, handler, context = Status(), Handler(), Context()
    task = asyncio.create_task(consume(await wrapped(status, handler), context, []))
    await asyncio.sleep(TIMEOUT / 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert context.status is None and handler.closed


async def test_a_stream_opened_without_a_leader_is_refused() -> None:
    status, handler, context = Status(), Handler(), Context()
    status.leader_id = 0
    with pytest.raises(grpc.aio.AbortError):
        await consume(await wrapped(status, handler), context, [])
    assert context.status == NO_LEADER
