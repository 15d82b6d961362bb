"""nat_rules on real netfilter: what the far ends see, every state of the module, and a foreign rule that survives.

Each node runs one backend (host var nodenet_nat_backend). Servers answer "<source address seen> <label>".
Tests run in file order; a test that removes rules puts the converged ruleset back before it ends.
Every test runs on all nodes at once (one thread per node): a module call costs seconds, and the
nodes are independent, so the scenario's verify takes the time of one node rather than three.
"""
import concurrent.futures
import functools
import json
import os
import re
import subprocess

import pytest
import testinfra
import yaml

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "vars", "rules.yml")) as rules_file:
    CONFIG = yaml.safe_load(rules_file)["nat_rules_config"]
NAMES = sorted(rule["name"] for rule in CONFIG)
NO_ANSWER = ("timeout", "refused")
FOREIGN = "203.0.113.98 upstream-foreign"
# The listing of the owned objects, per backend and family (what the module's parsed state reads).
LISTINGS = {
    "nft": {"ipv4": "nft -j list table ip nodenet_nat", "ipv6": "nft -j list table ip6 nodenet_nat"},
    "iptables": {"ipv4": "iptables-nft-save -t nat", "ipv6": "ip6tables-nft-save -t nat"},
    "iptables-legacy": {"ipv4": "iptables-legacy-save -t nat", "ipv6": "ip6tables-legacy-save -t nat"},
}


class Node(object):
    """One node: module calls go through Ansible (host.ansible); commands through `podman exec`, since
    testinfra would otherwise wrap every command of a podman-connected host in an Ansible shell task."""

    def __init__(self, ansible_host, probe):
        self.name = ansible_host.backend.host
        self.ansible = ansible_host.ansible
        self.backend_name = ansible_host.ansible.get_variables()["nodenet_nat_backend"]
        self.shell = testinfra.get_host("podman://" + self.name)
        # probe(namespace, address, port=8080, count=1, timeout=2): the lab tool's answers, one per connection.
        self.probe = functools.partial(probe, self.shell)

    def run(self, command, *args):
        return self.shell.run(command, *args)

    def check_output(self, command, *args):
        return self.shell.check_output(command, *args)


@pytest.fixture(scope="module")
def nodes(request, probe):
    """Every node of the scenario's inventory (molecule passes it to pytest)."""
    option = request.config.option
    hosts = testinfra.get_hosts((option.hosts or "ansible://all").split(","), connection=option.connection,
                                ansible_inventory=option.ansible_inventory, force_ansible=option.force_ansible)
    return [Node(host, probe) for host in hosts]


def on_each(nodes, check, *args):
    """Run check(node, *args) on every node at once; fail naming each node that failed and why."""
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        futures = dict((node.name, pool.submit(check, node, *args)) for node in nodes)
    errors = []
    for name, future in sorted(futures.items()):
        error = future.exception()
        if error is not None:
            errors.append("%s: %s: %s" % (name, type(error).__name__, error))
    assert not errors, "\n\n".join(errors)


def backend(host):
    return host.backend_name


def nat_rules(host, **args):
    """The module's result; before and after list every owned rule (result_rules: all)."""
    args.setdefault("backend", backend(host))
    if args.get("state") not in ("gathered", "rendered", "parsed"):
        args.setdefault("result_rules", "all")
    return host.ansible("nodenet.nat.nat_rules", json.dumps(args), check=False)


def converge(host):
    return nat_rules(host, state="overridden", config=CONFIG)


def foreign_listing(host):
    if backend(host) == "nft":
        return host.check_output("nft list table ip foreign")
    return host.check_output("%s-save -t nat" % LISTINGS[backend(host)]["ipv4"].split("-save")[0])


def assert_foreign_rule_intact(host):
    listing = foreign_listing(host)
    if backend(host) == "nft":
        assert re.search(r'tcp dport 8081 snat to 203\.0\.113\.98 comment "foreign"', listing), listing
    else:
        assert re.search(r"-A POSTROUTING -p tcp -m tcp --dport 8081 -m comment --comment foreign -j SNAT --to-source 203\.0\.113\.98",
                         listing), listing
    assert host.probe("client", "203.0.113.2", 8081) == [FOREIGN]


def owned_listing(host):
    """The owned objects as the backend lists them, without timestamps and counters."""
    if backend(host) == "nft":
        return host.run("nft list tables").stdout + host.run("nft list table ip nodenet_nat").stdout + host.run(
            "nft list table ip6 nodenet_nat").stdout
    text = "".join(host.check_output(command) for command in LISTINGS[backend(host)].values())
    return re.sub(r"\[\d+:\d+\]", "", "\n".join(line for line in text.splitlines() if not line.startswith("#")))


def check_foreign_rule(host):
    assert_foreign_rule_intact(host)


def test_foreign_rule_survived_overridden(nodes):
    on_each(nodes, check_foreign_rule)


def check_egress(host):
    for pod in ("pod-a", "pod-b"):
        assert host.probe(pod, "203.0.113.2") == ["203.0.113.1 upstream"], pod
        assert host.probe(pod, "2001:db8::2") == ["2001:db8::1 upstream"], pod


def test_pods_reach_upstream_masqueraded_to_the_node_address(nodes):
    on_each(nodes, check_egress)


def check_exemption(host):
    assert host.probe("pod-a", "198.51.100.2") == ["10.244.1.10 client"]
    assert host.probe("pod-b", "2001:db8:c::2") == ["fd00:10:244:1::11 client"]


def test_marked_destinations_see_the_pod_address(nodes):
    on_each(nodes, check_exemption)


def check_nodeport(host, node_address, client):
    answers = host.probe("client", node_address, 30080, count=24)
    assert set(answers) == {"%s pod-a" % client, "%s pod-b" % client}, answers


@pytest.mark.parametrize("node_address,client", [("198.51.100.1", "198.51.100.2"), ("2001:db8:c::1", "2001:db8:c::2")])
def test_nodeport_balances_over_both_pods_and_keeps_the_client_address(nodes, node_address, client):
    on_each(nodes, check_nodeport, node_address, client)


def check_snat(host):
    assert host.probe("client", "203.0.113.2") == ["203.0.113.99 upstream"]
    assert host.probe("client", "2001:db8::2") == ["2001:db8::99 upstream"]


def test_client_traffic_to_upstream_is_snatted_to_the_chosen_address(nodes):
    on_each(nodes, check_snat)


def check_auto_gathered_parsed(host):
    # The run record of the last converge names the backend; without it, detection finds it in the rulesets.
    result = nat_rules(host, state="gathered", backend="auto")
    assert (result["backend"], result["backend_reason"]) == (
        backend(host), "%s holds this collection's rules as its last run left them (run record); kept it" % backend(host))
    host.check_output("rm -rf /run/nodenet-nat")
    result = nat_rules(host, state="gathered", backend="auto")
    assert result["backend"] == backend(host), result["backend_reason"]
    reason = {"nft": "nft", "iptables": "iptables-nft", "iptables-legacy": "legacy iptables"}[backend(host)]
    assert reason in result["backend_reason"] and "run record" not in result["backend_reason"], result["backend_reason"]
    assert not result["changed"]
    gathered = result["gathered"]
    assert sorted(rule["name"] for rule in gathered) == NAMES
    parsed = []
    for command in LISTINGS[backend(host)].values():
        parsed += nat_rules(host, state="parsed", running_config=host.check_output(command))["parsed"]
    assert sorted(parsed, key=lambda rule: rule["name"]) == sorted(gathered, key=lambda rule: rule["name"])


def test_auto_detects_the_backend_and_parsed_listing_equals_gathered(nodes):
    """auto picks the node's backend (from the run record, or by detection: legacy because legacy rules exist);
    gathered lists the converged names; parsing the host's own listing (nft -j / iptables-save -t nat, per family)
    gives the same rules."""
    on_each(nodes, check_auto_gathered_parsed)


def render_offline(backend_name):
    """state=rendered on the controller: no netfilter there is read or touched."""
    args = json.dumps({"state": "rendered", "backend": backend_name, "config": CONFIG})
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    output = subprocess.run(["ansible", "localhost", "-c", "local", "-m", "nodenet.nat.nat_rules", "-a", args],
                            capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(output)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def check_rendered(host):
    result = render_offline(backend(host))
    assert not result["changed"]
    assert {family for transaction in result["transactions"] for family in transaction["families"]} == {"ipv4", "ipv6"}
    for name in NAMES:
        assert any(name in line for line in result["rendered"]), name
    before = owned_listing(host)
    lines = list(result["rendered"])
    for transaction in result["transactions"]:
        script = "\n".join(lines[:transaction["lines"]]) + "\n"
        del lines[:transaction["lines"]]
        if backend(host) == "nft":
            check = "nft -c -f -"
        else:
            check = "%s-restore --test --noflush" % LISTINGS[backend(host)][transaction["families"][0]].split("-save")[0]
        host.check_output("printf %s %s | " + check, "%s", script)
    assert lines == []
    assert owned_listing(host) == before


def test_rendered_offline_is_accepted_by_the_node_tools(nodes):
    on_each(nodes, check_rendered)


EXTRA = {"name": "nr-extra", "type": "masquerade", "source": ["10.244.2.0/24"], "random_fully": True}


def check_merged(host):
    first = nat_rules(host, state="merged", config=[EXTRA])
    assert first["changed"]
    assert sorted(rule["name"] for rule in first["after"]) == sorted(NAMES + ["nr-extra"])
    again = nat_rules(host, state="merged", config=[EXTRA])
    assert not again["changed"] and again["commands"] == []
    # overridden removes the owned rule that is not in config, and nothing else
    restored = converge(host)
    assert restored["changed"]
    assert sorted(rule["name"] for rule in restored["after"]) == NAMES
    assert_foreign_rule_intact(host)


def test_merged_adds_a_rule_once_and_overridden_removes_it(nodes):
    on_each(nodes, check_merged)


def check_invalid(host, rule, field, value):
    before = owned_listing(host)
    try:
        result = nat_rules(host, state="overridden", config=CONFIG + [rule])
    except host.ansible.AnsibleException as failure:
        result = failure.result
    # (ansible 2.19 leaves "failed" out of the ad hoc result testinfra reads: a failure is a result without "after")
    assert "after" not in result, result
    message = result["msg"]
    assert field in message and value in message and rule["name"] in message, message
    assert owned_listing(host) == before


@pytest.mark.parametrize("rule,field,value", [
    ({"name": "nr-bad-cidr", "type": "masquerade", "source": ["10.244.0.0/33"]}, "source", "10.244.0.0/33"),
    ({"name": "nr-bad-port", "type": "dnat", "protocol": "tcp", "destination_ports": [70000], "to_destination": ["10.244.1.10"]},
     "destination_ports", "70000"),
])
def test_invalid_input_fails_naming_the_field_and_changes_nothing(nodes, rule, field, value):
    on_each(nodes, check_invalid, rule, field, value)


def check_deleted(host):
    result = nat_rules(host, state="deleted", config=[{"name": "nr-nodeport"}])
    assert result["changed"]
    assert sorted(rule["name"] for rule in result["after"]) == [name for name in NAMES if name != "nr-nodeport"]
    for answer in host.probe("client", "198.51.100.1", 30080, count=2, timeout=1):
        assert answer in NO_ANSWER
    assert host.probe("client", "2001:db8:c::1", 30080)[0] in ("2001:db8:c::2 pod-a", "2001:db8:c::2 pod-b")
    assert host.probe("pod-a", "203.0.113.2") == ["203.0.113.1 upstream"]
    assert_foreign_rule_intact(host)
    # with an empty config, every owned rule goes; the foreign rule stays
    result = nat_rules(host, state="deleted")
    assert result["changed"] and result["after"] == []
    listing = owned_listing(host)
    assert "nodenet_nat" not in listing and "NODENET" not in listing
    assert host.probe("pod-a", "203.0.113.2", timeout=1) == ["timeout"]
    assert_foreign_rule_intact(host)
    # back to the converged state, so verify can run again
    assert converge(host)["changed"]
    assert len(set(host.probe("client", "198.51.100.1", 30080, count=20))) == 2


def test_deleted_removes_only_what_it_names_and_never_the_foreign_rule(nodes):
    on_each(nodes, check_deleted)


DNS = {"name": "nr-dns", "type": "dnat", "destination_type": "local", "protocol": "udp", "destination_ports": [30053],
       "to_destination": ["10.244.1.10:5353"]}


def check_udp_endpoint_replaced(host):
    """A UDP client that keeps its source port (a resolver) reaches the new endpoint right after the change:
    the module deleted the flow that still pointed at the old one."""
    def ask():
        return host.probe("client", "198.51.100.1", 30053, udp=True, count=3, timeout=1, source_port=40053)

    assert nat_rules(host, state="merged", config=[DNS])["changed"]
    assert ask() == ["198.51.100.2 pod-a"] * 3
    moved = nat_rules(host, state="merged", config=[dict(DNS, to_destination=["10.244.1.11:5353"])])
    assert moved["cleared_flows"] == [{"rule": "nr-dns", "protocol": "udp", "destinations": [], "port": 30053, "endpoint": "10.244.1.10"}]
    assert ask() == ["198.51.100.2 pod-b"] * 3
    assert nat_rules(host, state="deleted", config=[{"name": "nr-dns"}])["changed"]


def test_a_replaced_udp_endpoint_takes_the_clients_flow_with_it(nodes):
    on_each(nodes, check_udp_endpoint_replaced)


def test_a_config_of_more_than_a_mebibyte_reaches_the_module_as_a_file_and_converges(nodes, playbook, tmp_path):
    """The action plugin ships a big config as a file in the task's temporary directory (ansible embeds module
    arguments in the module it sends); the rules go in, a second run changes nothing, the file goes with the task."""
    rules = [dict(name="bulk-%d" % index, type="dnat", protocol="tcp", destination=["198.18.%d.%d" % divmod(index, 250)],
                  destination_ports=[8080], to_destination=["10.244.1.10:8080", "10.244.1.11:8080"]) for index in range(8000)]
    text = json.dumps(rules)
    assert len(text) > 1 << 20
    variables = tmp_path / "bulk.json"
    variables.write_text(json.dumps(dict(bulk_rules_text=text)))
    out = playbook(os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "big_config.yml"), "-e", "@%s" % variables,
                   env=dict(ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1"))
    tasks = json.loads(out)["plays"][0]["tasks"]
    said = tasks[-1]["hosts"]
    assert sorted(said) == sorted(node.name for node in nodes)
    for name, answer in sorted(said.items()):
        first = tasks[0]["hosts"][name]     # as the callback saw it: with the module's invocation
        # 8000 names are counted, not listed (result_rules: summary).
        assert first["changed"] and first["summary"]["omitted"]["added"] == 8000 and first["summary"]["added"] == [], (name, first["summary"])
        assert first["invocation"]["module_args"]["config_path"].endswith("/nat_rules_config.json"), (name, first["invocation"])
        assert answer["msg"]["again"] is False and answer["msg"]["leftovers"] == [], (name, answer["msg"])
        assert answer["msg"]["removed"]["omitted"]["removed"] == 8000, name
    on_each(nodes, check_egress)
