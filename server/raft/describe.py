"""Raft's values as text, in etcd-io/raft's format (its util.go Describe* functions): used by
the data-driven tests and debug logging."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .raftpb import (
    NONE,
    ConfChange,
    ConfChangeDecodeError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
)
from .ready import Ready
from .status import SoftState

__all__ = [
    "EntryFormatter",
    "conf_change_to_string",
    "describe_conf_state",
    "describe_entries",
    "describe_entry",
    "describe_hard_state",
    "describe_message",
    "describe_ready",
    "describe_snapshot",
    "describe_soft_state",
]

EntryFormatter = Callable[[bytes], str]


def _go_quote(data: bytes) -> str:
    # Matches Go's %q for byte strings, which test output uses for entry payloads.
    out = ['"']
    for b in data:
        c = chr(b)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    out.append('"')
    return "".join(out)


def _id(i: int) -> str:
    return "None" if i == NONE else f"{i:x}"


def _ids(ids: Sequence[int]) -> str:
    return "[" + " ".join(str(i) for i in ids) + "]"


_CC_LETTER = {
    ConfChangeType.ADD_NODE: "v",
    ConfChangeType.ADD_LEARNER_NODE: "l",
    ConfChangeType.REMOVE_NODE: "r",
    ConfChangeType.UPDATE_NODE: "u",
}


def conf_change_to_string(cc: ConfChange) -> str:
    """Compact form of a change: v<id> add voter, l<id> add learner, r<id> remove, u<id> update."""
    return f"{_CC_LETTER[cc.type]}{cc.node_id}"


_ENTRY_TYPE_NAMES = {
    EntryType.NORMAL: "EntryNormal",
    EntryType.CONF_CHANGE: "EntryConfChange",
    EntryType.CONF_CHANGE_V2: "EntryConfChangeV2",
}


def describe_entry(e: Entry, fmt: EntryFormatter | None = None) -> str:
    """term/index type payload, e.g. `1/4 EntryNormal "prop"`."""
    if e.type == EntryType.NORMAL:
        formatted = (fmt or _go_quote)(e.data)
    elif e.type == EntryType.CONF_CHANGE:
        try:
            formatted = conf_change_to_string(ConfChange.unmarshal(e.data))
        except ConfChangeDecodeError as err:
            formatted = str(err)
    else:
        formatted = ""
    if formatted:
        formatted = " " + formatted
    return f"{e.term}/{e.index} {_ENTRY_TYPE_NAMES[e.type]}{formatted}"


def describe_entries(ents: Sequence[Entry], fmt: EntryFormatter | None = None) -> str:
    """One described entry per line."""
    return "".join(describe_entry(e, fmt) + "\n" for e in ents)


def describe_hard_state(hs: HardState) -> str:
    """Term, vote (when set) and commit."""
    s = f"Term:{hs.term}"
    if hs.vote != NONE:
        s += f" Vote:{hs.vote}"
    return s + f" Commit:{hs.commit}"


def describe_soft_state(ss: SoftState) -> str:
    """Leader and role."""
    return f"Lead:{ss.lead} State:{ss.raft_state}"


def describe_conf_state(cs: ConfState) -> str:
    """All membership sets of the configuration."""
    return (
        f"Voters:{_ids(cs.voters)} VotersOutgoing:{_ids(cs.voters_outgoing)} "
        f"Learners:{_ids(cs.learners)} LearnersNext:{_ids(cs.learners_next)} "
        f"AutoLeave:{'true' if cs.auto_leave else 'false'}"
    )


def describe_snapshot(snap: Snapshot) -> str:
    """Index, term and configuration of a snapshot."""
    m = snap.metadata
    return f"Index:{m.index} Term:{m.term} ConfState:{describe_conf_state(m.conf_state)}"


def describe_message(m: Message, fmt: EntryFormatter | None = None) -> str:
    """One line (plus entry lines when there are several) describing a message."""
    s = f"{_id(m.frm)}->{_id(m.to)} {m.type.name} Term:{m.term} Log:{m.log_term}/{m.index}"
    if m.reject:
        s += f" Rejected (Hint: {m.reject_hint})"
    if m.commit:
        s += f" Commit:{m.commit}"
    if m.vote:
        s += f" Vote:{m.vote}"
    if len(m.entries) == 1:
        s += f" Entries:[{describe_entry(m.entries[0], fmt)}]"
    elif len(m.entries) > 1:
        s += " Entries:[" + "".join("\n  " + describe_entry(e, fmt) for e in m.entries) + "\n]"
    if m.snapshot is not None and not m.snapshot.is_empty():
        s += f"\n  Snapshot: {describe_snapshot(m.snapshot)}"
    return s


def describe_ready(rd: Ready, fmt: EntryFormatter | None = None) -> str:
    """Everything a Ready asks the application to do, or `<empty Ready>`."""
    parts: list[str] = []
    if rd.soft_state is not None:
        parts.append(describe_soft_state(rd.soft_state) + "\n")
    if not rd.hard_state.is_empty():
        parts.append(f"HardState {describe_hard_state(rd.hard_state)}\n")
    if rd.read_states:
        states = " ".join(f"{{{rs.index} {_go_quote(rs.request_ctx)}}}" for rs in rd.read_states)
        parts.append(f"ReadStates [{states}]\n")
    if rd.entries:
        parts.append("Entries:\n" + describe_entries(rd.entries, fmt))
    if not rd.snapshot.is_empty():
        parts.append(f"Snapshot {describe_snapshot(rd.snapshot)}\n")
    if rd.committed_entries:
        parts.append("CommittedEntries:\n" + describe_entries(rd.committed_entries, fmt))
    if rd.messages:
        parts.append("Messages:\n" + "".join(describe_message(m, fmt) + "\n" for m in rd.messages))
    if not parts:
        return "<empty Ready>"
    return f"Ready MustSync={'true' if rd.must_sync else 'false'}:\n" + "".join(parts)
