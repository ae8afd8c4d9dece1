"""Faults on demand for controller tests: the client of petcd's fault surface (a petcd member
started with --listen-faults-urls; see server/faults/surface.py), with Kubernetes resources
translated to the etcd keys kube-apiserver stores them under.

    faults = kube_cluster.faults                     # pytest; or cluster.faults, Faults([url, ...])
    with faults.conflicts("configmaps", namespace="default", n=3) as f:
        ...                                          # the next 3 conditional updates get 409
    assert f.injected == 3
    faults.errors("counters.petcd.example.com", error="timeout", n=1)
    faults.latency("pods", delay=0.5, methods=["Range"], ttl=30)
    faults.watch_cut("configmaps")                   # informers must relist
    with faults.leader_loss():                       # 3 members: the leader is cut off, then heals
        ...

Every call sets the fault on each member (a member sees only its own clients' requests), so a
count is per member; pass member= to target one. A Fault is a context manager that clears it;
faults.clear() clears everything. Errors from the surface (a bad resource, count, ...) raise
FaultError with its one-line message.

From a shell: `petcd-harness faults conflict configmaps -N default -n 3` against the cluster
`petcd-harness up` runs from .cluster (--dir), or against surfaces given with --url
(repeatable) or $PETCD_FAULTS_URLS; `petcd-harness faults --help` lists the commands.

Resources: "configmaps", "cm", "configmap", "deployments.apps", "counters.petcd.example.com"
(a custom resource: plural.group), or a raw etcd key prefix starting with "/". With namespace=
the prefix narrows to the namespace, with name= to the one object (an exact key).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from petcd_harness.errors import HarnessError
from petcd_harness.wait import wait_until

__all__ = ["Fault", "FaultError", "Faults", "Surface", "main", "registry_key", "tls_context"]

# kube-apiserver's storage paths (k8s.io/kubernetes pkg/kubeapiserver SpecialDefaultResourcePrefixes,
# and the aggregated servers' own resources)
_SPECIAL_PREFIXES = {
    "replicationcontrollers": "controllers",
    "endpoints": "services/endpoints",
    "nodes": "minions",
    "services": "services/specs",
    "ingresses": "ingress",
    "customresourcedefinitions": "apiextensions.k8s.io/customresourcedefinitions",
    "apiservices": "apiregistration.k8s.io/apiservices",
}
# groups served by kube-apiserver itself: their resources are stored without the group
_BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "extensions",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "node.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "certificates.k8s.io",
    "admissionregistration.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "resource.k8s.io",
    "internal.apiserver.k8s.io",
    "storagemigration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
}
_ALIASES = {
    "cm": "configmaps", "configmap": "configmaps", "svc": "services", "service": "services",
    "ep": "endpoints", "no": "nodes", "node": "nodes", "ns": "namespaces", "namespace": "namespaces",
    "po": "pods", "pod": "pods", "deploy": "deployments", "deployment": "deployments",
    "rs": "replicasets", "replicaset": "replicasets", "sts": "statefulsets", "statefulset": "statefulsets",
    "ds": "daemonsets", "daemonset": "daemonsets", "job": "jobs", "cj": "cronjobs", "cronjob": "cronjobs",
    "secret": "secrets", "sa": "serviceaccounts", "serviceaccount": "serviceaccounts",
    "pvc": "persistentvolumeclaims", "pv": "persistentvolumes", "ev": "events", "event": "events",
    "lease": "leases", "rc": "replicationcontrollers", "ing": "ingresses", "ingress": "ingresses",
    "crd": "customresourcedefinitions", "crds": "customresourcedefinitions",
}  # fmt: skip

# given a plural without a group, the "plural.group" names the cluster serves it under
Discover = Callable[[str], list[str]]


class FaultError(HarnessError):
    """The surface refused a request (its one-line reason), or cannot be reached."""


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """For surfaces of a datastore with client-certificate authentication: its CA verifies
    them, the client certificate identifies us."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def registry_key(
    resource: str, namespace: str | None = None, name: str | None = None, discover: Discover | None = None
) -> tuple[str, bool]:
    """(etcd key or prefix, whether it is one exact key) for a Kubernetes resource: e.g.
    ("/registry/configmaps/default/", False), ("/registry/petcd.example.com/counters/ns/c", True)."""
    if resource.startswith("/"):
        if namespace or name:
            raise FaultError("a raw etcd prefix takes no namespace or name")
        return resource, False
    plural, _, group = resource.partition(".")
    plural = _ALIASES.get(plural.lower(), plural.lower())
    if not plural:
        raise FaultError(f"{resource!r} is not a resource")
    if not group and discover is not None:
        served = [n for n in discover(plural) if n.partition(".")[2] not in _BUILTIN_GROUPS]
        if len(served) == 1:
            group = served[0].partition(".")[2]
    if group and group not in _BUILTIN_GROUPS:
        base = f"/registry/{group}/{plural}/"
    else:
        base = f"/registry/{_SPECIAL_PREFIXES.get(plural, plural)}/"
    if namespace:
        base += f"{namespace}/"
    if name:
        return base + name, True
    return base, False


class Surface:
    """One member's fault surface (JSON over HTTP)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<fault surface {self.url}>"

    def request(self, method: str, path: str, body: object = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self._timeout, context=self._ssl) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                reason = e.reason
            raise FaultError(f"{self.url}{path}: {reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise FaultError(f"{self.url}: the fault surface cannot be reached: {e}") from None

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/")
        return out

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/faults", spec)
        return out

    def get(self, fault_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/faults/{fault_id}")
        return out

    def remove(self, fault_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("DELETE", f"/faults/{fault_id}")
        return out

    def list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/faults")["faults"]
        return out

    def clear(self) -> int:
        return int(self.request("DELETE", "/faults")["cleared"])


@dataclass(eq=False)
class Fault:
    """A fault set on some members; clear() (or leaving the with block) removes it, after which
    injected and states() report what it did until then."""

    kind: str
    parts: list[tuple[Surface, int]]
    result: list[dict[str, Any]] = field(default_factory=list)  # as each member answered
    on_clear: Callable[[], None] | None = None
    # each member's last state, once cleared (what it injected stays readable)
    cleared: list[dict[str, Any]] | None = None

    def states(self) -> list[dict[str, Any]]:
        if self.cleared is not None:
            return self.cleared
        return [s.get(i) for s, i in self.parts]

    @property
    def injected(self) -> int:
        """How many times it was injected, on all its members together."""
        return sum(int(st["injected"]) for st in self.states())

    @property
    def active(self) -> bool:
        return any(st["active"] for st in self.states())

    def wait_injected(self, n: int, timeout: float = 60.0) -> None:
        wait_until(lambda: self.injected >= n, timeout, what=f"{self.kind} injected {n} times")

    def clear(self) -> None:
        if self.cleared is not None:
            return
        last = []
        for s, i in self.parts:
            try:
                last.append(s.remove(i))
            except FaultError as e:
                if "no fault" not in str(e):  # cleared meanwhile (faults.clear())
                    raise
        self.cleared = last
        if self.on_clear is not None:
            self.on_clear()

    def __enter__(self) -> Fault:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.clear()


def _scope(spec: dict[str, Any], **opts: Any) -> dict[str, Any]:
    for k, v in opts.items():
        if v is not None:
            spec[k] = v
    return spec


class Faults:
    """The fault surfaces of a datastore's members (in member order)."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        discover: Discover | None = None,
    ) -> None:
        self.members = [Surface(u, ssl_context) for u in urls]
        if not self.members:
            raise FaultError("no fault surface: start petcd with --listen-faults-urls")
        self._discover = discover

    # -- targets --------------------------------------------------------------------------------

    def key(self, resource: str, namespace: str | None = None, name: str | None = None) -> dict[str, str]:
        """{"prefix": ...} or {"key": ...} for a resource (see registry_key)."""
        k, exact = registry_key(resource, namespace, name, self._discover)
        return {"key": k} if exact else {"prefix": k}

    def _on(self, member: int | str | None) -> list[Surface]:
        if member is None:
            return self.members
        return [self.member(member)]

    def member(self, which: int | str) -> Surface:
        """A member by index, name or hexadecimal ID."""
        if isinstance(which, int):
            return self.members[which]
        for s in self.members:
            info = s.info()
            if which in (info["name"], info["member_id"]):
                return s
        raise FaultError(f"no member {which!r}")

    def _set(self, spec: dict[str, Any], member: int | str | None) -> Fault:
        parts: list[tuple[Surface, int]] = []
        answers = []
        try:
            for s in self._on(member):
                answer = s.add(spec)
                parts.append((s, int(answer["id"])))
                answers.append(answer)
        except FaultError:
            Fault(spec["kind"], parts).clear()  # none half-set
            raise
        return Fault(spec["kind"], parts, answers)

    # -- the kinds ------------------------------------------------------------------------------

    def conflicts(
        self,
        resource: str,
        n: int | None = 1,
        *,
        namespace: str | None = None,
        name: str | None = None,
        probability: float | None = None,
        ttl: float | None = None,
        member: int | str | None = None,
    ) -> Fault:
        """The next n updates (resourceVersion-conditioned writes) of matching objects meet a
        concurrent writer first: the client gets 409 Conflict. n=None: until cleared."""
        spec = _scope(
            {"kind": "conflict", **self.key(resource, namespace, name)},
            count=n,
            probability=probability,
            ttl=ttl,
        )
        return self._set(spec, member)

    def errors(
        self,
        resource: str = "",
        error: str = "timeout",
        n: int | None = 1,
        *,
        methods: Sequence[str] | None = None,
        namespace: str | None = None,
        name: str | None = None,
        probability: float | None = None,
        ttl: float | None = None,
        member: int | str | None = None,
    ) -> Fault:
        """Requests fail with etcd's own error: timeout ("etcdserver: request timed out"),
        leader_changed, too_many_requests or no_leader. resource "": every key."""
        where = self.key(resource, namespace, name) if resource else {}
        spec = _scope(
            {"kind": "error", "error": error, **where},
            count=n,
            methods=list(methods) if methods else None,
            probability=probability,
            ttl=ttl,
        )
        return self._set(spec, member)

    def latency(
        self,
        resource: str = "",
        delay: float = 0.1,
        n: int | None = None,
        *,
        methods: Sequence[str] | None = None,
        namespace: str | None = None,
        name: str | None = None,
        probability: float | None = None,
        ttl: float | None = None,
        member: int | str | None = None,
    ) -> Fault:
        """Requests wait delay seconds before they are served."""
        where = self.key(resource, namespace, name) if resource else {}
        spec = _scope(
            {"kind": "latency", "delay_ms": delay * 1000, **where},
            count=n,
            methods=list(methods) if methods else None,
            probability=probability,
            ttl=ttl,
        )
        return self._set(spec, member)

    def watch_cut(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
        member: int | str | None = None,
    ) -> Fault:
        """Compact to the current revision and cancel the watches on the resource, as etcd does
        for a watcher behind a compaction; result: each member's {"injected": watches cut,
        "compact_revision": ...}."""
        return self._set({"kind": "watch_cut", **self.key(resource, namespace, name)}, member)

    def partition(
        self, member: int | str, *, peers: Sequence[int | str] | None = None, ttl: float | None = None
    ) -> Fault:
        """Cut a member off from its peers (all, or the members named), until cleared or ttl."""
        ids = [self.member(p).info()["member_id"] for p in peers] if peers else None
        return self._set(_scope({"kind": "partition"}, peers=ids, ttl=ttl), member)

    def leader(self, timeout: float = 30.0) -> Surface:
        """The member that leads (waiting until one does)."""
        found: list[Surface] = []

        def led() -> bool:
            for s in self.members:
                try:
                    if s.info()["is_leader"]:
                        found[:] = [s]
                        return True
                except FaultError:
                    continue
            return False

        wait_until(led, timeout, what="a leader")
        return found[0]

    def leader_loss(self, *, timeout: float = 30.0) -> Fault:
        """Cut the leader off from the other members and wait until one of them leads; the
        Fault's clear() heals the partition and waits until the old leader follows the new."""
        if len(self.members) < 3:
            raise FaultError("leader loss needs a cluster of 3 members or more")
        old = self.leader(timeout)
        old_id = old.info()["member_id"]
        fault = self._set({"kind": "partition"}, self.members.index(old))
        others = [s for s in self.members if s is not old]

        def new_leader() -> bool:
            leaders = {s.info()["leader_id"] for s in others}
            return len(leaders) == 1 and leaders.pop() not in ("0", old_id)

        try:
            wait_until(new_leader, timeout, what="a new leader among the other members")
        except BaseException:
            fault.clear()
            raise

        def rejoined() -> None:
            wait_until(
                lambda: (
                    len({s.info()["leader_id"] for s in self.members}) == 1 and not old.info()["is_leader"]
                ),
                timeout,
                what="the old leader following the new one",
            )

        fault.on_clear = rejoined
        return fault

    # -- all --------------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        out = []
        for s in self.members:
            name = s.info()["name"]
            out += [{"member": name, **f} for f in s.list()]
        return out

    def clear(self) -> int:
        return sum(s.clear() for s in self.members)


# -- the command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """petcd-harness faults ...: set, list and clear faults from a shell."""
    ap = argparse.ArgumentParser(prog="petcd-harness faults", description="faults on demand")
    ap.add_argument("--url", action="append", default=[], help="a member's fault surface (repeatable)")
    ap.add_argument("--dir", default=".cluster", help="the state directory of `petcd-harness up`")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every fault set, with what it did")
    c = sub.add_parser("clear", help="clear one fault (MEMBER ID) or all")
    c.add_argument("member", nargs="?")
    c.add_argument("id", nargs="?", type=int)

    def scoped(p: argparse.ArgumentParser, resource_required: bool = True) -> None:
        p.add_argument("resource", nargs=None if resource_required else "?", default="",
                       help="configmaps, deployments.apps, counters.petcd.example.com, or /an/etcd/prefix")  # fmt: skip
        p.add_argument("--namespace", "-N")
        p.add_argument("--name")
        p.add_argument("--member", help="only this member (index, name or ID)")

    def limits(p: argparse.ArgumentParser, default_n: int | None) -> None:
        p.add_argument("-n", "--count", type=int, default=default_n)
        p.add_argument("--probability", type=float)
        p.add_argument("--ttl", type=float, help="seconds")

    p = sub.add_parser("conflict", help="the next N updates of RESOURCE get 409")
    scoped(p)
    limits(p, 1)
    p = sub.add_parser("error", help="requests fail with etcd's error")
    scoped(p, False)
    limits(p, 1)
    p.add_argument("--error", default="timeout", help="timeout, leader_changed, too_many_requests, no_leader")
    p.add_argument("--method", action="append", help="Range, Put, DeleteRange, Txn, Compact (repeatable)")
    p = sub.add_parser("latency", help="requests wait before they are served")
    scoped(p, False)
    limits(p, None)
    p.add_argument("--delay", type=float, required=True, help="seconds")
    p.add_argument("--method", action="append")
    p = sub.add_parser("watch-cut", help="compact and cancel the watches on RESOURCE")
    scoped(p)
    p = sub.add_parser("partition", help="cut a member off from its peers")
    p.add_argument("member")
    p.add_argument("--peer", action="append", help="only from this member (repeatable)")
    p.add_argument("--ttl", type=float, help="seconds until it heals")
    sub.add_parser("leader", help="which member leads")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    env = [u for u in os.environ.get("PETCD_FAULTS_URLS", "").split(",") if u]
    try:
        f = Faults(args.url or env) if args.url or env else _running(Path(args.dir))
        out: Any
        if args.command == "list":
            out = f.list()
        elif args.command == "clear":
            if args.member is not None and args.id is not None:
                out = f.member(args.member).remove(args.id)
            else:
                out = {"cleared": f.clear()}
        elif args.command == "leader":
            out = f.leader().info()
        elif args.command == "partition":
            out = f.partition(_member_arg(args.member) or args.member, peers=args.peer, ttl=args.ttl).result
        else:
            common = {"namespace": args.namespace, "name": args.name, "member": _member_arg(args.member)}
            if args.command == "conflict":
                fault = f.conflicts(
                    args.resource, args.count, probability=args.probability, ttl=args.ttl, **common
                )
            elif args.command == "error":
                fault = f.errors(args.resource, args.error, args.count, methods=args.method,
                                 probability=args.probability, ttl=args.ttl, **common)  # fmt: skip
            elif args.command == "latency":
                fault = f.latency(args.resource, args.delay, args.count, methods=args.method,
                                  probability=args.probability, ttl=args.ttl, **common)  # fmt: skip
            else:
                fault = f.watch_cut(args.resource, **common)
            out = fault.result
    except FaultError as e:
        print(f"petcd-harness faults: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _running(dir: Path) -> Faults:
    """The faults of the cluster `petcd-harness up` runs from dir (from its kubeconfig)."""
    from petcd_harness.controlplane import ExistingCluster

    kubeconfig = dir / "kubeconfig"
    if not kubeconfig.is_file():
        raise FaultError(f"no cluster is running from {dir} (start one with petcd-harness up, or give --url)")
    return ExistingCluster(kubeconfig).faults


def _member_arg(v: str | None) -> int | str | None:
    return int(v) if v is not None and v.isdigit() and len(v) < 4 else v


if __name__ == "__main__":
    sys.exit(main())
