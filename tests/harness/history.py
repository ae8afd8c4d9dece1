"""Histories of concurrent key-value operations, and the linearizability check of them.

    h = History()
    w = Workload(h, [m.client_url for m in cluster.members], keys=4, clients=8)
    w.start(); ...faults...; h.annotate(t0, h.now(), "isolate m1"); ...; w.stop()
    result = h.check(html=tmp_path / "history.html")     # runs .peers/bin/porcupine-check
    assert result.ok, result.output

Clients are threads with gRPC channels to every member; each operation goes to a random
member: puts of unique values, linearizable gets, and compare-and-swap txns (put if the value is
the one this client last saw, else read the key) on a few register keys. Timestamps are
time.monotonic_ns() since the history began, taken just before the call and just after the
return. A write that fails in any way has an unknown outcome (it may still be applied): it is
recorded with no return time, and its client continues under a new client ID (as Jepsen does
with a crashed process) since the old one still has an operation in flight.

tools/peers/porcupine/main.go documents the JSON format and the model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.harness.paths import PEERS, ROOT

__all__ = [
    "CHANNEL_OPTIONS",
    "CheckResult",
    "History",
    "Nemesis",
    "Op",
    "Workload",
    "checker_binary",
    "run_checker",
]

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@dataclass
class Op:
    client: int
    call: int
    ret: int | None
    op: str  # "get", "put" or "cas"
    key: str
    value: str = ""
    expected: str | None = None
    expected_absent: bool = False
    status: str = "ok"  # anything else: the outcome is unknown (writes) / failed (reads)
    error: str = ""
    rev: int = 0
    succeeded: bool = False
    read_found: bool | None = None
    read_value: str = ""
    read_mod_rev: int = 0
    member: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "client": self.client,
            "call": self.call,
            "return": self.ret,
            "op": self.op,
            "key": self.key,
            "status": self.status,
        }
        if self.op != "get":
            d["value"] = self.value
        if self.op == "cas":
            if self.expected_absent:
                d["expected_absent"] = True
            else:
                d["expected"] = self.expected
            d["succeeded"] = self.succeeded
        if self.status == "ok":
            d["rev"] = self.rev
            if self.read_found is not None:
                d["read_found"] = self.read_found
                d["read_value"] = self.read_value
                d["read_mod_rev"] = self.read_mod_rev
        for k in ("error", "member"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    @property
    def is_write(self) -> bool:
        return self.op in ("put", "cas")


@dataclass(frozen=True)
class CheckResult:
    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def illegal(self) -> bool:
        return self.rc == 1


def checker_binary() -> str:
    """.peers/bin/porcupine-check (`make peers` builds it; built here if it is missing)."""
    path = PEERS / "porcupine-check"
    if not path.exists():
        PEERS.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        subprocess.run(
            ["go", "build", "-o", str(path), "."],
            cwd=ROOT / "tools" / "peers" / "porcupine",
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return str(path)


def run_checker(history: dict[str, Any], html: Path | None = None, timeout_s: int = 300) -> CheckResult:
    args = [checker_binary(), f"-timeout={timeout_s}s"]
    if html is not None:
        args.append(f"-html={html}")
    p = subprocess.run(args, input=json.dumps(history).encode(), capture_output=True, timeout=timeout_s + 60)
    return CheckResult(p.returncode, (p.stdout + p.stderr).decode(errors="replace"))


class History:
    def __init__(self) -> None:
        self.t0 = time.monotonic_ns()
        self.ops: list[Op] = []
        self.annotations: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def now(self) -> int:
        return time.monotonic_ns() - self.t0

    def record(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def annotate(self, start: int, end: int, description: str, details: str = "") -> None:
        with self._lock:
            self.annotations.append(
                {"start": start, "end": max(start, end), "description": description, "details": details}
            )

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"ops": [o.to_json() for o in self.ops], "annotations": list(self.annotations)}

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    def check(self, html: Path | None = None, timeout_s: int = 300) -> CheckResult:
        return run_checker(self.to_json(), html, timeout_s)

    # -- summaries and checks done here --------------------------------------------------------

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.ops:
            k = f"{o.op}:{o.status if o.status == 'ok' else 'failed'}"
            c[k] = c.get(k, 0) + 1
            if o.op == "cas" and o.status == "ok" and o.succeeded:
                c["cas:succeeded"] = c.get("cas:succeeded", 0) + 1
        return c

    def revision_order_violations(self) -> list[tuple[Op, Op]]:
        """Pairs (a, b) of successful operations where b was called after a returned but
        answered with a lower header revision (the store revision can't go back in real time)."""
        done = sorted(
            (o for o in self.ops if o.status == "ok" and o.ret is not None), key=lambda o: o.ret or 0
        )
        bad: list[tuple[Op, Op]] = []
        best: Op | None = None
        i = 0
        for b in sorted(done, key=lambda o: o.call):
            while i < len(done) and (done[i].ret or 0) < b.call:
                if best is None or done[i].rev > best.rev:
                    best = done[i]
                i += 1
            if best is not None and b.rev < best.rev:
                bad.append((best, b))
        return bad


class Workload:
    """Concurrent clients recording into a History until stop()."""

    def __init__(
        self,
        history: History,
        endpoints: list[str],
        *,
        keys: int = 4,
        clients: int = 8,
        seed: int = 1,
        op_timeout: float = 2.0,
        key_prefix: str = "lin/",
        weights: tuple[float, float, float] = (0.4, 0.35, 0.25),  # get, put, cas
    ) -> None:
        self.history = history
        self.endpoints = endpoints
        self.keys = [f"{key_prefix}k{i}" for i in range(keys)]
        self.n_clients = clients
        self.seed = seed
        self.op_timeout = op_timeout
        self.weights = weights
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self) -> Workload:
        for i in range(self.n_clients):
            t = threading.Thread(target=self._client, args=(i,), name=f"client-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.op_timeout + 10)
        if self.errors:
            raise self.errors[0]

    def _client(self, index: int) -> None:
        try:
            self._run_client(index)
        except BaseException as e:  # a bug in the workload itself, not a server error
            self.errors.append(e)

    def _run_client(self, index: int) -> None:
        from server.api.etcdserverpb import rpc_pb2 as pb
        from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

        rng = random.Random(self.seed * 1000 + index)
        channels = [
            grpc.insecure_channel(u.split("://", 1)[1], options=CHANNEL_OPTIONS) for u in self.endpoints
        ]
        stubs = [pb_grpc.KVStub(ch) for ch in channels]
        h = self.history
        generation = 0
        seq = 0
        last_seen: dict[str, str | None] = {}
        try:
            while not self._stop.is_set():
                client = index + self.n_clients * generation
                member = rng.randrange(len(stubs))
                kv = stubs[member]
                key = self.keys[rng.randrange(len(self.keys))]
                kind = rng.choices(("get", "put", "cas"), self.weights)[0]
                seq += 1
                value = f"c{index}-{seq}"
                op = Op(client, 0, None, kind, key, member=self.endpoints[member])
                bkey = key.encode()
                try:
                    if kind == "get":
                        op.call = h.now()
                        rresp = kv.Range(pb.RangeRequest(key=bkey), timeout=self.op_timeout)
                        op.ret = h.now()
                        op.rev = rresp.header.revision
                        self._set_read(op, rresp.kvs)
                        last_seen[key] = op.read_value if op.read_found else None
                    elif kind == "put":
                        op.value = value
                        op.call = h.now()
                        presp = kv.Put(pb.PutRequest(key=bkey, value=value.encode()), timeout=self.op_timeout)
                        op.ret = h.now()
                        op.rev = presp.header.revision
                        last_seen[key] = value
                    else:
                        op.value = value
                        expected = last_seen.get(key)
                        if expected is None:
                            op.expected_absent = True
                            cmp = pb.Compare(
                                key=bkey, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0
                            )
                        else:
                            op.expected = expected
                            cmp = pb.Compare(
                                key=bkey,
                                target=pb.Compare.VALUE,
                                result=pb.Compare.EQUAL,
                                value=expected.encode(),
                            )
                        req = pb.TxnRequest(
                            compare=[cmp],
                            success=[pb.RequestOp(request_put=pb.PutRequest(key=bkey, value=value.encode()))],
                            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=bkey))],
                        )
                        op.call = h.now()
                        tresp = kv.Txn(req, timeout=self.op_timeout)
                        op.ret = h.now()
                        op.rev = tresp.header.revision
                        op.succeeded = tresp.succeeded
                        if tresp.succeeded:
                            last_seen[key] = value
                        else:
                            self._set_read(op, tresp.responses[0].response_range.kvs)
                            last_seen[key] = op.read_value if op.read_found else None
                except grpc.RpcError as e:
                    op.ret = None
                    op.status = "unknown" if kind != "get" else "failed"
                    op.error = f"{e.code().name}: {e.details()}"
                    if kind != "get":
                        generation += 1  # this client still has the write in flight
                    h.record(op)
                    time.sleep(0.02)  # don't spin against a member that is down
                    continue
                h.record(op)
        finally:
            for ch in channels:
                ch.close()

    @staticmethod
    def _set_read(op: Op, kvs: Any) -> None:
        if kvs:
            op.read_found = True
            op.read_value = kvs[0].value.decode()
            op.read_mod_rev = kvs[0].mod_revision
        else:
            op.read_found = False


@dataclass
class Nemesis:
    """Records fault windows in a history (they show as annotations in the visualization)."""

    history: History
    log: list[str] = field(default_factory=list)

    def window(self, description: str) -> _Window:
        return _Window(self, description)


class _Window:
    def __init__(self, nemesis: Nemesis, description: str) -> None:
        self.n = nemesis
        self.description = description
        self.start = 0

    def __enter__(self) -> _Window:
        self.start = self.n.history.now()
        self.n.log.append(f"{self.start / 1e9:7.2f}s {self.description}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.n.history.annotate(self.start, self.n.history.now(), self.description)
