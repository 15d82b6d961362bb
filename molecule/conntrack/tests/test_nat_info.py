"""nat_info on the faults prepare.yml seeded: each is reported with a severity and a fix, the ones fixed
disappear, and the conntrack facts and the owned rules' counters follow real connections through the node;
playbooks/trace.yml follows one of them through the chains and leaves nothing behind.

The tests run in file order: the first ones see the seeded node, the fix test changes it.
"""
import json
import os
import subprocess

POD_CIDR = "10.244.0.0/16"
SEEDED = ["forwarding_off", "masquerade_missing", "rp_filter_strict_multihomed", "hairpin_off", "bridge_nf_call_off"]
FIXED = ["forwarding_off", "masquerade_missing", "rp_filter_strict_multihomed", "bridge_nf_call_off"]


def nat_info(module, backend, **params):
    params.setdefault("pod_cidrs", [POD_CIDR])
    return module("nodenet.nat.nat_info", dict(params, backend=backend))["ansible_facts"]["nodenet_nat"]


def problems(facts):
    return dict((problem["id"], problem) for problem in facts["problems"])


UPSTREAM = "203.0.113.2"


def test_the_seeded_faults_are_reported_with_severity_and_fix(node, module, backend, probe):
    facts = nat_info(module, backend)
    found = problems(facts)
    assert sorted(found) == sorted(SEEDED)
    assert found["forwarding_off"]["severity"] == "error"
    assert "nodenet.nat.forwarding" in found["forwarding_off"]["fix"]
    assert found["masquerade_missing"]["severity"] == "error"
    assert POD_CIDR in found["masquerade_missing"]["message"]
    assert "node_egress" in found["masquerade_missing"]["fix"]
    assert "v-pod-a" in found["hairpin_off"]["message"] and "v-pod-b" in found["hairpin_off"]["message"]
    assert "hairpin_bridge: cni0" in found["hairpin_off"]["fix"]
    assert "v-peer" in found["rp_filter_strict_multihomed"]["message"]
    for problem in found.values():
        assert problem["severity"] in ("error", "warning") and problem["fix"]
    assert facts["forwarding"]["ipv4"] is False
    assert sorted(facts["uplinks"]) == ["v-peer", "v-upstream"]
    assert facts["bridges"]["cni0"]["pod_bridge"]
    # And the fault is real: the pods reach nothing.
    assert probe(node, "pod-a", UPSTREAM, count=3, timeout=1) == ["timeout"] * 3


def test_diagnose_playbook_prints_the_host_and_its_problems(host, backend, playbook):
    stdout = playbook(os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "diagnose.yml"),
                      "--limit", host.backend.get_hostname(),
                      "-e", json.dumps({"node_egress_pod_cidrs": [POD_CIDR], "ansible_become": False}), timeout=120)
    rows = [line.split('"msg": "', 1)[1].split() for line in stdout.splitlines()
            if '"msg": "%s ' % host.backend.get_hostname() in line]
    assert len(rows) == 1, stdout
    assert rows[0][:5] == [host.backend.get_hostname(), backend, "ipv4", "off,", "ipv6"], rows[0]
    rows[0] = " ".join(rows[0])
    assert "%d: forwarding_off, masquerade_missing" % len(SEEDED) in rows[0]


def test_fixed_faults_are_no_longer_reported(node, module, backend, probe):
    module("nodenet.nat.forwarding", {"ipv4": True, "rp_filter": "loose", "bridge_nf_call_iptables": True})
    module("nodenet.nat.nat_rules", {
        "backend": backend,
        "config": [{"name": "verify-pods-egress", "type": "masquerade", "source": [POD_CIDR]}],
    })

    facts = nat_info(module, backend)
    assert sorted(problems(facts)) == sorted(set(SEEDED) - set(FIXED))
    assert facts["forwarding"]["ipv4"] is True
    assert facts["backend"]["name"] == backend and not facts["backend"]["mixed"]
    assert [(rule["name"], rule["type"], rule["source"]) for rule in facts["rules"]] == [
        ("verify-pods-egress", "masquerade", [POD_CIDR])]
    # The upstream host has no route to the pods: it answers only because the node masquerades.
    assert probe(node, "pod-a", UPSTREAM, count=3, timeout=1) == ["203.0.113.1 upstream"] * 3


def test_conntrack_facts_follow_real_connections(node, module, backend, probe):
    before = nat_info(module, backend)["conntrack"]
    assert before["loaded"] and before["max"] == node.sysctl("net.netfilter.nf_conntrack_max")
    assert probe(node, "pod-b", UPSTREAM, count=6, timeout=1) == ["203.0.113.1 upstream"] * 6

    after = nat_info(module, backend, port_exhaustion_threshold=6)
    conntrack = after["conntrack"]
    # Each connection stays in TIME_WAIT (90 s, set by converge) long after this test.
    assert conntrack["count"] >= before["count"] + 6
    assert conntrack["usage_percent"] == round(100.0 * conntrack["count"] / conntrack["max"], 1)
    busiest = conntrack["busiest_snat_destinations"][0]
    assert busiest["count"] >= 6
    assert (busiest["protocol"], busiest["snat_address"], busiest["destination"], busiest["port"]) == (
        "tcp", "203.0.113.1", "203.0.113.2", 8080)
    # The masquerade rule has no random-fully and 6+ flows share one destination: a (lowered) exhaustion risk.
    risk = problems(after)["port_exhaustion_risk"]
    assert "verify-pods-egress" in risk["message"] and "203.0.113.2" in risk["message"]
    assert "random_fully" in risk["fix"]


def test_counters_count_the_connections_through_the_owned_rule(node, module, backend, probe):
    """nat_info's per-rule counters, on nft (the rule's own counter) and legacy iptables (iptables-save -c)."""
    before = nat_info(module, backend)["counters"]["verify-pods-egress"]
    assert probe(node, "pod-a", UPSTREAM, count=4, timeout=1) == ["203.0.113.1 upstream"] * 4
    after = nat_info(module, backend)["counters"]["verify-pods-egress"]
    # The nat hooks see the first packet of each connection: four connections, four SYNs of 40+ bytes.
    assert after["packets"] - before["packets"] == 4
    assert after["bytes"] - before["bytes"] >= 4 * 40


def trace(host, **variables):
    """The nat_trace result of playbooks/trace.yml on this node (ansible's json callback)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    extra = dict(dict(nodenet_trace_host=host.backend.get_hostname(), ansible_become=False), **variables)
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "-e", json.dumps(extra),
            os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "trace.yml")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    tasks = [task for play in json.loads(done.stdout)["plays"] for task in play["tasks"]]
    collected, = [task for task in tasks if task["task"]["name"] == "Collect the trace"]
    return collected["hosts"][host.backend.get_hostname()]


def test_trace_follows_a_pod_connection_through_the_owned_masquerade(host, node, backend):
    result = trace(host, nodenet_trace_source="10.244.1.2", nodenet_trace_destination=UPSTREAM, nodenet_trace_protocol="tcp",
                   nodenet_trace_port=8080, nodenet_trace_timeout=20, nodenet_trace_probe="lab.py probe pod-a %s 8080" % UPSTREAM)
    assert not result["timed_out"] and result["removed"]
    assert result["rule_hits"]["verify-pods-egress"]["packets"] >= 1
    if backend == "nft":
        assert result["owned_rules"] == ["verify-pods-egress"]
        assert result["path"][-1] == "ip nodenet_nat postrouting: verify-pods-egress (accept)"
        postrouting = [event for event in result["packets"][0]["events"] if event["type"] == "packet"][-1]["packet"]
        assert (postrouting["saddr"], postrouting["daddr"], postrouting["dport"], postrouting["oif"]) == (
            "10.244.1.2", UPSTREAM, "8080", "v-upstream")
    else:
        # Legacy iptables chains never report to nft monitor trace: the result says so instead of a path.
        assert result["owned_rules"] == [] and result["path"] == []
        assert any("legacy iptables (x_tables) chains do not report" in note for note in result["notes"])
    # Nothing of the trace is left.
    assert "nodenet_trace" not in node.check_output("nft list tables")
