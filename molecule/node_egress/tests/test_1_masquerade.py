"""After converge: pods leave the node as the node; pod-to-pod and non-masquerade traffic keeps its source."""

TARGETS = [
    ("pod-a", "203.0.113.2"), ("pod-a", "2001:db8::2"),  # upstream, no route to the pods
    ("pod-a", "10.244.1.3"), ("pod-a", "fd00:10:244:1::3"),  # pod-b, same bridge
    ("pod-a", "10.244.2.2"), ("pod-a", "fd00:10:244:2::2"),  # remote pod range, routed
    ("pod-b", "198.51.100.2"),  # partner, a non-masquerade CIDR
]


def test_upstream_sees_the_node_address_over_ipv4(probes):
    assert probes["pod-a", "203.0.113.2"] == ["203.0.113.1 upstream"] * 2


def test_upstream_sees_the_node_address_over_ipv6(probes):
    assert probes["pod-a", "2001:db8::2"] == ["2001:db8::1 upstream"] * 2


def test_pod_on_the_same_bridge_sees_the_pod_address(probes):
    assert probes["pod-a", "10.244.1.3"] == ["10.244.1.2 pod-b"] * 2
    assert probes["pod-a", "fd00:10:244:1::3"] == ["fd00:10:244:1::2 pod-b"] * 2


def test_pod_in_another_pod_range_sees_the_pod_address(probes):
    assert probes["pod-a", "10.244.2.2"] == ["10.244.1.2 remote"] * 2
    assert probes["pod-a", "fd00:10:244:2::2"] == ["fd00:10:244:1::2 remote"] * 2


def test_non_masquerade_destination_sees_the_pod_address(probes):
    assert probes["pod-b", "198.51.100.2"] == ["10.244.1.3 partner"] * 2


def test_rules_are_the_egress_scope_on_the_requested_backend(owned_rules):
    requested, used, names = owned_rules
    assert used == requested
    assert names == sorted("egress-%s-%s" % (family, rule) for family in ("ipv4", "ipv6") for rule in ("clear", "exempt", "nat"))
