"""Structured logs: one JSON object per line on stderr (or logfmt-like text for people).

    log = get_logger("informer", controller="replicator")
    log.info("relist", reason="expired", resource_version="1234")
    # {"ts": "2026-11-24T11:49:11.118Z", "level": "info", "logger": "informer",
    #  "controller": "replicator", "msg": "relist", "reason": "expired", "resource_version": "1234"}

Built on the standard logging module, so pytest's caplog and ordinary handlers see every
record (as "msg key=value ..."); the bare message and the fields travel in record.event and
record.fields for the formatters here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

ROOT = "controllers"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix(ROOT + "."),
            "msg": getattr(record, "event", None) or record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={_text(v)}" for k, v in getattr(record, "fields", {}).items())
        msg = getattr(record, "event", None) or record.getMessage()
        line = f"{ts}.{int(record.msecs):03d} {record.levelname[0]} {record.name.removeprefix(ROOT + '.')}: {msg}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if (not s or " " in s or '"' in s) else s


class Logger:
    """A logger bound to some key/value fields: log.info("msg", key=value, ...)."""

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self.fields = dict(fields or {})

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._logger, {**self.fields, **fields})

    def _log(self, level: int, msg: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            all_fields = {**self.fields, **fields}
            # other handlers (pytest's caplog, a plain basicConfig) see "msg key=value ..."
            text = " ".join([msg, *(f"{k}={_text(v)}" for k, v in all_fields.items())])
            self._logger.log(
                level, "%s", text, exc_info=exc_info, extra={"fields": all_fields, "event": msg}, stacklevel=3
            )

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, msg, exc_info, fields)


def get_logger(name: str, **fields: Any) -> Logger:
    return Logger(logging.getLogger(f"{ROOT}.{name}"), fields)


def setup(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Send the controllers' logs to stderr (once per process; later calls reconfigure)."""
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if getattr(h, "_petcd_controllers", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler._petcd_controllers = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
