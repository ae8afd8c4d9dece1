"""Faults on demand: the fault-injection control surface of a member (--listen-faults-urls).

    rules     faults as values: FaultSpec (what a test asks for), Fault, Faults (those set)
    inject    where they act: the KV edge (FaultHook), the peer transport, the watchers
    surface   the JSON control API on its own listener, and the composition (FaultSurface)

Without --listen-faults-urls none of it exists. etcd's gofail failpoints are server/failpoint.py.
"""
