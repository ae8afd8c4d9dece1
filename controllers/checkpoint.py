"""Where a controller keeps the resourceVersion its watches got to, so that a restart resumes
there instead of starting over (see informer.py for what a resume does).

Two stores, chosen by flag:

--resume-file PATH         a small JSON file {"<resource>": "<resourceVersion>", ...}, written
                           atomically (temp file + fsync + rename). For a controller run on a
                           workstation or with a persistent volume.
--resume-configmap NS/NAME annotations petcd.example.com/resume.<resource> on a ConfigMap,
                           updated with resourceVersion preconditions (retry on 409). For a
                           controller in a pod: it survives rescheduling to another node and
                           needs no volume (the sample Deployments have a read-only root file
                           system). Events about that ConfigMap itself do not move the
                           checkpoint, or every save would cause the next one.

What is saved is the resourceVersion of the last event *handed to the handlers* (enqueued),
at most every --resume-interval seconds and once more at shutdown. That is safe for a
level-triggered controller: a resume starts with the list at that resourceVersion, which
enqueues every object again, so work that was queued but not yet reconciled before the stop is
done after it. After a graceful stop (SIGTERM) every change is delivered exactly once across
the restart; after a crash the events since the last save are delivered again (at least once).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from controllers.kubeclient import CONFIGMAPS, Kube, Obj, rv_of
from controllers.log import get_logger
from controllers.retry import is_not_found, retry_on_conflict

ANNOTATION_PREFIX = "petcd.example.com/resume."


class CheckpointStore(Protocol):
    def load(self) -> dict[str, str]: ...

    def save(self, rvs: dict[str, str]) -> None: ...

    def is_own(self, obj: Obj | None) -> bool: ...


class FileCheckpoint:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def save(self, rvs: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(rvs, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def is_own(self, obj: Obj | None) -> bool:
        return False


class ConfigMapCheckpoint:
    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name

    def load(self) -> dict[str, str]:
        try:
            cm = self.kube.get(CONFIGMAPS, self.namespace, self.name)
        except Exception as e:
            if is_not_found(e):
                return {}
            raise
        ann = cm.get("metadata", {}).get("annotations") or {}
        return {k[len(ANNOTATION_PREFIX) :]: v for k, v in ann.items() if k.startswith(ANNOTATION_PREFIX)}

    def save(self, rvs: dict[str, str]) -> None:
        def attempt() -> None:
            try:
                cm = self.kube.get(CONFIGMAPS, self.namespace, self.name)
            except Exception as e:
                if not is_not_found(e):
                    raise
                body: Obj = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": self.name,
                        "labels": {"app.kubernetes.io/part-of": "petcd"},
                        "annotations": {ANNOTATION_PREFIX + k: v for k, v in rvs.items()},
                    },
                }
                self.kube.create(CONFIGMAPS, self.namespace, body)
                return
            ann = cm.setdefault("metadata", {}).setdefault("annotations", {})
            ann.update({ANNOTATION_PREFIX + k: v for k, v in rvs.items()})
            # PUT with the resourceVersion just read: 409 if someone else wrote in between
            self.kube.replace(CONFIGMAPS, self.namespace, self.name, cm)

        retry_on_conflict(attempt)

    def is_own(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        m = obj.get("metadata", {})
        return bool(
            obj.get("kind") == "ConfigMap"
            and m.get("namespace") == self.namespace
            and m.get("name") == self.name
        )


class Checkpointer:
    """Collects the informers' resourceVersions and saves them every `interval` seconds (on
    its own thread) and at close()."""

    def __init__(self, store: CheckpointStore, interval: float = 1.0) -> None:
        self.store = store
        self.interval = interval
        self.log = get_logger("checkpoint")
        self._rvs: dict[str, str] = {}
        self._saved: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> dict[str, str]:
        rvs = self.store.load()
        with self._lock:
            self._rvs = dict(rvs)
            self._saved = dict(rvs)
        self.log.info("loaded", resource_versions=rvs)
        return rvs

    def tracker(self, resource: str) -> ResourceVersionTracker:
        return ResourceVersionTracker(self, resource)

    def update(self, resource: str, rv: str, obj: Obj | None) -> None:
        if self.store.is_own(obj):
            return
        with self._lock:
            self._rvs[resource] = rv

    def current(self) -> dict[str, str]:
        with self._lock:
            return dict(self._rvs)

    def flush(self) -> None:
        with self._lock:
            rvs = dict(self._rvs)
            if rvs == self._saved:
                return
        try:
            self.store.save(rvs)
        except Exception as e:
            self.log.warning("save failed (will retry)", error=str(e)[:300])
            return
        with self._lock:
            self._saved = rvs
        self.log.debug("saved", resource_versions=rvs)

    def start(self) -> Checkpointer:
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()
        self.log.info("saved at shutdown", resource_versions=self.current())


class ResourceVersionTracker:
    """The informer callback (on_resource_version) for one resource."""

    def __init__(self, checkpointer: Checkpointer, resource: str) -> None:
        self.checkpointer, self.resource = checkpointer, resource

    def __call__(self, rv: str, obj: Obj | None) -> None:
        self.checkpointer.update(self.resource, rv, obj)


__all__ = ["Checkpointer", "ConfigMapCheckpoint", "FileCheckpoint", "rv_of"]
