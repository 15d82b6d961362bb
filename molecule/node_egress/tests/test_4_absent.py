"""The role again with node_egress_state=absent: its rules are gone, upstream cannot answer the pods."""
import pytest

TARGETS = [("pod-a", "203.0.113.2"), ("pod-a", "2001:db8::2"), ("pod-a", "10.244.2.2")]
COUNT = 1
TIMEOUT = 1


@pytest.fixture(scope="module", autouse=True)
def absent(converged_with):
    converged_with(node_egress_state="absent")


def test_upstream_is_unreachable_again(probes):
    assert probes["pod-a", "203.0.113.2"] == ["timeout"]
    assert probes["pod-a", "2001:db8::2"] == ["timeout"]


def test_pods_still_reach_pods_with_their_address(probes):
    assert probes["pod-a", "10.244.2.2"] == ["10.244.1.2 remote"]


def test_persistence_is_back_and_the_persisted_rules_follow_the_role(node, backend, boot_files):
    # The run before turned persistence off; this one (the default) installs the boot path again.
    assert node.file(boot_files["unit"]).exists and node.file(boot_files["loader"]).exists
    paths = [boot_files["nft"]] if backend == "nft" else [boot_files["iptables"], boot_files["iptables6"]]
    for path in paths:
        assert "egress-" not in node.file(path).content_string
