//go:build tools

// Package peers pins kwok, which runs fake nodes whose pods reach Running (`make peers`).
// A module of its own: kwok pins k8s.io/* v0.36, tools/peers/kube replaces them with v0.37.
package peers

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
