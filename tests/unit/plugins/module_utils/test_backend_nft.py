# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nft backend: compiling, rendering (full and delta), parsing recorded listings, and round trips through the real nft.

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
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState, content
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import (
    APPLY_ARGV, CHECK_ARGV, LIST_CHAINS_ARGV, NftBackend, list_table_argv, owned_tables,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.compile import normalize, plan_with_replaced, skeleton, table_plan
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS_BY_TYPE, FAMILIES, IN_INTERFACE_CHAINS, OUT_INTERFACE_CHAINS, PROTOCOLS, RULE_TYPES, Endpoint, Mark, PortRange,
    make_rule, normalize_ct_states, normalize_networks, normalize_port_ranges,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model.dicts import rule_to_params
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import rule_from_params, rules_from_config
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import canonical_order
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RunRecord

from support import Netns

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "nft")
with open(os.path.join(FIXTURES, "cases.json")) as cases_file:
    CASES = json.load(cases_file)
RECORD = os.environ.get("NODENET_RECORD_NFT_FIXTURES") == "1"
BACKEND = NftBackend()
NOTHING_OWNED = HostState([], {"tables": set()})


def entries_of(rules):
    """Entries of ``rules`` in the order the engine renders them (canonical, normalized)."""
    return normalize(canonical_order([BACKEND.entry(rule) for rule in rules]))


def families_of(rules):
    return set(rule.family for rule in rules)


def case_rules(case):
    return rules_from_config(CASES[case])


def fixture_path(case):
    return os.path.join(FIXTURES, "%s.json" % case)


def render(rules, current=NOTHING_OWNED, token="t0"):
    return BACKEND.render(entries_of(rules), current, token)


def render_text(rules):
    transactions = render(rules)
    return transactions[0].text if transactions else ""


def contents(entries):
    return [content(entry) for entry in entries]


def run_in_netns(steps, setup=""):
    """Run ``steps`` (each a callable(run_command)) in one fresh network namespace; returns their results.

    ``run_command(argv, data=None)`` runs a command inside the namespace, which a ``sleep`` started
    by ``unshare --net`` holds open and which disappears with it. ``setup`` is an nft script applied first.
    """
    with Netns() as namespace:
        if setup:
            assert namespace.run(["nft", "-f", "-"], setup)[0] == 0
        return [step(namespace.run) for step in steps]


def apply(transactions):
    def step(run_command):
        for transaction in transactions:
            for argv in (transaction.check_argv, transaction.apply_argv):
                rc, dummy, err = run_command(argv, transaction.text)
                assert rc == 0, (err, transaction.text[:3000])
    return step


def listed(run_command):
    """{family: ``nft -j list table`` output} of the owned tables that exist."""
    rc, out, err = run_command(LIST_CHAINS_ARGV)
    assert rc == 0, err
    return dict((family, run_command(list_table_argv(family))[1]) for family in owned_tables(out))


def read(run_command):
    return BACKEND.read(run_command)


def base_chain_rule_count(listing):
    """Rules in the base chains of one ``nft -j list table`` output: what every packet walks through."""
    objects = json.loads(listing)["nftables"]
    base_chains = set(item["chain"]["name"] for item in objects if "hook" in item.get("chain", {}))
    return sum(1 for item in objects if item.get("rule", {}).get("chain") in base_chains)


def canonical_listing(listings):
    """The objects of listings without handles, map elements sorted: what two ways of writing a table must agree on."""
    canonical = {}
    for family, listing in listings.items():
        objects = []
        for item in json.loads(listing)["nftables"]:
            (kind, value), = item.items()
            value = dict((key, field) for key, field in value.items() if key != "handle")
            if "elem" in value:
                value["elem"] = sorted(value["elem"], key=json.dumps)
            objects.append(json.dumps({kind: value}, sort_keys=True))
        canonical[family] = sorted(objects)
    return canonical


def object_counts(listing):
    objects = json.loads(listing)["nftables"]
    return dict(chains=sum(1 for item in objects if "chain" in item), maps=sum(1 for item in objects if "map" in item),
                elements=sum(len(item["map"].get("elem", [])) for item in objects if "map" in item))


# ---------------------------------------------------------------------------
# Offline: compile and render
# ---------------------------------------------------------------------------

def test_render_puts_keyed_rules_in_shared_maps():
    text = render_text(case_rules("kube_services_ipv4"))
    prerouting = text.split("\tchain prerouting {\n")[1].split("\t}\n")[0].splitlines()
    assert prerouting == [
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tip daddr . meta l4proto . th dport vmap @prerouting_daddr_1",
        "\t\tfib daddr type local meta l4proto . th dport vmap @prerouting_local_2",
        '\t\tip saddr != 10.244.0.0/16 fib daddr type local counter meta mark set meta mark & 0xffffbfff | 0x00004000 comment "mark-external"',
    ]
    assert "\tmap prerouting_daddr_1 {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict; counter\n" in text
    assert '\t\t\t10.96.0.10 . tcp . 80 comment "svc/default/web:http" : jump dnat_' in text
    # Three endpoints: the run's data map keyed by the same key and numgen.
    assert "\tmap prerouting_daddr_1_dnat3 {\n\t\ttypeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport\n" in text
    for index, endpoint in enumerate(["10.244.1.2", "10.244.2.3", "10.244.3.4"]):
        assert "\t\t\t10.96.0.10 . tcp . 80 . %d : %s . 8080,\n" % (index, endpoint) in text
    # The rest of a rule that the key does not cover stays in its chain; one endpoint needs no numgen.
    assert ("\t\tip saddr 10.244.0.0/16 meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport map @prerouting_daddr_1_dnat1\n"
            in text)
    # A lone keyed rule is a map element too.
    assert "\t\tip daddr . meta l4proto . th dport vmap @output_daddr_3\n" in text
    assert "\tchain state_t0 {\n\t}\n" in text


def test_chains_and_maps_do_not_grow_with_services():
    def services(count):
        return [make_rule(name="svc-%d" % index, type="dnat", chain="prerouting", family="ipv4", protocol="tcp",
                          destination_type="local", destination_ports=(PortRange(30000 + index, 30000 + index),),
                          to_destination=tuple(Endpoint(ipaddress.ip_address("10.244.%d.%d" % (n, index % 250)), 8080) for n in range(2)))
                for index in range(count)]

    small, large = render_text(services(3)), render_text(services(300))
    assert small.count("\tchain ") == large.count("\tchain ") == 3     # shared dnat chain, marker, prerouting
    assert small.count("\tmap ") == large.count("\tmap ") == 2         # verdicts, endpoints


def test_render_both_families_in_one_transaction_and_removes_a_table_left_empty():
    rules = case_rules("kube_services_ipv4") + case_rules("kube_services_ipv6")
    transaction, = render(rules)
    assert transaction.families == ("ipv4", "ipv6")
    assert (transaction.check_argv, transaction.apply_argv) == (CHECK_ARGV, APPLY_ARGV)
    assert transaction.text.startswith("add table ip nodenet_nat\ndelete table ip nodenet_nat\ntable ip nodenet_nat {\n")
    assert "\nadd table ip6 nodenet_nat\ndelete table ip6 nodenet_nat\ntable ip6 nodenet_nat {\n" in transaction.text
    both_owned = HostState([], {"tables": {"ipv4", "ipv6"}})
    transaction, = render(case_rules("kube_services_ipv4"), both_owned)
    assert transaction.families == ("ipv4", "ipv6")
    assert transaction.text.endswith("}\nadd table ip6 nodenet_nat\ndelete table ip6 nodenet_nat\n")
    assert render([], NOTHING_OWNED) == []


def test_render_without_token_writes_no_marker():
    transaction, = BACKEND.render(entries_of(case_rules("kube_services_ipv4")), NOTHING_OWNED, None)
    assert "state_" not in transaction.text


def test_compile_refuses_ct_states_with_nat_status_in_one_rule():
    rule = rule_from_params(dict(name="mixed", type="masquerade", ct_state=["new", "dnat"]), 0)
    with pytest.raises(ValueError) as caught:
        BACKEND.compile(rule)
    assert "rule mixed: ct_state: ['dnat', 'new'] mixes conntrack states (new) with NAT status (dnat)" in str(caught.value)


def test_render_refuses_duplicate_names():
    rule = rule_from_params(dict(name="twice", type="masquerade"), 0)
    with pytest.raises(ValueError, match="repeated: twice"):
        render([rule, rule._replace(family="ipv6")])


@pytest.mark.parametrize("name", ['bad"name', "bad\\name"])
def test_compile_refuses_unquotable_names(name):
    for rule in (make_rule(name=name, type="return", chain="postrouting", family="ipv4"),
                 rule_from_params(dict(name="x", type="dnat", destination_type="local", protocol="tcp", destination_ports=[80],
                                       to_destination=["10.0.0.1"]), 0)._replace(name=name)):
        with pytest.raises(ValueError, match="cannot be written as a quoted nft string"):
            BACKEND.compile(rule)


def _keyed(name, port, endpoint):
    return rule_from_params(dict(name=name, type="dnat", destination_type="local", protocol="tcp", destination_ports=[port],
                                 to_destination=[endpoint]), 0)


def test_repeated_keys_go_to_later_maps_and_keep_their_order():
    rules = [_keyed("b", 80, "10.0.0.1"), _keyed("a", 81, "10.0.0.2"), _keyed("d", 80, "10.0.0.3"),
             _keyed("c", 82, "10.0.0.4"), _keyed("e", 81, "10.0.0.5")]
    assert [entry.name for entry in entries_of(rules)] == ["a", "b", "c", "d", "e"]
    text = render_text(rules)
    assert "vmap @prerouting_local_1" in text and "vmap @prerouting_local_2" in text
    first_map = text.split("map prerouting_local_1 {")[1].split("\t}\n")[0]
    assert 'comment "b"' in first_map and 'comment "d"' not in first_map


def _orders_keeping_same_key_order(draw_priorities, keys):
    """Indices 0..n-1 in a random order in which indices with the same key keep their relative order."""
    order = sorted(range(len(keys)), key=lambda index: (draw_priorities[index], index))
    position = dict((index, slot) for slot, index in enumerate(order))
    for key in set(keys):
        members = [index for index in range(len(keys)) if keys[index] == key]
        for slot, index in zip(sorted(position[member] for member in members), members):
            position[index] = slot
    return sorted(range(len(keys)), key=lambda index: position[index])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 6), st.floats(0, 1)), max_size=14))
def test_normalize_is_stable_and_ignores_the_order_of_rules_with_distinct_keys(drawn):
    rules = [_keyed("r%02d" % index, 80 + port, "10.0.0.%d" % host) for index, (port, host, dummy) in enumerate(drawn)]
    normalized = entries_of(rules)
    assert normalize(normalized) == normalized
    order = _orders_keeping_same_key_order([priority for dummy, dummy_host, priority in drawn],
                                           [rule.destination_ports for rule in rules])
    assert contents(entries_of([rules[index] for index in order])) == contents(normalized)


# ---------------------------------------------------------------------------
# Offline: reading recorded listings and the chains listing
# ---------------------------------------------------------------------------

def recorded_outputs(case):
    with open(fixture_path(case)) as recorded:
        return dict((family, json.dumps(listing)) for family, listing in json.load(recorded).items() if listing is not None)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_recorded_listing(case):
    rules = case_rules(case)
    state = BACKEND.parse(recorded_outputs(case))
    assert contents(state.entries) == contents(entries_of(rules))
    assert state.facts == {"tables": families_of(rules), "unrecognized": []}


def test_parse_missing_tables():
    assert BACKEND.parse({"ipv4": None, "ipv6": ""}) == HostState([], {"tables": set(), "unrecognized": []})


def test_parse_reports_objects_it_did_not_write():
    listing = json.loads(recorded_outputs("matches_and_statements")["ipv4"])
    counter = {"counter": {"packets": 0, "bytes": 0}}
    hand_edits = [dict(expr=[{"log": None}, counter, {"masquerade": None}], comment="logged"),
                  dict(expr=[counter, {"masquerade": None}]),
                  dict(expr=[counter, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"^": [{"meta": {"key": "mark"}}, 1]}}}],
                       comment="toggle"),
                  dict(expr=[{"masquerade": None}], comment="uncounted")]
    for handle, rule in enumerate(hand_edits, start=900):
        listing["nftables"].append({"rule": dict(rule, family="ip", table="nodenet_nat", chain="postrouting", handle=handle)})
    state = BACKEND.parse({"ipv4": json.dumps(listing)})
    expected = [rule for rule in case_rules("matches_and_statements") if rule.family == "ipv4"]
    assert contents(state.entries) == contents(entries_of(expected))
    assert state.facts["unrecognized"] == [
        "ip nodenet_nat chain postrouting handle 900: statement log before the last",
        "ip nodenet_nat chain postrouting handle 901: rule without a name comment",
        "ip nodenet_nat chain postrouting handle 902: meta mark set that toggles bits",
        "ip nodenet_nat chain postrouting handle 903: rule without a counter",
    ]
    listing = json.loads(recorded_outputs("kube_services_ipv4")["ipv4"])
    listing["nftables"].append({"chain": {"family": "ip", "table": "nodenet_nat", "name": "hand-made", "handle": 999}})
    assert BACKEND.parse({"ipv4": json.dumps(listing)}).facts["unrecognized"] == [
        "ip nodenet_nat hand-made: object this collection does not write"]


def test_counters_per_rule_and_per_map_element():
    listing = json.loads(recorded_outputs("kube_services_ipv4")["ipv4"])
    for item in listing["nftables"]:
        value = item.get("map") or item.get("rule") or {}
        for element in value.get("elem", []) if "map" in item else []:
            if "elem" in element[0]:
                element[0]["elem"]["counter"] = {"packets": 3, "bytes": 180}
        for expression in value.get("expr", []) if "rule" in item else []:
            if "counter" in expression:
                expression["counter"] = {"packets": 7, "bytes": 420}

    def run_command(argv, data=None):
        if argv == LIST_CHAINS_ARGV:
            return 0, json.dumps({"nftables": [{"chain": {"family": "ip", "table": "nodenet_nat", "name": "state_x"}}]}), ""
        return 0, json.dumps(listing), ""

    counters = BACKEND.read(run_command).facts["counters"]
    assert counters["svc/default/web:http"] == [3, 180] and counters["mark-external"] == [7, 420]
    assert set(counters) == set(rule.name for rule in case_rules("kube_services_ipv4"))


CHAINS_LISTING = json.dumps({"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"chain": {"family": "ip", "table": "nodenet_nat", "name": "prerouting", "handle": 1, "hook": "prerouting"}},
    {"chain": {"family": "ip", "table": "nodenet_nat", "name": "state_abc", "handle": 2}},
    {"chain": {"family": "ip6", "table": "nodenet_nat", "name": "state_abc", "handle": 3}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "state_zzz", "handle": 4}},
    {"chain": {"family": "inet", "table": "nodenet_nat", "name": "state_zzz", "handle": 5}},
]})


def test_owned_tables_and_their_markers_from_the_chains_listing():
    assert owned_tables(CHAINS_LISTING) == {"ipv4": ["abc"], "ipv6": ["abc"]}


def test_the_record_is_taken_when_the_tables_carry_its_stamp_listing_chains_only():
    rules = case_rules("kube_services_ipv4") + case_rules("kube_services_ipv6")
    entries = entries_of(rules)
    calls = []

    def run_command(argv, data=None):
        calls.append(argv)
        return (0, CHAINS_LISTING, "") if argv == LIST_CHAINS_ARGV else (1, "", "not expected")

    state = BACKEND.recorded(run_command, RunRecord("abc", entries))
    assert state.entries == entries and state.facts["from_record"] and calls == [LIST_CHAINS_ARGV]
    assert BACKEND.recorded(run_command, RunRecord("other", entries)) is None
    assert BACKEND.recorded(run_command, RunRecord("abc", [entry for entry in entries if entry.family == "ipv4"])) is None
    assert calls == [LIST_CHAINS_ARGV] * 3


# ---------------------------------------------------------------------------
# Live: real nft in a throwaway network namespace
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_of_case(case):
    rules = case_rules(case)
    dummy, listing = run_in_netns([apply(render(rules)), listed])
    if RECORD:
        with open(fixture_path(case), "w") as recorded:
            json.dump(dict((family, json.loads(listing[family]) if family in listing else None) for family in FAMILIES),
                      recorded, indent=1, sort_keys=True)
            recorded.write("\n")
    state = BACKEND.parse(listing)
    assert contents(state.entries) == contents(entries_of(rules))
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


def test_foreign_table_survives_replace_delta_and_removal():
    rules = case_rules("kube_services_ipv4") + case_rules("kube_services_ipv6")
    moved = tuple(Endpoint(ipaddress.ip_address("10.244.9.%d" % index), 8080) for index in range(3))
    changed = [rule._replace(to_destination=moved) if rule.name == "svc/default/web:http" else rule for rule in rules]

    def foreign(run_command):
        return run_command(["nft", "list", "table", "ip", "kube-proxy"])[1]

    def change_to(new_rules):
        def step(run_command):
            transactions = BACKEND.render(entries_of(new_rules), read(run_command), "t1")
            apply(transactions)(run_command)
            return transactions
        return step

    before, dummy, delta, after_delta, removal, after = run_in_netns(
        [foreign, apply(render(rules)), change_to(changed), read, change_to([]), listed], setup=FOREIGN_TABLE)
    assert "delete table" not in delta[0].text and "add element" in delta[0].text
    assert contents(after_delta.entries) == contents(entries_of(changed))
    assert "delete table ip nodenet_nat" in removal[0].text and after == {}
    assert 'ip daddr 10.96.0.1 tcp dport 443 dnat to 192.0.2.10:6443 comment "kubernetes"' in before


@pytest.mark.parametrize("family,service_count", [("ipv4", 20), ("ipv4", 400), ("ipv6", 400)])
def test_what_a_packet_meets_does_not_grow_with_services(family, service_count):
    network = ipaddress.ip_network("10.96.0.0/16" if family == "ipv4" else "fd00:96::/112")

    def endpoints(index):
        return tuple(Endpoint(network[0] + 100000 + 3 * index + n, 8080) for n in range(3))

    rules = [make_rule(name="svc-%d" % index, type="dnat", chain="prerouting", family=family, protocol="tcp",
                       destination=(ipaddress.ip_network(network[index + 1]),), destination_ports=(PortRange(80, 80),),
                       to_destination=endpoints(index)) for index in range(service_count)]
    rules += [make_rule(name="np-%d" % index, type="dnat", chain="prerouting", family=family, protocol="tcp",
                        destination_type="local", destination_ports=(PortRange(30000 + index, 30000 + index),),
                        to_destination=endpoints(index)[:1]) for index in range(service_count)]
    dummy, listing = run_in_netns([apply(render(rules)), listed])
    assert base_chain_rule_count(listing[family]) == 2
    assert object_counts(listing[family]) == dict(chains=4, maps=4, elements=2 * service_count + 4 * service_count)
    assert contents(BACKEND.parse(listing).entries) == contents(entries_of(rules))


# ---------------------------------------------------------------------------
# Live property: generated rulesets survive render -> nft -> parse, then a change (delta or full)
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


def hosts(family):
    return st.lists(addresses(family).map(ipaddress.ip_network), min_size=1, max_size=3).map(normalize_networks)


marks = st.builds(lambda value, mask: Mark(value & mask, mask), st.integers(0, 0xffffffff), st.integers(1, 0xffffffff))
port_ranges = st.builds(lambda first, length: PortRange(first, min(first + length, 65535)),
                        st.integers(1, 65535), st.sampled_from([0, 0, 1, 10, 1000]))


@st.composite
def nat_rules(draw, name):
    """A valid, normalized NatRule; most of them in a keyed shape (with or without source hosts)."""
    family = draw(st.sampled_from(FAMILIES))
    rule_type = draw(st.sampled_from(RULE_TYPES))
    chain = draw(st.sampled_from(CHAINS_BY_TYPE[rule_type]))
    shape = draw(st.sampled_from(["ordinary", "destination", "local", "destination", "local"]))
    fields = dict(name=name, type=rule_type, chain=chain, family=family)
    if draw(st.booleans()):
        fields["source"] = draw(hosts(family))
    else:
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
            fields["destination"] = draw(hosts(family))
        else:
            fields["destination_type"] = "local"
            # A local rule keeps a destination match in its rest (the NodePort rules of the output chain).
            fields["destination"] = draw(st.sampled_from([(), (), normalize_networks([ipaddress.ip_network("127.0.0.0/8" if family == "ipv4"
                                                                                                           else "::1/128")])]))
            fields["destination_negate"] = bool(fields["destination"])
    if chain in IN_INTERFACE_CHAINS:
        fields["in_interface"] = draw(st.sampled_from([None, None, "eth0", "veth.1-a"]))
    if chain in OUT_INTERFACE_CHAINS:
        fields["out_interface"] = draw(st.sampled_from([None, None, "eth1", "br_0"]))
    fields["mark"] = draw(st.none() | marks)
    fields["mark_negate"] = fields["mark"] is not None and draw(st.booleans())
    # nft cannot OR conntrack states with NAT status bits in one rule (compile refuses it).
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


@st.composite
def changed_rulesets(draw):
    """A ruleset and a second one: often a few rules edited, added or removed (a delta), sometimes another one."""
    first = draw(rulesets())
    if draw(st.booleans()):
        return first, draw(rulesets())
    second = [draw(nat_rules(rule.name)) if draw(st.integers(0, 3)) == 0 else rule for rule in first]
    second = [rule for rule in second if draw(st.integers(0, 5))]
    extra = [draw(nat_rules(name)) for name in draw(st.lists(names, max_size=3, unique=True))
             if name not in set(rule.name for rule in second)]
    return first, second + extra


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changed_rulesets())
def test_round_trip_and_change_of_generated_rulesets(rulesets_pair):
    first, second = rulesets_pair
    for rule in first + second:
        # The generator makes only rules the model itself accepts.
        assert rule_from_params(rule_to_params(rule), 0) == rule

    def change(run_command):
        host = read(run_command)
        transactions = BACKEND.render(entries_of(second), host, "t2")
        apply(transactions)(run_command)
        return transactions

    dummy, after_first, transactions, after_second, chains_after = run_in_netns(
        [apply(render(first)), read, change, read, lambda run_command: owned_tables(run_command(LIST_CHAINS_ARGV)[1])])
    assert contents(after_first.entries) == contents(entries_of(first))
    assert after_first.facts["stamp"] == ("t0" if first else None) and not after_first.facts["unrecognized"]
    assert contents(after_second.entries) == contents(entries_of(second))
    assert not after_second.facts["unrecognized"]
    assert chains_after == dict((family, ["t2"]) for family in families_of(second))


@st.composite
def edited_in_place(draw):
    """A ruleset and the same one with some rules edited without moving (other endpoints or mark), or redrawn."""
    first = draw(rulesets())
    second = []
    for rule in first:
        edit = draw(st.sampled_from(["keep", "keep", "endpoints", "mark", "redraw"]))
        if edit == "endpoints" and rule.type == "dnat":
            with_ports = rule.protocol is not None and draw(st.booleans())
            endpoints = draw(st.lists(addresses(rule.family), min_size=1, max_size=3, unique=True))
            rule = rule._replace(to_destination=tuple(Endpoint(address, 8080 if with_ports else None) for address in endpoints))
        elif edit == "mark":
            rule = rule._replace(mark=draw(st.none() | marks), mark_negate=False)
        elif edit == "redraw":
            rule = draw(nat_rules(rule.name))
        second.append(rule)
    return first, second


def _plan_view(plan):
    return skeleton(plan), dict((name, (content(placement.entry),) + tuple(placement[1:])) for name, placement in plan.placements.items())


@settings(max_examples=200, deadline=None)
@given(edited_in_place())
def test_a_plan_with_replaced_entries_is_the_plan_built_from_them(rulesets_pair):
    first, second = rulesets_pair
    current = entries_of(first)
    known = dict((entry.name, entry) for entry in current)
    # The engine keeps an unchanged entry as the very object it recorded.
    desired = normalize([known[entry.name] if content(entry) == content(known[entry.name]) else entry for entry in entries_of(second)])
    for family in FAMILIES:
        family_current = [entry for entry in current if entry.family == family]
        family_desired = [entry for entry in desired if entry.family == family]
        if not family_desired or [entry.name for entry in family_current] != [entry.name for entry in family_desired]:
            continue
        derived = plan_with_replaced(table_plan(family, family_desired),
                                     [(old, new) for old, new in zip(family_current, family_desired) if old is not new])
        if derived is not None:
            assert _plan_view(derived) == _plan_view(table_plan(family, family_current))


def test_endpoints_edited_in_place_derive_the_current_plan_with_its_own_data_maps():
    current = entries_of([_keyed("svc-%d" % index, 30000 + index, "10.244.1.%d:80" % index) for index in range(8)])
    edited = rule_from_params(dict(name="svc-3", type="dnat", destination_type="local", protocol="tcp", destination_ports=[30003],
                                   to_destination=["10.244.2.3:80", "10.244.3.3:80"]), 0)
    desired = [BACKEND.entry(edited) if entry.name == "svc-3" else entry for entry in current]
    desired_plan = table_plan("ipv4", desired)
    derived = plan_with_replaced(desired_plan, [(current[3], desired[3])])
    assert _plan_view(derived) == _plan_view(table_plan("ipv4", current))
    # Two endpoints need a data map of their own, which the current table does not have: no element delta.
    assert skeleton(derived) != skeleton(desired_plan)
    # A replaced entry that moves to another key is no replacement in place.
    moved = BACKEND.entry(_keyed("svc-3", 31003, "10.244.1.3:80"))
    assert plan_with_replaced(table_plan("ipv4", current[:3] + [moved] + current[4:]), [(current[3], moved)]) is None


def test_delta_touches_elements_only_and_ends_like_a_full_replace():
    def services(generation):
        return [_keyed("svc-%d" % index, 30000 + index, "10.244.%d.%d:8080" % (generation, index)) for index in range(50)]

    first, second = services(1), services(1)
    second[7] = _keyed("svc-7", 30007, "10.244.2.7:8080")
    second = second[:40] + [_keyed("svc-new", 31000, "10.244.3.3:8080")]
    random.Random(7).shuffle(second)

    def delta(run_command):
        transactions = BACKEND.render(entries_of(second), read(run_command), "t1")
        apply(transactions)(run_command)
        return transactions

    dummy, transactions, via_delta = run_in_netns([apply(render(first)), delta, listed])
    dummy, via_replace = run_in_netns([apply(render(second, token="t1")), listed])
    text = transactions[0].text
    assert "table" not in text.replace("ip nodenet_nat", "") and "add element" in text and "delete element" in text
    assert canonical_listing(via_delta) == canonical_listing(via_replace)


def test_counters_count_real_packets_per_rule_and_per_element():
    """Connections from the namespace itself walk the output chain: the keyed rule (a map element) and
    the ordinary rule count their own packets."""
    keyed = [rule_from_params(dict(name="svc-%d" % port, type="dnat", chain="output", destination=["127.0.0.2"], protocol="tcp",
                                   destination_ports=[port], to_destination=["127.0.0.3:8080"]), 0) for port in (80, 81)]
    ordinary = rule_from_params(dict(name="any-udp", type="dnat", chain="output", destination=["127.0.0.0/8"], protocol="udp",
                                     to_destination=["127.0.0.3"]), 0)
    connect = "import socket; s = socket.socket(); s.settimeout(1)\ntry: s.connect(('127.0.0.2', 80))\nexcept OSError: pass\n" \
              "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.9', 53))"

    def traffic(run_command):
        assert run_command(["ip", "link", "set", "lo", "up"])[0] == 0
        assert run_command(["python3", "-c", connect])[0] == 0

    dummy, dummy, state = run_in_netns([apply(render(keyed + [ordinary])), traffic, BACKEND.read])
    counters = state.facts["counters"]
    assert counters["svc-80"][0] >= 1 and counters["svc-81"] == [0, 0] and counters["any-udp"][0] == 1
