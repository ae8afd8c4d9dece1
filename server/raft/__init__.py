"""A pure, deterministic Raft consensus core modelled on etcd-io/raft.

The package performs no I/O and reads no clock: time is logical ticks and randomness comes
from the injected Config.rng. Drive a RawNode (tick/step/propose) and process its Ready
structs; see raw_node.py and ready.py for the contract.
"""

from .confchange import ConfChangeError
from .logger import DiscardLogger, Logger
from .raft import CampaignType, Config, ConfigError, ProposalDroppedError, RaftError
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
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from .raw_node import BootstrapError, Peer, RawNode, StepLocalMsgError, StepPeerNotFoundError
from .read_only import ReadOnlyOption, ReadState
from .ready import Ready, must_sync
from .status import SoftState, StateType, Status
from .storage import (
    CompactedError,
    MemoryStorage,
    SnapOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    Storage,
    StorageError,
    UnavailableError,
)
from .tracker import Inflights, Progress, ProgressState
from .util import InvariantError

__all__ = [
    "NONE",
    "BootstrapError",
    "CampaignType",
    "CompactedError",
    "ConfChange",
    "ConfChangeDecodeError",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "DiscardLogger",
    "Entry",
    "EntryType",
    "HardState",
    "Inflights",
    "InvariantError",
    "Logger",
    "MemoryStorage",
    "Message",
    "MessageType",
    "Peer",
    "Progress",
    "ProgressState",
    "ProposalDroppedError",
    "RaftError",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "SnapOutOfDateError",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateType",
    "Status",
    "StepLocalMsgError",
    "StepPeerNotFoundError",
    "Storage",
    "StorageError",
    "UnavailableError",
    "must_sync",
]
