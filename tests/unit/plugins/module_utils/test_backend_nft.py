# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nft backend: rendering, parsing recorded listings, and the round trip through the real nft.

Live tests run nft only inside a throwaway network namespace (``unshare --net``, needs root and
the nft binary), so the host's own ruleset is never read or changed.

The recorded listings in tests/unit/fixtures/nft/<case>.json are what nft printed for the rules of
``cases.json``; re-record them with ``NODENET_RECORD_NFT_FIXTURES=1 pytest -k round_trip_of_case``.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress
import json
import os
import string
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import (
    APPLY_ARGV, CHECK_ARGV, MISSING_TABLE_ERROR, NftBackend, render_table,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS_BY_TYPE, FAMILIES, IN_INTERFACE_CHAINS, OUT_INTERFACE_CHAINS, PROTOCOLS, RULE_TYPES,
    Endpoint, Mark, PortRange, make_rule, normalize_ct_states, normalize_networks, normalize_port_ranges,
    rule_from_params, rule_to_params, rules_from_config,
)
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import canonical_order

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "nft")
with open(os.path.join(FIXTURES, "cases.json")) as cases_file:
    CASES = json.load(cases_file)
RECORD = os.environ.get("NODENET_RECORD_NFT_FIXTURES") == "1"
BACKEND = NftBackend()
NOTHING_OWNED = HostState([], {"tables": set()})


def families_of(rules):
    return set(rule.family for rule in rules)


def case_rules(case):
    return rules_from_config(CASES[case])


def fixture_path(case):
    return os.path.join(FIXTURES, "%s.json" % case)


def run_in_netns(steps, setup="", extra_listings=()):
    """Run ``steps`` (each a list of Transaction) in one fresh network namespace.

    Every transaction is checked with its check_argv, then applied with its apply_argv (text on
    stdin), as the module does. After each step the owned tables are listed with the backend's
    list commands, plus ``extra_listings`` ([(key, argv)]). ``setup`` is an nft script applied first.
    Returns one {key: stdout, or None for a missing table} per step.
    """
    with tempfile.TemporaryDirectory() as tmp:
        def path(name, text=None):
            full = os.path.join(tmp, name)
            if text is not None:
                with open(full, "w") as handle:
                    handle.write(text)
            return full

        lines = ["set -e", "nft -f %s" % path("setup.nft", setup)]
        listings = list(BACKEND.list_commands()) + list(extra_listings)
        for step, transactions in enumerate(steps):
            for number, transaction in enumerate(transactions):
                script = path("%d-%d.nft" % (step, number), transaction.text)
                lines += ["%s < %s" % (" ".join(argv), script) for argv in (transaction.check_argv, transaction.apply_argv)]
            for key, argv in listings:
                output = path("%d-%s" % (step, key))
                lines.append("%s > %s.out 2> %s.err || echo failed > %s.failed" % (" ".join(argv), output, output, output))
        result = subprocess.run(["unshare", "--net", "--", "sh", path("run.sh", "\n".join(lines) + "\n")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        assert result.returncode == 0, result.stderr
        outputs = []
        for step in range(len(steps)):
            listed = {}
            for key, _argv in listings:
                output = path("%d-%s" % (step, key))
                with open(output + ".err") as errors:
                    error = errors.read()
                if os.path.exists(output + ".failed"):
                    assert MISSING_TABLE_ERROR in error, error
                    listed[key] = None
                else:
                    with open(output + ".out") as stdout:
                        listed[key] = stdout.read()
            outputs.append(listed)
        return outputs


def base_chain_rule_count(listing):
    """Rules in the base chains of one ``nft -j list table`` output: what every packet walks through."""
    objects = json.loads(listing)["nftables"]
    base_chains = set(item["chain"]["name"] for item in objects if "hook" in item.get("chain", {}))
    return sum(1 for item in objects if item.get("rule", {}).get("chain") in base_chains)


def map_element_count(listing):
    return sum(len(item["map"].get("elem", [])) for item in json.loads(listing)["nftables"] if "map" in item)


# ---------------------------------------------------------------------------
# Offline: render
# ---------------------------------------------------------------------------

def test_render_compiles_runs_of_one_shape_into_verdict_maps():
    text = render_table("ipv4", case_rules("kube_services_ipv4"))
    prerouting = text.split("\tchain prerouting {\n")[1].split("\t}\n")[0].splitlines()
    assert prerouting == [
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tip daddr . meta l4proto . th dport vmap @prerouting_destination_1",
        "\t\tfib daddr type local meta l4proto . th dport vmap @prerouting_local_2",
        '\t\tip saddr != 10.244.0.0/16 fib daddr type local meta mark set meta mark & 0xffffbfff | 0x00004000 comment "mark-external"',
    ]
    assert '\t\t\t10.96.0.10 . tcp . 80 comment "svc/default/web:http" : jump rule_svc/default/web_http_b7d5a813,\n' in text
    assert ("\tchain rule_svc/default/web_http_b7d5a813 {\n"
            "\t\tmeta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.2.3 . 8080, "
            '2 : 10.244.3.4 . 8080 } comment "svc/default/web:http"\n') in text
    # The rest of a rule that the map key does not cover stays in its chain.
    assert '\t\tip saddr 10.244.0.0/16 meta l4proto tcp dnat ip to 10.244.1.5:53 comment "svc/kube-system/dns:dns-tcp"\n' in text
    # A lone rule of a mappable shape stays an ordinary rule.
    assert '\t\tip daddr 10.96.0.10/32 meta l4proto tcp th dport 80 dnat ip to 10.244.1.2:8080 comment "output-svc"\n' in text


def test_render_replaces_the_table_in_one_transaction():
    text = render_table("ipv6", case_rules("kube_services_ipv6"))
    assert text.startswith("add table ip6 nodenet_nat\ndelete table ip6 nodenet_nat\ntable ip6 nodenet_nat {\n")
    assert text.endswith("\n}\n")
    assert render_table("ipv4", []) == "add table ip nodenet_nat\ndelete table ip nodenet_nat\n"


def test_render_one_transaction_per_family_with_rules_or_a_table():
    ipv4_rules = case_rules("kube_services_ipv4")
    transactions = BACKEND.render(ipv4_rules, NOTHING_OWNED)
    assert [(t.family, t.check_argv, t.apply_argv) for t in transactions] == [("ipv4", CHECK_ARGV, APPLY_ARGV)]
    assert CHECK_ARGV == ["nft", "-c", "-f", "-"] and APPLY_ARGV == ["nft", "-f", "-"]
    both_owned = HostState([], {"tables": {"ipv4", "ipv6"}})
    transactions = BACKEND.render(ipv4_rules, both_owned)
    assert [t.family for t in transactions] == ["ipv4", "ipv6"]
    assert transactions[1].text == "add table ip6 nodenet_nat\ndelete table ip6 nodenet_nat\n"
    assert BACKEND.render([], NOTHING_OWNED) == []


def test_render_refuses_ct_states_with_nat_status_in_one_rule():
    rule = rule_from_params(dict(name="mixed", type="masquerade", ct_state=["new", "dnat"]), 0)
    with pytest.raises(ValueError) as caught:
        BACKEND.render([rule], NOTHING_OWNED)
    assert "rule mixed: ct_state: ['dnat', 'new'] mixes conntrack states (new) with NAT status (dnat)" in str(caught.value)


def test_render_refuses_duplicate_names():
    rule = rule_from_params(dict(name="twice", type="masquerade"), 0)
    with pytest.raises(ValueError, match="repeated: twice"):
        BACKEND.render([rule, rule._replace(family="ipv6")], NOTHING_OWNED)


def test_render_refuses_unquotable_text():
    rule = make_rule(name='bad"name', type="return", chain="postrouting", family="ipv4")
    with pytest.raises(ValueError, match="cannot be written as a quoted nft string"):
        BACKEND.render([rule], NOTHING_OWNED)


def test_per_rule_chain_names_stay_distinct_when_characters_are_replaced():
    rules = rules_from_config([dict(name=name, type="dnat", destination=["10.0.0.%d/32" % index], protocol="tcp",
                                    destination_ports=[80], to_destination=["10.1.0.1"])
                               for index, name in enumerate(["a:b", "a_b"])])
    chains = [line for line in render_table("ipv4", rules).splitlines() if line.startswith("\tchain rule_a_b_")]
    assert len(set(chains)) == 2


# ---------------------------------------------------------------------------
# Offline: parse recorded listings
# ---------------------------------------------------------------------------

def recorded_outputs(case):
    with open(fixture_path(case)) as recorded:
        return {family: None if listing is None else json.dumps(listing) for family, listing in json.load(recorded).items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_recorded_listing(case):
    rules = case_rules(case)
    state = BACKEND.parse(recorded_outputs(case))
    assert state.rules == canonical_order(rules)
    assert state.facts == {"tables": families_of(rules), "unrecognized": []}


def test_parse_missing_tables():
    assert BACKEND.parse({"ipv4": None, "ipv6": ""}) == HostState([], {"tables": set(), "unrecognized": []})


def test_parse_reports_rules_it_did_not_write():
    listing = json.loads(recorded_outputs("matches_and_statements")["ipv4"])
    hand_edits = [dict(expr=[{"counter": {"packets": 0, "bytes": 0}}, {"masquerade": None}], comment="counted"),
                  dict(expr=[{"masquerade": None}]),
                  dict(expr=[{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"^": [{"meta": {"key": "mark"}}, 1]}}}],
                       comment="toggle")]
    for handle, rule in enumerate(hand_edits, start=900):
        listing["nftables"].append({"rule": dict(rule, family="ip", table="nodenet_nat", chain="postrouting", handle=handle)})
    state = BACKEND.parse({"ipv4": json.dumps(listing), "ipv6": None})
    assert state.rules == canonical_order(rule for rule in case_rules("matches_and_statements") if rule.family == "ipv4")
    assert state.facts["unrecognized"] == [
        "ip nodenet_nat chain postrouting handle 900: statement counter before the last",
        "ip nodenet_nat chain postrouting handle 901: rule without a name comment",
        "ip nodenet_nat chain postrouting handle 902: meta mark set that toggles bits",
    ]


def test_list_commands_read_only_the_owned_tables():
    assert BACKEND.list_commands() == [("ipv4", ["nft", "-j", "list", "table", "ip", "nodenet_nat"]),
                                       ("ipv6", ["nft", "-j", "list", "table", "ip6", "nodenet_nat"])]


# ---------------------------------------------------------------------------
# Live: real nft in a throwaway network namespace
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_of_case(case):
    rules = case_rules(case)
    listed, = run_in_netns([BACKEND.render(rules, NOTHING_OWNED)])
    if RECORD:
        with open(fixture_path(case), "w") as recorded:
            json.dump({family: None if text is None else json.loads(text) for family, text in listed.items()},
                      recorded, indent=1, sort_keys=True)
            recorded.write("\n")
    state = BACKEND.parse(listed)
    assert state.rules == canonical_order(rules)
    assert state.facts == {"tables": families_of(rules), "unrecognized": []}


FOREIGN_TABLE = "\n".join([
    "table ip kube-proxy {",
    "    chain nat-prerouting {",
    "        type nat hook prerouting priority dstnat; policy accept;",
    '        ip daddr 10.96.0.1 tcp dport 443 dnat to 192.0.2.10:6443 comment "kubernetes"',
    "    }",
    "}",
    "",
])


def test_foreign_table_survives_replace_and_removal():
    rules = case_rules("kube_services_ipv4") + case_rules("kube_services_ipv6")
    owned = HostState(rules, {"tables": families_of(rules)})
    foreign_listing = [("foreign", ["nft", "list", "table", "ip", "kube-proxy"])]
    replaced, removed = run_in_netns([BACKEND.render(rules, NOTHING_OWNED), BACKEND.render([], owned)],
                                     setup=FOREIGN_TABLE, extra_listings=foreign_listing)
    assert BACKEND.parse(replaced).rules == canonical_order(rules)
    assert removed == {"ipv4": None, "ipv6": None, "foreign": replaced["foreign"]}
    assert 'ip daddr 10.96.0.1 tcp dport 443 dnat to 192.0.2.10:6443 comment "kubernetes"' in removed["foreign"]


@pytest.mark.parametrize("family,service_count", [("ipv4", 20), ("ipv4", 400), ("ipv6", 400)])
def test_base_chain_rules_do_not_grow_with_services(family, service_count):
    def service(index):
        network = ipaddress.ip_network("10.96.0.0/16" if family == "ipv4" else "fd00:96::/112")
        return make_rule(name="svc-%d" % index, type="dnat", chain="prerouting", family=family, protocol="tcp",
                         destination=(ipaddress.ip_network(network[index + 1]),), destination_ports=(PortRange(80, 80),),
                         to_destination=tuple(Endpoint(network[0] + 100000 + 3 * index + n, 8080) for n in range(3)))

    def nodeport(index):
        return make_rule(name="np-%d" % index, type="dnat", chain="prerouting", family=family, protocol="tcp",
                         destination_type="local", destination_ports=(PortRange(30000 + index, 30000 + index),),
                         to_destination=(Endpoint(service(index).to_destination[0].address, 8080),))

    rules = [service(index) for index in range(service_count)] + [nodeport(index) for index in range(service_count)]
    listed, = run_in_netns([BACKEND.render(rules, NOTHING_OWNED)])
    assert base_chain_rule_count(listed[family]) == 2
    assert map_element_count(listed[family]) == 2 * service_count
    assert BACKEND.parse(listed).rules == rules


# ---------------------------------------------------------------------------
# Live property: generated rulesets survive render -> nft -> parse, then a replace
# ---------------------------------------------------------------------------

_NAME_START = string.ascii_letters + string.digits
names = st.builds(lambda first, rest: first + rest, st.sampled_from(_NAME_START), st.text(_NAME_START + "._:/-", max_size=30))
# Few distinct hosts and ports, so that generated services often repeat a map key.
_SERVICE_PORTS = st.sampled_from([53, 80, 443])


def addresses(family):
    if family == "ipv4":
        return st.integers(0x0a000000, 0x0a0000ff).map(ipaddress.IPv4Address)
    return st.integers(0, 0xff).map(lambda low: ipaddress.IPv6Address(0xfd00 << 112 | low))


def networks(family):
    bits = 32 if family == "ipv4" else 128
    network = st.builds(lambda address, length: ipaddress.ip_network((address, length), strict=False),
                        addresses(family), st.integers(bits - 10, bits))
    return st.lists(network, max_size=3).map(normalize_networks)


marks = st.builds(lambda value, mask: Mark(value & mask, mask), st.integers(0, 0xffffffff), st.integers(1, 0xffffffff))
port_ranges = st.builds(lambda first, length: PortRange(first, min(first + length, 65535)),
                        st.integers(1, 65535), st.sampled_from([0, 0, 1, 10, 1000]))


@st.composite
def nat_rules(draw, name):
    """A valid, normalized NatRule; a third of them in each map-key shape (or none)."""
    family = draw(st.sampled_from(FAMILIES))
    rule_type = draw(st.sampled_from(RULE_TYPES))
    chain = draw(st.sampled_from(CHAINS_BY_TYPE[rule_type]))
    shape = draw(st.sampled_from(["ordinary", "destination", "local"]))
    fields = dict(name=name, type=rule_type, chain=chain, family=family)
    fields["source"] = draw(networks(family))
    fields["source_negate"] = bool(fields["source"]) and draw(st.booleans())
    if shape == "ordinary":
        fields["protocol"] = draw(st.none() | st.sampled_from(PROTOCOLS))
        if fields["protocol"]:
            fields["destination_ports"] = normalize_port_ranges(draw(st.lists(port_ranges, max_size=3)))
        fields["destination"] = draw(networks(family))
        fields["destination_negate"] = bool(fields["destination"]) and draw(st.booleans())
        fields["destination_type"] = draw(st.sampled_from([None, "local"]))
        fields["destination_type_negate"] = bool(fields["destination_type"]) and draw(st.booleans())
    else:
        port = draw(_SERVICE_PORTS)
        fields.update(protocol=draw(st.sampled_from(PROTOCOLS)), destination_ports=(PortRange(port, port),))
        if shape == "destination":
            fields["destination"] = (ipaddress.ip_network(draw(addresses(family))),)
        else:
            fields["destination_type"] = "local"
    if chain in IN_INTERFACE_CHAINS:
        fields["in_interface"] = draw(st.sampled_from([None, None, "eth0", "veth.1-a"]))
    if chain in OUT_INTERFACE_CHAINS:
        fields["out_interface"] = draw(st.sampled_from([None, None, "eth1", "br_0"]))
    fields["mark"] = draw(st.none() | marks)
    fields["mark_negate"] = fields["mark"] is not None and draw(st.booleans())
    # nft cannot OR conntrack states with NAT status bits in one rule (render refuses it).
    state_choices = draw(st.sampled_from([["new", "established", "related", "invalid"], ["dnat", "snat"]]))
    fields["ct_state"] = normalize_ct_states(draw(st.lists(st.sampled_from(state_choices), max_size=3)))
    if rule_type == "dnat":
        with_ports = fields.get("protocol") is not None and draw(st.booleans())
        endpoint_addresses = draw(st.lists(addresses(family), min_size=1, max_size=3, unique=True))
        fields["to_destination"] = tuple(Endpoint(address, draw(st.integers(1, 65535)) if with_ports else None)
                                         for address in endpoint_addresses)
    if rule_type == "snat":
        fields["to_source"] = tuple(sorted(draw(st.lists(addresses(family), min_size=2, max_size=2))))
    if rule_type in ("snat", "masquerade"):
        fields["to_ports"] = draw(port_ranges) if fields.get("protocol") and draw(st.booleans()) else None
        fields["random_fully"] = draw(st.booleans())
    if rule_type == "mark":
        fields["set_mark"] = draw(marks)
    return make_rule(**fields)


@st.composite
def rulesets(draw):
    rule_names = draw(st.lists(names, max_size=12, unique=True))
    return [draw(nat_rules(name)) for name in rule_names]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=rulesets(), second=rulesets())
def test_round_trip_generated_rulesets(first, second):
    for rule in first + second:
        # The generator makes only rules the model itself accepts.
        assert rule_from_params(rule_to_params(rule), 0) == rule
    first_owned = HostState(first, {"tables": families_of(first)})
    after_first, after_second = run_in_netns([BACKEND.render(first, NOTHING_OWNED), BACKEND.render(second, first_owned)])
    assert BACKEND.parse(after_first) == HostState(canonical_order(first), {"tables": families_of(first), "unrecognized": []})
    assert BACKEND.parse(after_second) == HostState(canonical_order(second), {"tables": families_of(second), "unrecognized": []})
