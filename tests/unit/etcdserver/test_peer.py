"""Requests between members (server/api/peerpb, server/etcdserver/peer.py) over a real peer
transport on loopback.

We test these aspects:
- every error of the table comes back as its own class on the asking side, subclasses by their
  base's code, anything else as PeerRequestError with its message;
- a PeerRequest goes over a request connection and its PeerResponse comes back, with etcd's own
  messages as payloads (a lease keep-alive here); an answer that is not a PeerResponse is a
  TransportError, not a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.peerpb.peer_pb2 import PeerRequest, PeerResponse
from server.etcdserver import peer
from server.etcdserver.transport import PeerHandler, Transport, TransportError, _frame, peer_request
from server.lease.lessor import LeaseNotFoundError


@pytest.mark.parametrize("code", sorted(peer.PEER_ERRORS))
def test_every_error_comes_back_as_itself(code: int) -> None:
    cls = peer.PEER_ERRORS[code]
    resp = peer.error_response(cls())
    assert resp.error.code == code
    with pytest.raises(cls):
        peer.raise_error(resp.error)


def test_unknown_errors_keep_their_message() -> None:
    class NotInTheTable(LeaseNotFoundError):
        pass

    assert (
        peer.error_response(NotInTheTable()).error.code
        == peer.error_response(LeaseNotFoundError()).error.code
    )
    resp = peer.error_response(ValueError("boom"))
    assert (resp.error.code, resp.error.message) == (0, "boom")
    with pytest.raises(peer.PeerRequestError, match="boom"):
        peer.raise_error(resp.error)


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    async def on_request(req: PeerRequest) -> PeerResponse:
        if req.WhichOneof("request") != "lease_keep_alive":
            return peer.error_response(ValueError("unexpected"))
        lease_id = req.lease_keep_alive.ID
        if lease_id != 7:
            return peer.error_response(LeaseNotFoundError())
        return PeerResponse(lease_keep_alive=pb.LeaseKeepAliveResponse(ID=lease_id, TTL=60))

    async def on_snapshot(*args: object) -> None:
        raise AssertionError("no snapshots here")

    t = Transport(
        1,
        lambda: 0xC1,
        PeerHandler(
            cluster_id=lambda: 0xC1,
            is_removed=lambda member_id: False,
            on_message=lambda m: None,
            on_snapshot=on_snapshot,
            on_request=on_request,
        ),
        report_unreachable=lambda peer_id: None,
        report_snapshot=lambda peer_id, failed: None,
        snapshot_source=lambda: asyncio.sleep(0, b""),
    )
    await t.listen(["http://127.0.0.1:0"])
    yield t
    await t.stop()


async def test_a_request_and_its_answer(transport: Transport) -> None:
    url = f"http://127.0.0.1:{transport.ports[0]}"
    resp = await peer_request(url, PeerRequest(lease_keep_alive=pb.LeaseKeepAliveRequest(ID=7)))
    assert (resp.lease_keep_alive.ID, resp.lease_keep_alive.TTL) == (7, 60)
    resp = await peer_request(url, PeerRequest(lease_keep_alive=pb.LeaseKeepAliveRequest(ID=8)))
    with pytest.raises(LeaseNotFoundError):
        peer.raise_error(resp.error)


async def test_an_answer_that_is_not_a_peer_response() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6 + 1 + 8 + 8)  # the handshake
        writer.write(b"\x00" + _frame(b"\xff\xff\xff"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransportError):
            await peer_request(f"http://127.0.0.1:{port}", PeerRequest(member_list=pb.MemberListRequest()))
    finally:
        server.close()
        await server.wait_closed()
