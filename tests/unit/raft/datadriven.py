"""A small reader/runner for data-driven test files (the cockroachdb/datadriven format).

A file is a sequence of test cases separated by blank lines; `#` lines are comments:

    command arg key=value key=(v1, v2)
    optional input lines
    ----
    expected output

When the expected output itself contains blank lines it is wrapped in a second separator:

    command
    ----
    ----
    output

    with blank lines
    ----
    ----

A command line ending in a backslash continues on the next line. With rewrite=True the
runner replaces every expected output with the actual one and writes the file back, keeping
comments and layout.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CmdArg", "DataDrivenError", "TestData", "parse", "run_test"]

SEP = "----"


class DataDrivenError(Exception):
    """The test file is malformed, or a command was used incorrectly."""


@dataclass(frozen=True)
class CmdArg:
    """One argument of a command: `key`, `key=value` or `key=(v1, v2, ...)`."""

    key: str
    vals: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.vals:
            return self.key
        if len(self.vals) == 1:
            return f"{self.key}={self.vals[0]}"
        return f"{self.key}=({', '.join(self.vals)})"


@dataclass
class TestData:
    """One test case of a file."""

    __test__ = False  # not a pytest test class

    pos: str
    cmd: str
    cmd_args: list[CmdArg]
    input: str
    expected: str
    # Line span [start, end) of the whole case in the file, for rewriting.
    span: tuple[int, int] = (0, 0)
    header: list[str] = field(default_factory=list)

    def has_arg(self, key: str) -> bool:
        return any(a.key == key for a in self.cmd_args)

    def arg(self, key: str) -> CmdArg | None:
        for a in self.cmd_args:
            if a.key == key:
                return a
        return None

    def scan_int(self, key: str, default: int | None = None) -> int:
        a = self.arg(key)
        if a is None or not a.vals:
            if default is None:
                raise DataDrivenError(f"{self.pos}: missing argument {key}")
            return default
        return int(a.vals[0])

    def scan_str(self, key: str, default: str | None = None) -> str:
        a = self.arg(key)
        if a is None or not a.vals:
            if default is None:
                raise DataDrivenError(f"{self.pos}: missing argument {key}")
            return default
        return a.vals[0]

    def scan_bool(self, key: str, default: bool = False) -> bool:
        a = self.arg(key)
        if a is None:
            return default
        if not a.vals:
            return True
        v = a.vals[0].lower()
        if v not in ("true", "false"):
            raise DataDrivenError(f"{self.pos}: {key} must be true or false, not {a.vals[0]}")
        return v == "true"

    def positional(self) -> list[str]:
        """Arguments without a value, in order."""
        return [a.key for a in self.cmd_args if not a.vals]


_ARG_RE = re.compile(r"([^\s=]+)(?:=(\([^)]*\)|\S*))?")


def _parse_args(s: str, pos: str) -> tuple[str, list[CmdArg]]:
    matches = list(_ARG_RE.finditer(s))
    if not matches:
        raise DataDrivenError(f"{pos}: empty command")
    cmd = matches[0].group(0)
    args: list[CmdArg] = []
    for m in matches[1:]:
        key, val = m.group(1), m.group(2)
        if val is None:
            args.append(CmdArg(key))
        elif val.startswith("("):
            inner = val[1:-1].strip()
            vals = tuple(v.strip() for v in inner.split(",")) if inner else ()
            args.append(CmdArg(key, vals))
        else:
            args.append(CmdArg(key, (val,)))
    return cmd, args


def parse(path: Path) -> tuple[list[str], list[TestData]]:
    """Read a file into its lines and its test cases."""
    lines = path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    cases: list[TestData] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        start = i
        pos = f"{path.name}:{i + 1}"
        cmd_line = line
        header = [line]
        while cmd_line.endswith("\\"):
            i += 1
            if i >= n:
                raise DataDrivenError(f"{pos}: unterminated continuation")
            cmd_line = cmd_line[:-1] + " " + lines[i].strip()
            header.append(lines[i])
        i += 1
        input_lines: list[str] = []
        while i < n and lines[i] != SEP:
            if not lines[i].strip():
                raise DataDrivenError(f"{pos}: missing {SEP} after command")
            input_lines.append(lines[i])
            header.append(lines[i])
            i += 1
        if i >= n:
            raise DataDrivenError(f"{pos}: missing {SEP} after command")
        header.append(SEP)
        i += 1
        expected_lines: list[str] = []
        if i < n and lines[i] == SEP:
            # Double-separator block: runs until a `----` line followed by another `----`.
            i += 1
            while True:
                if i + 1 >= n:
                    raise DataDrivenError(f"{pos}: unterminated {SEP}/{SEP} block")
                if lines[i] == SEP and lines[i + 1] == SEP:
                    i += 2
                    break
                expected_lines.append(lines[i])
                i += 1
        else:
            while i < n and lines[i].strip():
                expected_lines.append(lines[i])
                i += 1
        cmd, args = _parse_args(cmd_line, pos)
        expected = "\n".join(expected_lines) + ("\n" if expected_lines else "")
        cases.append(
            TestData(
                pos=pos,
                cmd=cmd,
                cmd_args=args,
                input="\n".join(input_lines),
                expected=expected,
                span=(start, i),
                header=header,
            )
        )
    return lines, cases


def _format_output(out: str) -> list[str]:
    body = out.rstrip("\n")
    out_lines = body.split("\n") if body else []
    if any(not ln.strip() for ln in out_lines):
        return [SEP, *out_lines, SEP, SEP]
    return out_lines


def run_test(path: Path, handler: Callable[[TestData], str], rewrite: bool) -> None:
    """Run every case of the file through handler; assert (or rewrite) the outputs."""
    lines, cases = parse(path)
    failures: list[str] = []
    new_lines: list[str] = []
    cursor = 0
    for d in cases:
        actual = handler(d)
        if not actual.endswith("\n"):
            actual += "\n"
        if rewrite:
            start, end = d.span
            new_lines.extend(lines[cursor:start])
            new_lines.extend(d.header)
            new_lines.extend(_format_output(actual))
            cursor = end
        elif actual != d.expected:
            diff = "".join(
                difflib.unified_diff(
                    d.expected.splitlines(keepends=True),
                    actual.splitlines(keepends=True),
                    fromfile="expected",
                    tofile="actual",
                )
            )
            failures.append(f"{d.pos}: {' '.join([d.cmd, *map(str, d.cmd_args)])}\n{diff}")
            # Later cases depend on the state built so far; report only the first divergence.
            break
    if rewrite:
        new_lines.extend(lines[cursor:])
        path.write_text("\n".join(new_lines) + "\n")
        return
    if failures:
        raise AssertionError("\n".join(failures) + "\n(re-run with --rewrite to regenerate, then review)")
