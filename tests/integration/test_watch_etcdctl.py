"""Differential tests of `etcdctl watch`: the same watches and writes against petcd and a real
etcd v3.6, comparing what etcdctl prints (stdout, its stderr messages, exit code) after
normalizing ports and member/cluster IDs.

Each scenario starts `etcdctl watch ...` processes in the background, makes the same writes on
both servers, waits until every watch has printed its last expected event (polling its output
with a deadline), then stops the watches (SIGTERM) and compares.

We test these aspects:
- the simple, json and fields output of PUT and DELETE events, a txn writing several keys in
  one revision, a delete of a range, --prev-kv, a single key, --prefix, a [key, range_end) range
  and every key (--prefix "");
- --rev=N from history (events written before the watch started), and the exec form
  (`watch ... -- cmd`, whose ETCD_WATCH_REVISION is the response header revision);
- a watch from now (no --rev);
- watches on compacted and negative revisions: etcdctl's cancel message and exit code;
- interactive mode (-i): watch lines, progress requests, invalid lines, end of input;
- --progress-notify with --watch-progress-notify-interval=500ms on both servers.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.framework.differential import Differential, normalizer
from tests.harness.etcdctl import Etcdctl
from tests.harness.normalize import Normalizer
from tests.harness.paths import peer
from tests.harness.procs import Member

FLAGS = ("--watch-progress-notify-interval=500ms", "--unsafe-no-fsync")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.flags(*FLAGS)]
T = TypeVar("T")


def stderr_messages(err: str) -> list[str]:
    """etcdctl's own messages; its client library's retry warnings are JSON log lines."""
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("{")]


class WatchProc:
    """`etcdctl watch ...` running in the background, output captured in files."""

    def __init__(self, m: Member, tmp: Path, name: str, *args: str, interactive: bool = False) -> None:
        self.name = name
        self.out_path = tmp / f"{m.kind}-{m.client_port}-{name}.out"
        self.err_path = tmp / f"{m.kind}-{m.client_port}-{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [peer("etcdctl"), f"--endpoints={m.client_url}", "watch", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                env={**os.environ, "ETCDCTL_API": "3"},
            )

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, cond: str | Callable[[str], bool], timeout: float = 15.0) -> str:
        """Poll stdout until it contains cond (or cond(stdout) holds)."""
        check = (lambda text: cond in text) if isinstance(cond, str) else cond
        deadline = time.monotonic() + timeout
        while True:
            text = self.out()
            if check(text):
                return text
            if self.proc.poll() is not None and not check(self.out()):
                raise AssertionError(
                    f"watch {self.name} exited ({self.proc.returncode}) without {cond!r}:\n{text}\n{self.err()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"watch {self.name}: no {cond!r} after {timeout}s:\n{text}\n{self.err()}"
                )
            time.sleep(0.02)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        return {"rc": self.proc.returncode, "out": self.out(), "err": stderr_messages(self.err())}


@dataclass
class Side:
    m: Member
    ctl: Etcdctl
    tmp: Path
    procs: list[WatchProc]

    def watch(self, name: str, *args: str, interactive: bool = False) -> WatchProc:
        w = WatchProc(self.m, self.tmp, name, *args, interactive=interactive)
        self.procs.append(w)
        return w

    def close(self) -> None:
        for w in self.procs:
            w.stop()


def both(pair: Differential, tmp_path: Path, script: Callable[[Side], T]) -> tuple[T, T]:
    """Run script against petcd and etcd in parallel; results normalized (str parts)."""
    sides = []
    for m in pair:
        d = tmp_path / f"{m.kind}-watch"
        d.mkdir(exist_ok=True)
        sides.append(Side(m, Etcdctl(m.client_url), d, []))
    norms = [normalizer(m) for m in pair]
    try:
        with ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(_labelled, script, side) for side in sides]
            results = [f.result() for f in futs]
    finally:
        for side in sides:
            side.close()
    return _norm(results[0], norms[0]), _norm(results[1], norms[1])


def _labelled(script: Callable[[Side], T], side: Side) -> T:
    try:
        return script(side)
    except AssertionError as e:  # say which server broke the script's own checks
        raise AssertionError(f"[{side.m.kind}] {e}") from e


def _norm(value: Any, norm: Normalizer) -> Any:
    if isinstance(value, str):
        return norm(value)
    if isinstance(value, list):
        return [_norm(v, norm) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v, norm) for k, v in value.items()}
    return value


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Every watch's result equal on both sides; all differences reported at once."""
    diffs = [
        f"{name}:\n  petcd: {got.get(name)!r}\n  etcd:  {want[name]!r}"
        for name in want
        if got.get(name) != want[name]
    ]
    assert not diffs, "\n".join(diffs)


def txn(ctl: Etcdctl, *ops: str) -> str:
    # no compares (an empty first line), the success ops, no failure ops
    return ctl.ok("txn", input="\n" + "\n".join(ops) + "\n\n\n")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# -- tests ------------------------------------------------------------------------------------------

WATCHES: dict[str, tuple[str, ...]] = {
    "key": ("foo",),
    "prefix": ("--prefix", "foo"),
    "prev_kv": ("--prefix", "--prev-kv", "foo"),
    "json": ("--prefix", "-w", "json", "foo"),
    "json_prev_kv": ("--prev-kv", "-wjson", "foo"),
    "fields": ("--prefix", "--prev-kv", "-w", "fields", "foo"),
    "range": ("foo", "fop"),
    "everything": ("--prefix", ""),
    "hex": ("--prefix", "--hex", "foo"),
    "exec": (
        "--prefix",
        "foo",
        "--",
        "sh",
        "-c",
        "echo $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE $ETCD_WATCH_REVISION",
    ),
}


def _more_writes(ctl: Etcdctl) -> None:
    ctl.ok("put", "foo/a", "2")  # 3
    ctl.ok("put", "fooz", "3")  # 4
    ctl.ok("put", "fop", "outside")  # 5
    ctl.ok("put", "foo", "11")  # 6
    ctl.ok("del", "foo")  # 7
    txn(ctl, "put foo/a 22", "put foo/b 33", "put zz 44", "del fooz")  # 8: four events
    ctl.ok("del", "--prefix", "foo/")  # 9: two deletes
    ctl.ok("put", "foo", "end")  # 10


def _shows(name: str, value: str) -> str:
    """What a watch of this format prints for `put foo <value>`."""
    if name.startswith("json"):
        return f'"value":"{b64(value)}"'
    if name == "hex":
        return "\\x66\\x6f\\x6f\n" + "".join(f"\\x{ord(ch):02x}" for ch in value) + "\n"
    if name == "fields":
        return f'"Value" : "{value}"'
    if name == "exec":
        return f'"PUT" "foo" "{value}"'
    return f"foo\n{value}\n"


def test_watch_output_formats_live_and_from_history(pair: Differential, tmp_path: Path) -> None:
    def script(side: Side) -> dict[str, Any]:
        # the same watches live (from revision 2, started before the writes) and from history
        # (started after them)
        live = {name: side.watch(name, "--rev=2", *args) for name, args in WATCHES.items()}
        side.ctl.ok("put", "foo", "1")  # 2
        # once every watch printed revision 2 (delivered live or by a catch-up that ended at 2),
        # all of them are synced: each later revision comes in its own response
        for name, w in live.items():
            w.wait_for(_shows(name, "1"))
        _more_writes(side.ctl)
        hist = {
            f"hist_{name}": side.watch(f"hist_{name}", "--rev=2", *args) for name, args in WATCHES.items()
        }
        hist["hist_rev7"] = side.watch("hist_rev7", "--rev=7", "--prefix", "--prev-kv", "foo")
        out = {}
        for name, w in {**live, **hist}.items():
            w.wait_for(_shows(name.removeprefix("hist_"), "end"))
            out[name] = w.stop()
        return out

    got, want = both(pair, tmp_path, script)
    assert want["key"]["out"] == "PUT\nfoo\n1\nPUT\nfoo\n11\nDELETE\nfoo\n\nPUT\nfoo\nend\n"
    # the exec form's lines (after each event's usual output): ETCD_WATCH_REVISION is the header
    # revision, the event's own for live events and the current one for a catch-up
    assert _exec_lines(want["exec"]["out"])[:2] == ['"PUT" "foo" "1" 2', '"PUT" "foo/a" "2" 3']
    assert _exec_lines(want["hist_exec"]["out"])[:2] == ['"PUT" "foo" "1" 10', '"PUT" "foo/a" "2" 10']
    assert want["json"]["out"].count("\n") == 8 and want["hist_json"]["out"].count("\n") == 1
    assert_same(got, want)


def _exec_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith('"')]


def test_watch_from_now(pair: Differential, tmp_path: Path) -> None:
    def script(side: Side) -> dict[str, Any]:
        side.ctl.ok("put", "now/old", "before")
        w = side.watch("now", "--prefix", "--prev-kv", "now/")
        # the watch exists once a probe write shows up; everything after it is deterministic
        deadline = time.monotonic() + 15
        while "probe" not in w.out():
            assert time.monotonic() < deadline, w.err()
            side.ctl.ok("put", "now/probe", "probe")
            time.sleep(0.1)
        w.wait_for(lambda t: t.count("probe") >= 2 and t.endswith("\n"))
        side.ctl.ok("put", "now/old", "after")
        side.ctl.ok("del", "now/probe")
        txn(side.ctl, "put now/a 1", "put now/b 2")
        side.ctl.ok("put", "now/old", "end")
        w.wait_for("\nend\n")
        res = w.stop()
        out = res["out"]
        # drop the probe events (how many depends on timing) and the revision of the last one
        tail = out[out.index("PUT\nnow/old\nbefore\nnow/old\nafter\n") :]
        return {"out": tail, "rc": res["rc"], "err": res["err"]}

    got, want = both(pair, tmp_path, script)
    assert want["out"].startswith(
        "PUT\nnow/old\nbefore\nnow/old\nafter\nDELETE\nnow/probe\nprobe\nnow/probe\n\n"
    )
    assert got == want


def test_watch_compacted_and_negative_revision(pair: Differential, tmp_path: Path) -> None:
    def script(side: Side) -> dict[str, Any]:
        for i in range(5):
            side.ctl.ok("put", "c", f"v{i}")  # 2..6
        side.ctl.ok("compact", "4")
        out = {}
        for name, args in {
            "compacted": ("--rev=2", "c"),
            "compacted_prefix": ("--rev=3", "--prefix", ""),
            "negative": ("--rev=-1", "c"),
        }.items():
            w = side.watch(name, *args)
            w.wait_exit()
            out[name] = w.stop()
        ok = side.watch("at_compaction", "--rev=4", "--prev-kv", "c")  # the compaction revision is fine
        ok.wait_for("\nv4\n")
        out["at_compaction"] = ok.stop()
        return out

    got, want = both(pair, tmp_path, script)
    assert want["compacted"] == {
        "rc": 5,
        "out": "",
        "err": [
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)",
            "Error: watch is canceled by the server",
        ],
    }
    # revision 4's previous version was compacted: no prev_kv for it, then prev_kv again
    assert want["at_compaction"]["out"] == "PUT\nc\nv2\nPUT\nc\nv2\nc\nv3\nPUT\nc\nv3\nc\nv4\n"
    assert_same(got, want)


def test_watch_interactive(pair: Differential, tmp_path: Path) -> None:
    def script(side: Side) -> dict[str, Any]:
        ctl = side.ctl
        w = side.watch("interactive", "-i", interactive=True)
        w.send("watch foo")
        w.send("progress")  # also tells us the watch exists: it goes after the create
        w.wait_for("progress notify: 1\n")
        ctl.ok("put", "foo", "1")
        w.wait_for("PUT\nfoo\n1\n")
        w.send("watch --prefix bar")
        w.send("progress")  # one response for the stream, delivered to both watchers
        w.wait_for(lambda t: t.count("progress notify: 2\n") == 2)
        ctl.ok("put", "bar/x", "2")
        w.wait_for("bar/x\n2\n")
        ctl.ok("put", "foo", "3")
        w.wait_for("foo\n3\n")
        w.send("watch --rev=2 --prev-kv foo")  # history, with prev_kv
        w.wait_for("PUT\nfoo\n1\nfoo\n3\n")
        w.send("bogus")
        w.send("watch")
        w.send("watch --prefix a b")
        w.send("watch --rev=100 later")  # a future revision: not synced until then
        w.send("progress")  # so no progress response at all
        time.sleep(0.2)  # let etcdctl send it: a response would come before the next event
        ctl.ok("put", "bar/end", "4")  # one watcher only
        w.wait_for("bar/end\n4\n")
        assert w.proc.stdin is not None
        w.proc.stdin.close()  # end of input ends etcdctl
        w.wait_exit()
        return w.stop()

    got, want = both(pair, tmp_path, script)
    assert "Invalid command bogus (only support watch)" in want["err"], want
    assert want["out"].count("progress notify") == 3, want
    assert want["rc"] != 0
    assert got == want


def test_watch_progress_notify(pair: Differential, tmp_path: Path) -> None:
    """Periodic progress notifications (both servers: --watch-progress-notify-interval=500ms)."""

    def script(side: Side) -> dict[str, Any]:
        w = side.watch("progress", "--progress-notify", "pn")
        w.wait_for("progress notify: 1\n")  # the watch exists and is idle at revision 1
        side.ctl.ok("put", "pn", "x")  # 2
        side.ctl.ok("put", "other", "y")  # 3: not watched
        w.wait_for("progress notify: 3\n")
        wj = side.watch("progress_json", "--progress-notify", "-wjson", "pn")
        wj.wait_for("progress notify: 3\n")
        res, resj = w.stop(), wj.stop()
        # how many notifications arrive depends on timing: drop repeated lines
        return {
            "out": _unique_lines(res["out"]),
            "json": _unique_lines(resj["out"]),
            "rc": [res["rc"], resj["rc"]],
            "err": res["err"] + resj["err"],
        }

    got, want = both(pair, tmp_path, script)
    assert want["out"] == "progress notify: 1\nPUT\npn\nx\nprogress notify: 3\n", want
    assert want["json"].startswith("progress notify: 3\n{"), want
    assert got == want


def _unique_lines(text: str) -> str:
    return "".join(ln + "\n" for ln in dict.fromkeys(text.splitlines()))
