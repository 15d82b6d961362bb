# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NAT rule model shared by every backend.

A rule is immutable and normalized, so two rulesets compare equal exactly when they
mean the same thing: backends parse the host into this model and the module compares
models, never text.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import functools
import ipaddress
import re

from ansible.module_utils.parsing.convert_bool import boolean

FAMILIES = ("ipv4", "ipv6")
RULE_TYPES = ("masquerade", "snat", "dnat", "mark", "return")
CHAINS = ("prerouting", "input", "output", "postrouting")
PROTOCOLS = ("tcp", "udp", "sctp")
CT_STATES = ("new", "established", "related", "invalid", "dnat", "snat")

# Endpoint of a DNAT: address is an ipaddress.ip_address, port an int or None.
Endpoint = collections.namedtuple("Endpoint", ["address", "port"])

# A mark value under a mask, both ints (0..0xffffffff); value is always a subset of mask.
Mark = collections.namedtuple("Mark", ["value", "mask"])

# Inclusive port range; a single port is PortRange(p, p).
PortRange = collections.namedtuple("PortRange", ["first", "last"])

_RULE_FIELDS = (
    "name",                  # str, identity; stored as the rule comment
    "type",                  # one of RULE_TYPES
    "chain",                 # one of CHAINS (the netfilter hook of the nat table)
    "family",                # one of FAMILIES
    "source",                # tuple of ipaddress networks, sorted, collapsed; () = any
    "source_negate",         # bool
    "destination",           # tuple of ipaddress networks, sorted, collapsed; () = any
    "destination_negate",    # bool
    "destination_type",      # None or "local" (addrtype / fib daddr type)
    "destination_type_negate",  # bool
    "in_interface",          # str or None
    "out_interface",         # str or None
    "protocol",              # None or one of PROTOCOLS
    "destination_ports",     # tuple of PortRange, sorted, merged; () = any (needs protocol)
    "mark",                  # None or Mark: match (packet mark & mask) == value
    "mark_negate",           # bool
    "ct_state",              # tuple of CT_STATES, sorted; () = any
    "to_source",             # snat: tuple (first_address, last_address) of ipaddress addresses; else None
    "to_destination",        # dnat: tuple of Endpoint in user order (>1 = random load balancing); else ()
    "to_ports",              # masquerade/snat: PortRange or None
    "random_fully",          # bool (masquerade/snat)
    "set_mark",              # mark: Mark to set (mark = (mark & ~mask) | value); else None
)


class NatRule(collections.namedtuple("NatRule", _RULE_FIELDS)):
    """One normalized NAT rule. Build it with ``model.rule_from_params`` (validation) or ``make_rule``."""
    __slots__ = ()


RULE_DEFAULTS = dict(
    source=(), source_negate=False, destination=(), destination_negate=False,
    destination_type=None, destination_type_negate=False, in_interface=None, out_interface=None,
    protocol=None, destination_ports=(), mark=None, mark_negate=False, ct_state=(),
    to_source=None, to_destination=(), to_ports=None, random_fully=False, set_mark=None,
)


def make_rule(**fields):
    """A NatRule with unset optional fields at their defaults (fields must already be normalized)."""
    values = dict(RULE_DEFAULTS)
    values.update(fields)
    return NatRule(**values)


# ---------------------------------------------------------------------------
# User input -> NatRule (validation and normalization)
# ---------------------------------------------------------------------------

# The argument spec of one item of ``config``. Booleans have no spec default on purpose:
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

# mark defaults to prerouting (mark before the routing decision, as kube-proxy's mark-for-masquerade);
# return defaults to postrouting (exempt traffic from a later masquerade).
DEFAULT_CHAIN = {"masquerade": "postrouting", "snat": "postrouting", "dnat": "prerouting", "mark": "prerouting", "return": "postrouting"}

# Hooks where the kernel accepts each target (MASQUERADE: postrouting only; SNAT: postrouting
# and input; DNAT: prerouting and output).
CHAINS_BY_TYPE = {
    "masquerade": ("postrouting",), "snat": ("postrouting", "input"), "dnat": ("prerouting", "output"),
    "mark": CHAINS, "return": CHAINS,
}
# Hooks where the packet has an input / output interface.
IN_INTERFACE_CHAINS = ("prerouting", "input")
OUT_INTERFACE_CHAINS = ("output", "postrouting")

# Target fields and the types that accept them.
TARGET_TYPES = dict(
    to_source=("snat",), to_destination=("dnat",), to_ports=("masquerade", "snat"),
    random_fully=("masquerade", "snat"), set_mark=("mark",),
)
REQUIRED_TARGET = dict(snat="to_source", dnat="to_destination", mark="set_mark")

FULL_MARK = 0xffffffff
_PORT_RANGE_PATTERN = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_MARK_PATTERN = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*(?:/\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*)?")
_BRACKETED_ENDPOINT_PATTERN = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")
_DIGITS_PATTERN = re.compile(r"[0-9]+")


class RuleError(ValueError):
    """Invalid user input; the message names the rule, the field and the value."""


def _family_of(address_or_network):
    return "ipv4" if address_or_network.version == 4 else "ipv6"


# Parsing an address costs microseconds and rulesets repeat addresses (a service's backends are
# also its hairpin sources): parse each text once. ipaddress objects are immutable, so sharing is safe.
_PARSE_CACHE_SIZE = 1 << 17


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Dotted quads exactly as ipaddress accepts them (no leading zeros), read without its slower parser.
_IPV4_PATTERN = re.compile(r"\.".join([_OCTET] * 4))


@functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)
def parse_address(text):
    """ipaddress address of ``text``; raises ValueError."""
    quad = _IPV4_PATTERN.fullmatch(text)
    if quad:
        a, b, c, d = quad.groups()
        return ipaddress.IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)
def parse_network(text):
    """(network, None) for a valid network text, (None, the network without host bits) when host bits are set;
    raises ValueError for anything else."""
    try:
        return ipaddress.ip_network(text), None
    except ValueError:
        return None, ipaddress.ip_network(text, strict=False)


def address_families(rule):
    """The families of every address in ``rule`` (a parsed rule must hold only its own)."""
    addresses = list(rule.source) + list(rule.destination) + list(rule.to_source or ())
    addresses += [endpoint.address for endpoint in rule.to_destination]
    return set(_family_of(address) for address in addresses)


def normalize_networks(networks):
    """Sorted, collapsed tuple of networks of one IP version (what backends must produce too)."""
    if len(networks) == 1:
        return tuple(networks)
    return tuple(ipaddress.collapse_addresses(networks))


def normalize_port_ranges(ranges):
    """Sorted tuple of PortRange with overlapping and adjacent ranges merged."""
    merged = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(last, merged[-1].last))
        else:
            merged.append(PortRange(first, last))
    return tuple(merged)


def normalize_ct_states(states):
    """Sorted tuple of unique conntrack states."""
    return tuple(sorted(set(states)))


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
        self.label = "config[%s]" % index
        # Where each IP family was first seen, to name both sides of a mixed-family error.
        self.family_sources = {}

    def fail(self, field, value, problem):
        if value is None:
            raise RuleError("%s: %s: %s" % (self.label, field, problem))
        raise RuleError("%s: %s: %r %s" % (self.label, field, value, problem))

    def get(self, field):
        return self.params.get(field)

    def check_keys(self):
        unknown = sorted(str(key) for key in self.params if key not in RULE_FIELDS)
        if unknown:
            self.fail(unknown[0], None, "is not a rule option (valid: %s)" % ", ".join(sorted(RULE_FIELDS)))

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
        value = self.text(field)
        if value is not None and value not in choices:
            self.fail(field, value, "is not one of %s" % ", ".join(choices))
        return value

    def items(self, field):
        value = self.get(field)
        if value is None:
            return []
        if isinstance(value, str):
            # As ansible's list type: a comma-separated string is a list.
            return [item.strip() for item in value.split(",")] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            self.fail(field, value, "is not a list")
        return value

    def note_family(self, field, text, address_or_network):
        self.family_sources.setdefault(_family_of(address_or_network), (field, text))

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
        self.label = "config[%s] (name=%s)" % (self.index, value)
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
            self.note_family(field, text, network)
            networks.append(network)
        return normalize_networks(networks)

    def address(self, field, text):
        try:
            address = parse_address(text)
        except ValueError:
            self.fail(field, text, "is not a valid IP address")
        self.note_family(field, text, address)
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
        text = text.strip()
        bracketed = _BRACKETED_ENDPOINT_PATTERN.fullmatch(text)
        if bracketed:
            address_text, port_text = bracketed.groups()
            address = self.address("to_destination", address_text)
            if address.version != 6:
                self.fail("to_destination", text, "uses brackets, which are for IPv6 addresses only")
        else:
            address_text, colon, port_text = text.rpartition(":")
            if not colon or ":" in address_text:
                # No port, or a bare IPv6 address (an IPv6 address with a port needs brackets).
                address_text, port_text = text, None
            address = self.address("to_destination", address_text)
            if port_text is not None and not _DIGITS_PATTERN.fullmatch(port_text):
                self.fail("to_destination", text, "is not an address or address:port")
        port = None if port_text is None else self.port("to_destination", port_text, text)
        return Endpoint(address, port)

    def to_destination(self):
        texts = self.items("to_destination")
        endpoints = [self.endpoint(text) for text in texts]
        if len(endpoints) > 1:
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


def _require_given_with(reader, rule, negate_field, field):
    """A negation needs the thing it negates, so that one meaning has one spelling."""
    if getattr(rule, negate_field) and getattr(rule, field) in ((), None):
        reader.fail(negate_field, True, "needs %s" % field)


def _given(value):
    return value not in (None, [], False)


def rule_from_params(params, index):
    """Validate and normalize one user dict (one item of ``config``) into a NatRule.

    ``index`` is the item's position, used in error messages. Raises RuleError.
    """
    reader = _RuleReader(params, index)
    name = reader.name()
    reader.check_keys()
    rule_type = reader.choice("type", RULE_TYPES)
    if rule_type is None:
        reader.fail("type", None, "is required (one of %s)" % ", ".join(RULE_TYPES))
    chain = reader.choice("chain", CHAINS) or DEFAULT_CHAIN[rule_type]
    if chain not in CHAINS_BY_TYPE[rule_type]:
        reader.fail("chain", chain, "is not valid for type %s (valid: %s)" % (rule_type, ", ".join(CHAINS_BY_TYPE[rule_type])))
    for field, types in _TARGET_TYPES_SORTED:
        if rule_type not in types and _given(params.get(field)):
            reader.fail(field, params.get(field), "is not valid for type %s (only for %s)" % (rule_type, ", ".join(types)))
    required = REQUIRED_TARGET.get(rule_type)
    if required and params.get(required) in (None, []):
        reader.fail(required, None, "is required for type %s" % rule_type)
    declared_family = reader.choice("family", FAMILIES)
    protocol = reader.choice("protocol", PROTOCOLS)
    rule = NatRule(
        name=name,
        type=rule_type,
        chain=chain,
        family=None,
        source=reader.networks("source"),
        source_negate=reader.flag("source_negate"),
        destination=reader.networks("destination"),
        destination_negate=reader.flag("destination_negate"),
        destination_type=reader.choice("destination_type", ("local",)),
        destination_type_negate=reader.flag("destination_type_negate"),
        in_interface=reader.interface("in_interface", chain, IN_INTERFACE_CHAINS),
        out_interface=reader.interface("out_interface", chain, OUT_INTERFACE_CHAINS),
        protocol=protocol,
        destination_ports=reader.destination_ports(),
        mark=reader.mark("mark"),
        mark_negate=reader.flag("mark_negate"),
        ct_state=reader.ct_state(),
        to_source=reader.to_source(),
        to_destination=reader.to_destination(),
        to_ports=reader.to_ports(),
        random_fully=reader.flag("random_fully"),
        set_mark=reader.mark("set_mark"),
    )
    rule = rule._replace(family=reader.family(declared_family))
    for negate_field, field in _NEGATIONS:
        _require_given_with(reader, rule, negate_field, field)
    if protocol is None:
        uses_ports = (("destination_ports", bool(rule.destination_ports)), ("to_ports", rule.to_ports is not None),
                      ("to_destination", any(endpoint.port for endpoint in rule.to_destination)))
        for field, has_ports in uses_ports:
            if has_ports:
                reader.fail(field, params.get(field), "needs protocol (tcp, udp or sctp)")
    return rule


_TARGET_TYPES_SORTED = sorted(TARGET_TYPES.items())
_NEGATIONS = (("source_negate", "source"), ("destination_negate", "destination"),
              ("destination_type_negate", "destination_type"), ("mark_negate", "mark"))


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


# ---------------------------------------------------------------------------
# NatRule -> user-facing dict (before / after / gathered / parsed)
# ---------------------------------------------------------------------------

def format_port_range(port_range, separator="-"):
    """``first`` or ``first<separator>last`` (iptables matches write ``:``, NAT targets ``-``)."""
    if port_range.first == port_range.last:
        return str(port_range.first)
    return "%d%s%d" % (port_range.first, separator, port_range.last)


def format_mark(mark):
    return "0x%x/0x%x" % mark


def format_endpoint(endpoint):
    """``address``, ``address:port``, or ``[address]:port`` for IPv6."""
    if endpoint.port is None:
        return str(endpoint.address)
    if endpoint.address.version == 6:
        return "[%s]:%d" % endpoint
    return "%s:%d" % endpoint


def format_address_range(addresses):
    first, last = addresses
    return str(first) if first == last else "%s-%s" % (first, last)


def _port_range_param(port_range):
    return port_range.first if port_range.first == port_range.last else format_port_range(port_range)


def _networks_param(networks):
    return [str(network) for network in networks]


_PARAM_FORMATTERS = dict(
    source=_networks_param,
    destination=_networks_param,
    destination_ports=lambda ranges: [_port_range_param(port_range) for port_range in ranges],
    mark=format_mark,
    set_mark=format_mark,
    ct_state=list,
    to_source=format_address_range,
    to_destination=lambda endpoints: [format_endpoint(endpoint) for endpoint in endpoints],
    to_ports=_port_range_param,
)


def rule_to_params(rule):
    """The user-facing dict of a rule: fields at their defaults are left out.

    ``rule_from_params(rule_to_params(rule), i) == rule`` for every valid rule.
    """
    params = {}
    for field, value in zip(rule._fields, rule):
        if field in RULE_DEFAULTS and value == RULE_DEFAULTS[field]:
            continue
        formatter = _PARAM_FORMATTERS.get(field)
        params[field] = formatter(value) if formatter else value
    return params


def _port_range_of_param(value):
    first, dummy, last = str(value).partition("-")
    return PortRange(int(first), int(last or first))


def _mark_of_param(text):
    value, dummy, mask = text.partition("/")
    return Mark(int(value, 16), int(mask, 16))


def _endpoint_of_param(text):
    if text.startswith("["):
        address, dummy, port = text[1:].partition("]:")
        return Endpoint(parse_address(address), int(port))
    address, colon, port = text.rpartition(":")
    if not colon or ":" in address:
        return Endpoint(parse_address(text), None)
    return Endpoint(parse_address(address), int(port))


def _address_range_of_param(text):
    first, dummy, last = text.partition("-")
    return parse_address(first), parse_address(last or first)


def _networks_of_param(texts):
    return tuple(parse_network(text)[0] for text in texts)


_PARAM_PARSERS = dict(
    source=_networks_of_param,
    destination=_networks_of_param,
    destination_ports=lambda values: tuple(_port_range_of_param(value) for value in values),
    mark=_mark_of_param,
    set_mark=_mark_of_param,
    ct_state=tuple,
    to_source=_address_range_of_param,
    to_destination=lambda texts: tuple(_endpoint_of_param(text) for text in texts),
    to_ports=_port_range_of_param,
)


def rule_from_record(params):
    """The NatRule of a ``rule_to_params`` dict that this collection wrote itself (a run record).

    The inverse of rule_to_params without rule_from_params' validation, which such a dict has
    passed already: reading back ten thousands of recorded rules stays cheap.
    """
    fields = dict(RULE_DEFAULTS)
    for field, value in params.items():
        parser = _PARAM_PARSERS.get(field)
        fields[field] = parser(value) if parser else value
    return NatRule(**fields)
