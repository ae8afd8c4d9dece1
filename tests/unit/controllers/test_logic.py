"""The controllers' pure logic: Counter steps, ReplicatedConfigMap copies and status, conditions,
retry backoff, the file checkpoint, and how the runtime treats a reconcile's outcome.

We test these aspects:
- counter.next_status: +step up to the target (clamped), Ready=True only at the target, a
  write token in the message, nothing to write at the target; invalid spec → Ready=False
  InvalidSpec written once (no second write: no hot loop); count above target → CountAboveTarget;
- replicator: validate rejects a copy that would overwrite its source; copies carry owner
  labels and the source's resourceVersion; an up-to-date copy needs no write; an update keeps
  the copy's resourceVersion (the precondition); status reasons and change detection;
- conditions keep lastTransitionTime while the status stays;
- ExponentialBackoff doubles to its cap and resets; retry_on_conflict reports each 409 and
  retries DEFAULT_RETRY.steps times;
- FileCheckpoint round-trips atomically; Checkpointer saves only changes;
- Controller.process: success forgets, 404 drops, 409/5xx/other requeue rate-limited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controllers import counter, replicator, storm
from controllers.checkpoint import Checkpointer, FileCheckpoint
from controllers.conditions import get_condition, set_condition
from controllers.metrics import Metrics
from controllers.retry import DEFAULT_RETRY, ExponentialBackoff, retry_on_conflict
from controllers.runtime import Controller, Result
from controllers.workqueue import ItemExponentialFailureRateLimiter

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:01:00Z"


def ctr(
    target: Any = 3, step: Any = 1, count: int | None = None, gen: int = 1, **status: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "c", "namespace": "ns", "generation": gen, "resourceVersion": "7"},
        "spec": {"target": target, "step": step},
    }
    if count is not None:
        obj["status"] = {"count": count, **status}
    return obj


# -- counter ---------------------------------------------------------------------------------------


def test_counter_counts_to_target() -> None:
    obj = ctr(target=3)
    seen = []
    for i in range(5):
        st = counter.next_status(obj, f"w#{i}", NOW)
        if st is None:
            break
        obj = {**obj, "status": st}
        ready = get_condition(st, "Ready")
        assert ready is not None
        seen.append((st["count"], ready["status"], ready["reason"]))
    assert seen == [(1, "False", "Counting"), (2, "False", "Counting"), (3, "True", "TargetReached")]
    assert counter.token_of(obj) == "w#2"
    assert counter.next_status(obj, "w#9", NOW) is None


def test_counter_step_is_clamped() -> None:
    st = counter.next_status(ctr(target=10, step=4, count=8), "t", NOW)
    assert st is not None and st["count"] == 10


def test_counter_invalid_spec_written_once() -> None:
    obj = ctr(target=-1)
    st = counter.next_status(obj, "t", NOW)
    assert st is not None
    ready = get_condition(st, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.target" in ready["message"]
    assert counter.next_status({**obj, "status": st}, "t", LATER) is None
    bads: list[dict[str, Any]] = [ctr(target="x"), ctr(step=0), ctr(target=True), {"metadata": {}}]
    for bad in bads:
        assert counter.validate(bad) is not None


def test_counter_count_above_target() -> None:
    st = counter.next_status(ctr(target=2, count=5), "t", NOW)
    assert st is not None and st["count"] == 5
    ready = get_condition(st, "Ready")
    assert ready is not None and ready["reason"] == "CountAboveTarget"


def test_counter_ready_again_after_generation_change() -> None:
    done = counter.next_status(ctr(target=1, count=0), "t", NOW)
    assert done is not None
    assert counter.next_status({**ctr(target=1, gen=1), "status": done}, "t", NOW) is None
    st = counter.next_status({**ctr(target=1, gen=2), "status": done}, "t", NOW)
    assert st is not None and st["observedGeneration"] == 2


def test_with_status_keeps_resource_version() -> None:
    body = counter.with_status(ctr(count=1), {"count": 2})
    assert body["metadata"]["resourceVersion"] == "7" and body["status"] == {"count": 2}


def test_parse_storm() -> None:
    assert storm.parse_storm("8x25") == (8, 25)
    for bad in ("8", "x", "0x1", "ax2"):
        with pytest.raises(ValueError):
            storm.parse_storm(bad)


# -- replicator ------------------------------------------------------------------------------------


def rcm(targets: list[str], source: str = "src", ns: str = "home", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": ns, "generation": 2, "resourceVersion": "5"},
        "spec": {"sourceName": source, "targetNamespaces": targets, **spec},
    }


SOURCE = {"metadata": {"name": "src", "namespace": "home", "resourceVersion": "42"}, "data": {"k": "v"}}


def test_replicator_validate() -> None:
    assert replicator.validate(rcm(["a", "b"])) is None
    why = replicator.validate(rcm(["a", "home"]))
    assert why is not None and "overwrite the source" in why
    assert replicator.validate(rcm(["home"], targetName="other")) is None
    assert replicator.validate(rcm([])) is not None
    assert replicator.validate(rcm(["a", "a"])) is not None
    assert replicator.validate({"metadata": {}}) is not None


def test_desired_copy_and_up_to_date() -> None:
    r = rcm(["a"])
    want = replicator.desired_copy(SOURCE, r, "a")
    assert want["metadata"]["namespace"] == "a" and want["metadata"]["name"] == "src"
    assert want["metadata"]["annotations"][replicator.ANNOTATION_SOURCE_RV] == "42"
    assert replicator.is_copy_of(want, r)
    existing = {**want, "metadata": {**want["metadata"], "resourceVersion": "99"}}
    assert replicator.copy_up_to_date(existing, want)
    stale = {**existing, "data": {"k": "old"}}
    assert not replicator.copy_up_to_date(stale, want)
    upd = replicator.updated_copy(stale, want)
    assert upd["metadata"]["resourceVersion"] == "99", "the PUT's precondition"
    assert upd["data"] == {"k": "v"}
    foreign = {"metadata": {"name": "src", "namespace": "a", "labels": {}}}
    assert not replicator.is_copy_of(foreign, r)


def test_replicator_status() -> None:
    r = rcm(["a", "b"])
    st = replicator.desired_status(r, SOURCE, ["b", "a"], {}, now=NOW)
    assert st["syncedNamespaces"] == ["a", "b"] and st["syncedCount"] == 2
    assert st["sourceResourceVersion"] == "42" and st["observedGeneration"] == 2
    assert get_condition(st, "Ready") == {
        "type": "Ready",
        "status": "True",
        "reason": "Synced",
        "message": "copied to 2 namespace(s)",
        "observedGeneration": 2,
        "lastTransitionTime": NOW,
    }
    assert not replicator.status_changed(
        st, replicator.desired_status({**r, "status": st}, SOURCE, ["a", "b"], {})
    )
    part = replicator.desired_status(r, SOURCE, ["a"], {"b": "namespace not found"}, now=NOW)
    assert (get_condition(part, "Ready") or {})["reason"] == "PartiallySynced"
    assert replicator.status_changed(st, part)
    missing = replicator.desired_status(r, None, [], {}, now=NOW)
    assert (get_condition(missing, "Ready") or {})["reason"] == "SourceNotFound"
    invalid = replicator.desired_status(r, None, [], {}, "bad", now=NOW)
    assert (get_condition(invalid, "Ready") or {})["reason"] == "InvalidSpec"


def test_condition_transition_time_kept() -> None:
    st = set_condition({}, "Ready", "False", "A", "m", 1, NOW)
    st = set_condition(st, "Ready", "False", "B", "m2", 1, LATER)
    assert (get_condition(st, "Ready") or {})["lastTransitionTime"] == NOW
    st = set_condition(st, "Ready", "True", "C", "m3", 1, LATER)
    assert (get_condition(st, "Ready") or {})["lastTransitionTime"] == LATER
    assert len(st["conditions"]) == 1


# -- retry -----------------------------------------------------------------------------------------


def test_exponential_backoff() -> None:
    now = [0.0]
    b = ExponentialBackoff(initial=1, cap=8, factor=2, jitter=0, reset_after=100, clock=lambda: now[0])
    assert [b.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    now[0] = 200
    assert b.next() == 1, "reset after a quiet period"
    b.reset()
    assert b.next() == 1


def test_retry_on_conflict_counts_and_gives_up() -> None:
    conflicts: list[BaseException] = []
    calls = [0]

    def fn() -> None:
        calls[0] += 1
        raise ApiException(status=409, reason="Conflict")

    with pytest.raises(ApiException):
        retry_on_conflict(fn, DEFAULT_RETRY, on_conflict=conflicts.append, sleep=lambda d: None)
    assert calls[0] == DEFAULT_RETRY.steps == len(conflicts)

    calls[0] = 0

    def flaky() -> str:
        calls[0] += 1
        if calls[0] < 3:
            raise ApiException(status=409)
        return "ok"

    assert retry_on_conflict(flaky, DEFAULT_RETRY, sleep=lambda d: None) == "ok"
    with pytest.raises(ApiException):
        retry_on_conflict(lambda: (_ for _ in ()).throw(ApiException(status=500)), sleep=lambda d: None)


# -- checkpoint ------------------------------------------------------------------------------------


def test_file_checkpoint(tmp_path: Path) -> None:
    f = FileCheckpoint(tmp_path / "sub" / "resume.json")
    assert f.load() == {}
    f.save({"configmaps": "10", "replicatedconfigmaps": "12"})
    assert f.load() == {"configmaps": "10", "replicatedconfigmaps": "12"}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["resume.json"]


def test_checkpointer_saves_changes_only(tmp_path: Path) -> None:
    saves: list[dict[str, str]] = []

    class Store:
        def load(self) -> dict[str, str]:
            return {"a": "1"}

        def save(self, rvs: dict[str, str]) -> None:
            saves.append(dict(rvs))

        def is_own(self, obj: Any) -> bool:
            return bool(obj and obj.get("own"))

    cp = Checkpointer(Store(), interval=60)
    assert cp.load() == {"a": "1"}
    cp.flush()
    assert saves == []
    cp.tracker("a")("5", None)
    cp.tracker("a")("6", {"own": True})  # the checkpoint's own object: ignored
    cp.flush()
    cp.flush()
    assert saves == [{"a": "5"}]


# -- runtime outcomes ------------------------------------------------------------------------------


class NoKube:
    pass


@pytest.mark.parametrize(
    ("outcome", "result", "requeued"),
    [
        (None, "success", False),
        (Result(requeue_after=30), "requeue", True),
        (ApiException(status=404), "dropped", False),
        (ApiException(status=409), "error", True),
        (ApiException(status=503), "error", True),
        (ValueError("bug"), "error", True),
    ],
)
def test_controller_outcomes(outcome: Any, result: str, requeued: bool) -> None:
    def reconcile(key: str) -> Result | None:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    m = Metrics("t")
    kube: Any = NoKube()
    c = Controller("t", kube, reconcile, metrics=m, rate_limiter=ItemExponentialFailureRateLimiter(60, 60))
    c.process("ns/x")
    assert m.value("reconciles_total", result=result) == 1
    assert (c.queue.num_requeues("ns/x") > 0 or "ns/x" in c.queue._ready_at) == requeued
