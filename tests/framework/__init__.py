"""The test framework (etcd's tests/framework): one Member/Client interface, three runners.

    member.py        Member: a running member and how to reach it; runners for petcd in this
                     process (fast: unit tests above mvcc), petcd and etcd as processes
    client.py        Client: a synchronous etcd v3 gRPC client, and outcome() for comparing
                     answers (a response without its identity fields, or a gRPC code and message)
    differential.py  Differential: petcd and a real etcd given the same script, petcd first
    wait.py          wait_until: the one polling helper (a condition, never a fixed sleep)
    state_machine.py StateMachine: what every member applies (mvcc, lessor, alarms, auth, quota
                     and the applier over one backend, a fake clock), without raft or a server

A scenario written against Member/Client runs unchanged on every runner: in process as a unit
test, against processes as an integration test, and against etcd as a differential test.
"""
