"""Versions petcd reports.

petcd speaks the etcd v3 API of the etcd release below. kube-apiserver reads Status.version to
decide whether it may rely on watch progress requests (>= 3.4.31 and not in [3.5.0, 3.5.13));
petcd reports a release in that range because its watch implements progress requests exactly
as etcd does (tests/unit/mvcc/test_watchable_store.py against a model,
tests/integration/test_watch_grpc.py side by side with etcd 3.6.16).
"""

from __future__ import annotations

__all__ = ["API_VERSION", "CLUSTER_VERSION", "PETCD_VERSION", "SERVER_VERSION", "STORAGE_VERSION"]

# the etcd release whose behaviour petcd matches (the differential tests run against it)
SERVER_VERSION = "3.6.16"
CLUSTER_VERSION = "3.6.0"
STORAGE_VERSION = "3.6.0"
API_VERSION = "3.6"
PETCD_VERSION = "0.1.0"
