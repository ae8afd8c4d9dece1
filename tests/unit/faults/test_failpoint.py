"""etcd's failpoints in petcd (server/failpoint.py): gofail's term grammar and evaluation, the
sites, GOFAIL_FAILPOINTS, and gofail's HTTP protocol byte for byte (runtime/http.go)."""

from __future__ import annotations

import asyncio
import http.client
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import failpoint as fp
from server.failpoint import FAILPOINTS, Failpoint, FailpointError, GofailServer, Terms, TermsError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def unarmed() -> Iterator[None]:
    yield
    for name in fp.names():
        fp.failpoint(name).set(None)


# -- grammar ---------------------------------------------------------------------------------------

UNIT = fp.UNIT


@pytest.mark.parametrize(
    ("desc", "chain"),
    [
        ("off", [("off", UNIT)]),
        ("return", [("return", UNIT)]),
        ("return()", [("return", UNIT)]),
        ('return("abc")', [("return", "abc")]),
        ("return(`a b`)", [("return", "a b")]),
        ("return(42)", [("return", 42)]),
        ("return(-7)", [("return", -7)]),
        ("return(true)", [("return", True)]),
        ("return(false)", [("return", False)]),
        ("sleep(100)", [("sleep", 100)]),
        ('sleep("1s")', [("sleep", "1s")]),
        ("panic", [("panic", UNIT)]),
        ('panic("boom")', [("panic", "boom")]),
        ("print", [("print", UNIT)]),
        ("break", [("break", UNIT)]),
        ("2*return", [("return", UNIT)]),
        ("50.0%sleep(10)", [("sleep", 10)]),
        ("50.%return", [("return", UNIT)]),
        ("1*2*return", [("return", UNIT)]),
        ("2*50.0%return(1)", [("return", 1)]),
        ('2*return("abc")->1*return("def")', [("return", "abc"), ("return", "def")]),
        # a term followed by "->" has no value (gofail's nil), and a trailing "->" is allowed
        ("return->sleep(1)", [("return", None), ("sleep", 1)]),
        ("return->", [("return", None)]),
    ],
)
def test_terms_parse(desc: str, chain: list[tuple[str, object]]) -> None:
    t = Terms(desc)
    assert [(x.act, x.val) for x in t._chain] == chain
    assert t.desc == desc


@pytest.mark.parametrize(
    "desc",
    [
        "",
        "foo",
        "50%sleep",  # a probability is a float: 50.0%
        "2.5*return",
        "5",
        "2*",  # modifiers without an action
        "2*->return",
        "return(",
        "return)",
        "returnx",
        "return(01)",
        "return(+1)",
        "return(-0)",
        'return("a")x',
        'return("a\\"b")',
        "return(abc)",
        "return->->return",
        "return-return",
        "sleep(1)x",
    ],
)
def test_terms_bad(desc: str) -> None:
    with pytest.raises(TermsError, match="failpoint: could not parse terms"):
        Terms(desc)


# -- evaluation (gofail's TestTermsString / TestTermsCounter) -------------------------------------


@pytest.mark.parametrize(
    ("desc", "values"),
    [
        ("off", [UNIT]),
        ('2*return("abc")', ["abc", "abc", "-", "-"]),
        ('2*return("abc")->1*return("def")', ["abc", "abc", "def", "-"]),
        ('1*return("abc")->return("def")', ["abc", "def", "def"]),
    ],
)
def test_terms_eval(desc: str, values: list[object]) -> None:
    t = Terms(desc)
    got = []
    for _ in values:
        term = t.pick()
        got.append("-" if term is None else term.val)
    assert got == values


@pytest.mark.parametrize(("runs", "count"), [(12, 11), (3, 3), (0, 0)])
def test_terms_counter(runs: int, count: int) -> None:
    t = Terms('10*sleep(10)->1*return("abc")')
    for _ in range(runs):
        t.pick()
    assert t.counter == count


def test_probability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp, "_rng", random.Random(7))
    half = Terms("50.0%return")
    hits = sum(half.pick() is not None for _ in range(2000))
    assert 800 < hits < 1200
    assert half.counter == hits
    always = Terms("100.0%return")
    assert all(always.pick() is not None for _ in range(100))
    # modifiers are tried in order: the count is spent only when the probability allowed it
    t = Terms("50.0%3*return")
    hits = sum(t.pick() is not None for _ in range(100))
    assert hits == 3


# -- actions ---------------------------------------------------------------------------------------


def test_sleep_and_other_actions(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    f = Failpoint("x")
    for desc, want in [("sleep(250)", 0.25), ('sleep("1.5s")', 1.5), ('sleep("2m")', 120.0)]:
        f.set(Terms(desc))
        f.hit()
        assert slept[-1] == want
    n = len(slept)
    f.set(Terms("sleep(true)"))
    f.hit()
    f.set(Terms('sleep("soon")'))
    f.hit()
    f.set(Terms("print"))
    f.hit()
    f.set(Terms("return"))
    f.hit()
    assert len(slept) == n
    assert capsys.readouterr().out.splitlines() == [
        "failpoint: ignoring sleep(true) on x",
        "failpoint: could not parse sleep(soon) on x",
        "failpoint print: x",
    ]


async def test_hit_async_suspends_only_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(time, "sleep", lambda d: pytest.fail("blocked the event loop"))
    f = Failpoint("x")
    f.set(Terms("2*sleep(30)"))
    for _ in range(3):
        await f.hit_async()
    assert slept == [0.03, 0.03]


@pytest.mark.parametrize(
    ("desc", "message"),
    [
        ("panic", "failpoint panic: {}"),
        ('panic("boom")', "failpoint panic: boom"),
        ("panic->off", "failpoint panic: x"),
    ],
)
def test_panic_exits_like_go(
    desc: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(fp, "exit_process", fake_exit)
    f = Failpoint("x")
    f.set(Terms(desc))
    with pytest.raises(SystemExit):
        f.hit()
    assert codes == [2]
    assert capsys.readouterr().err.startswith(f"panic: {message}\n")


def test_unarmed_costs_one_check() -> None:
    f = fp.failpoint("raftBeforeSave")
    assert f.armed is False and f.terms is None
    fp.enable("raftBeforeSave", "off")
    assert f.armed is True
    fp.disable("raftBeforeSave")
    assert f.armed is False


def test_runtime_errors() -> None:
    with pytest.raises(FailpointError, match="failpoint: failpoint does not exist"):
        fp.enable("nope", "off")
    with pytest.raises(TermsError):
        fp.enable("raftBeforeSave", "nope")
    with pytest.raises(FailpointError, match="failpoint: failpoint is disabled"):
        fp.status("raftBeforeSave")
    with pytest.raises(FailpointError, match="failpoint: failpoint is disabled"):
        fp.disable("raftBeforeSave")
    fp.enable("raftBeforeSave", "1*return")
    fp.failpoint("raftBeforeSave").hit()
    assert fp.status("raftBeforeSave") == ("1*return", 1)


def test_gofail_failpoints_env(capsys: pytest.CaptureFixture[str]) -> None:
    assert fp.parse_failpoints("a=1*return;b=sleep(1);") == {"a": "1*return", "b": "sleep(1)"}
    with pytest.raises(FailpointError, match='bad failpoint "a"'):
        fp.parse_failpoints("a;b=off")
    fp.enable_from_env({"GOFAIL_FAILPOINTS": "raftBeforeSave=2*return;beforeCommit=bad;notInPetcd=off"})
    assert fp.status("raftBeforeSave") == ("2*return", 0)
    assert not fp.failpoint("beforeCommit").armed
    assert 'failed to enable "beforeCommit=bad" (failpoint: could not parse terms)' in capsys.readouterr().out


# -- the names and their sites ---------------------------------------------------------------------


def test_every_failpoint_has_a_site() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "server").rglob("*.py") if p.name != "failpoint.py")
    used = set(re.findall(r'failpoint\("(\w+)"\)', sources))
    assert used == set(FAILPOINTS)


def _etcd_failpoints() -> set[str] | None:
    go = shutil.which("go")
    if go is None:
        return None
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    src = Path(cache) / "go.etcd.io/etcd/server/v3@v3.6.16"
    if not src.is_dir():
        return None
    return {
        m.group(1)
        for p in src.rglob("*.go")
        if not p.name.endswith("_test.go")
        for m in re.finditer(r"// gofail: var (\w+) ", p.read_text(errors="replace"))
    }


def test_names_are_etcds() -> None:
    etcd = _etcd_failpoints()
    if etcd is None:
        pytest.skip("etcd v3.6.16's source is not in the Go module cache")
    assert set(FAILPOINTS) <= etcd, set(FAILPOINTS) - etcd


def test_readme_documents_the_failpoints() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in FAILPOINTS:
        assert f"`{name}`" in readme, name


# -- gofail's HTTP protocol ------------------------------------------------------------------------


@pytest.fixture
def gofail() -> Iterator[GofailServer]:
    s = GofailServer("127.0.0.1:0").start()
    try:
        yield s
    finally:
        s.stop()


def call(
    s: GofailServer, method: str, path: str, body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        conn.request(method, path, body=body.encode() if body is not None else None)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_http_list_set_status_count_delete(gofail: GofailServer) -> None:
    code, headers, body = call(gofail, "GET", "/")
    assert code == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.decode() == "".join(f"{n}=\n" for n in sorted(FAILPOINTS))
    code, headers, body = call(gofail, "PUT", "/raftBeforeSave", "2*return")
    assert (code, body) == (204, b"") and "Server" not in headers
    assert call(gofail, "GET", "/raftBeforeSave")[::2] == (200, b"2*return\n")
    assert "raftBeforeSave=2*return\n" in call(gofail, "GET", "/")[2].decode()
    fp.failpoint("raftBeforeSave").hit()
    assert call(gofail, "GET", "/raftBeforeSave/count")[::2] == (200, b"1")
    assert call(gofail, "DELETE", "/raftBeforeSave")[::2] == (204, b"")
    code, _, _ = call(gofail, "PUT", "/failpoints", "beforeCommit=sleep(1);raftAfterSave=panic")
    assert code == 204
    assert fp.status("beforeCommit") == ("sleep(1)", 0) and fp.status("raftAfterSave") == ("panic", 0)


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "answer"),
    [
        ("PUT", "/raftBeforeSave", "nope", 400, b"fail to set failpoint: failpoint: could not parse terms\n"),
        ("PUT", "/raftBeforeSave", "", 400, b"fail to set failpoint: failpoint: could not parse terms\n"),
        (
            "PUT",
            "/noSuchFailpoint",
            "off",
            400,
            b"fail to set failpoint: failpoint: failpoint does not exist\n",
        ),
        ("PUT", "/failpoints", "a=b=c", 400, b'fail to parse failpoint: bad failpoint "a=b=c"\n'),
        ("GET", "/raftBeforeSave", None, 404, b"failed to GET: failpoint: failpoint is disabled\n\n"),
        ("GET", "/noSuchFailpoint", None, 404, b"failed to GET: failpoint: failpoint does not exist\n\n"),
        ("GET", "/raftBeforeSave/count", None, 500, b"failed to GET: failpoint: failpoint is disabled\n"),
        ("GET", "/noSuchFailpoint/count", None, 404, b"failed to GET: failpoint: failpoint does not exist\n"),
        (
            "DELETE",
            "/raftBeforeSave",
            None,
            400,
            b"failed to delete failpoint failpoint: failpoint is disabled\n",
        ),
        (
            "DELETE",
            "/noSuchFailpoint",
            None,
            400,
            b"failed to delete failpoint failpoint: failpoint does not exist\n",
        ),
        ("POST", "/raftBeforeSave", "off", 405, b"Method not allowed\n"),
    ],
)
def test_http_errors_as_gofail(
    gofail: GofailServer, method: str, path: str, body: str | None, code: int, answer: bytes
) -> None:
    got_code, headers, got = call(gofail, method, path, body)
    assert (got_code, got) == (code, answer)
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    if code == 405:
        assert headers["Allow"] == "PUT"


def test_gofail_http_address() -> None:
    with pytest.raises(ValueError, match="not host:port"):
        GofailServer("localhost")
    assert fp.serve({}) is None  # GOFAIL_HTTP unset: nothing listens
