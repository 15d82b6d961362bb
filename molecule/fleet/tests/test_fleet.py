"""Two nodes converged by playbooks/site.yml: what clients, pods and the upstream host see, what nat_info finds
(nothing the roles should have fixed) and counts, a trace of a NodePort connection, a reboot, then playbooks/remove.yml
and the masquerade finding on the nodes it left without the roles."""
import json
import os
import re
import subprocess

import pytest

# The tests reach each node by name (no `host` fixture): each runs once, for the node it is about.
NODE_A, NODE_B = "nodenet-fleet-a", "nodenet-fleet-b"
A_TRANSIT, A_BRIDGE, B_UPSTREAM_SIDE = "10.255.0.1", "10.244.1.1", "203.0.113.1"
CONNTRACK_SYSCTL_FILE = "/etc/sysctl.d/90-nodenet-nat-conntrack.conf"
POD_CIDR = "10.244.0.0/16"  # node_egress_pod_cidrs of molecule.yml
BACKENDS = {NODE_A: "nft", NODE_B: "iptables-legacy"}
# What nat_info may still find on each node after site.yml, and why. A is in every group. B is in neither
# nodenet_nat_hairpin nor nodenet_nat_nodeport, yet its bridge cbr0 carries a pod: its port keeps hairpin mode off,
# which nat_info rightly reports (a pod on B reaching its own service through B would get no answer). Anything
# else - above all masquerade_missing on the node_egress role's own rules - would be a false finding.
AFTER_SITE = {NODE_A: [], NODE_B: ["hairpin_off"]}


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


def nat_info(module_named, name):
    return module_named(name, "nodenet.nat.nat_info", {"pod_cidrs": [POD_CIDR], "backend": BACKENDS[name]})["ansible_facts"]["nodenet_nat"]


def test_nat_info_finds_nothing_the_roles_should_have_fixed(module_named):
    for name, expected in AFTER_SITE.items():
        facts = nat_info(module_named, name)
        assert [problem["id"] for problem in facts["problems"]] == expected, (name, facts["problems"])
        assert facts["backend"]["name"] == BACKENDS[name] and facts["unrecognized"] == []
        names = [rule["name"] for rule in facts["rules"]]
        # the node_egress role's masquerade is there (and recognised: no masquerade_missing above)
        assert "egress-ipv4-nat" in names and set(facts["counters"]) == set(names)


def test_the_diagnose_playbook_agrees(playbook):
    stdout = playbook(os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "diagnose.yml"), timeout=180)
    rows = dict((line.split('"msg": "', 1)[1].split()[0], line.rstrip().rstrip('"')) for line in stdout.splitlines()
                if '"msg": "nodenet-fleet-' in line)
    # the problems column, then maybe "(N checks skipped)" when the kernel log cannot be read
    assert re.search(r" 0( \(\d+ checks skipped\))?$", rows[NODE_A]), stdout
    assert re.search(r" 1: hairpin_off( \(\d+ checks skipped\))?$", rows[NODE_B]), stdout


def test_counters_grow_with_the_connections_through_each_rule(node_a, node_b, probe, module_named):
    before = dict((name, nat_info(module_named, name)["counters"]) for name in (NODE_A, NODE_B))
    assert probe(node_a, "client", "198.51.100.1", 30080, count=3) == ["%s pod-b1" % A_TRANSIT] * 3
    assert probe(node_b, "pod-b1", "203.0.113.2", 8080, count=5) == ["%s upstream" % B_UPSTREAM_SIDE] * 5
    after = dict((name, nat_info(module_named, name)["counters"]) for name in (NODE_A, NODE_B))

    def grew(name, rule):
        return after[name][rule]["packets"] - before[name][rule]["packets"]

    # A (nft): the node port's verdict-map element and its masquerade; B (legacy iptables): the egress masquerade.
    assert (grew(NODE_A, "nodeport-web-np-dnat-v4"), grew(NODE_A, "nodeport-masquerade-v4")) == (3, 3)
    assert (grew(NODE_B, "egress-ipv4-nat"), grew(NODE_B, "egress-ipv4-exempt")) == (5, 0)
    # A's NodePort connections leave A towards B's pod: A's egress rule sees no pod source, B's none of them.
    assert grew(NODE_A, "egress-ipv4-nat") == 0


def trace(name, **variables):
    """The nat_trace result of playbooks/trace.yml on node ``name`` (ansible's json callback)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "-e", json.dumps(dict(variables, nodenet_trace_host=name)),
            os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "trace.yml")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    tasks = [task for play in json.loads(done.stdout)["plays"] for task in play["tasks"]]
    collected, = [task for task in tasks if task["task"]["name"] == "Collect the trace"]
    return collected["hosts"][name]


def test_trace_of_a_nodeport_connection_shows_the_dnat_to_the_other_node(node_a):
    result = trace(NODE_A, nodenet_trace_source="198.51.100.2", nodenet_trace_destination="198.51.100.1", nodenet_trace_protocol="tcp",
                   nodenet_trace_port=30080, nodenet_trace_probe="lab.py probe client 198.51.100.1 30080")
    assert not result["timed_out"] and result["removed"] and result["notes"] == []
    # The client is no pod and no backend: the clear and hairpin rules' keys match but the rest of them does not.
    assert result["owned_rules"] == ["nodeport-web-np-mark-v4", "nodeport-web-np-dnat-v4", "nodeport-masquerade-v4"]
    entered = [line for line in result["path"] if ": packet " in line]
    assert entered[0].startswith("ip nodenet_nat prerouting: packet iif v-client 198.51.100.2:")
    assert entered[0].endswith(" -> 198.51.100.1:30080 tcp")
    # after the DNAT: towards B's pod, out through the link to B
    assert entered[-1].startswith("ip nodenet_nat postrouting: packet iif v-client oif nodea-b 198.51.100.2:")
    assert entered[-1].endswith(" -> 10.244.2.10:8080 tcp")
    assert result["path"][-1] == "ip nodenet_nat postrouting: nodeport-masquerade-v4 (accept)"
    assert "nodenet_trace" not in node_a.check_output("nft list tables")


def test_trace_on_the_legacy_node_says_what_it_cannot_show(node_b):
    result = trace(NODE_B, nodenet_trace_source="10.244.2.10", nodenet_trace_destination="203.0.113.2", nodenet_trace_protocol="tcp",
                   nodenet_trace_port=8080, nodenet_trace_probe="lab.py probe pod-b1 203.0.113.2 8080")
    assert not result["timed_out"] and result["removed"] and result["path"] == []
    assert any("legacy iptables (x_tables) chains do not report" in note for note in result["notes"])
    assert result["rule_hits"]["egress-ipv4-nat"]["packets"] == 1
    assert "nodenet_trace" not in node_b.check_output("nft list tables")


# A reboot of both nodes, simulated (no systemd in the containers): the rulesets and the forwarding keys go, and the
# boot path site.yml installed (the sysctl.d file, then nodenet-nat.service's ExecStart) brings all three roles back.

@pytest.fixture(name="converged", scope="module")
def fixture_converged(node_a, node_b, ruleset):
    """The rulesets site.yml left, the marker chains (named after the run that wrote them) unnamed."""
    return {NODE_A: unmarked(ruleset(node_a, "nft")), NODE_B: unmarked(ruleset(node_b, "iptables-legacy"))}


def unmarked(listing):
    return re.sub(r"(state_|NODENET-RUN-)[0-9a-f]+", r"\1", listing)


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
    assert unmarked(ruleset(node_b, "iptables-legacy")) == converged[NODE_B]


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


def test_masquerade_missing_on_the_nodes_remove_left_without_the_roles(module_named):
    for name in (NODE_A, NODE_B):
        facts = nat_info(module_named, name)
        assert facts["rules"] == []
        missing = [problem for problem in facts["problems"] if problem["id"] == "masquerade_missing"]
        assert len(missing) == 1 and POD_CIDR in missing[0]["message"] and "node_egress" in missing[0]["fix"], facts["problems"]
