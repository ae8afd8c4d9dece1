"""etcd's failpoints (gofail) at the steps petcd shares with etcd, driven by gofail's own protocol.

etcd's robustness binaries are built with gofail: a comment `// gofail: var raftBeforeSave
struct{}` becomes a failpoint that a test arms while the member runs. petcd has the same named
failpoints always compiled in and unarmed; each site costs one attribute check until armed:

    GOFAIL_HTTP=127.0.0.1:22381 petcd ...          # absent: nothing listens
    curl -X PUT -d 'panic' http://127.0.0.1:22381/raftBeforeSave
    curl http://127.0.0.1:22381/                   # every failpoint, "name=terms" per line
    curl http://127.0.0.1:22381/raftBeforeSave/count
    curl -X DELETE http://127.0.0.1:22381/raftBeforeSave
    curl -X PUT -d 'beforeCommit=sleep(10);raftAfterSave=1*panic' http://127.0.0.1:22381/failpoints
    GOFAIL_FAILPOINTS='raftBeforeSave=sleep(100);beforeCommit=2*return' petcd ...

Terms, gofail's grammar (see fail(9)):

    <terms> :: <term> ( "->" <term> )*
    <term>  :: <mod>* <act> [ "(" <val> ")" ]
    <mod>   :: <int> "*"          the term runs at most that many times
             | <float> "%"        with that probability (a float: "50.0%", not "50%")
    <act>   :: off | return | sleep | panic | break | print
    <val>   :: <int> | "<string>" | true | false | (nothing)

Each time the step is reached, the first term whose modifiers all allow it runs, and the
failpoint's count goes up by one. Actions, as in etcd: `sleep(N)` waits N ms (`sleep("1s")`: a Go
duration) -- the step's own task or thread waits, not the member's other work, except at steps
that run synchronously on the event loop (apply, scheduled compaction), where the whole member
waits; `panic` ends the process as a Go panic does (exit status 2, "panic: failpoint panic: ..."
on stderr, nothing flushed); `print` writes "failpoint print: NAME" to stdout; `break` stops the
process (SIGSTOP) so that a debugger can attach, where gofail starts gdb; `return` and `off`
have no further effect, every failpoint here being etcd's `struct{}` kind.

FAILPOINTS below is the list petcd has; an etcd failpoint not in it has no petcd counterpart
(e.g. raftAfterWALRelease, snapDB*, defragdbFail, lease checkpoints, rafthttp's labels).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from server.durations import parse_duration

__all__ = [
    "FAILPOINTS",
    "DisabledError",
    "Failpoint",
    "FailpointError",
    "GofailServer",
    "NoSuchFailpointError",
    "Terms",
    "TermsError",
    "disable",
    "enable",
    "enable_from_env",
    "failpoint",
    "names",
    "parse_failpoints",
    "serve",
    "status",
]

# name -> where petcd reaches it (the same step as etcd's failpoint of that name)
FAILPOINTS: dict[str, str] = {
    "raftBeforeSaveSnap": "raft loop: before a snapshot received from the leader is saved",
    "raftBeforeWALSaveSnaphot": "raft loop: snapshot file written, before its WAL marker (etcd's spelling)",
    "raftAfterSaveSnap": "raft loop: after a received snapshot was saved (file and WAL marker)",
    "raftBeforeSave": "raft loop: before each Ready's hard state and entries are written to the WAL",
    "walBeforeSync": "WAL: before the fdatasync of a batch raft needs durable",
    "walAfterSync": "WAL: after that fdatasync",
    "raftAfterSave": "raft loop: after the Ready's hard state and entries are in the WAL",
    "raftBeforeApplySnap": "raft loop: before raft's log storage takes a received snapshot",
    "raftAfterApplySnap": "raft loop: after raft's log storage took it",
    "raftBeforeLeaderSend": "raft loop, leader: before the Ready's messages are sent (after the WAL write)",
    "raftBeforeFollowerSend": "raft loop, follower or candidate: before the Ready's messages are sent",
    "applyBeforeOpenSnapshot": "apply: before a received snapshot's database replaces the backend",
    "applyAfterOpenSnapshot": "apply: after it replaced the backend",
    "beforeApplyOneEntryNormal": "apply: before each committed normal entry (synchronous step)",
    "beforeApplyOneConfChange": "apply: before each committed configuration change (synchronous step)",
    "raftBeforeAdvance": "raft loop: before raft is told the Ready was processed",
    "beforeCommit": "backend writer thread: before buffered writes are committed to LMDB",
    "afterCommit": "backend writer thread: after that commit",
    "compactBeforeCommitScheduledCompact": "compaction: before the scheduled revision is committed (synchronous step)",
    "compactAfterCommitScheduledCompact": "compaction: after it was committed (synchronous step)",
    "compactBeforeCommitBatch": "compaction: before each batch of deletions is committed",
    "compactAfterCommitBatch": "compaction: after each batch was committed",
    "compactBeforeSetFinishedCompact": "compaction: last batch, before the finished revision is recorded",
    "compactAfterSetFinishedCompact": "compaction: last batch, after the finished revision was recorded",
    "defragBeforeCopy": "defragmentation: before the database is copied compacted",
    "defragBeforeRename": "defragmentation: before the copy replaces the database file",
    "beforeSendWatchResponse": "watch: before each response is sent on a watch stream",
}


class FailpointError(Exception):
    """gofail's errors, with gofail's messages."""


class NoSuchFailpointError(FailpointError):
    def __init__(self) -> None:
        super().__init__("failpoint: failpoint does not exist")


class DisabledError(FailpointError):
    def __init__(self) -> None:
        super().__init__("failpoint: failpoint is disabled")


class TermsError(FailpointError, ValueError):
    def __init__(self) -> None:
        super().__init__("failpoint: could not parse terms")


# -- terms -----------------------------------------------------------------------------------------


class _Unit:
    """The value of a term with no value (Go's struct{}{}); formatted as Go's %v does."""

    def __repr__(self) -> str:
        return "{}"


UNIT = _Unit()
# None: a term followed by "->" without a value (gofail then has a nil value, printed "<nil>")
Value = _Unit | int | str | bool | None

_rng = random.Random()


class _Count:
    __slots__ = ("left",)

    def __init__(self, n: int) -> None:
        self.left = n

    def allow(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        return False


class _Probability:
    __slots__ = ("p",)

    def __init__(self, percent: float) -> None:
        self.p = percent / 100.0

    def allow(self) -> bool:
        return _rng.random() <= self.p


@dataclass(frozen=True, eq=False)
class _Term:
    desc: str
    mods: tuple[_Count | _Probability, ...]
    act: str
    val: Value

    def allow(self) -> bool:
        return all(m.allow() for m in self.mods)  # in order, stopping at the first refusal


_NUMBER = re.compile(r"(\d+)(\.\d*)?")
_ACT = re.compile(r"off|return|sleep|panic|break|print")
# (), ("s"), (`s`), (int), (true|false); gofail reads an int as Go's %d and then expects exactly
# its canonical digits, so "+1", "01" or "-0" do not parse
_VAL = re.compile(r'\((?:\)|"([^"\\]*)"\)|`([^`]*)`\)|(0|-?[1-9][0-9]*)\)|(true|false)\))')


def _parse_term(desc: str, pos: int) -> tuple[_Term, int]:
    start, n = pos, len(desc)
    mods: list[_Count | _Probability] = []
    while m := _NUMBER.match(desc, pos):
        end = m.end()
        if end == n:
            raise TermsError()
        if m.group(2) is not None:
            if desc[end] != "%":
                raise TermsError()
            mods.append(_Probability(float(m.group(0))))
        else:
            if desc[end] != "*":
                raise TermsError()
            mods.append(_Count(int(m.group(1))))
        pos = end + 1
    a = _ACT.match(desc, pos)
    if a is None:
        raise TermsError()  # gofail would keep a term without an action and crash evaluating it
    pos = a.end()
    val: Value
    if pos == n:
        val = UNIT
    elif desc[pos] != "(":
        val = None
    else:
        v = _VAL.match(desc, pos)
        if v is None:
            raise TermsError()
        quoted, raw, number, flag = v.groups()
        if quoted is not None:
            val = quoted
        elif raw is not None:
            val = raw
        elif number is not None:
            val = int(number)
        elif flag is not None:
            val = flag == "true"
        else:
            val = UNIT
        pos = v.end()
    return _Term(desc[start:pos], tuple(mods), a.group(), val), pos


class Terms:
    """One failpoint's terms, parsed; raises TermsError as gofail refuses them."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.counter = 0  # terms that ran
        self._lock = threading.Lock()
        chain: list[_Term] = []
        pos, n = 0, len(desc)
        while pos < n:
            term, pos = _parse_term(desc, pos)
            chain.append(term)
            if n - pos >= 2:
                if not desc.startswith("->", pos):
                    raise TermsError()
                pos += 2
            elif pos < n:
                raise TermsError()  # one character is never a term
        if not chain:
            raise TermsError()
        self._chain = tuple(chain)

    def pick(self) -> _Term | None:
        """The term that runs now (its modifiers allowed it), counted; None if none does."""
        with self._lock:
            for term in self._chain:
                if term.allow():
                    self.counter += 1
                    return term
        return None


# -- failpoints ------------------------------------------------------------------------------------

# held while the HTTP endpoint answers and by `panic`: a panic never cuts a response short
_panic_lock = threading.Lock()
# how `panic` ends the process (tests replace it)
exit_process: Callable[[int], None] = os._exit


def _fmt(v: Value) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if not isinstance(v, _Unit) else "{}"


def _run(name: str, term: _Term) -> float:
    """Perform term's action; returns how long to sleep (the caller sleeps its own way)."""
    act = term.act
    if act == "sleep":
        v = term.val
        if isinstance(v, int) and not isinstance(v, bool):
            return max(v, 0) / 1000.0
        if isinstance(v, str):
            try:
                return max(parse_duration(v), 0.0)
            except ValueError:
                print(f"failpoint: could not parse sleep({v}) on {name}", flush=True)
                return 0.0
        print(f"failpoint: ignoring sleep({_fmt(v)}) on {name}", flush=True)
    elif act == "panic":
        message = f"failpoint panic: {_fmt(term.val)}" if term.val is not None else f"failpoint panic: {name}"
        with _panic_lock:
            sys.stderr.write(f"panic: {message}\n\n")
            traceback.print_stack(file=sys.stderr)
            sys.stderr.flush()
            exit_process(2)
    elif act == "print":
        print(f"failpoint print: {name}", flush=True)
    elif act == "break":
        print(f"failpoint break: {name}: stopped (SIGSTOP) for a debugger; SIGCONT resumes", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    return 0.0


class Failpoint:
    """A named step. At its site:

    if FP.armed:                 # the one check while unarmed
        await FP.hit_async()     # in a task: a sleep suspends only this task
        FP.hit()                 # on a thread, or a synchronous step: a sleep blocks it
    """

    __slots__ = ("armed", "name", "terms")

    def __init__(self, name: str) -> None:
        self.name = name
        self.terms: Terms | None = None
        self.armed = False

    def _pick(self) -> _Term | None:
        terms = self.terms
        return terms.pick() if terms is not None else None

    def hit(self) -> None:
        term = self._pick()
        if term is not None:
            delay = _run(self.name, term)
            if delay:
                time.sleep(delay)

    async def hit_async(self) -> None:
        term = self._pick()
        if term is not None:
            delay = _run(self.name, term)
            if delay:
                await asyncio.sleep(delay)

    def set(self, terms: Terms | None) -> None:
        self.terms = terms
        self.armed = terms is not None


_REGISTRY: dict[str, Failpoint] = {name: Failpoint(name) for name in FAILPOINTS}


def failpoint(name: str) -> Failpoint:
    """The failpoint of a step (KeyError: not in FAILPOINTS, a bug at the call site)."""
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def _get(name: str) -> Failpoint:
    fp = _REGISTRY.get(name)
    if fp is None:
        raise NoSuchFailpointError()
    return fp


def enable(name: str, desc: str) -> None:
    fp = _get(name)
    fp.set(Terms(desc))


def disable(name: str) -> None:
    fp = _get(name)
    if fp.terms is None:
        raise DisabledError()
    fp.set(None)


def status(name: str) -> tuple[str, int]:
    """(terms, how many times a term ran); DisabledError when unarmed."""
    terms = _get(name).terms
    if terms is None:
        raise DisabledError()
    return terms.desc, terms.counter


def parse_failpoints(text: str) -> dict[str, str]:
    """gofail's NAME=TERMS[;NAME=TERMS]* (GOFAIL_FAILPOINTS, PUT /failpoints)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        fields = part.split("=")
        if len(fields) != 2:
            raise FailpointError(f'bad failpoint "{part}"')
        out[fields[0]] = fields[1]
    return out


def enable_from_env(environ: Mapping[str, str]) -> None:
    """GOFAIL_FAILPOINTS, as gofail applies it at start: a malformed list is an error (the
    process must not start); terms that do not parse are reported and skipped, and names
    petcd does not have are ignored."""
    text = environ.get("GOFAIL_FAILPOINTS", "")
    if not text:
        return
    for name, desc in parse_failpoints(text).items():
        if name not in _REGISTRY:
            continue
        try:
            enable(name, desc)
        except TermsError as e:
            print(f'failed to enable "{name}={desc}" ({e})', flush=True)


# -- the HTTP endpoint (gofail's runtime/http.go) --------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ALLOW: ClassVar[str] = "PUT"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # Go's server sends a Date and no Server header
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _send(self, code: int, body: bytes = b"", *, error: bool = False) -> None:
        self.send_response(code)
        if error:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("X-Content-Type-Options", "nosniff")
        elif body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        if code == 405:
            self.send_header("Allow", self.ALLOW)
        if code != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _error(self, code: int, message: str, trailer: bytes = b"") -> None:
        self._send(code, message.encode() + b"\n" + trailer, error=True)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        with _panic_lock:
            path = self.path
            if not path.startswith("/"):
                self._error(400, "malformed request URI")
                return
            key = path[1:]
            if self.command == "PUT":
                self._put(key)
            elif self.command == "GET":
                self._get(key)
            elif self.command == "DELETE":
                try:
                    disable(key)
                except FailpointError as e:
                    self._error(400, f"failed to delete failpoint {e}")
                    return
                self._send(204)
            else:
                self._error(405, "Method not allowed")

    def _put(self, key: str) -> None:
        text = self._body().decode(errors="replace")
        wanted = {key: text}
        if key.lower() == "failpoints":
            try:
                wanted = parse_failpoints(text)
            except FailpointError as e:
                self._error(400, f"fail to parse failpoint: {e}")
                return
        for name, desc in wanted.items():
            try:
                enable(name, desc)
            except FailpointError as e:
                self._error(400, f"fail to set failpoint: {e}")
                return
        self._send(204)

    def _get(self, key: str) -> None:
        if not key:
            lines = []
            for name in names():
                try:
                    desc, _ = status(name)
                except FailpointError:
                    desc = ""
                lines.append(f"{name}={desc}")
            self._send(200, ("\n".join(lines) + "\n").encode())
        elif key.endswith("/count"):
            try:
                _, count = status(key[: -len("/count")])
            except NoSuchFailpointError as e:
                self._error(404, f"failed to GET: {e}")
                return
            except FailpointError as e:
                self._error(500, f"failed to GET: {e}")
                return
            self._send(200, str(count).encode())
        else:
            try:
                desc, _ = status(key)
            except FailpointError as e:
                # gofail writes the (empty) status after the error too
                self._error(404, f"failed to GET: {e}", trailer=b"\n")
                return
            self._send(200, (desc + "\n").encode())

    do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _serve


class _HTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class GofailServer:
    """The endpoint GOFAIL_HTTP names, on its own threads: it answers even while a sleeping
    failpoint holds the event loop."""

    def __init__(self, address: str) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"GOFAIL_HTTP: address {address!r} is not host:port")
        host = host.strip("[]")
        server_cls: type[ThreadingHTTPServer] = _HTTPServer6 if ":" in host else ThreadingHTTPServer
        self._httpd = server_cls((host, int(port)), _Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gofail-http", daemon=True)

    def start(self) -> GofailServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._httpd.shutdown()
        self._httpd.server_close()


def serve(environ: Mapping[str, str]) -> GofailServer | None:
    """GOFAIL_FAILPOINTS and GOFAIL_HTTP as gofail reads them at start; None when GOFAIL_HTTP
    is unset (nothing listens). Raises FailpointError (bad GOFAIL_FAILPOINTS) or OSError/
    ValueError (cannot listen): the process must not start."""
    enable_from_env(environ)
    address = environ.get("GOFAIL_HTTP", "")
    if not address:
        return None
    return GofailServer(address).start()
