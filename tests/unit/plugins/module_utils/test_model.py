# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation, normalization and the params round trip of the rule model."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, CHAINS_BY_TYPE, CT_STATES, FAMILIES, IN_INTERFACE_CHAINS, OUT_INTERFACE_CHAINS, PROTOCOLS, RULE_TYPES, Endpoint,
    Mark, PortRange, RuleError, make_rule,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model.dicts import rule_to_params
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import RULE_OPTIONS, rule_from_params, rules_from_config


def _error(params, index=2):
    with pytest.raises(RuleError) as caught:
        rule_from_params(params, index)
    return str(caught.value)


WEB = dict(name="web", type="masquerade")

INVALID = [
    (dict(WEB, destination=["10.0.0.300/24"]), "config[2] (name=web): destination: '10.0.0.300/24' is not a valid network"),
    (dict(WEB, source=["10.0.0.1/24"]), "source: '10.0.0.1/24' has host bits set (the network is 10.0.0.0/24)"),
    (dict(WEB, source=["10.0.0.0/8", "fd00::/8"]), "source: 'fd00::/8' mixes IPv4 and IPv6 with '10.0.0.0/8'"),
    (dict(WEB, source=["10.0.0.0/8"], destination=["fd00::/8"]), "destination: 'fd00::/8' is IPv6 but source: '10.0.0.0/8' is IPv4"),
    (dict(WEB, family="ipv6", source=["10.0.0.0/8"]), "family: 'ipv6' does not match source: '10.0.0.0/8'"),
    (dict(WEB, protocol="tcp", destination_ports=[0]), "destination_ports: 0 has a port outside 1-65535"),
    (dict(WEB, protocol="tcp", destination_ports=["80-70000"]), "destination_ports: '80-70000' has a port outside 1-65535"),
    (dict(WEB, protocol="tcp", destination_ports=["90-80"]), "destination_ports: '90-80' is a reversed port range"),
    (dict(WEB, protocol="tcp", destination_ports=["http"]), "destination_ports: 'http' is not a port or a port range"),
    (dict(WEB, protocol="tcp", destination_ports=[True]), "destination_ports: True is not a port or a port range"),
    (dict(WEB, destination_ports=[80]), "destination_ports: [80] needs protocol (tcp, udp or sctp)"),
    (dict(WEB, to_ports="1000-2000"), "to_ports: '1000-2000' needs protocol"),
    (dict(WEB, type="tunnel"), "type: 'tunnel' is not one of masquerade, snat, dnat, mark, return"),
    (dict(name="web"), "config[2] (name=web): type: is required"),
    (dict(WEB, chain="forward"), "chain: 'forward' is not one of prerouting, input, output, postrouting"),
    (dict(WEB, chain="prerouting"), "chain: 'prerouting' is not valid for type masquerade (valid: postrouting)"),
    (dict(name="web", type="dnat", chain="postrouting", to_destination=["10.0.0.1"]), "chain: 'postrouting' is not valid for type dnat"),
    (dict(name="web", type="snat", chain="output", to_source="10.0.0.1"), "chain: 'output' is not valid for type snat"),
    (dict(WEB, to_destination=["10.0.0.1"]), "to_destination: ['10.0.0.1'] is not valid for type masquerade (only for dnat)"),
    (dict(WEB, to_source="10.0.0.1"), "to_source: '10.0.0.1' is not valid for type masquerade (only for snat)"),
    (dict(WEB, set_mark="0x1"), "set_mark: '0x1' is not valid for type masquerade (only for mark)"),
    (dict(name="web", type="dnat", random_fully=True, to_destination=["10.0.0.1"]), "random_fully: True is not valid for type dnat"),
    (dict(name="web", type="snat"), "to_source: is required for type snat"),
    (dict(name="web", type="dnat"), "to_destination: is required for type dnat"),
    (dict(name="web", type="mark"), "set_mark: is required for type mark"),
    (dict(name="web", type="snat", to_source="10.0.0.9-10.0.0.1"), "to_source: '10.0.0.9-10.0.0.1' is not an address range from low to high"),
    (dict(name="web", type="snat", to_source="10.0.0.1-fd00::1"), "to_source: '10.0.0.1-fd00::1' is not an address range"),
    (dict(name="web", type="snat", to_source="host.example"), "to_source: 'host.example' is not a valid IP address"),
    (dict(name="web", type="dnat", protocol="tcp", to_destination=["10.0.0.1:80", "10.0.0.2"]),
     "to_destination: '10.0.0.2' has no port while '10.0.0.1:80' has one"),
    (dict(name="web", type="dnat", protocol="tcp", to_destination=["10.0.0.1", "10.0.0.2:80"]),
     "to_destination: '10.0.0.2:80' has a port while '10.0.0.1' has none"),
    (dict(name="web", type="dnat", to_destination=["10.0.0.1", "10.0.0.1"]), "to_destination: '10.0.0.1' is listed twice"),
    (dict(name="web", type="dnat", to_destination=["10.0.0.1:80"]), "to_destination: ['10.0.0.1:80'] needs protocol"),
    (dict(name="web", type="dnat", protocol="tcp", to_destination=["10.0.0.1:0"]), "to_destination: '10.0.0.1:0' has a port outside 1-65535"),
    (dict(name="web", type="dnat", protocol="tcp", to_destination=["10.0.0.1:web"]), "to_destination: '10.0.0.1:web' is not an address or address:port"),
    (dict(name="web", type="dnat", protocol="tcp", to_destination=["[10.0.0.1]:80"]), "'[10.0.0.1]:80' uses brackets, which are for IPv6"),
    (dict(name="web", type="dnat", to_destination=["10.0.0.1", "fd00::1"]), "to_destination: 'fd00::1' is IPv6 but to_destination: '10.0.0.1' is IPv4"),
    (dict(name="web", type="mark", set_mark="0x4000/0x40"), "set_mark: '0x4000/0x40' has value bits outside the mask"),
    (dict(name="web", type="mark", set_mark="0x100000000"), "set_mark: '0x100000000' is larger than 32 bits"),
    (dict(name="web", type="mark", set_mark="0x1", mark="one"), "mark: 'one' is not a mark 'value' or 'value/mask'"),
    (dict(WEB, source_negate=True), "source_negate: True needs source"),
    (dict(WEB, mark_negate=True), "mark_negate: True needs mark"),
    (dict(WEB, destination_type_negate=True), "destination_type_negate: True needs destination_type"),
    (dict(WEB, destination_type="remote"), "destination_type: 'remote' is not one of local"),
    (dict(WEB, ct_state=["new", "open"]), "ct_state: 'open' is not one of new, established"),
    (dict(WEB, in_interface="eth0"), "in_interface: 'eth0' cannot be matched in chain postrouting (only in prerouting, input)"),
    (dict(name="web", type="dnat", out_interface="eth0", to_destination=["10.0.0.1"]), "out_interface: 'eth0' cannot be matched in chain prerouting"),
    (dict(WEB, out_interface="eth0 ; flush"), "out_interface: 'eth0 ; flush' is not a valid interface name"),
    (dict(WEB, out_interface="a-very-long-interface"), "out_interface: 'a-very-long-interface' is not a valid interface name"),
    (dict(WEB, source_negate="maybe"), "source_negate: 'maybe' is not a boolean"),
    (dict(WEB, name='web" ; drop'), "config[2]: name: 'web\" ; drop' is not a valid rule name"),
    (dict(WEB, name="-web"), "config[2]: name: '-web' is not a valid rule name"),
    (dict(WEB, name="x" * 65), "config[2]: name: '%s' is not a valid rule name" % ("x" * 65)),
    (dict(WEB, name=None), "config[2]: name: is required"),
    # Patterns match whole values: a trailing newline is not a valid name or interface (it would split a script line).
    (dict(WEB, name="web\n"), "config[2]: name: 'web\\n' is not a valid rule name"),
    (dict(WEB, out_interface="eth0\n"), "out_interface: 'eth0\\n' is not a valid interface name"),
    (dict(name="web", type="dnat", in_interface="eth0\n", to_destination=["10.0.0.1"]), "in_interface: 'eth0\\n' is not a valid interface name"),
    (dict(WEB, surprise=1), "config[2] (name=web): surprise: is not a rule option"),
]


@pytest.mark.parametrize("params, message", INVALID)
def test_invalid_rule_is_rejected_naming_rule_field_and_value(params, message):
    assert message in _error(params)


def test_duplicate_names_are_rejected_naming_both_items():
    with pytest.raises(RuleError, match=r"config\[2\] \(name=a\): name: 'a' is already used by config\[0\]"):
        rules_from_config([dict(name="a", type="return"), dict(name="b", type="return"), dict(name="a", type="return")])


def test_every_item_is_validated():
    with pytest.raises(RuleError, match=r"config\[1\] \(name=b\): source"):
        rules_from_config([dict(name="a", type="return"), dict(name="b", type="return", source=["nowhere"])])


EQUAL_SPELLINGS = [
    (dict(WEB, source=["10.0.0.1", "10.0.0.0/31", "192.168.0.0/24", "10.0.0.0/31"]),
     dict(WEB, source=["192.168.0.0/24", "10.0.0.0/31"])),
    (dict(WEB, source=["10.0.0.0/25", "10.0.0.128/25"]), dict(WEB, source=["10.0.0.0/24"])),
    (dict(WEB, destination=["fd00::1"]), dict(WEB, destination=["fd00:0::1/128"], family="ipv6")),
    (dict(WEB, protocol="tcp", destination_ports=[443, "80", "81-90", 85]), dict(WEB, protocol="tcp", destination_ports=["80-90", "443"])),
    (dict(WEB, protocol="tcp", destination_ports=["8080 - 8080"]), dict(WEB, protocol="tcp", destination_ports=[8080])),
    (dict(WEB, ct_state=["new", "established", "new"]), dict(WEB, ct_state=["established", "new"])),
    (dict(WEB, source_negate=False, random_fully=None), dict(WEB, chain="postrouting", family="ipv4")),
    (dict(name="m", type="mark", set_mark="16384", mark="0x4000"), dict(name="m", type="mark", set_mark="0x4000/0xffffffff", mark="16384/4294967295")),
    (dict(name="s", type="snat", to_source="10.0.0.1-10.0.0.1"), dict(name="s", type="snat", to_source="10.0.0.1")),
    (dict(name="s", type="snat", protocol="tcp", to_source="10.0.0.1", to_ports=1000),
     dict(name="s", type="snat", protocol="tcp", to_source="10.0.0.1", to_ports="1000")),
    (dict(name="d", type="dnat", protocol="tcp", to_destination=["[fd00:0::1]:80"]),
     dict(name="d", type="dnat", protocol="tcp", to_destination=["[fd00::1]:80"])),
]


@pytest.mark.parametrize("first, second", EQUAL_SPELLINGS)
def test_two_spellings_of_one_rule_are_equal(first, second):
    assert rule_from_params(first, 0) == rule_from_params(second, 0)


def test_normalized_fields_have_the_model_types():
    rule = rule_from_params(dict(name="d", type="dnat", protocol="tcp", source=["10.1.0.0/16"], destination_ports=["30000-30002", 80],
                                 to_destination=["10.0.0.2:8080", "10.0.0.1:8080"], mark="0x4000/0x4000", mark_negate=True), 0)
    assert rule == make_rule(
        name="d", type="dnat", chain="prerouting", family="ipv4", protocol="tcp",
        source=(ipaddress.ip_network("10.1.0.0/16"),), destination_ports=(PortRange(80, 80), PortRange(30000, 30002)),
        to_destination=(Endpoint(ipaddress.ip_address("10.0.0.2"), 8080), Endpoint(ipaddress.ip_address("10.0.0.1"), 8080)),
        mark=Mark(0x4000, 0x4000), mark_negate=True)


@pytest.mark.parametrize("rule_type, chain", [("masquerade", "postrouting"), ("snat", "postrouting"), ("dnat", "prerouting"),
                                              ("mark", "prerouting"), ("return", "postrouting")])
def test_default_chain_per_type(rule_type, chain):
    targets = dict(snat=dict(to_source="10.0.0.1"), dnat=dict(to_destination=["10.0.0.1"]), mark=dict(set_mark="0x1"))
    rule = rule_from_params(dict(name="r", type=rule_type, **targets.get(rule_type, {})), 0)
    assert rule.chain == chain


def test_family_defaults_to_ipv4_without_addresses_and_follows_them():
    assert rule_from_params(WEB, 0).family == "ipv4"
    assert rule_from_params(dict(WEB, family="ipv6"), 0).family == "ipv6"
    assert rule_from_params(dict(name="d", type="dnat", to_destination=["fd00::1:80"]), 0).family == "ipv6"


def test_user_facing_shape_leaves_defaults_out():
    rule = rule_from_params(dict(name="d", type="dnat", protocol="tcp", destination_type="local", destination_ports=[30080, "30000-30001"],
                                 to_destination=["[fd00::1]:80", "[fd00::2]:80"], source_negate=False), 0)
    assert rule_to_params(rule) == dict(name="d", type="dnat", chain="prerouting", family="ipv6", protocol="tcp", destination_type="local",
                                        destination_ports=["30000-30001", 30080], to_destination=["[fd00::1]:80", "[fd00::2]:80"])


def test_argument_spec_covers_every_rule_field():
    assert set(RULE_OPTIONS) == set(make_rule(name="x", type="return", chain="input", family="ipv4")._fields)


# -- property: valid params -> rule -> params -> the same rule ---------------------------------

def _networks(version):
    network_class = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    bits = network_class(0).max_prefixlen
    return st.builds(lambda address, prefix: str(network_class((address, prefix), strict=False)),
                     st.integers(0, 2 ** bits - 1), st.integers(0, bits))


def _addresses(version):
    address_class = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return st.integers(0, 2 ** address_class(0).max_prefixlen - 1).map(address_class)


_PORTS = st.integers(1, 65535)
_PORT_SPECS = st.one_of(_PORTS, _PORTS.map(str), st.tuples(_PORTS, _PORTS).map(lambda pair: "%d-%d" % tuple(sorted(pair))))
_MARKS = st.integers(1, 0xffffffff).flatmap(lambda mask: st.integers(0, mask).map(lambda value: "0x%x/0x%x" % (value & mask, mask)))
_INTERFACES = st.from_regex(r"\A[a-z][a-z0-9]{0,14}\Z")


@st.composite
def valid_params(draw):
    family = draw(st.sampled_from(FAMILIES))
    version = 4 if family == "ipv4" else 6
    rule_type = draw(st.sampled_from(RULE_TYPES))
    chain = draw(st.sampled_from(CHAINS_BY_TYPE[rule_type]))
    protocol = draw(st.one_of(st.none(), st.sampled_from(PROTOCOLS)))
    params = dict(name=draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}\Z")), type=rule_type, chain=chain,
                  family=family, protocol=protocol)
    for field in ("source", "destination"):
        params[field] = draw(st.lists(_networks(version), max_size=3))
        params[field + "_negate"] = bool(params[field]) and draw(st.booleans())
    if draw(st.booleans()):
        params.update(destination_type="local", destination_type_negate=draw(st.booleans()))
    if chain in IN_INTERFACE_CHAINS:
        params["in_interface"] = draw(st.one_of(st.none(), _INTERFACES))
    if chain in OUT_INTERFACE_CHAINS:
        params["out_interface"] = draw(st.one_of(st.none(), _INTERFACES))
    if protocol:
        params["destination_ports"] = draw(st.lists(_PORT_SPECS, max_size=4))
    if draw(st.booleans()):
        params.update(mark=draw(_MARKS), mark_negate=draw(st.booleans()))
    params["ct_state"] = draw(st.lists(st.sampled_from(CT_STATES), max_size=3))
    if rule_type == "snat":
        first, last = sorted(draw(st.lists(_addresses(version), min_size=2, max_size=2)))
        params["to_source"] = "%s-%s" % (first, last) if draw(st.booleans()) else str(first)
    if rule_type in ("masquerade", "snat"):
        params["random_fully"] = draw(st.booleans())
        if protocol:
            params["to_ports"] = draw(st.one_of(st.none(), _PORT_SPECS))
    if rule_type == "dnat":
        addresses = draw(st.lists(_addresses(version), min_size=1, max_size=4, unique=True))
        with_ports = protocol is not None and draw(st.booleans())
        pattern = ("[%s]:%d" if version == 6 else "%s:%d") if with_ports else "%s"
        params["to_destination"] = [pattern % ((address, draw(_PORTS)) if with_ports else address) for address in addresses]
    if rule_type == "mark":
        params["set_mark"] = draw(_MARKS)
    return params


@settings(max_examples=150, deadline=None)
@given(valid_params())
def test_params_round_trip(params):
    rule = rule_from_params(params, 0)
    assert rule.type in RULE_TYPES and rule.chain in CHAINS
    shown = rule_to_params(rule)
    assert rule_from_params(shown, 0) == rule
    assert rule_to_params(rule_from_params(shown, 0)) == shown


@settings(max_examples=200, deadline=None)
@given(valid_params(), st.randoms(use_true_random=False))
def test_list_order_does_not_change_the_rule(params, random):
    shuffled = dict(params)
    for field in ("source", "destination", "destination_ports", "ct_state"):
        values = list(params.get(field) or [])
        random.shuffle(values)
        shuffled[field] = values
    assert rule_from_params(shuffled, 0) == rule_from_params(params, 0)


_TEXT = st.text(alphabet="0123456789abcdefx.:/-[] ", max_size=20)
_ANY_VALUE = {
    "str": _TEXT, "bool": st.booleans(), "raw": st.one_of(_TEXT, st.integers(-5, 70000)),
}


@st.composite
def module_shaped_params(draw):
    """Whatever AnsibleModule may hand over: right types, arbitrary contents."""
    params = {}
    for field, spec in RULE_OPTIONS.items():
        if spec.get("choices"):
            value = st.sampled_from(spec["choices"] + ["bogus"])
        elif spec["type"] == "list":
            value = st.lists(_ANY_VALUE[spec["elements"]], max_size=3)
        else:
            value = _ANY_VALUE[spec["type"]]
        if spec["type"] == "list" and spec.get("choices"):
            value = st.lists(value, max_size=3)
        params[field] = draw(st.one_of(st.none(), value))
    return params


@settings(max_examples=200, deadline=None)
@given(module_shaped_params())
def test_any_module_shaped_input_gives_a_rule_or_a_rule_error(params):
    try:
        rule_from_params(params, 0)
    except RuleError as error:
        assert str(error).startswith("config[0]")
