"""The role again with node_egress_snat_address (one address per family): upstream sees that address. The run also sets
nodenet_nat_persist=false: the rules apply all the same, and the boot path and the persisted files are gone."""
import pytest

TARGETS = [("pod-a", "203.0.113.2"), ("pod-a", "2001:db8::2"), ("pod-a", "10.244.2.2")]


@pytest.fixture(scope="module", autouse=True)
def snat(converged_with):
    converged_with(node_egress_snat_address=["203.0.113.200", "2001:db8:1::200"], nodenet_nat_persist=False)


def test_upstream_sees_the_snat_address(probes):
    assert probes["pod-a", "203.0.113.2"] == ["203.0.113.200 upstream"] * 2
    assert probes["pod-a", "2001:db8::2"] == ["2001:db8:1::200 upstream"] * 2


def test_pods_still_see_pods(probes):
    assert probes["pod-a", "10.244.2.2"] == ["10.244.1.2 remote"] * 2


def test_without_persistence_nothing_would_bring_the_rules_back(node, boot_files):
    assert [path for path in boot_files.values() if node.file(path).exists] == []
