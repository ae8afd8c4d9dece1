//go:build tools

// Package peers pins the main packages built from this module.
package peers

import (
	_ "go.etcd.io/bbolt/cmd/bbolt"
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
	_ "go.etcd.io/etcd/v3/tools/benchmark"
)
