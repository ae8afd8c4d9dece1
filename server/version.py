"""Versions petcd reports.

petcd speaks the etcd v3 API of the etcd release below. kube-apiserver reads Status.version to
decide whether it may rely on watch progress requests (>= 3.4.31 and not in [3.5.0, 3.5.13));
petcd reports a release in that range only because its watch implements progress requests
exactly (see tests/unit/mvcc/test_watch*.py).
"""

from __future__ import annotations

__all__ = ["API_VERSION", "CLUSTER_VERSION", "PETCD_VERSION", "SERVER_VERSION", "STORAGE_VERSION"]

# the etcd release whose behaviour petcd matches
SERVER_VERSION = "3.5.0"
CLUSTER_VERSION = "3.5.0"
STORAGE_VERSION = "3.5.0"
API_VERSION = "3.5"
PETCD_VERSION = "0.1.0"
