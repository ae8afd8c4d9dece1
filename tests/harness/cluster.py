"""Multi-member petcd/etcd clusters (petcd_harness.raft_cluster, re-exported for the test suite)."""

from petcd_harness.raft_cluster import FAST_ELECTIONS, TOKEN, Cluster, ClusterMember

__all__ = ["FAST_ELECTIONS", "TOKEN", "Cluster", "ClusterMember"]
