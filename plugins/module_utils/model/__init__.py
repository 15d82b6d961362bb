# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NAT rule model shared by every backend: the rule, its vocabulary and its normal forms.

A rule is immutable and normalized, so two rulesets compare equal exactly when they mean the same
thing: backends parse the host into this model and the engine compares models, never text. How a
user's dict becomes a rule (validation) is in ``model.params``; how a rule becomes the user-facing
dict again, and back from a dict this collection wrote, is in ``model.dicts``.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import functools
import ipaddress
import re

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


class RuleError(ValueError):
    """Invalid user input; the message names the rule, the field and the value."""


def family_of(address_or_network):
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
    return set(family_of(address) for address in addresses)


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


# Texts of rule fields, shared by the backends and the user-facing dict.

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
