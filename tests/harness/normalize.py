"""Normalizing outputs that legitimately differ between petcd and a real etcd run side by side:
ports, member/cluster IDs (derived from the ports), lease IDs (derived from member IDs), database
sizes, raft indexes, timings and version strings. Everything else must be identical."""

from __future__ import annotations

import re

__all__ = ["Normalizer"]


class Normalizer:
    def __init__(self) -> None:
        self._subs: list[tuple[str, str]] = []

    def name(self, value: str | int, placeholder: str) -> Normalizer:
        """Replace every occurrence of value (and its hex form, for IDs) by placeholder."""
        text = str(value)
        self._subs.append((text, placeholder))
        if isinstance(value, int):
            self._subs.append((f"{value:x}", placeholder))
            self._subs.append((f"{value:016x}", placeholder))
        return self

    def __call__(self, text: str) -> str:
        for old, new in sorted(self._subs, key=lambda s: -len(s[0])):
            text = text.replace(old, new)
        text = re.sub(r'"(dbSize|dbSizeInUse|raftIndex|raftAppliedIndex)":\d+', r'"\1":N', text)
        text = re.sub(r'"(version|storageVersion)":"[0-9.]+"', r'"\1":"V"', text)
        text = re.sub(r"took \d+(\.\d+)?(ms|s|µs|us|ns)", "took T", text)
        text = re.sub(r"\b[0-9a-f]{16}\b", "<hex-id>", text)
        return text
