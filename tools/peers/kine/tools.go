//go:build tools

// Package peers pins kine, the other etcd-API shim (SQL underneath), as a bench target
// (`make bench-peers`). A module of its own: its k8s.io and etcd pins differ from the others.
package peers

import (
	_ "github.com/k3s-io/kine"
)
