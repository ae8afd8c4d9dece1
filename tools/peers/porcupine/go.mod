// Builds porcupine-check, the linearizability checker the cluster tests feed histories to.
// Not part of petcd; `make peers` drives it and caches the binary in .peers/.
module petcd.local/peers/porcupine

go 1.26.0

require github.com/anishathalye/porcupine v1.3.1
