"""ReplicatedConfigMap controller: keeps copies of a ConfigMap in other namespaces.

    python -m controllers.replicator --kubeconfig PATH [--resume-file PATH | --resume-configmap NS/NAME]

For a ReplicatedConfigMap R in namespace N with spec.sourceName S, spec.targetNamespaces T and
spec.targetName C (default S), the controller makes ConfigMap N/S's data and binaryData appear
as ConfigMap t/C for every t in T, and records progress in R's status (syncedNamespaces,
syncedCount, sourceResourceVersion, observedGeneration, a Ready condition).

Every write is conditioned on a resourceVersion: a copy is updated with a PUT carrying the
copy's metadata.resourceVersion as just read, copies are deleted with a resourceVersion
precondition, and the status is written through the status subresource with R's
resourceVersion inside retry_on_conflict (re-GET per attempt). A 409 means someone changed the
object since it was read: the reconcile is requeued (rate-limited) and starts over from fresh
reads, so nobody's concurrent edit is silently overwritten.

The controller watches ReplicatedConfigMaps and ConfigMaps (all namespaces). A change of a
source enqueues the ReplicatedConfigMaps that copy it; a change of a copy (labelled
petcd.example.com/replicated-from) enqueues its owner, so a copy edited or deleted by hand is
put back. Copies of a ReplicatedConfigMap that is deleted, or of a namespace that was removed
from spec.targetNamespaces, are deleted.

Restarts: with --resume-file or --resume-configmap the watches resume from the last
resourceVersion they reached (checkpoint.py says what is stored where and why it is safe).

Bad input and faults:
- invalid spec (e.g. a target namespace equal to the source's namespace with the same name,
  which would overwrite the source): Ready=False, reason InvalidSpec; written once, no retry
  loop; the next spec change is reconciled again;
- source missing: Ready=False, reason SourceNotFound (the source's creation is a ConfigMap
  event, which enqueues the ReplicatedConfigMap again);
- a target namespace that does not exist, or a foreign ConfigMap already there with the
  target name: that namespace is not synced, Ready=False reason PartiallySynced, retried every
  --retry-interval seconds;
- the ReplicatedConfigMap deleted mid-reconcile: 404 → its copies are cleaned up, no crash;
- apiserver unavailable: requeue with backoff, informers reconnect with backoff, relist on 410.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

from controllers.conditions import get_condition, now_rfc3339, same_condition, set_condition
from controllers.informer import DELETED, Store
from controllers.kubeclient import CONFIGMAPS, REPLICATED_CONFIGMAPS, Kube, Obj, key_of, rv_of, split_key
from controllers.log import get_logger
from controllers.metrics import Metrics
from controllers.retry import DEFAULT_BACKOFF, is_conflict, is_not_found, retry_on_conflict
from controllers.runtime import (
    Controller,
    Result,
    add_resume_flags,
    base_parser,
    make_checkpointer,
    setup,
)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "petcd-replicator"
LABEL_FROM = "petcd.example.com/replicated-from"  # the ReplicatedConfigMap's name
LABEL_FROM_NS = "petcd.example.com/replicated-from-namespace"  # ... and namespace
ANNOTATION_SOURCE_RV = "petcd.example.com/source-resource-version"
SOURCE, OWNER = "source", "owner"  # the informers' indexes


# ------------------------------------------------------------------------------------------------
# pure logic


def target_name(rcm: Obj) -> str:
    spec = rcm.get("spec") or {}
    return str(spec.get("targetName") or spec.get("sourceName") or "")


def validate(rcm: Obj) -> str | None:
    spec = rcm.get("spec")
    if not isinstance(spec, dict):
        return "spec is missing"
    source = spec.get("sourceName")
    if not isinstance(source, str) or not source:
        return "spec.sourceName must be a non-empty string"
    targets = spec.get("targetNamespaces")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        return "spec.targetNamespaces must be a non-empty list of namespace names"
    if len(set(targets)) != len(targets):
        return "spec.targetNamespaces lists a namespace twice"
    ns = rcm.get("metadata", {}).get("namespace")
    if ns in targets and target_name(rcm) == source:
        return (
            f"spec.targetNamespaces contains the source's own namespace {ns!r} and the copy would "
            f"have the source's name {source!r}: it would overwrite the source"
        )
    return None


def owner_labels(rcm: Obj) -> dict[str, str]:
    m = rcm["metadata"]
    return {LABEL_MANAGED_BY: MANAGER, LABEL_FROM: m["name"], LABEL_FROM_NS: m["namespace"]}


def is_copy_of(cm: Obj, rcm: Obj) -> bool:
    labels = cm.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in owner_labels(rcm).items())


def desired_copy(source: Obj, rcm: Obj, namespace: str) -> Obj:
    out: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": target_name(rcm),
            "namespace": namespace,
            "labels": owner_labels(rcm),
            "annotations": {ANNOTATION_SOURCE_RV: rv_of(source)},
        },
    }
    for field in ("data", "binaryData"):
        if source.get(field):
            out[field] = copy.deepcopy(source[field])
    return out


def copy_up_to_date(existing: Obj, desired: Obj) -> bool:
    """Same content and owner labels (the source-resource-version annotation does not count:
    a source update that did not change the data needs no write)."""
    if (existing.get("data") or {}) != (desired.get("data") or {}):
        return False
    if (existing.get("binaryData") or {}) != (desired.get("binaryData") or {}):
        return False
    labels = existing.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in desired["metadata"]["labels"].items())


def updated_copy(existing: Obj, desired: Obj) -> Obj:
    """existing (with its resourceVersion: the PUT's precondition) carrying desired's content."""
    out = copy.deepcopy(existing)
    m = out.setdefault("metadata", {})
    m.setdefault("labels", {}).update(desired["metadata"]["labels"])
    m.setdefault("annotations", {}).update(desired["metadata"]["annotations"])
    for field in ("data", "binaryData"):
        if field in desired:
            out[field] = copy.deepcopy(desired[field])
        else:
            out.pop(field, None)
    return out


def desired_status(
    rcm: Obj,
    source: Obj | None,
    synced: list[str],
    problems: dict[str, str],
    invalid: str | None = None,
    now: str | None = None,
) -> Obj:
    old: Obj = copy.deepcopy(rcm.get("status") or {})
    gen = rcm.get("metadata", {}).get("generation")
    st = dict(old)
    st["observedGeneration"] = gen
    if invalid is not None:
        return set_condition(st, "Ready", "False", "InvalidSpec", invalid, gen, now)
    if source is None:
        name = (rcm.get("spec") or {}).get("sourceName")
        msg = f"ConfigMap {rcm['metadata']['namespace']}/{name} not found"
        return set_condition(st, "Ready", "False", "SourceNotFound", msg, gen, now)
    st["syncedNamespaces"] = sorted(synced)
    st["syncedCount"] = len(synced)
    st["sourceResourceVersion"] = rv_of(source)
    if problems:
        msg = "; ".join(f"{ns}: {why}" for ns, why in sorted(problems.items()))
        return set_condition(st, "Ready", "False", "PartiallySynced", msg, gen, now)
    msg = f"copied to {len(synced)} namespace(s)"
    return set_condition(st, "Ready", "True", "Synced", msg, gen, now)


def status_changed(old: Obj | None, new: Obj) -> bool:
    old = old or {}
    for k in ("observedGeneration", "syncedNamespaces", "syncedCount", "sourceResourceVersion"):
        if old.get(k) != new.get(k):
            return True
    return not same_condition(get_condition(old, "Ready"), get_condition(new, "Ready"))


# ------------------------------------------------------------------------------------------------
# the controller


def source_key(rcm: Obj) -> list[str]:
    """Index of ReplicatedConfigMaps by their source ConfigMap's key."""
    source = (rcm.get("spec") or {}).get("sourceName")
    ns = rcm.get("metadata", {}).get("namespace")
    return [f"{ns}/{source}"] if isinstance(source, str) and source and ns else []


def owner_key(cm: Obj) -> list[str]:
    """Index of ConfigMaps by the ReplicatedConfigMap a copy belongs to."""
    labels = cm.get("metadata", {}).get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) == MANAGER and labels.get(LABEL_FROM) and labels.get(LABEL_FROM_NS):
        return [f"{labels[LABEL_FROM_NS]}/{labels[LABEL_FROM]}"]
    return []


class Replicator:
    """Reconciles read the informers' caches (client-go's listers): rcms, the
    ReplicatedConfigMaps indexed by source; configmaps, every ConfigMap indexed by owner."""

    def __init__(
        self, kube: Kube, metrics: Metrics, rcms: Store, configmaps: Store, retry_interval: float = 10.0
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.rcms = rcms
        self.configmaps = configmaps
        self.retry_interval = retry_interval
        self.log = get_logger("replicator")

    # -- event mapping -----------------------------------------------------------------------------

    def configmap_keys(self, cm: Obj) -> list[str]:
        """The ReplicatedConfigMaps a ConfigMap event concerns: those whose source it is, and
        the owner of a copy."""
        return [*owner_key(cm), *(key_of(rcm) for rcm in self.rcms.by_index(SOURCE, key_of(cm)))]

    # -- reconcile ---------------------------------------------------------------------------------

    def reconcile(self, key: str) -> Result | None:
        ns, name = split_key(key)
        assert ns is not None
        rcm = self.rcms.get(key)
        if rcm is None:
            self.cleanup(ns, name, keep=set())
            return None
        log = self.log.bind(key=key, resource_version=rv_of(rcm))
        invalid = validate(rcm)
        if invalid is not None:
            log.warning("invalid spec", reason=invalid)
            self.write_status(ns, name, lambda cur: desired_status(cur, None, [], {}, invalid))
            return None  # nothing to retry until the spec changes (an event)
        spec = rcm["spec"]
        source = self.configmaps.get(f"{ns}/{spec['sourceName']}")
        if source is None:
            log.info("source not found", source=spec["sourceName"])
            self.write_status(ns, name, lambda cur: desired_status(cur, None, [], {}))
            return None  # the source's creation is an event that enqueues us
        synced: list[str] = []
        problems: dict[str, str] = {}
        for target in spec["targetNamespaces"]:
            why = self.sync_copy(source, rcm, target)
            if why is None:
                synced.append(target)
            else:
                problems[target] = why
        self.cleanup(ns, name, keep=set(spec["targetNamespaces"]), name_in_use=target_name(rcm))
        self.write_status(ns, name, lambda cur: desired_status(cur, source, synced, problems))
        if problems:
            log.info("partially synced", problems=problems)
            return Result(requeue_after=self.retry_interval)
        return None

    def sync_copy(self, source: Obj, rcm: Obj, namespace: str) -> str | None:
        """Create or update one copy; None when it is in sync, else why not."""
        want = desired_copy(source, rcm, namespace)
        name = want["metadata"]["name"]
        existing = self.configmaps.get(f"{namespace}/{name}")
        if existing is None:
            try:
                self.kube.create(CONFIGMAPS, namespace, want)
            except Exception as e:
                if is_not_found(e):
                    return "namespace not found"
                if is_conflict(e):  # 409 AlreadyExists: created since our GET; start over
                    self.metrics.conflict()
                raise
            self.metrics.wrote("create")
            self.log.info(
                "copy created", namespace=namespace, name=name, source_resource_version=rv_of(source)
            )
            return None
        if not is_copy_of(existing, rcm):
            return f"ConfigMap {name} exists and is not managed by this ReplicatedConfigMap"
        if copy_up_to_date(existing, want):
            return None
        try:
            # PUT with the copy's resourceVersion as read: 409 if it changed since
            out = self.kube.replace(CONFIGMAPS, namespace, name, updated_copy(existing, want))
        except Exception as e:
            if is_conflict(e):
                self.metrics.conflict()
            raise
        self.metrics.wrote("update")
        self.log.info(
            "copy updated",
            namespace=namespace,
            name=name,
            from_resource_version=rv_of(existing),
            to_resource_version=rv_of(out),
        )
        return None

    def cleanup(self, ns: str, name: str, keep: set[str], name_in_use: str | None = None) -> None:
        """Delete this ReplicatedConfigMap's copies outside `keep` (or named differently)."""
        for cm in self.configmaps.by_index(OWNER, f"{ns}/{name}"):
            m = cm["metadata"]
            if m["namespace"] in keep and (name_in_use is None or m["name"] == name_in_use):
                continue
            try:
                self.kube.delete(
                    CONFIGMAPS, m["namespace"], m["name"], resource_version=rv_of(cm), uid=m.get("uid")
                )
            except Exception as e:
                if is_not_found(e):
                    continue
                if is_conflict(e):
                    self.metrics.conflict()
                raise
            self.metrics.wrote("delete")
            self.log.info(
                "stale copy deleted", namespace=m["namespace"], name=m["name"], owner=f"{ns}/{name}"
            )

    def write_status(self, ns: str, name: str, compute: Any) -> None:
        """Status through the status subresource, with the resourceVersion just read."""

        def attempt() -> None:
            cur = self.kube.get(REPLICATED_CONFIGMAPS, ns, name)
            new = compute(cur)
            if not status_changed(cur.get("status"), new):
                return
            body = copy.deepcopy(cur)
            body["status"] = new
            self.kube.replace(REPLICATED_CONFIGMAPS, ns, name, body, "status")
            self.metrics.wrote("status")

        retry_on_conflict(attempt, DEFAULT_BACKOFF, on_conflict=lambda e: self.metrics.conflict())


def make_controller(
    kube: Kube,
    metrics: Metrics | None = None,
    workers: int = 2,
    retry_interval: float = 10.0,
    **kw: Any,
) -> Controller:
    metrics = metrics or Metrics("replicator")
    ctl = Controller(
        "replicator", kube, lambda key: rep.reconcile(key), workers=workers, metrics=metrics, **kw
    )
    checkpointer = ctl.checkpointer
    rcms = ctl.watch(REPLICATED_CONFIGMAPS, indexers={SOURCE: source_key})

    def on_configmap(event_type: str, cm: Obj, old: Obj | None) -> None:
        if checkpointer is not None and checkpointer.store.is_own(cm):
            return
        keys = set(rep.configmap_keys(cm))
        if old is not None and event_type != DELETED:
            keys.update(rep.configmap_keys(old))  # e.g. a copy whose labels were edited away
        for k in keys:
            ctl.enqueue(k)

    configmaps = ctl.watch(CONFIGMAPS, handler=on_configmap, indexers={OWNER: owner_key})
    rep = Replicator(kube, metrics, rcms.store, configmaps.store, retry_interval)
    return ctl


def main(argv: Sequence[str] | None = None) -> int:
    ap = base_parser("python -m controllers.replicator", "ReplicatedConfigMap controller")
    add_resume_flags(ap)
    ap.add_argument(
        "--retry-interval",
        type=float,
        default=10.0,
        help="seconds between retries of namespaces that could not be synced (default 10)",
    )
    args = ap.parse_args(argv)
    kube, metrics = setup(args, "replicator")
    ctl = make_controller(
        kube,
        metrics,
        workers=args.workers,
        retry_interval=args.retry_interval,
        checkpointer=make_checkpointer(args, kube),
        watch_timeout=args.watch_timeout,
        shutdown_grace=args.shutdown_grace,
    )
    return ctl.run_until_signal()


__all__ = ["Replicator", "main", "make_controller", "now_rfc3339"]

if __name__ == "__main__":
    sys.exit(main())
