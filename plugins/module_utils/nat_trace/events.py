# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a trace is read: the lines ``nft -a monitor`` printed -> the path each traced packet took, with names.

nft prints one line per event, in order::

    trace id 5fe17775 ip nodenet_nat prerouting packet: iif "v-client" ... ip daddr 198.51.100.1 ... tcp dport 30080 ...
    trace id 5fe17775 ip nodenet_nat prerouting rule fib daddr type local ... vmap @prerouting_local_4 # handle 40 (verdict jump dnat_6872)
    trace id 5fe17775 ip nodenet_nat dnat_6872 rule dnat ip to ... # handle 32 (verdict accept)
    trace id 5fe17775 ip nodenet_nat postrouting packet: iif "v-client" oif "cni0" ... ip daddr 10.244.1.11 ... tcp dport 8080 ...
    trace id 5fe17775 ip nodenet_nat postrouting rule meta mark & 0x00004000 == 0x00004000 ... # handle 52 (verdict accept)

A ``packet:`` line opens each base chain the packet enters and shows its headers there (after any
DNAT); ``rule`` lines are the rules that matched, with their verdict; ``policy`` ends a base chain and
``verdict`` a jumped-to chain. A packet starts with the ``packet:`` line of the trace table's own chain,
which runs first; the kernel reuses trace ids, so that line, not the id alone, starts a new packet. An id
can also change on the way (a bridged packet has a new one after prerouting): a base chain entered under
an unknown id is the packet's that came last with the same source address and port.

Names: a rule that carries a comment is named by it (the nft backend's rules, kube-proxy's). A verdict-map
lookup is named by the comment of the element the packet's own key found (the nft backend keeps keyed
rules as map elements). iptables-nft rules keep their comment in an xtables match that nft does not print:
their name is the comment of the line at the same position in ``iptables-nft-save``.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress
import json
import re

from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.lines import line_rule_names
from ansible_collections.nodenet.nat.plugins.module_utils.nat_trace.ruleset import TRACE_FAMILY, TRACE_TABLE

OWNED_TABLE = "nodenet_nat"
OWNED_CHAIN_PREFIX = "NODENET-"
TRACE_LINE = re.compile(r"trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) "
                        r"(?P<type>packet:|rule|policy|verdict)(?: (?P<rest>.*))?")
RULE_REST = re.compile(r"(?P<rule>.*?)(?: # handle (?P<handle>[0-9]+))? \(verdict (?P<verdict>[^)]*)\)")
COMMENT = re.compile(r'comment "(?P<name>[^"]*)"')
COUNTER = re.compile(r"counter packets [0-9]+ bytes [0-9]+")
VMAP = re.compile(r"(?P<key>.*) vmap @(?P<map>\S+)$")
XT_COMMENT = re.compile(r'--comment (?:"(?P<quoted>[^"]*)"|(?P<plain>\S+))')
# Key selectors of a map lookup -> the packet field (see packet_fields) they read.
SELECTORS = {("ip", "saddr"): "saddr", ("ip6", "saddr"): "saddr", ("ip", "daddr"): "daddr", ("ip6", "daddr"): "daddr",
             ("meta", "l4proto"): "protocol", ("th", "dport"): "dport", ("th", "sport"): "sport",
             ("tcp", "dport"): "dport", ("udp", "dport"): "dport", ("sctp", "dport"): "dport",
             ("meta", "iifname"): "iif", ("meta", "oifname"): "oif"}
SINGLE_SELECTORS = {"iifname": "iif", "oifname": "oif"}
SAVE_TOOLS = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}


def packet_fields(text):
    """{iif, oif, saddr, daddr, protocol, sport, dport} of a ``packet:`` line (those it shows)."""
    tokens = text.replace('"', "").split()
    fields = {}
    for index, token in enumerate(tokens[:-1]):
        following = tokens[index + 1]
        if token in ("iif", "oif"):
            fields[token] = following
        elif token in ("ip", "ip6") and following in ("saddr", "daddr") and index + 2 < len(tokens):
            fields[following] = tokens[index + 2]
        elif token in ("ip", "ip6") and following in ("protocol", "nexthdr") and index + 2 < len(tokens):
            fields.setdefault("protocol", tokens[index + 2])
        elif token in ("tcp", "udp", "sctp") and following in ("sport", "dport") and index + 2 < len(tokens):
            fields["protocol"] = token
            fields[following] = tokens[index + 2]
        elif token in ("icmp", "icmpv6") and following == "type":
            fields["protocol"] = "icmp" if token == "icmp" else "ipv6-icmp"
    return fields


def _event(match, packet):
    event = dict(family=match.group("family"), table=match.group("table"), chain=match.group("chain"),
                 type=match.group("type").rstrip(":"), rule=None, handle=None, verdict=None, name=None)
    event["owned"] = ((event["table"] == OWNED_TABLE and event["family"] in ("ip", "ip6"))
                      or event["chain"].startswith(OWNED_CHAIN_PREFIX))
    rest = match.group("rest") or ""
    if event["type"] == "packet":
        event["packet"] = packet_fields(rest)
    elif event["type"] == "rule":
        found = RULE_REST.fullmatch(rest)
        if found:
            # The counter values nft prints with a trace are not the rule's: drop them; iptables-nft leaves double spaces.
            event["rule"] = " ".join(COUNTER.sub("counter", found.group("rule")).split())
            event["handle"] = int(found.group("handle")) if found.group("handle") else None
            event["verdict"] = found.group("verdict")
            comment = COMMENT.search(event["rule"])
            event["name"] = comment.group("name") if comment else None
        else:
            event["rule"] = rest
    else:
        event["verdict"] = rest.strip()
    return event


def parse_trace(lines):
    """[{packet: fields of the packet as it arrived, events: [event]}], one per traced packet, in order.

    An event: family, table, chain, type (packet, rule, policy, verdict), rule (text), handle, verdict, name, owned;
    packet events carry the packet's fields at that base chain. The trace table's own events are left out.
    """
    packets, current = [], {}
    for line in lines:
        match = TRACE_LINE.fullmatch(line.rstrip())
        if match is None:
            continue
        if (match.group("family"), match.group("table")) == (TRACE_FAMILY, TRACE_TABLE):
            if match.group("type") == "packet:":
                current[match.group("id")] = dict(packet=packet_fields(match.group("rest") or ""), events=[])
                packets.append(current[match.group("id")])
            continue
        packet = current.get(match.group("id"))
        if packet is None and match.group("type") == "packet:":
            # The id can change on the way (a bridged packet gets a new one after prerouting): a base chain entered
            # under an unknown id belongs to the packet that came last with the same source address and port.
            packet = _same_packet(packets, packet_fields(match.group("rest") or ""))
            if packet is not None:
                current[match.group("id")] = packet
        if packet is not None:
            packet["events"].append(_event(match, packet))
    for packet in packets:
        _mark_empty_jumps(packet["events"])
    return packets


def _same_packet(packets, fields):
    keys = [key for key in ("saddr", "sport", "protocol") if key in fields]
    for packet in reversed(packets):
        if "saddr" in keys and all(packet["packet"].get(key) == fields[key] for key in keys):
            return packet
    return None


def _mark_empty_jumps(path):
    """``target_matched`` on jump and goto events: whether a rule of the chain jumped to matched next.

    nft reports the rules that match, not the end of a chain that matched nothing; a verdict-map lookup of the nft
    backend jumps to the shared chain that holds the rest of the keyed rule (its source, its mark...), so a lookup
    whose chain matched nothing is a rule whose key matched but whose other matches did not.
    """
    for index, event in enumerate(path):
        verdict = (event["verdict"] or "").split()
        if event["type"] == "rule" and len(verdict) == 2 and verdict[0] in ("jump", "goto"):
            following = path[index + 1] if index + 1 < len(path) else None
            event["target_matched"] = bool(following and following["type"] == "rule" and following["chain"] == verdict[1]
                                           and (following["family"], following["table"]) == (event["family"], event["table"]))


def applied(event):
    """Whether a rule event is a rule that applied: not a keyed rule (a map lookup) whose other matches failed."""
    return event["type"] == "rule" and not (event.get("target_matched") is False and " vmap @" in (event["rule"] or ""))


def count_packets(lines):
    """How many traced packets ``lines`` hold (the trace table's own ``packet:`` lines)."""
    prefix = " %s %s " % (TRACE_FAMILY, TRACE_TABLE)
    return sum(1 for line in lines if line.startswith("trace id ") and prefix in line and " packet: " in line)


# ---- names --------------------------------------------------------------------------------------------------

def lookup_key(rule_text):
    """The packet fields a verdict-map lookup keys on, and the map: ([field], map name), or None."""
    found = VMAP.fullmatch(rule_text)
    if found is None:
        return None
    tokens = found.group("key").split()
    fields = []
    index = len(tokens) - 1
    while index >= 0:
        if index >= 1 and (tokens[index - 1], tokens[index]) in SELECTORS:
            fields.insert(0, SELECTORS[tokens[index - 1], tokens[index]])
            index -= 2
        elif tokens[index] in SINGLE_SELECTORS:
            fields.insert(0, SINGLE_SELECTORS[tokens[index]])
            index -= 1
        else:
            return None
        if index >= 0 and tokens[index] == ".":
            index -= 1
        else:
            break
    return fields, found.group("map")


def _normal(value):
    text = u"%s" % value
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _part_matches(part, value):
    if isinstance(part, dict) and "prefix" in part:
        try:
            return ipaddress.ip_address(u"%s" % value) in ipaddress.ip_network(u"%s/%d" % (part["prefix"]["addr"], part["prefix"]["len"]))
        except ValueError:
            return False
    if isinstance(part, dict) and "range" in part:
        low, high = part["range"]
        try:
            if isinstance(low, int):
                return low <= int(value) <= high
            return ipaddress.ip_address(u"%s" % low) <= ipaddress.ip_address(u"%s" % value) <= ipaddress.ip_address(u"%s" % high)
        except ValueError:
            return False
    return _normal(part) == _normal(value)


def element_comment(map_listing, values):
    """The comment of the element of a ``nft -j list map`` output whose key matches ``values``, or None."""
    for item in json.loads(map_listing).get("nftables", []):
        for element in item.get("map", {}).get("elem", []):
            key = element[0] if isinstance(element, list) else element
            comment = None
            if isinstance(key, dict) and "elem" in key:
                comment = key["elem"].get("comment")
                key = key["elem"]["val"]
            parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
            if len(parts) == len(values) and all(_part_matches(part, value) for part, value in zip(parts, values)):
                return comment
    return None


def xtables_comments(save_text, chain):
    """The comments (or None) of the ``-A CHAIN`` lines of an ``iptables-save`` output, in order; in the iptables
    backend's segment chains a line without one is named by the line before it (its rule's first line)."""
    comments = []
    for line in save_text.splitlines():
        if line.startswith("-A %s " % chain):
            found = XT_COMMENT.search(line)
            comments.append((found.group("quoted") if found.group("quoted") is not None else found.group("plain")) if found else None)
    return line_rule_names(chain, comments)


def chain_handles(chain_listing):
    """The rule handles of a ``nft -j list chain`` output, in order."""
    return [item["rule"]["handle"] for item in json.loads(chain_listing).get("nftables", []) if "rule" in item]


class Namer(object):
    """Names the rule events of a trace from listings read once each (``run_command``; ``which`` finds the tools)."""

    def __init__(self, run_command, which):
        self.run_command = run_command
        self.which = which
        self._cache = {}

    def _listing(self, argv):
        key = tuple(argv)
        if key not in self._cache:
            rc, out, dummy = self.run_command(list(argv))
            self._cache[key] = out if rc == 0 else None
        return self._cache[key]

    def name_all(self, packets):
        nft = self.which("nft")
        for packet in packets:
            fields = dict(packet["packet"])
            for event in packet["events"]:
                if event["type"] == "packet":
                    fields = event["packet"]
                elif event["type"] == "rule" and event["name"] is None and nft:
                    event["name"] = self._map_name(nft, event, fields) or self._xtables_name(nft, event)
        return packets

    def _map_name(self, nft, event, fields):
        lookup = lookup_key(event["rule"] or "")
        if lookup is None:
            return None
        names, map_name = lookup
        if any(name not in fields for name in names):
            return None
        listing = self._listing([nft, "-j", "list", "map", event["family"], event["table"], map_name])
        return element_comment(listing, [fields[name] for name in names]) if listing else None

    def _xtables_name(self, nft, event):
        tool = self.which(SAVE_TOOLS.get(event["family"], "")) if event["family"] in SAVE_TOOLS else None
        if tool is None or event["handle"] is None or event["table"] == OWNED_TABLE:
            return None
        save = self._listing([tool, "-t", event["table"]])
        listing = self._listing([nft, "-j", "list", "chain", event["family"], event["table"], event["chain"]])
        if not save or not listing:
            return None
        handles, comments = chain_handles(listing), xtables_comments(save, event["chain"])
        if len(handles) != len(comments) or event["handle"] not in handles:
            return None
        return comments[handles.index(event["handle"])]


def describe_event(event):
    """One line of the path, for people."""
    where = "%s %s %s" % (event["family"], event["table"], event["chain"])
    if event["type"] == "packet":
        fields = event["packet"]
        interfaces = " ".join("%s %s" % (key, fields[key]) for key in ("iif", "oif") if key in fields)
        ends = [fields.get("saddr", "?") + (":%s" % fields["sport"] if "sport" in fields else ""),
                fields.get("daddr", "?") + (":%s" % fields["dport"] if "dport" in fields else "")]
        text = "%s: packet %s%s -> %s %s" % (where, interfaces + " " if interfaces else "", ends[0], ends[1], fields.get("protocol", ""))
        return text.rstrip()
    if event["type"] == "rule":
        unmatched = ", where no rule matched" if event.get("target_matched") is False else ""
        return "%s: %s (%s%s)" % (where, event["name"] or event["rule"], event["verdict"], unmatched)
    return "%s: %s %s" % (where, event["type"], event["verdict"])
