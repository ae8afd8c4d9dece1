"""petcd_harness.faults: Kubernetes resources as the etcd keys kube-apiserver stores them under."""

from __future__ import annotations

import pytest

from petcd_harness.faults import FaultError, Faults, registry_key


@pytest.mark.parametrize(
    ("resource", "namespace", "name", "key"),
    [
        ("configmaps", None, None, ("/registry/configmaps/", False)),
        ("cm", "default", None, ("/registry/configmaps/default/", False)),
        ("ConfigMap", "ns", "a", ("/registry/configmaps/ns/a", True)),
        ("deployments.apps", "ns", None, ("/registry/deployments/ns/", False)),
        ("services", "default", "kubernetes", ("/registry/services/specs/default/kubernetes", True)),
        ("endpoints", None, None, ("/registry/services/endpoints/", False)),
        ("nodes", None, "n1", ("/registry/minions/n1", True)),
        ("rc", None, None, ("/registry/controllers/", False)),
        ("ingresses.networking.k8s.io", None, None, ("/registry/ingress/", False)),
        ("leases.coordination.k8s.io", "kube-node-lease", None, ("/registry/leases/kube-node-lease/", False)),
        ("crd", None, None, ("/registry/apiextensions.k8s.io/customresourcedefinitions/", False)),
        ("counters.petcd.example.com", "ns", "c", ("/registry/petcd.example.com/counters/ns/c", True)),
        ("/registry/pods/", None, None, ("/registry/pods/", False)),
    ],
)
def test_registry_key(resource: str, namespace: str | None, name: str | None, key: tuple[str, bool]) -> None:
    assert registry_key(resource, namespace, name) == key


def test_custom_resources_through_discovery() -> None:
    served = {"counters": ["counters.petcd.example.com"], "events": ["events", "events.events.k8s.io"]}
    discover = lambda plural: served.get(plural, [])  # noqa: E731
    assert registry_key("counters", "ns", discover=discover) == (
        "/registry/petcd.example.com/counters/ns/",
        False,
    )
    # a built-in resource stays where kube-apiserver keeps it, whatever groups serve it
    assert registry_key("events", discover=discover) == ("/registry/events/", False)


def test_refusals() -> None:
    with pytest.raises(FaultError, match="a raw etcd prefix takes no namespace or name"):
        registry_key("/registry/pods/", "ns")
    with pytest.raises(FaultError, match="is not a resource"):
        registry_key(".apps")
    with pytest.raises(FaultError, match="no fault surface"):
        Faults([])
