"""etcd's TokenProvider (server/auth/store.go): what --auth-token selects.

simple                                   TokenSimple: random tokens held by every member
jwt,sign-method=RS256,priv-key=..,...    TokenJWT: signed, self-contained tokens
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from server.auth.errors import InvalidAuthOptsError
from server.auth.jwt import TokenJWT
from server.auth.simple_token import TokenSimple

__all__ = ["TokenProvider", "new_token_provider"]

log = logging.getLogger(__name__)


class TokenProvider(Protocol):
    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def invalidate_user(self, username: str) -> None: ...

    def gen_token_prefix(self) -> str:
        """What the proposing member puts in the Authenticate entry ("" when unused)."""
        ...

    def index_of(self, token: str) -> int | None:
        """The raft index a member must have applied before it can know token (0: none), or None
        when token cannot be one of this provider's."""
        ...

    def assign(self, username: str, prefix: str, index: int, revision: int) -> str:
        """The token for username, issued by the apply of the Authenticate entry at index."""
        ...

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        """(user name, auth revision) of a valid token, else None; revision is the store's."""
        ...


def new_token_provider(
    opts: str,
    ttl: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> TokenProvider:
    """etcd's NewTokenProvider for --auth-token (ttl: --auth-token-ttl, simple tokens only)."""
    kind, *rest = opts.split(",")
    options: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidAuthOptsError(f"{item!r} is not key=value")
        if key in options:
            raise InvalidAuthOptsError(f"{key} is given twice")
        options[key] = value
    if kind == "simple":
        return TokenSimple(ttl, clock=clock)
    if kind == "jwt":
        provider = TokenJWT(options, wall=wall)
        if provider.unknown_options:
            log.warning("unknown JWT options", extra={"keys": provider.unknown_options})
        return provider
    raise InvalidAuthOptsError(f"unknown token type {kind!r}")
