"""The backend's buckets and well-known keys (etcd's server/storage/schema).

Bucket names are etcd's, so a reader of bbolt dumps finds the same layout here. Each bucket is
one LMDB named database.
"""

from __future__ import annotations

import enum
import struct

__all__ = ["Bucket", "MetaKey", "decode_uint64", "encode_uint64"]


class Bucket(enum.Enum):
    # value: (bucket name, etcd's bucket id)
    KEY = (b"key", 1)
    META = (b"meta", 2)
    LEASE = (b"lease", 3)
    ALARM = (b"alarm", 4)
    CLUSTER = (b"cluster", 5)
    MEMBERS = (b"members", 10)
    MEMBERS_REMOVED = (b"members_removed", 11)
    AUTH = (b"auth", 20)
    AUTH_USERS = (b"authUsers", 21)
    AUTH_ROLES = (b"authRoles", 22)

    @property
    def bucket_name(self) -> bytes:
        return self.value[0]


class MetaKey(bytes, enum.Enum):
    """Keys of the meta bucket."""

    # 8-byte big-endian index of the last applied raft entry; written in the same backend
    # transaction as the entry's effects, so a restart never applies an entry twice.
    CONSISTENT_INDEX = b"consistent_index"
    TERM = b"term"
    SCHEDULED_COMPACT_REV = b"scheduledCompactRev"
    FINISHED_COMPACT_REV = b"finishedCompactRev"
    CONF_STATE = b"confState"
    STORAGE_VERSION = b"storageVersion"


_U64 = struct.Struct(">Q")


def encode_uint64(value: int) -> bytes:
    return _U64.pack(value)


def decode_uint64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])
