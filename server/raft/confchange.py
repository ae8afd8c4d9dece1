"""Computing the configuration (and progress map) that results from membership changes.

A Changer never mutates the tracker it reads from: it returns a new TrackerConfig and a new
ProgressMap (with copied Progress objects) that the caller installs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .quorum import JointConfig, MajorityConfig
from .raftpb import ConfChange, ConfChangeType, ConfState
from .tracker import Inflights, Progress, ProgressMap, ProgressTracker, TrackerConfig

__all__ = ["Changer", "ConfChangeError", "describe_changes", "restore"]


class ConfChangeError(Exception):
    """The requested membership change is invalid for the current configuration."""


@dataclass
class _MutableConfig:
    incoming: set[int] = field(default_factory=set)
    outgoing: set[int] = field(default_factory=set)
    learners: set[int] = field(default_factory=set)
    learners_next: set[int] = field(default_factory=set)
    auto_leave: bool = False

    @classmethod
    def of(cls, cfg: TrackerConfig) -> _MutableConfig:
        return cls(
            incoming=set(cfg.voters.incoming.ids),
            outgoing=set(cfg.voters.outgoing.ids),
            learners=set(cfg.learners),
            learners_next=set(cfg.learners_next),
            auto_leave=cfg.auto_leave,
        )

    def freeze(self) -> TrackerConfig:
        return TrackerConfig(
            voters=JointConfig(MajorityConfig.of(self.incoming), MajorityConfig.of(self.outgoing)),
            learners=frozenset(self.learners),
            learners_next=frozenset(self.learners_next),
            auto_leave=self.auto_leave,
        )

    def joint(self) -> bool:
        return bool(self.outgoing)


@dataclass(frozen=True)
class Changer:
    """Applies membership changes on top of `tracker`'s configuration.

    last_index is the leader's last log index; new members start probing from there.
    """

    tracker: ProgressTracker
    last_index: int

    def enter_joint(self, auto_leave: bool, ccs: Sequence[ConfChange]) -> tuple[TrackerConfig, ProgressMap]:
        """Enter the joint configuration (old voters && voters after ccs)."""
        cfg, prs = self._check_and_copy()
        if cfg.joint():
            raise ConfChangeError("config is already joint")
        if not cfg.incoming:
            raise ConfChangeError("can't make a zero-voter config joint")
        cfg.outgoing = set(cfg.incoming)
        self._apply(cfg, prs, ccs)
        cfg.auto_leave = auto_leave
        return _check_and_return(cfg, prs)

    def leave_joint(self) -> tuple[TrackerConfig, ProgressMap]:
        """Leave the joint configuration: the incoming voters decide alone from now on."""
        cfg, prs = self._check_and_copy()
        if not cfg.joint():
            raise ConfChangeError("can't leave a non-joint config")
        for pid in cfg.learners_next:
            cfg.learners.add(pid)
            prs[pid].is_learner = True
        cfg.learners_next = set()
        for pid in cfg.outgoing:
            if pid not in cfg.incoming and pid not in cfg.learners:
                del prs[pid]
        cfg.outgoing = set()
        cfg.auto_leave = False
        return _check_and_return(cfg, prs)

    def simple(self, ccs: Sequence[ConfChange]) -> tuple[TrackerConfig, ProgressMap]:
        """Apply changes that alter the voter set by at most one member (no joint state)."""
        cfg, prs = self._check_and_copy()
        if cfg.joint():
            raise ConfChangeError("can't apply simple config change in joint config")
        self._apply(cfg, prs, ccs)
        before = self.tracker.config.voters.incoming.ids
        if len(before.symmetric_difference(cfg.incoming)) > 1:
            raise ConfChangeError("more than one voter changed without entering joint config")
        return _check_and_return(cfg, prs)

    def _apply(self, cfg: _MutableConfig, prs: ProgressMap, ccs: Sequence[ConfChange]) -> None:
        for cc in ccs:
            if cc.node_id == 0:
                # Changes without a node are no-ops (etcd proposes such entries).
                continue
            if cc.type == ConfChangeType.ADD_NODE:
                self._make_voter(cfg, prs, cc.node_id)
            elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
                self._make_learner(cfg, prs, cc.node_id)
            elif cc.type == ConfChangeType.REMOVE_NODE:
                self._remove(cfg, prs, cc.node_id)
            elif cc.type == ConfChangeType.UPDATE_NODE:
                pass
            else:
                raise ConfChangeError(f"unexpected conf type {cc.type}")
        if not cfg.incoming:
            raise ConfChangeError("removed all voters")

    def _make_voter(self, cfg: _MutableConfig, prs: ProgressMap, pid: int) -> None:
        pr = prs.get(pid)
        if pr is None:
            self._init_progress(cfg, prs, pid, is_learner=False)
            return
        pr.is_learner = False
        cfg.learners.discard(pid)
        cfg.learners_next.discard(pid)
        cfg.incoming.add(pid)

    def _make_learner(self, cfg: _MutableConfig, prs: ProgressMap, pid: int) -> None:
        pr = prs.get(pid)
        if pr is None:
            self._init_progress(cfg, prs, pid, is_learner=True)
            return
        if pr.is_learner:
            return
        # Demote: drop it as a voter but keep its progress.
        self._remove(cfg, prs, pid)
        prs[pid] = pr
        if pid in cfg.outgoing:
            # Still a voter of the outgoing half: it becomes a learner once the joint config is left.
            cfg.learners_next.add(pid)
        else:
            pr.is_learner = True
            cfg.learners.add(pid)

    def _remove(self, cfg: _MutableConfig, prs: ProgressMap, pid: int) -> None:
        if pid not in prs:
            return
        cfg.incoming.discard(pid)
        cfg.learners.discard(pid)
        cfg.learners_next.discard(pid)
        # A voter of the outgoing half keeps its progress until the joint config is left.
        if pid not in cfg.outgoing:
            del prs[pid]

    def _init_progress(self, cfg: _MutableConfig, prs: ProgressMap, pid: int, is_learner: bool) -> None:
        if is_learner:
            cfg.learners.add(pid)
        else:
            cfg.incoming.add(pid)
        # New members are assumed active so that CheckQuorum does not immediately count them out.
        prs[pid] = Progress(
            match=0,
            next=max(self.last_index, 1),
            inflights=Inflights(self.tracker.max_inflight, self.tracker.max_inflight_bytes),
            is_learner=is_learner,
            recent_active=True,
        )

    def _check_and_copy(self) -> tuple[_MutableConfig, ProgressMap]:
        cfg = _MutableConfig.of(self.tracker.config)
        prs = {pid: pr.clone() for pid, pr in self.tracker.progress.items()}
        _check_invariants(cfg, prs)
        return cfg, prs


def _check_invariants(cfg: _MutableConfig, prs: ProgressMap) -> None:
    for ids in (cfg.incoming, cfg.outgoing, cfg.learners, cfg.learners_next):
        for pid in ids:
            if pid not in prs:
                raise ConfChangeError(f"no progress for {pid}")
    for pid in cfg.learners_next:
        if pid not in cfg.outgoing:
            raise ConfChangeError(f"{pid} is in LearnersNext, but not Voters[1]")
        if prs[pid].is_learner:
            raise ConfChangeError(f"{pid} is in LearnersNext, but is already marked as learner")
    for pid in cfg.learners:
        if pid in cfg.outgoing:
            raise ConfChangeError(f"{pid} is in Learners and Voters[1]")
        if pid in cfg.incoming:
            raise ConfChangeError(f"{pid} is in Learners and Voters[0]")
        if not prs[pid].is_learner:
            raise ConfChangeError(f"{pid} is in Learners, but is not marked as learner")
    if not cfg.joint():
        if cfg.learners_next:
            raise ConfChangeError("cfg.LearnersNext must be empty when not joint")
        if cfg.auto_leave:
            raise ConfChangeError("AutoLeave must be false when not joint")


def _check_and_return(cfg: _MutableConfig, prs: ProgressMap) -> tuple[TrackerConfig, ProgressMap]:
    _check_invariants(cfg, prs)
    return cfg.freeze(), prs


def restore(changer: Changer, cs: ConfState) -> tuple[TrackerConfig, ProgressMap]:
    """Build the configuration described by cs from scratch, one valid step at a time.

    A joint ConfState is reached by first building the outgoing voters with simple changes and
    then entering the joint config with the incoming voters and the learners.
    """
    outgoing = [ConfChange(ConfChangeType.ADD_NODE, pid) for pid in cs.voters_outgoing]
    incoming: list[ConfChange] = []
    # Joint: first drop the outgoing voters (they were added above), then add everything back.
    incoming.extend(ConfChange(ConfChangeType.REMOVE_NODE, pid) for pid in cs.voters_outgoing)
    incoming.extend(ConfChange(ConfChangeType.ADD_NODE, pid) for pid in cs.voters)
    incoming.extend(ConfChange(ConfChangeType.ADD_LEARNER_NODE, pid) for pid in cs.learners)
    incoming.extend(ConfChange(ConfChangeType.ADD_LEARNER_NODE, pid) for pid in cs.learners_next)

    def step(result: tuple[TrackerConfig, ProgressMap]) -> Changer:
        trk = ProgressTracker(changer.tracker.max_inflight, changer.tracker.max_inflight_bytes)
        trk.config, trk.progress = result
        return Changer(trk, changer.last_index)

    if not outgoing:
        for cc in incoming:
            changer = step(changer.simple([cc]))
    else:
        for cc in outgoing:
            changer = step(changer.simple([cc]))
        changer = step(changer.enter_joint(cs.auto_leave, incoming))
    return changer.tracker.config, changer.tracker.progress


def describe_changes(ccs: Iterable[ConfChange]) -> str:
    """Human-readable list of changes, e.g. `ADD_NODE(2) REMOVE_NODE(3)`."""
    return " ".join(f"{cc.type.name}({cc.node_id})" for cc in ccs)
