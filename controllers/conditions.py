"""metav1.Condition helpers (pure): set a condition in a status, keeping lastTransitionTime
when the condition's status does not change (as apimachinery's meta.SetStatusCondition)."""

from __future__ import annotations

import copy
import datetime
from typing import Any

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(status: Obj | None, type_: str) -> Obj | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def set_condition(
    status: Obj,
    type_: str,
    value: str,
    reason: str,
    message: str,
    observed_generation: int | None = None,
    now: str | None = None,
) -> Obj:
    """A copy of status with the condition set."""
    out = copy.deepcopy(status)
    conds: list[Obj] = out.setdefault("conditions", [])
    new: Obj = {"type": type_, "status": value, "reason": reason, "message": message}
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    for i, c in enumerate(conds):
        if c.get("type") == type_:
            same = c.get("status") == value and c.get("lastTransitionTime")
            new["lastTransitionTime"] = c["lastTransitionTime"] if same else (now or now_rfc3339())
            conds[i] = new
            return out
    new["lastTransitionTime"] = now or now_rfc3339()
    conds.append(new)
    return out


def same_condition(a: Obj | None, b: Obj | None) -> bool:
    """Equal apart from lastTransitionTime."""
    if a is None or b is None:
        return a is b
    return _strip(a) == _strip(b)


def _strip(c: Obj) -> Obj:
    return {k: v for k, v in c.items() if k != "lastTransitionTime"}
