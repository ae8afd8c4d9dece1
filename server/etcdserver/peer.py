"""What members ask each other (server/api/peerpb/peer.proto), and the one table of the domain
errors an answer carries back: the asking member raises the same error the answering one met.

Codes are part of the protocol between members: never renumber one, only add.
"""

from __future__ import annotations

from typing import NoReturn

from server.api.peerpb import peer_pb2 as peerpb
from server.errors import EtcdError
from server.etcdserver import errors as se
from server.etcdserver import membership as ms
from server.lease.lessor import LeaseNotFoundError

__all__ = ["PEER_ERRORS", "PeerRequestError", "error_response", "raise_error"]

PEER_ERRORS: dict[int, type[EtcdError]] = {
    1: LeaseNotFoundError,
    2: se.LearnerNotReadyError,
    3: ms.MemberNotFoundError,
    4: ms.MemberNotLearnerError,
    5: se.NotEnoughStartedMembersError,
    6: se.NotLeaderError,
    7: se.NoLeaderError,
    8: se.TimeoutError_,
    9: se.StoppedError,
    10: se.ProposalDroppedError,
    11: se.UnhealthyError,
}
_CODES = {cls: code for code, cls in PEER_ERRORS.items()}


class PeerRequestError(EtcdError):
    """The other member failed with an error the table does not know."""


def error_response(e: Exception) -> peerpb.PeerResponse:
    code = next((_CODES[c] for c in type(e).__mro__ if c in _CODES), 0)
    return peerpb.PeerResponse(error=peerpb.PeerError(code=code, message=str(e) or type(e).__name__))


def raise_error(err: peerpb.PeerError) -> NoReturn:
    cls = PEER_ERRORS.get(err.code)
    if cls is None:
        raise PeerRequestError(err.message)
    raise cls(err.message)
