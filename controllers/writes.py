"""Writes whose outcome is unknown, resolved: a runtime helper any controller can call.

A conditional write (a PUT carrying metadata.resourceVersion rv0) that fails with a 5xx such as
"etcdserver: leader changed", a timeout, or a connection dropped after the request was sent,
may still have committed. Exactly one write can succeed from rv0, so the outcome is knowable: a
watch from rv0 shows the one version that followed it, and the write was ours iff that version
carries our write token (is_ours). If rv0 is too old to watch from (410), the current object
tells: it carries our token (applied), or it is still at rv0 (not applied); anything else is
unresolvable and treated as not applied (the caller's retry re-reads and recomputes, so nothing
is doubled either way).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from controllers.informer import WatchError
from controllers.kubeclient import Kube, Obj, Resource, rv_of
from controllers.log import Logger
from controllers.metrics import Metrics
from controllers.retry import ExponentialBackoff, is_gone, is_transient, message_of, status_of

__all__ = ["AmbiguousWrites", "UnresolvedWrite"]


class UnresolvedWrite(Exception):
    """A write's outcome could not be determined (treated as not applied)."""

    status = 500


class AmbiguousWrites:
    def __init__(
        self, kube: Kube, resource: Resource, metrics: Metrics, log: Logger, timeout: float = 60.0
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.metrics = metrics
        self.log = log
        self.timeout = timeout

    def outcome(
        self, namespace: str, name: str, rv0: str, is_ours: Callable[[Obj], bool], error: BaseException
    ) -> Obj | None:
        """After a write conditioned on rv0 failed with error: the object the write produced if
        it was applied, None if it was not."""
        self.metrics.retry("ambiguous")
        key = f"{namespace}/{name}"
        self.log.warning(
            "write outcome unknown: resolving",
            key=key,
            resource_version=rv0,
            status=status_of(error),
            error=message_of(error),
        )
        deadline = time.monotonic() + self.timeout
        backoff = ExponentialBackoff(initial=0.2, cap=5.0)
        while True:
            try:
                out = self._once(namespace, name, rv0, is_ours)
                self.log.info("write outcome resolved", key=key, applied=out is not None)
                self.metrics.retry("ambiguous_applied" if out is not None else "ambiguous_not_applied")
                return out
            except Exception as e:
                if isinstance(e, UnresolvedWrite) or time.monotonic() > deadline:
                    self.metrics.retry("unresolved")
                    self.log.error(
                        "write outcome unresolved: assuming not applied", key=key, error=message_of(e)
                    )
                    return None
                if not (is_transient(e) or isinstance(e, WatchError)):
                    raise
                time.sleep(backoff.next())

    def _once(self, namespace: str, name: str, rv0: str, is_ours: Callable[[Obj], bool]) -> Obj | None:
        try:
            stream = self.kube.watch(
                self.resource,
                namespace,
                resource_version=rv0,
                timeout_seconds=5,
                allow_bookmarks=False,
                fieldSelector=f"metadata.name={name}",
            )
        except Exception as e:
            if is_gone(e):
                return self._by_get(namespace, name, rv0, is_ours)
            raise
        try:
            for ev in stream:
                t, obj = ev.get("type"), ev.get("object") or {}
                if t == "ERROR":
                    if obj.get("code") == 410:
                        return self._by_get(namespace, name, rv0, is_ours)
                    raise WatchError(obj.get("code"), obj.get("reason"), obj.get("message"))
                if t in ("MODIFIED", "DELETED"):
                    # exactly one write can succeed from rv0: this one
                    return obj if t == "MODIFIED" and is_ours(obj) else None
        finally:
            stream.close()
        # nothing after rv0 for 5 s: the write did not happen if the object is still at rv0
        cur = self.kube.get(self.resource, namespace, name)
        if rv_of(cur) == rv0:
            return None
        raise WatchError(0, "Retry", "the object changed but the watch showed nothing yet")

    def _by_get(self, namespace: str, name: str, rv0: str, is_ours: Callable[[Obj], bool]) -> Obj | None:
        cur = self.kube.get(self.resource, namespace, name)
        if is_ours(cur):
            return cur
        if rv_of(cur) == rv0:
            return None
        raise UnresolvedWrite(f"{rv0} is too old to watch from and the object has changed since")
