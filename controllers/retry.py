"""Retries: client-go's RetryOnConflict (the kubernetes client's 1:1 port, re-exported), an
exponential reconnect backoff for list/watch, and error classification.

retry_on_conflict(fn, backoff) calls fn up to backoff.steps times while it raises 409 Conflict,
sleeping between attempts as k8s.io/apimachinery's wait.Backoff does:

    DEFAULT_RETRY   = Backoff(steps=5, duration=10ms, factor=1.0, jitter=0.1)
        "multiple clients making changes to the same resource"
    DEFAULT_BACKOFF = Backoff(steps=4, duration=10ms, factor=5.0, jitter=0.1)
        "resources under active management by one or more controllers"

fn must re-GET the object on every attempt (that is what makes the retry correct: each attempt
writes with the resourceVersion it just read). After the last attempt the Conflict is raised
to the caller, which requeues the work item (rate-limited) as a client-go controller does.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.utils._retry_base import DEFAULT_BACKOFF, DEFAULT_RETRY, Backoff
from kubernetes.utils.retry import on_error
from kubernetes.utils.retry import retry_on_conflict as _retry_on_conflict

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRY",
    "ApiException",
    "Backoff",
    "ExponentialBackoff",
    "is_conflict",
    "is_gone",
    "is_not_found",
    "is_transient",
    "message_of",
    "on_error",
    "retry_on_conflict",
    "status_of",
]

T = TypeVar("T")


def status_of(e: BaseException) -> int | None:
    status = getattr(e, "status", None)
    return status if isinstance(status, int) else None


def is_conflict(e: BaseException) -> bool:
    return status_of(e) == 409


def is_not_found(e: BaseException) -> bool:
    return status_of(e) == 404


def is_gone(e: BaseException) -> bool:
    return status_of(e) == 410


TRANSIENT_ERRORS = (
    urllib3.exceptions.HTTPError,  # MaxRetryError, ProtocolError, ReadTimeoutError, NewConnectionError
    ConnectionError,
    TimeoutError,
    socket.timeout,
    ssl.SSLError,
)


def is_transient(e: BaseException) -> bool:
    """The apiserver is unreachable, overloaded or restarting: retry after a backoff.
    (429 Too Many Requests, 5xx, 0 = no HTTP answer, and connection-level errors.)"""
    if isinstance(e, ApiException):
        status = status_of(e)
        return status in (None, 0, 429) or (status is not None and status >= 500)
    return isinstance(e, TRANSIENT_ERRORS)


def retry_on_conflict(
    fn: Callable[[], T],
    backoff: Backoff = DEFAULT_RETRY,
    on_conflict: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """kubernetes.utils.retry.retry_on_conflict (client-go's RetryOnConflict), calling
    on_conflict(error) for every 409 seen (for metrics and logs) before the retry decision."""
    if on_conflict is None:
        return _retry_on_conflict(fn, backoff, sleep_func=sleep)
    report = on_conflict

    def attempt() -> T:
        try:
            return fn()
        except Exception as e:
            if is_conflict(e):
                report(e)
            raise

    return _retry_on_conflict(attempt, backoff, sleep_func=sleep)


class ExponentialBackoff:
    """Delays for reconnecting after an error: initial * factor^n with up to `jitter` * delay
    added, capped at `cap`; back to `initial` once `reset_after` seconds passed without a
    failure (client-go's reflector: 800 ms, x2, at most 30 s, reset after 2 min)."""

    def __init__(
        self,
        initial: float = 0.8,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 1.0,
        reset_after: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.cap, self.factor, self.jitter = initial, cap, factor, jitter
        self.reset_after = reset_after
        self.clock = clock
        self.rand = rand
        self._next = initial
        self._last_failure: float | None = None

    def next(self) -> float:
        now = self.clock()
        if self._last_failure is not None and now - self._last_failure > self.reset_after:
            self._next = self.initial
        self._last_failure = now
        base = self._next
        self._next = min(self.cap, self._next * self.factor)
        return min(self.cap, base + self.jitter * base * self.rand())

    def reset(self) -> None:
        self._next = self.initial
        self._last_failure = None


def message_of(e: BaseException) -> str:
    """The apiserver's Status message of an API error (else the error's text), shortened."""
    body = getattr(e, "body", None)
    if isinstance(body, (str, bytes)) and body:
        try:
            msg = json.loads(body).get("message")
        except (ValueError, AttributeError):
            msg = None
        if msg:
            return str(msg)[:300]
    if isinstance(e, ApiException):
        return str(getattr(e, "reason", "") or "")[:300]
    return str(e)[:300]


def describe(e: BaseException) -> dict[str, Any]:
    """Log fields for an error: status, reason and the apiserver's message for API errors, the
    type and text otherwise."""
    if isinstance(e, ApiException):
        return {"status": status_of(e), "reason": getattr(e, "reason", None), "error": message_of(e)}
    return {"error_type": type(e).__name__, "error": message_of(e)}
