# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""masquerade_missing: what covers a pod CIDR's egress, for every rule shape the roles (and users) write.

The roles' rules come from the roles themselves (their vars templated by ansible, the nodeport filter), so a
change of a role's rule shape shows here. Offline tests walk the rules (nat_info/egress.py); live tests write
them with nat_rules on each real backend inside a throwaway network namespace and run nat_info over it, with
real packets for the counters.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress
import os
import shutil
import tempfile

import pytest
import yaml

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from ansible_collections.nodenet.nat.plugins.filter.nodeport_rules import nodeport_rules
from ansible_collections.nodenet.nat.plugins.module_utils import nat_info
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import rule_from_params
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info.egress import covered, describe, walk_egress
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import run_nat_rules
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordStore

from support import FakeHost

ROLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles")
RECORDED_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "proc", "node", "root")
PODS4, PODS6 = "10.244.0.0/16", "fd00:10:244::/48"
NODE_PODS4 = "10.244.1.0/24"
SERVICE = dict(name="web", port=30080, cluster_ip="10.96.0.10", backends=[dict(address="10.244.1.10", port=8080)])


def _trusted(value):
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    if isinstance(value, dict):
        return dict((key, _trusted(item)) for key, item in value.items())
    return value


def role_rules(role, **variables):
    """The ``config`` a role passes to nat_rules: its defaults and vars templated by ansible with ``variables``."""
    values = {}
    for part in ("defaults", "vars"):
        with open(os.path.join(ROLES, role, part, "main.yml")) as handle:
            values.update(_trusted(yaml.safe_load(handle)))
    values.update(variables)
    return Templar(loader=DataLoader(), variables=values).template(trust_as_template("{{ __%s_rules }}" % role))


def egress_rules(**variables):
    return role_rules("node_egress", **dict(dict(node_egress_pod_cidrs=[PODS4, PODS6]), **variables))


def nodeport_config():
    return nodeport_rules([SERVICE], pod_cidrs=[NODE_PODS4])


def hairpin_rules():
    return role_rules("hairpin", hairpin_pod_cidrs=[NODE_PODS4], hairpin_bridge="cni0")


def rules(config):
    return [rule_from_params(params, index) for index, params in enumerate(config)]


def walk(config, cidr):
    return walk_egress(rules(config), ipaddress.ip_network(cidr))


# ---- offline: the walk over each shape -------------------------------------------------------------------

def test_the_node_egress_role_covers_its_pod_cidrs_in_both_families():
    config = egress_rules(node_egress_non_masquerade_cidrs=["192.168.0.0/16"])
    # The role's nat rule matches packets WITHOUT its exemption bit: plain egress carries none.
    assert [(rule["name"], rule.get("mark"), rule.get("mark_negate")) for rule in config if rule["name"].endswith("-nat")] == [
        ("egress-ipv4-nat", "0x2000/0x2000", True), ("egress-ipv6-nat", "0x2000/0x2000", True)]
    for cidr, name in ((PODS4, "egress-ipv4-nat"), (PODS6, "egress-ipv6-nat")):
        egress = walk(config, cidr)
        assert covered(egress) and egress.taken == [(ipaddress.ip_network(cidr), name, None)], egress


@pytest.mark.parametrize("variables, taken_by", [
    (dict(node_egress_snat_address="198.51.100.10"), "egress-ipv4-nat"),
    (dict(node_egress_interface="eth0"), "egress-ipv4-nat"),
    (dict(node_egress_random_fully=False, node_egress_exempt_mark="0x8000"), "egress-ipv4-nat"),
])
def test_every_node_egress_variant_covers(variables, taken_by):
    egress = walk(egress_rules(**variables), PODS4)
    assert covered(egress) and [name for dummy, name, dummy in egress.taken] == [taken_by]
    if "node_egress_interface" in variables:
        assert egress.taken[0][2] == "eth0"


def test_all_roles_together_cover_and_the_other_roles_alone_do_not():
    everything = egress_rules() + nodeport_config() + hairpin_rules()
    assert covered(walk(everything, PODS4))
    egress = walk(nodeport_config() + hairpin_rules(), PODS4)
    assert not covered(egress) and egress.untouched == [ipaddress.ip_network(PODS4)]
    # The evidence says why the masquerades that are there do not take plain egress.
    assert egress.passed == {
        "nodeport-masquerade-v4": "matches only packets with mark 0x4000/0x4000 (egress carries mark 0x0)",
        "hairpin-ipv4-masquerade": "matches only destinations 10.244.1.0/24",
    }


def _masquerade(name="masq", **fields):
    return dict(dict(name=name, type="masquerade"), **fields)


@pytest.mark.parametrize("config, is_covered", [
    ([_masquerade(source=[PODS4])], True),
    ([_masquerade()], True),
    ([_masquerade(source=["10.0.0.0/8"])], True),
    # ip-masq-agent: everything but the cluster's ranges, written as a negated destination or as returns before
    ([_masquerade(source=[PODS4], destination=["10.0.0.0/8"], destination_negate=True)], True),
    ([dict(name="keep-10", type="return", destination=["10.0.0.0/8"]), _masquerade(source=[PODS4])], True),
    ([_masquerade(destination_type="local", destination_type_negate=True)], True),
    ([_masquerade(ct_state=["new"])], True),
    # a mark match that unmarked packets pass: value 0 under the mask
    ([_masquerade(mark="0x0/0x2000")], True),
    # two halves cover the whole
    ([_masquerade("low", source=["10.244.0.0/17"]), _masquerade("high", source=["10.244.128.0/17"])], True),
    # a negated source that leaves the pods in
    ([_masquerade(source=["192.168.0.0/16"], source_negate=True)], True),
    ([_masquerade(source=["10.244.1.0/24"])], False),
    ([_masquerade(source=["10.0.0.0/8"], source_negate=True)], False),
    ([_masquerade(destination=["203.0.113.0/24"])], False),
    ([_masquerade(destination=["0.0.0.0/0"], destination_negate=True)], False),
    ([_masquerade(protocol="tcp")], False),
    ([_masquerade(ct_state=["dnat"])], False),
    ([_masquerade(mark="0x4000/0x4000")], False),
    ([_masquerade(destination_type="local")], False),
    ([_masquerade(family="ipv6")], False),
    # a return for all pod traffic before the masquerade exempts it all
    ([dict(name="keep-pods", type="return", source=[PODS4]), _masquerade(source=[PODS4])], False),
    # an exemption bit set for all pod traffic (no destination) makes the role's nat rule pass it
    ([dict(name="exempt-all", type="mark", chain="postrouting", source=[PODS4], set_mark="0x2000/0x2000"),
      _masquerade(source=[PODS4], mark="0x2000/0x2000", mark_negate=True)], False),
    # ... and a later clear of that bit makes it match again
    ([dict(name="exempt-all", type="mark", chain="postrouting", source=[PODS4], set_mark="0x2000/0x2000"),
      dict(name="clear", type="mark", chain="postrouting", source=["10.244.0.0/17"], set_mark="0x0/0x2000"),
      _masquerade(source=[PODS4], mark="0x2000/0x2000", mark_negate=True)], False),
    # marks set in prerouting reach postrouting; a mark for one input interface is not taken for the pods'
    ([dict(name="mark-pods", type="mark", source=[PODS4], set_mark="0x4000/0x4000"), _masquerade(mark="0x4000/0x4000")], True),
    ([dict(name="mark-eth0", type="mark", in_interface="eth0", set_mark="0x4000/0x4000"), _masquerade(mark="0x4000/0x4000")], False),
    # a return in prerouting ends only that chain
    ([dict(name="skip", type="return", chain="prerouting", source=[PODS4]),
      dict(name="mark-pods", type="mark", source=[PODS4], set_mark="0x4000/0x4000"), _masquerade(mark="0x4000/0x4000")], False),
    ([dict(name="skip", type="return", chain="prerouting", source=[PODS4]), _masquerade(source=[PODS4])], True),
    # rules of other chains never translate egress
    ([dict(name="dnat", type="dnat", destination=["10.96.0.10"], to_destination=["10.244.1.10"])], False),
])
def test_what_covers_a_pod_cidr(config, is_covered):
    assert covered(walk(config, PODS4)) is is_covered


def test_a_partial_cover_names_what_is_left_and_why():
    config = [dict(name="exempt-all", type="mark", chain="postrouting", source=[PODS4], set_mark="0x2000/0x2000"),
              dict(name="clear", type="mark", chain="postrouting", source=["10.244.0.0/17"], set_mark="0x0/0x2000"),
              _masquerade("nat", source=[PODS4], mark="0x2000/0x2000", mark_negate=True),
              dict(name="keep-pods", type="return", source=["10.244.128.0/18"])]
    egress = walk(config, PODS4)
    assert egress.taken == [(ipaddress.ip_network("10.244.0.0/17"), "nat", None)]
    assert egress.untouched == [ipaddress.ip_network("10.244.192.0/18")]
    assert egress.exempted == [(ipaddress.ip_network("10.244.128.0/18"), "keep-pods")]
    assert describe(egress) == [
        "10.244.192.0/18 leave with pod source addresses", "return rule keep-pods lets 10.244.128.0/18 out untranslated",
        "covered: 10.244.0.0/17", "nat matches only packets without mark 0x2000/0x2000 (egress carries mark 0x2000, set by exempt-all)"]


# ---- live: the roles' rules on each real backend, in a throwaway network namespace ----------------------

BACKEND_BINARIES = {"nft": ["nft"], "iptables": ["iptables-nft-restore", "ip6tables-nft-restore"],
                    "iptables-legacy": ["iptables-legacy-restore", "ip6tables-legacy-restore"]}


@pytest.fixture
def namespace(netns, tmp_path):
    """(run_command, root): commands run in a new network namespace (gone when the test ends); ``root`` is a copy of
    the recorded node's /proc and /sys, so that only the ruleset is live."""
    root = str(tmp_path / "node")
    shutil.copytree(RECORDED_ROOT, root)
    return netns.run, root


def converge(run, backend, scopes):
    """Write each (scope, config) with nat_rules, as the roles do (state overridden in their own scope)."""
    store = RecordStore(tempfile.mkdtemp())
    for scope, config in scopes:
        params = dict(state="overridden", scope=scope, config=config, backend=backend, running_config=None, persist=False,
                      persist_path=None, result_rules="summary")
        run_nat_rules(params, FakeHost(run, which=shutil.which), store=store)


def facts(run, root, backend, cidrs=(PODS4, PODS6)):
    return nat_info.node_facts(dict(pod_cidrs=list(cidrs), backend=backend), FakeHost(run, which=shutil.which), root)


@pytest.mark.parametrize("backend", sorted(BACKEND_BINARIES))
def test_no_masquerade_finding_on_a_node_the_roles_converged_and_one_where_they_did_not(namespace, backend):
    if not all(shutil.which(binary) for binary in BACKEND_BINARIES[backend]):
        pytest.skip("%s tools are not installed" % backend)
    run, root = namespace
    converge(run, backend, [("nodeport-", nodeport_config()), ("hairpin-", hairpin_rules())])
    missing = [problem for problem in facts(run, root, backend)["problems"] if problem["id"] == "masquerade_missing"]
    assert [PODS4 in problem["message"] or PODS6 in problem["message"] for problem in missing] == [True, True]
    assert "nodeport-masquerade-v4 matches only packets with mark 0x4000/0x4000" in missing[0]["message"]

    converge(run, backend, [("egress-", egress_rules(node_egress_non_masquerade_cidrs=["192.168.0.0/16"]))])
    found = facts(run, root, backend)
    assert found["backend"]["name"] == backend and found["unrecognized"] == []
    assert sorted(rule["name"] for rule in found["rules"]) == sorted(
        [rule["name"] for rule in egress_rules() + nodeport_config() + hairpin_rules()])
    assert "masquerade_missing" not in [problem["id"] for problem in found["problems"]]


@pytest.mark.parametrize("backend", sorted(BACKEND_BINARIES))
def test_counters_count_the_connections_through_each_owned_rule(namespace, backend):
    """Pod-sourced UDP datagrams from the namespace itself leave through postrouting: N new connections."""
    if not all(shutil.which(binary) for binary in BACKEND_BINARIES[backend]):
        pytest.skip("%s tools are not installed" % backend)
    run, root = namespace
    converge(run, backend, [("egress-", egress_rules())])
    for argv in (["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1"], ["ip", "addr", "add", "10.244.1.2/24", "dev", "up0"],
                 ["ip", "addr", "add", "203.0.113.1/24", "dev", "up1"], ["ip", "link", "set", "up0", "up"],
                 ["ip", "link", "set", "up1", "up"]):
        assert run(argv)[0] == 0, argv
    before = facts(run, root, backend)["counters"]
    assert before["egress-ipv4-nat"] == dict(packets=0, bytes=0)
    send = ("import socket\nfor port in range(5):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    s.bind(('10.244.1.2', 40000 + port))\n    s.sendto(b'x', ('203.0.113.5', 53))\n")
    assert run(["python3", "-c", send])[0] == 0
    after = facts(run, root, backend)["counters"]
    # The nat hooks see the first packet of each connection: five datagrams from five ports are five connections.
    assert after["egress-ipv4-nat"]["packets"] == 5 and after["egress-ipv4-nat"]["bytes"] == 5 * 29
    assert after["egress-ipv4-clear"]["packets"] == 5
    assert after["egress-ipv4-exempt"]["packets"] == 0 and after["egress-ipv6-nat"]["packets"] == 0
