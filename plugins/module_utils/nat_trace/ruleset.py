# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a trace is armed: the flow to trace, validated, and the nft table that marks its packets.

The trace lives in a table of its own, ``table inet nodenet_trace``, never in the owned NAT tables or
anyone else's: one base chain at the prerouting hook (packets that arrive) and one at the output hook
(packets the node sends), both at priority -350, before the raw (-300), conntrack (-200) and NAT
chains, so that every chain after them reports the packet. Their only rule matches the flow and sets
``meta nftrace``; every nf_tables chain the packet then walks (nft tables, and iptables-nft's, which
are nf_tables chains too) reports to ``nft monitor trace``.

The rule also carries ``meta time < DEADLINE``: should the module die before it removes the table, the
rule stops marking packets at the deadline by itself, and the next trace removes the table.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import ipaddress
import json

TRACE_FAMILY = "inet"
TRACE_TABLE = "nodenet_trace"
HOOKS = ("prerouting", "output")
TRACE_PRIORITY = -350
PROTOCOLS = ("tcp", "udp", "sctp", "icmp")
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
MAX_TIMEOUT = 600
MAX_PACKETS = 50

# One flow: source and destination networks (ipaddress, or None for any), protocol (or None) and destination port.
Flow = collections.namedtuple("Flow", ["family", "source", "destination", "protocol", "port"])


def _network(field, value):
    try:
        return ipaddress.ip_network(u"%s" % value, strict=False)
    except ValueError:
        raise ValueError("%s: %r is not an IPv4 or IPv6 address or network" % (field, value))


def flow_from_params(params):
    """The Flow of the module params; ValueError names the field and the value."""
    source = _network("source", params["source"]) if params.get("source") else None
    destination = _network("destination", params["destination"]) if params.get("destination") else None
    if source is None and destination is None:
        raise ValueError("source or destination is required: a trace follows one flow, not every packet")
    if source is not None and destination is not None and source.version != destination.version:
        raise ValueError("destination: %r is IPv%d but source: %r is IPv%d" % (
            params["destination"], destination.version, params["source"], source.version))
    protocol = params.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError("protocol: %r is not one of %s" % (protocol, ", ".join(PROTOCOLS)))
    port = params.get("port")
    if port is not None:
        if protocol not in PORT_PROTOCOLS:
            raise ValueError("port: %r needs protocol tcp, udp or sctp" % (port,))
        if not 1 <= port <= 65535:
            raise ValueError("port: %r is not a port (1-65535)" % (port,))
    version = (source or destination).version
    return Flow("ipv4" if version == 4 else "ipv6", source, destination, protocol, port)


def _address_text(network):
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


def flow_params(flow):
    """The flow as the result shows it."""
    return dict(family=flow.family, source=_address_text(flow.source) if flow.source else None,
                destination=_address_text(flow.destination) if flow.destination else None,
                protocol=flow.protocol, port=flow.port)


def match_text(flow):
    """The nft matches of the flow."""
    family = "ip" if flow.family == "ipv4" else "ip6"
    texts = []
    if flow.source is not None:
        texts.append("%s saddr %s" % (family, _address_text(flow.source)))
    if flow.destination is not None:
        texts.append("%s daddr %s" % (family, _address_text(flow.destination)))
    if flow.protocol == "icmp":
        texts.append("meta l4proto %s" % ("icmp" if flow.family == "ipv4" else "ipv6-icmp"))
    elif flow.protocol is not None:
        texts.append("meta l4proto %s" % flow.protocol)
    if flow.port is not None:
        texts.append("th dport %d" % flow.port)
    return " ".join(texts)


def sync_script():
    """A transaction that changes nothing in the end but shows in ``nft monitor``: once the monitor prints it, it
    listens. It also removes a trace table an earlier run left."""
    return "add table %s %s\ndelete table %s %s\n" % (TRACE_FAMILY, TRACE_TABLE, TRACE_FAMILY, TRACE_TABLE)


def trace_script(flow, deadline=None):
    """The trace table; ``deadline`` (Unix time, seconds) ends the marking even if the table stays."""
    rule = match_text(flow)
    if deadline is not None:
        rule += " meta time < %d" % deadline
    rule += ' meta nftrace set 1 comment "nodenet.nat trace"'
    lines = ["table %s %s {" % (TRACE_FAMILY, TRACE_TABLE)]
    for hook in HOOKS:
        lines += ["\tchain %s {" % hook,
                  "\t\ttype filter hook %s priority %d; policy accept;" % (hook, TRACE_PRIORITY),
                  "\t\t%s" % rule,
                  "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def remove_argv(nft):
    return [nft, "delete", "table", TRACE_FAMILY, TRACE_TABLE]


def table_present(chains_listing):
    """Whether ``nft -j list chains`` output (backends.nft.list_chains_argv) holds a chain of the trace table, which is never without them (they come and
    go with it in one transaction); True when the output cannot be read, since nothing then says the table is gone."""
    try:
        items = json.loads(chains_listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        return True
    return any((item.get("chain", {}).get("family"), item.get("chain", {}).get("table")) == (TRACE_FAMILY, TRACE_TABLE)
               for item in items)
