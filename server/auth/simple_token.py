"""Simple tokens (etcd's server/auth/simple_token.go): "<16 random letters>.<raft index>".

The proposing member draws the random prefix and carries it in the Authenticate entry
(InternalAuthenticateRequest.simple_token); every member applying the entry installs the same
token for the user, so a token works on any member once that member has applied the entry (a
member asked about a token waits until its applied index reaches the token's index). A token
lives --auth-token-ttl seconds (300) after its last use; expiry is checked against the
injected clock (etcd sweeps once a second). Disabling auth, deleting a user or changing its
password drops its tokens.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

__all__ = ["DEFAULT_SIMPLE_TOKEN_LENGTH", "SIMPLE_TOKEN_TTL_DEFAULT", "TokenSimple", "token_index"]

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_SIMPLE_TOKEN_LENGTH = 16
SIMPLE_TOKEN_TTL_DEFAULT = 300.0


def token_index(token: str) -> int | None:
    """The raft index in a simple token, or None if it is not one (etcd's isValidSimpleToken
    syntax: exactly one dot, a base-10 uint64 after it)."""
    parts = token.split(".")
    if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    index = int(parts[1])
    return index if index < 1 << 64 else None


class TokenSimple:
    def __init__(
        self, ttl: float = SIMPLE_TOKEN_TTL_DEFAULT, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl if ttl > 0 else SIMPLE_TOKEN_TTL_DEFAULT
        self._clock = clock
        self.enabled = False
        # token -> (user name, deadline)
        self._tokens: dict[str, tuple[str, float]] = {}

    def gen_token_prefix(self) -> str:
        return "".join(secrets.choice(LETTERS) for _ in range(DEFAULT_SIMPLE_TOKEN_LENGTH))

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False
        self._tokens.clear()

    def index_of(self, token: str) -> int | None:
        return token_index(token)

    def assign(self, username: str, prefix: str, index: int, revision: int = 0) -> str:
        token = f"{prefix}.{index}"
        if self.enabled:
            self._tokens[token] = (username, self._clock() + self.ttl)
        return token

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, (_, deadline) in self._tokens.items() if now > deadline]:
            del self._tokens[token]

    def info(self, token: str, revision: int = 0) -> tuple[str, int] | None:
        """The user a live token was assigned to (its TTL restarts) and the store's current
        revision, else None."""
        self._expire()
        hit = self._tokens.get(token)
        if hit is None:
            return None
        self._tokens[token] = (hit[0], self._clock() + self.ttl)
        return hit[0], revision

    def invalidate_user(self, username: str) -> None:
        for token in [t for t, (name, _) in self._tokens.items() if name == username]:
            del self._tokens[token]

    def __len__(self) -> int:
        self._expire()
        return len(self._tokens)
