# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a user's dict becomes a rule: the items of ``config``, validated and normalized into NatRule.

Every error names the rule (index and name), the field and the value, and comes before any command runs.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import functools
import re

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, CHAINS_BY_TYPE, CT_STATES, DEFAULT_CHAIN, FAMILIES, FULL_MARK, IN_INTERFACE_CHAINS, OUT_INTERFACE_CHAINS, PROTOCOLS,
    REQUIRED_TARGET, RULE_TYPES, TARGET_TYPES, Endpoint, Mark, NatRule, PortRange, RuleError, family_of, normalize_ct_states,
    RULE_DEFAULTS, normalize_networks, normalize_port_ranges, parse_address, parse_network,
)

# The options of one item of ``config`` and the types ansible would give them (the module checks the
# items itself; the documentation lists the same options). Booleans have no default on purpose:
# ``None`` means "not given", which ``state: merged`` needs to tell apart from ``false``.
RULE_OPTIONS = dict(
    name=dict(type="str", required=True),
    type=dict(type="str", choices=list(RULE_TYPES)),
    chain=dict(type="str", choices=list(CHAINS)),
    family=dict(type="str", choices=list(FAMILIES)),
    source=dict(type="list", elements="str"),
    source_negate=dict(type="bool"),
    destination=dict(type="list", elements="str"),
    destination_negate=dict(type="bool"),
    destination_type=dict(type="str", choices=["local"]),
    destination_type_negate=dict(type="bool"),
    in_interface=dict(type="str"),
    out_interface=dict(type="str"),
    protocol=dict(type="str", choices=list(PROTOCOLS)),
    destination_ports=dict(type="list", elements="raw"),
    mark=dict(type="str"),
    mark_negate=dict(type="bool"),
    ct_state=dict(type="list", elements="str", choices=list(CT_STATES)),
    to_source=dict(type="str"),
    to_destination=dict(type="list", elements="str"),
    to_ports=dict(type="raw"),
    random_fully=dict(type="bool"),
    set_mark=dict(type="str"),
)
RULE_FIELDS = frozenset(RULE_OPTIONS)

# Patterns are matched whole (re.fullmatch): "$" would let a trailing newline through.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
# Linux interface names: at most 15 bytes; restricted to characters every backend quotes safely.
INTERFACE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_PORT_RANGE_PATTERN = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_MARK_PATTERN = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*(?:/\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*)?")
_BRACKETED_ENDPOINT_PATTERN = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")
_DIGITS_PATTERN = re.compile(r"[0-9]+")


class EndpointError(ValueError):
    """args: the value at fault and what is wrong with it."""


# Services share endpoints (a pod backs several ports, a hairpin rule names its service's pods): parse each text once.
@functools.lru_cache(maxsize=1 << 17)
def parse_endpoint(text):
    """(Endpoint, its address text, its family) of a to_destination item; raises EndpointError."""
    text = text.strip()
    bracketed = _BRACKETED_ENDPOINT_PATTERN.fullmatch(text)
    if bracketed:
        address_text, port_text = bracketed.groups()
    else:
        address_text, colon, port_text = text.rpartition(":")
        if not colon or ":" in address_text:
            # No port, or a bare IPv6 address (an IPv6 address with a port needs brackets).
            address_text, port_text = text, None
    try:
        address = parse_address(address_text)
    except ValueError:
        raise EndpointError(address_text, "is not a valid IP address")
    if bracketed and address.version != 6:
        raise EndpointError(text, "uses brackets, which are for IPv6 addresses only")
    if port_text is None:
        return Endpoint(address, None), address_text, family_of(address)
    if not _DIGITS_PATTERN.fullmatch(port_text):
        raise EndpointError(text, "is not an address or address:port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise EndpointError(text, "has a port outside 1-65535")
    return Endpoint(address, port), address_text, family_of(address)


def _is_text(value):
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


class _RuleReader(object):
    """Reads one user dict; every error names the rule (index and name), the field and the value.

    The module's argument spec does not describe the items of ``config`` (ansible's per-item checks cost
    more than the whole rest of a run at thousands of rules), so this reader takes what ansible's own
    types would: booleans in ansible's spellings, numbers where text is expected, a comma-separated
    string where a list is, and refuses unknown keys.
    """

    def __init__(self, params, index):
        if not isinstance(params, dict):
            raise RuleError("config[%s]: %r is not a dict of rule options" % (index, params))
        self.params = params
        self.index = index
        self.rule_name = None
        # Where each IP family was first seen, to name both sides of a mixed-family error.
        self.family_sources = {}

    @property
    def label(self):
        if self.rule_name is None:
            return "config[%s]" % self.index
        return "config[%s] (name=%s)" % (self.index, self.rule_name)

    def fail(self, field, value, problem):
        if value is None:
            raise RuleError("%s: %s: %s" % (self.label, field, problem))
        raise RuleError("%s: %s: %r %s" % (self.label, field, value, problem))

    def get(self, field):
        return self.params.get(field)

    def flag(self, field):
        value = self.get(field)
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        try:
            return boolean(value, strict=True)
        except TypeError:
            self.fail(field, value, "is not a boolean")

    def text(self, field):
        value = self.get(field)
        if value is None or isinstance(value, str):
            return value
        if not _is_text(value):
            self.fail(field, value, "is not a string")
        return str(value)

    def choice(self, field, choices):
        value = self.params.get(field)
        if value is None or (value.__class__ is str and value in choices):
            return value
        value = self.text(field)
        if value not in choices:
            self.fail(field, value, "is not one of %s" % ", ".join(choices))
        return value

    def items(self, field):
        value = self.get(field)
        if value is None:
            return []
        if isinstance(value, str):
            # As ansible's list type: a comma-separated string is a list.
            return [item.strip() for item in value.split(",")]
        if not isinstance(value, (list, tuple)):
            self.fail(field, value, "is not a list")
        return value

    def note_family(self, field, text, family):
        self.family_sources.setdefault(family, (field, text))

    # -- identity -------------------------------------------------------------

    def name(self):
        value = self.get("name")
        if value is None:
            self.fail("name", None, "is required")
        if _is_text(value) and not isinstance(value, str):
            value = str(value)
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            self.fail("name", value, "is not a valid rule name: 1-64 characters from A-Z a-z 0-9 . _ : / -, "
                                     "starting with a letter or digit")
        self.rule_name = value
        return value

    # -- addresses ------------------------------------------------------------

    def networks(self, field):
        networks = []
        for text in self.items(field):
            if not isinstance(text, str):
                self.fail(field, text, "is not a valid network")
            try:
                network, without_host_bits = parse_network(text.strip())
            except ValueError:
                self.fail(field, text, "is not a valid network")
            if network is None:
                self.fail(field, text, "has host bits set (the network is %s)" % without_host_bits)
            if networks and networks[0].version != network.version:
                self.fail(field, text, "mixes IPv4 and IPv6 with %r" % str(networks[0]))
            self.note_family(field, text, family_of(network))
            networks.append(network)
        return normalize_networks(networks)

    def address(self, field, text):
        try:
            address = parse_address(text)
        except ValueError:
            self.fail(field, text, "is not a valid IP address")
        self.note_family(field, text, family_of(address))
        return address

    def to_source(self):
        text = self.text("to_source")
        if text is None:
            return None
        first_text, dash, last_text = text.strip().partition("-")
        first = self.address("to_source", first_text.strip() if dash else text.strip())
        last = self.address("to_source", last_text.strip()) if dash else first
        if first.version != last.version or first > last:
            self.fail("to_source", text, "is not an address range from low to high of one IP version")
        return (first, last)

    def endpoint(self, text):
        if not isinstance(text, str):
            self.fail("to_destination", text, "is not an address or address:port")
        try:
            endpoint, address_text, family = parse_endpoint(text)
        except EndpointError as error:
            self.fail("to_destination", *error.args)
        self.note_family("to_destination", address_text, family)
        return endpoint

    def to_destination(self):
        texts = self.items("to_destination")
        endpoints = [self.endpoint(text) for text in texts]
        # Looked at one by one (to name the first at fault) only when some endpoint is at fault.
        if len(endpoints) > 1 and (len(set(endpoints)) < len(endpoints) or len(set(endpoint.port is None for endpoint in endpoints)) > 1):
            seen = set()
            with_port = endpoints[0].port is not None
            for position, endpoint in enumerate(endpoints):
                if (endpoint.port is not None) != with_port:
                    self.fail("to_destination", texts[position], "has %s port while %r has %s" % (
                        "no" if endpoint.port is None else "a", texts[0], "none" if endpoints[0].port is None else "one"))
                if endpoint in seen:
                    self.fail("to_destination", texts[position], "is listed twice")
                seen.add(endpoint)
        return tuple(endpoints)

    def family(self, declared):
        if len(self.family_sources) > 1:
            (field4, text4), (field6, text6) = self.family_sources["ipv4"], self.family_sources["ipv6"]
            self.fail(field6, text6, "is IPv6 but %s: %r is IPv4 (a rule has one family; write one rule per family)"
                      % (field4, text4))
        inferred = next(iter(self.family_sources), None)
        if declared is not None and inferred is not None and declared != inferred:
            field, text = self.family_sources[inferred]
            self.fail("family", declared, "does not match %s: %r" % (field, text))
        return declared or inferred or "ipv4"

    # -- ports, marks, states -------------------------------------------------

    def port(self, field, text, whole_value):
        port = int(text)
        if not 1 <= port <= 65535:
            self.fail(field, whole_value, "has a port outside 1-65535")
        return port

    def port_range(self, field, value):
        if isinstance(value, int) and not isinstance(value, bool):
            port = self.port(field, value, value)
            return PortRange(port, port)
        if not isinstance(value, str):
            self.fail(field, value, "is not a port or a port range 'first-last'")
        match = _PORT_RANGE_PATTERN.fullmatch(value)
        if not match:
            self.fail(field, value, "is not a port or a port range 'first-last'")
        first = self.port(field, match.group(1), value)
        last = first if match.group(2) is None else self.port(field, match.group(2), value)
        if first > last:
            self.fail(field, value, "is a reversed port range")
        return PortRange(first, last)

    def destination_ports(self):
        ranges = [self.port_range("destination_ports", value) for value in self.items("destination_ports")]
        return tuple(ranges) if len(ranges) < 2 else normalize_port_ranges(ranges)

    def to_ports(self):
        value = self.get("to_ports")
        return None if value is None else self.port_range("to_ports", value)

    def mark(self, field):
        text = self.get(field)
        if text is None:
            return None
        match = _MARK_PATTERN.fullmatch(str(text)) if _is_text(text) else None
        if not match:
            self.fail(field, text, "is not a mark 'value' or 'value/mask' (hex 0x... or decimal)")
        value, mask = [int(token, 0) if token.lower().startswith("0x") else int(token)
                       for token in (match.group(1), match.group(2) or str(FULL_MARK))]
        if value > FULL_MARK or mask > FULL_MARK:
            self.fail(field, text, "is larger than 32 bits")
        if value & ~mask:
            self.fail(field, text, "has value bits outside the mask")
        return Mark(value, mask)

    def ct_state(self):
        states = self.items("ct_state")
        for state in states:
            if state not in CT_STATES:
                self.fail("ct_state", state, "is not one of %s" % ", ".join(CT_STATES))
        return normalize_ct_states(states)

    def interface(self, field, chain, allowed_chains):
        value = self.get(field)
        if value is None:
            return None
        if not isinstance(value, str) or not INTERFACE_PATTERN.fullmatch(value) or value in (".", ".."):
            self.fail(field, value, "is not a valid interface name (1-15 characters from A-Z a-z 0-9 _ . -)")
        if chain not in allowed_chains:
            self.fail(field, value, "cannot be matched in chain %s (only in %s)" % (chain, ", ".join(allowed_chains)))
        return value


def _given(value):
    return value not in (None, [], False)


def rule_from_params(params, index):
    """Validate and normalize one user dict (one item of ``config``) into a NatRule.

    ``index`` is the item's position, used in error messages. Raises RuleError.
    """
    reader = _RuleReader(params, index)
    name = reader.name()
    unknown, target_fields, field_readers = _reading_plan(tuple(params))
    if unknown:
        reader.fail(unknown[0], None, "is not a rule option (valid: %s)" % ", ".join(sorted(RULE_FIELDS)))
    rule_type = reader.choice("type", RULE_TYPES)
    if rule_type is None:
        reader.fail("type", None, "is required (one of %s)" % ", ".join(RULE_TYPES))
    chain = reader.choice("chain", CHAINS) or DEFAULT_CHAIN[rule_type]
    if chain not in CHAINS_BY_TYPE[rule_type]:
        reader.fail("chain", chain, "is not valid for type %s (valid: %s)" % (rule_type, ", ".join(CHAINS_BY_TYPE[rule_type])))
    for field, types in target_fields:
        if rule_type not in types and _given(params[field]):
            reader.fail(field, params[field], "is not valid for type %s (only for %s)" % (rule_type, ", ".join(types)))

    declared_family = reader.choice("family", FAMILIES)
    protocol = reader.choice("protocol", PROTOCOLS)
    values = dict(RULE_DEFAULTS, name=name, type=rule_type, chain=chain, protocol=protocol)
    # A field not given keeps its default (what its reader makes of None); most items give a few of them.
    for field, read in field_readers:
        if params[field] is not None:
            values[field] = read(reader, chain)
    required = REQUIRED_TARGET.get(rule_type)
    if required and values[required] in (None, ()):
        reader.fail(required, None, "is required for type %s" % rule_type)
    values["family"] = reader.family(declared_family)
    for negate_field, field in _NEGATIONS:
        # A negation needs the thing it negates, so that one meaning has one spelling.
        if values[negate_field] and values[field] in ((), None):
            reader.fail(negate_field, True, "needs %s" % field)
    if protocol is None:
        uses_ports = (("destination_ports", bool(values["destination_ports"])), ("to_ports", values["to_ports"] is not None),
                      ("to_destination", any(endpoint.port for endpoint in values["to_destination"])))
        for field, has_ports in uses_ports:
            if has_ports:
                reader.fail(field, params.get(field), "needs protocol (tcp, udp or sctp)")
    return NatRule(**values)


_TARGET_TYPES_SORTED = sorted(TARGET_TYPES.items())
_NEGATIONS = (("source_negate", "source"), ("destination_negate", "destination"),
              ("destination_type_negate", "destination_type"), ("mark_negate", "mark"))
# The fields after type, chain, family and protocol, in the order they are read: the first address family seen
# is the one a mixed-family error names as the rule's. Each reader takes the reader and the rule's chain.
_FIELD_READERS = (
    ("source", lambda reader, chain: reader.networks("source")),
    ("source_negate", lambda reader, chain: reader.flag("source_negate")),
    ("destination", lambda reader, chain: reader.networks("destination")),
    ("destination_negate", lambda reader, chain: reader.flag("destination_negate")),
    ("destination_type", lambda reader, chain: reader.choice("destination_type", ("local",))),
    ("destination_type_negate", lambda reader, chain: reader.flag("destination_type_negate")),
    ("in_interface", lambda reader, chain: reader.interface("in_interface", chain, IN_INTERFACE_CHAINS)),
    ("out_interface", lambda reader, chain: reader.interface("out_interface", chain, OUT_INTERFACE_CHAINS)),
    ("destination_ports", lambda reader, chain: reader.destination_ports()),
    ("mark", lambda reader, chain: reader.mark("mark")),
    ("mark_negate", lambda reader, chain: reader.flag("mark_negate")),
    ("ct_state", lambda reader, chain: reader.ct_state()),
    ("to_source", lambda reader, chain: reader.to_source()),
    ("to_destination", lambda reader, chain: reader.to_destination()),
    ("to_ports", lambda reader, chain: reader.to_ports()),
    ("random_fully", lambda reader, chain: reader.flag("random_fully")),
    ("set_mark", lambda reader, chain: reader.mark("set_mark")),
)


# Items of a big config share a few sets of keys: what reading an item takes follows from its keys alone.
@functools.lru_cache(maxsize=1024)
def _reading_plan(keys):
    """(its keys that are no rule option, sorted; the target fields and the field readers of the options it gives, in
    their order) of an item with ``keys``."""
    given = frozenset(keys)
    unknown = sorted(str(key) for key in given if key not in RULE_FIELDS)
    return (unknown, [(field, types) for field, types in _TARGET_TYPES_SORTED if field in given],
            [(field, read) for field, read in _FIELD_READERS if field in given])


def rule_names(config):
    """Validated names of ``config`` items, in order; fails on an invalid or duplicate name."""
    positions = {}
    for index, params in enumerate(config):
        name = _RuleReader(params, index).name()
        if name in positions:
            raise RuleError("config[%s] (name=%s): name: %r is already used by config[%s]" % (index, name, name, positions[name]))
        positions[name] = index
    return list(positions)


def rules_from_config(config):
    """[NatRule] for the list of user dicts; every item is validated before any is used."""
    rule_names(config)
    return [rule_from_params(params, index) for index, params in enumerate(config)]
