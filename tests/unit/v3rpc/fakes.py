"""Fakes shared by the v3rpc unit tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Status:
    """RaftStatus of a member that leads a one-member cluster (server.etcdserver.api)."""

    cluster_id: int = 0xC1
    member_id: int = 0x3E
    term: int = 7
    leader_id: int = 0x3E
    is_learner: bool = False
