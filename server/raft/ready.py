"""Ready: the batch of work raft hands to the application, and how to tell if it is urgent."""

from __future__ import annotations

from dataclasses import dataclass, field

from .raftpb import Entry, HardState, Message, Snapshot
from .read_only import ReadState
from .status import SoftState

__all__ = ["Ready", "must_sync"]


@dataclass(frozen=True, slots=True)
class Ready:
    """Work for the application, to be done in this order:

    1. persist `hard_state` (unless empty), `entries` (append, truncating any conflicting
       suffix) and `snapshot` (unless empty) to stable storage. Entries, term and vote must be
       durable (fsync'ed) before step 2 when `must_sync`; a snapshot must always be durable
       before it is acknowledged, whatever `must_sync` says;
    2. send `messages` (they may depend on what step 1 persisted);
    3. apply `snapshot` (unless empty) and then `committed_entries` to the state machine,
       calling RawNode.apply_conf_change for conf change entries;
    4. call RawNode.advance().

    `soft_state` is None when it did not change since the previous Ready; `hard_state` is
    empty (HardState().is_empty()) when it did not change; `snapshot` is empty
    (Snapshot().is_empty()) when there is none. `read_states` answer earlier read_index calls.
    """

    soft_state: SoftState | None = None
    hard_state: HardState = field(default_factory=HardState)
    read_states: tuple[ReadState, ...] = ()
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot = field(default_factory=Snapshot)
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    must_sync: bool = False


def must_sync(st: HardState, prev: HardState, num_entries: int) -> bool:
    """Whether the write must be synchronous (fsync'ed) before messages go out.

    New entries, a new term or a new vote must be durable; a commit index alone need not be,
    since it can be recovered from the leader.
    """
    return num_entries != 0 or st.vote != prev.vote or st.term != prev.term
