"""The logging interface raft writes its diagnostics to.

Messages use %-style formatting with lazy arguments, so a stdlib logging.Logger satisfies the
protocol directly. The core never configures handlers or writes anywhere itself.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["DiscardLogger", "Logger"]


class Logger(Protocol):
    def debug(self, msg: str, *args: object) -> None: ...

    def info(self, msg: str, *args: object) -> None: ...

    def warning(self, msg: str, *args: object) -> None: ...

    def error(self, msg: str, *args: object) -> None: ...


class DiscardLogger:
    """A Logger that drops everything (the default)."""

    def debug(self, msg: str, *args: object) -> None:
        pass

    def info(self, msg: str, *args: object) -> None:
        pass

    def warning(self, msg: str, *args: object) -> None:
        pass

    def error(self, msg: str, *args: object) -> None:
        pass
