"""Faults as values: what a test asks for (FaultSpec), what is in force (Fault), and the set of
them on one member (Faults). No IO here: server/faults/inject.py acts on them.

Every fault is scoped, and ends by itself or when cleared:

    kind         conflict | latency | error | partition | watch_cut
    prefix       the keys it applies to: requests whose keys or ranges meet the prefix's range
    key          or one key exactly (instead of a prefix)
    methods      the KV methods it applies to (Range, Put, DeleteRange, Txn, Compact; all if absent)
    count        it is injected at most this many times (absent: no limit)
    probability  each chance injects it with this probability (absent: 1)
    ttl          seconds until it expires (absent: until cleared)

A fault that has run its count or expired stays listed (with what it injected) until cleared.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.errors import EtcdError
from server.etcdserver import errors as se
from server.v3rpc.errors import to_grpc_status

__all__ = [
    "ERRORS",
    "KINDS",
    "METHODS",
    "BadFaultError",
    "Fault",
    "FaultSpec",
    "Faults",
    "in_range",
    "prefix_end",
]

KINDS = ("conflict", "latency", "error", "partition", "watch_cut")
METHODS = ("Range", "Put", "DeleteRange", "Txn", "Compact")
# error name -> etcd's error (its gRPC code and message: server/v3rpc/errors.py)
ERRORS: dict[str, type[EtcdError]] = {
    "timeout": se.TimeoutError_,  # UNAVAILABLE "etcdserver: request timed out"
    "leader_changed": se.LeaderChangedError,  # UNAVAILABLE "etcdserver: leader changed"
    "too_many_requests": se.TooManyRequestsError,  # RESOURCE_EXHAUSTED "etcdserver: too many requests"
    "no_leader": se.NoLeaderError,  # UNAVAILABLE "etcdserver: no leader"
}
_FIELDS: dict[str, set[str]] = {
    "conflict": {"prefix", "key", "count", "probability", "ttl"},
    "latency": {"prefix", "key", "methods", "count", "probability", "ttl", "delay_ms"},
    "error": {"prefix", "key", "methods", "count", "probability", "ttl", "error"},
    "partition": {"peers", "count", "probability", "ttl"},
    "watch_cut": {"prefix", "key"},
}
_REQUIRED = {"latency": ("delay_ms",), "error": ("error",)}
# kinds that act on objects: a prefix or a key is required
_SCOPED = ("conflict", "watch_cut")
# a day: beyond it a delay or a ttl is a typo, not a test
_MAX_SECONDS = 86400.0


class BadFaultError(ValueError):
    """A fault that cannot be set, with one line saying why (HTTP 400)."""


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key with this prefix (b"": no such key, i.e. unbounded)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b""


def _number(doc: Mapping[str, Any], name: str) -> float | None:
    v = doc.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BadFaultError(f"{name} must be a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    prefix: bytes = b""  # b"": every key
    exact: bool = False  # prefix is one key, not a prefix
    methods: frozenset[str] = frozenset()  # empty: every method
    count: int | None = None
    probability: float = 1.0
    ttl: float | None = None
    delay: float = 0.0  # latency, seconds
    error: str = ""  # error: a name in ERRORS
    peers: frozenset[int] = frozenset()  # partition: member IDs; empty: every peer

    @classmethod
    def from_json(cls, doc: object) -> FaultSpec:
        if not isinstance(doc, dict):
            raise BadFaultError("a fault is a JSON object")
        kind = doc.get("kind")
        if kind not in _FIELDS:
            raise BadFaultError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
        unknown = sorted(set(doc) - _FIELDS[kind] - {"kind"})
        if unknown:
            raise BadFaultError(
                f"{kind}: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(_FIELDS[kind]))}"
            )
        for name in _REQUIRED.get(kind, ()):
            if doc.get(name) in (None, ""):
                raise BadFaultError(f"{kind}: {name} is required")
        if "prefix" in doc and "key" in doc:
            raise BadFaultError(f"{kind}: give a prefix or a key, not both")
        exact = "key" in doc
        prefix = _prefix(doc.get("key" if exact else "prefix", ""))
        if (exact or kind in _SCOPED) and not prefix:
            raise BadFaultError(f"{kind}: a non-empty prefix or key is required")
        return cls(
            kind=kind,
            prefix=prefix,
            exact=exact,
            methods=frozenset({"Txn"}) if kind == "conflict" else _methods(doc.get("methods")),
            count=_count(doc),
            probability=_probability(doc),
            ttl=_seconds(doc, "ttl", 1.0),
            delay=(_seconds(doc, "delay_ms", 1000.0) or 0.0),
            error=_error(doc.get("error")),
            peers=_peers(doc.get("peers")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if "prefix" in _FIELDS[self.kind]:
            out["key" if self.exact else "prefix"] = self.prefix.decode(errors="backslashreplace")
        if self.methods:
            out["methods"] = sorted(self.methods)
        if self.count is not None:
            out["count"] = self.count
        if self.probability != 1.0:
            out["probability"] = self.probability
        if self.ttl is not None:
            out["ttl"] = self.ttl
        if self.kind == "latency":
            out["delay_ms"] = round(self.delay * 1000, 3)
        if self.kind == "error":
            code, message = to_grpc_status(ERRORS[self.error]())
            out["error"] = self.error
            out["code"] = code.name
            out["message"] = message
        if self.kind == "partition":
            out["peers"] = sorted(f"{p:x}" for p in self.peers)
        return out

    def applies_to(self, method: str) -> bool:
        return not self.methods or method in self.methods

    @property
    def key_range(self) -> tuple[bytes, bytes]:
        """[start, end) of the keys it applies to (end b"": unbounded)."""
        if self.exact:
            return self.prefix, self.prefix + b"\x00"
        return self.prefix, prefix_end(self.prefix)


def _prefix(v: object) -> bytes:
    if not isinstance(v, str):
        raise BadFaultError(f"prefix must be a string, got {v!r}")
    return v.encode()


def _methods(v: object) -> frozenset[str]:
    if v is None:
        return frozenset()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise BadFaultError(f"methods must be a non-empty list of {', '.join(METHODS)}")
    for m in v:
        if m not in METHODS:
            raise BadFaultError(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    return frozenset(v)


def _count(doc: Mapping[str, Any]) -> int | None:
    v = doc.get("count")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BadFaultError(f"count must be an integer >= 1, got {v!r}")
    return v


def _probability(doc: Mapping[str, Any]) -> float:
    p = _number(doc, "probability")
    if p is None:
        return 1.0
    if not 0.0 < p <= 1.0:
        raise BadFaultError(f"probability must be in (0, 1], got {p!r}")
    return p


def _seconds(doc: Mapping[str, Any], name: str, unit: float) -> float | None:
    v = _number(doc, name)
    if v is None:
        return None
    seconds = v / unit
    if not 0.0 < seconds <= _MAX_SECONDS:
        raise BadFaultError(f"{name} must be > 0 and at most a day, got {v!r}")
    return seconds


def _error(v: object) -> str:
    if v is None:
        return ""
    if v not in ERRORS:
        raise BadFaultError(f"unknown error {v!r}; known: {', '.join(ERRORS)}")
    assert isinstance(v, str)
    return v


def _peers(v: object) -> frozenset[int]:
    if v is None:
        return frozenset()
    if not isinstance(v, list):
        raise BadFaultError("peers must be a list of member IDs (hexadecimal, as etcdctl prints them)")
    out = set()
    for p in v:
        try:
            out.add(int(p, 16))
        except (TypeError, ValueError):
            raise BadFaultError(f"peer {p!r} is not a member ID (hexadecimal)") from None
    return frozenset(out)


@dataclass(eq=False)
class Fault:
    """A fault set on this member, and what it has done."""

    id: int
    spec: FaultSpec
    expires_at: float | None  # clock time
    injected: int = 0
    ended: str = ""  # "", "count reached", "expired", "done" (watch_cut)
    # injections decided but not yet done (a conflict's rewrite is in flight)
    pending: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    end: bytes = b""  # the end of spec.key_range

    def to_json(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, **self.spec.to_json(), "injected": self.injected}
        out["active"] = not self.ended
        if self.ended:
            out["ended"] = self.ended
        if self.spec.count is not None:
            out["remaining"] = max(self.spec.count - self.injected - self.pending, 0)
        if self.expires_at is not None and not self.ended:
            out["expires_in"] = round(max(self.expires_at - now, 0.0), 3)
        out.update(self.detail)
        return out


class Faults:
    """The faults of one member. `kv` and `partitions` hold the active ones by where they act:
    each is empty (falsy) when nothing is set, the one check on the request path.

    injected: kind -> count, the member's petcd_faults_injected_total (its ServerStats dict).
    on_change() runs when the set of active partitions changes.
    """

    def __init__(
        self,
        injected: dict[str, int] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.injected = injected if injected is not None else {}
        for kind in KINDS:
            self.injected.setdefault(kind, 0)
        self._clock = clock
        self._rng = rng
        self._all: dict[int, Fault] = {}
        self._next_id = 1
        self.kv: list[Fault] = []
        self.partitions: list[Fault] = []
        self.on_change: Callable[[], None] = lambda: None

    def add(self, spec: FaultSpec) -> Fault:
        now = self._clock()
        f = Fault(
            self._next_id,
            spec,
            None if spec.ttl is None else now + spec.ttl,
            end=spec.key_range[1],
        )
        self._next_id += 1
        self._all[f.id] = f
        if spec.kind == "partition":
            self.partitions.append(f)
            self.on_change()
        elif spec.kind != "watch_cut":
            self.kv.append(f)
        return f

    def get(self, fault_id: int) -> Fault | None:
        return self._all.get(fault_id)

    def listing(self) -> list[Fault]:
        self.expire()
        return list(self._all.values())

    def remove(self, fault_id: int) -> Fault | None:
        f = self._all.pop(fault_id, None)
        if f is not None:
            self._end(f, f.ended or "cleared")
        return f

    def clear(self) -> int:
        n = len(self._all)
        for f in list(self._all.values()):
            self.remove(f.id)
        return n

    def expire(self) -> None:
        now = self._clock()
        for f in [*self.kv, *self.partitions]:
            if f.expires_at is not None and now >= f.expires_at:
                self._end(f, "expired")

    def _end(self, f: Fault, why: str) -> None:
        if not f.ended:
            f.ended = why
        if f in self.kv:
            self.kv.remove(f)
        elif f in self.partitions:
            self.partitions.remove(f)
            self.on_change()

    # -- deciding, then recording, one injection ----------------------------------------------

    def claim(self, f: Fault) -> bool:
        """Whether f is injected this time (its expiry, probability and count allow it). A
        claim is then either done() or refunded()."""
        if f.ended:
            return False
        if f.expires_at is not None and self._clock() >= f.expires_at:
            self._end(f, "expired")
            return False
        if f.spec.count is not None and f.injected + f.pending >= f.spec.count:
            return False
        if f.spec.probability < 1.0 and self._rng() >= f.spec.probability:
            return False
        f.pending += 1
        return True

    def done(self, f: Fault, n: int = 1) -> None:
        f.pending -= 1
        self.record(f, n)

    def refund(self, f: Fault) -> None:
        f.pending -= 1

    def record(self, f: Fault, n: int = 1) -> None:
        f.injected += n
        self.injected[f.spec.kind] += n
        if f.spec.count is not None and f.injected >= f.spec.count and not f.ended:
            self._end(f, "count reached")

    def matching(self, method: str, ranges: Iterable[tuple[bytes, bytes | None]]) -> list[Fault]:
        """The active KV faults for a request of `method` touching `ranges` ([key, end): end
        None for the single key, b"" for every key >= key; read only if a fault has a prefix)."""
        spans: list[tuple[bytes, bytes | None]] | None = None
        out = []
        for f in self.kv:
            if not f.spec.applies_to(method):
                continue
            if f.spec.prefix:  # b"": every key
                if spans is None:
                    spans = list(ranges)
                if not any(_meets(k, e, f.spec.prefix, f.end) for k, e in spans):
                    continue
            out.append(f)
        return out


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """Whether key is in [start, end) (end b"": unbounded)."""
    return start <= key and (end == b"" or key < end)


def _meets(key: bytes, end: bytes | None, start: bytes, stop: bytes) -> bool:
    """Whether the request range [key, end) (end None: the key alone; b"": unbounded) shares a
    key with [start, stop) (stop b"": unbounded)."""
    if end is None:
        return in_range(key, start, stop)
    return (stop == b"" or key < stop) and (end == b"" or start < end)
