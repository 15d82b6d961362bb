"""Two nodes converged by playbooks/site.yml: what clients, pods and the upstream host see, after a reboot too,
then playbooks/remove.yml."""
import os
import re

import pytest

# The tests reach each node by name (no `host` fixture): each runs once, for the node it is about.
NODE_A, NODE_B = "nodenet-fleet-a", "nodenet-fleet-b"
A_TRANSIT, A_BRIDGE, B_UPSTREAM_SIDE = "10.255.0.1", "10.244.1.1", "203.0.113.1"
CONNTRACK_SYSCTL_FILE = "/etc/sysctl.d/90-nodenet-nat-conntrack.conf"


@pytest.fixture(name="node_a", scope="module")
def fixture_node_a(node_named):
    return node_named(NODE_A)


@pytest.fixture(name="node_b", scope="module")
def fixture_node_b(node_named):
    return node_named(NODE_B)


def test_client_on_a_reaches_a_nodeport_whose_backend_lives_on_b(node_a, probe):
    # Cluster policy: the client is masqueraded to A's address on the link towards B.
    assert probe(node_a, "client", "198.51.100.1", 30080, count=4) == ["%s pod-b1" % A_TRANSIT] * 4


def test_pod_on_b_reaches_upstream_as_node_b(node_b, probe):
    assert probe(node_b, "pod-b1", "203.0.113.2", 8080, count=4) == ["%s upstream" % B_UPSTREAM_SIDE] * 4


def test_pod_to_pod_across_nodes_keeps_the_pod_source(node_a, probe):
    assert probe(node_a, "pod-a1", "10.244.2.10", 8080, count=2) == ["10.244.1.10 pod-b1"] * 2


def test_pod_on_a_reaches_itself_through_its_service(node_a, probe):
    # hairpin role (bridge port in hairpin mode) + nodeport role (hairpin mark, masquerade)
    assert probe(node_a, "pod-a1", A_BRIDGE, 30081, count=4) == ["%s pod-a1" % A_BRIDGE] * 4


# A reboot of both nodes, simulated (no systemd in the containers): the rulesets and the forwarding keys go, and the
# boot path site.yml installed (the sysctl.d file, then nodenet-nat.service's ExecStart) brings all three roles back.

@pytest.fixture(name="converged", scope="module")
def fixture_converged(node_a, node_b, ruleset):
    """The rulesets site.yml left, the nft marker chain (named after the run that wrote the tables) unnamed."""
    return {NODE_A: unmarked(ruleset(node_a, "nft")), NODE_B: ruleset(node_b, "iptables-legacy")}


def unmarked(listing):
    return re.sub(r"state_[0-9a-f]+", "state_", listing)


def test_a_reboot_takes_the_node_port_egress_and_hairpin(node_a, node_b, probe, forget, converged):
    forget(node_a, "nft")
    forget(node_b, "iptables-legacy")
    assert probe(node_a, "client", "198.51.100.1", 30080, count=1, timeout=1) == ["refused"]
    assert probe(node_b, "pod-b1", "203.0.113.2", 8080, count=1, timeout=1) == ["timeout"]
    assert probe(node_a, "pod-a1", A_BRIDGE, 30081, count=1, timeout=1) == ["refused"]


def test_the_boot_path_brings_them_back_as_site_yml_converged_them(node_a, node_b, probe, boot, ruleset, converged):
    for node in (node_a, node_b):
        assert "nodenet-nat-restore: loaded" in boot(node)
    assert probe(node_a, "client", "198.51.100.1", 30080, count=4) == ["%s pod-b1" % A_TRANSIT] * 4
    assert probe(node_b, "pod-b1", "203.0.113.2", 8080, count=4) == ["%s upstream" % B_UPSTREAM_SIDE] * 4
    assert probe(node_a, "pod-a1", "10.244.2.10", 8080, count=2) == ["10.244.1.10 pod-b1"] * 2
    assert probe(node_a, "pod-a1", A_BRIDGE, 30081, count=4) == ["%s pod-a1" % A_BRIDGE] * 4
    # Every role's rules, as site.yml left them (the marker aside: the boot file names it after the rules).
    assert unmarked(ruleset(node_a, "nft")) == converged[NODE_A]
    assert ruleset(node_b, "iptables-legacy") == converged[NODE_B]


def test_running_the_boot_path_again_changes_nothing(node_a, node_b, boot, ruleset):
    for node, backend in ((node_a, "nft"), (node_b, "iptables-legacy")):
        before = ruleset(node, backend)
        boot(node)
        assert ruleset(node, backend) == before
    jumps = [line for line in ruleset(node_b, "iptables-legacy").splitlines() if "-j NODENET-" in line and not line.startswith("-A NODENET-")]
    assert jumps == ["-A POSTROUTING -m comment --comment nodenet-nat -j NODENET-POSTROUTING"]


def test_remove_playbook_removes_everything_the_collection_owns(node_a, node_b, probe, module_named, playbook, boot_files):
    # site.yml does not tune conntrack; tune B so that remove.yml has its owned files to remove.
    module_named(NODE_B, "nodenet.nat.conntrack", {"timeouts": {"tcp_time_wait": 60}})
    assert node_b.file(CONNTRACK_SYSCTL_FILE).exists
    playbook(os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "remove.yml"))
    # Packets stop: the node port no longer forwards, B no longer routes its pods out.
    assert probe(node_a, "client", "198.51.100.1", 30080, count=2) == ["refused"] * 2
    assert probe(node_b, "pod-b1", "203.0.113.2", 8080, count=2) == ["timeout"] * 2
    # The owned objects are gone, and forwarding is back to what it was.
    assert "nodenet_nat" not in node_a.check_output("nft list tables")
    assert "NODENET" not in node_b.check_output("iptables-legacy-save -t nat")
    assert not node_a.file("/usr/local/sbin/nodenet-hairpin").exists  # the hairpin role's watcher script
    for node in (node_a, node_b):
        assert node.sysctl("net.ipv4.ip_forward") == 0
        assert not node.file("/etc/sysctl.d/90-nodenet-nat.conf").exists
    assert not node_b.file(CONNTRACK_SYSCTL_FILE).exists
    # The boot path: no unit, no loader, no persisted rules that would bring the rules back at boot.
    for node in (node_a, node_b):
        assert [path for path in boot_files.values() if node.file(path).exists] == []
