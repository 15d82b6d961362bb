# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The troubleshooting checklist of nat_info: a gathered ``Node`` -> problems.

Each check reads the Node that facts.py built and returns its findings; it reads nothing from
the host. A check whose evidence could not be read raises CheckSkipped with the reason: it never
passes silently.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import ipaddress

from ansible_collections.nodenet.nat.plugins.module_utils.nat_info.egress import NAT_TYPES, covered, describe, walk_egress
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import IPV4_FORWARD, IPV6_FORWARD

# The kernel's message when a new flow finds the conntrack table full.
TABLE_FULL_MESSAGE = "table full, dropping packet"
RP_FILTER_STRICT = 1

# A finding: ``id`` is stable (scripts match on it), ``fix`` says what to run or set.
Problem = collections.namedtuple("Problem", ["id", "severity", "message", "fix"])


class CheckSkipped(Exception):
    """The evidence of a check could not be read; the message says why."""


def check_forwarding(node, options):
    families = ["ipv4"] + (["ipv6"] if any(network.version == 6 for network in options["pod_networks"]) else [])
    problems = []
    for family in families:
        if node.facts["forwarding"][family] is False:
            key = IPV4_FORWARD if family == "ipv4" else IPV6_FORWARD
            problems.append(Problem(
                "forwarding_off", "error",
                "%s forwarding is off (%s = 0): pod egress and DNAT to other hosts are not routed" % (family, key),
                "nodenet.nat.forwarding with %s: true (or sysctl -w %s=1)" % (family, key)))
    return problems


def check_masquerade(node, options):
    """Each pod CIDR's egress, walked through the owned postrouting rules (egress.py), is translated in full."""
    if node.rules is None:
        raise CheckSkipped(node.unreadable["rules"])
    problems = []
    for network in options["pod_networks"]:
        egress = walk_egress(node.rules, network)
        if covered(egress):
            continue
        evidence = describe(egress)
        if node.unrecognized:
            # A rule the backend could not read may be the one that covers it.
            evidence.append("%d owned objects could not be read: %s" % (len(node.unrecognized), "; ".join(node.unrecognized)))
        problems.append(Problem(
            "masquerade_missing", "error",
            "no masquerade or SNAT rule of this collection covers pod CIDR %s%s: its traffic leaves with pod source addresses%s"
            % (network, " in full" if egress.taken else "", " (%s)" % "; ".join(evidence) if evidence else ""),
            "nodenet.nat.node_egress role with %s in node_egress_pod_cidrs" % network))
    return problems


def check_conntrack_usage(node, options):
    conntrack = node.facts["conntrack"]
    if not conntrack["loaded"]:
        raise CheckSkipped(node.unreadable["conntrack"])
    if conntrack["usage_percent"] < options["conntrack_threshold"]:
        return []
    return [Problem("conntrack_near_full", "warning",
                    "the conntrack table is %s%% full (%d of %d entries, threshold %d%%): new flows are dropped once it is full"
                    % (conntrack["usage_percent"], conntrack["count"], conntrack["max"], options["conntrack_threshold"]),
                    "raise the table size: nodenet.nat.conntrack with max or max_per_core")]


def check_table_full_logged(node, options):
    if node.kernel_log is None:
        raise CheckSkipped("cannot read the kernel log: %s" % node.unreadable["kernel_log"])
    lines = [line for line in node.kernel_log.splitlines() if TABLE_FULL_MESSAGE in line]
    if not lines:
        return []
    return [Problem("conntrack_table_full", "error",
                    "the kernel log shows %d conntrack \"%s\" messages, the last: %s" % (len(lines), TABLE_FULL_MESSAGE, lines[-1].strip()),
                    "raise the table size (nodenet.nat.conntrack with max or max_per_core) and look for what opens so many flows")]


def check_rp_filter(node, options):
    uplinks = node.facts["uplinks"]
    strict = sorted(interface for interface, value in node.facts["rp_filter"].items() if value == RP_FILTER_STRICT)
    if len(uplinks) < 2 or not strict:
        return []
    return [Problem("rp_filter_strict_multihomed", "warning",
                    "strict reverse path filtering (rp_filter=1) on %s of a node with %d uplinks (%s): packets arriving on an "
                    "interface other than the route back to their source are dropped" % (", ".join(strict), len(uplinks), ", ".join(uplinks)),
                    "nodenet.nat.forwarding with rp_filter: loose (and per-interface rp_filter loose or off)")]


def _pod_bridges(node):
    return dict((name, bridge) for name, bridge in node.facts["bridges"].items() if bridge["pod_bridge"])


def check_hairpin(node, options):
    problems = []
    for name, bridge in sorted(_pod_bridges(node).items()):
        # kubelet's promiscuous-bridge mode hairpins through the promiscuous bridge instead.
        off = sorted(port for port, state in bridge["ports"].items() if not state["hairpin"])
        if off and not bridge["promiscuous"]:
            problems.append(Problem(
                "hairpin_off", "warning",
                "bridge %s carries pods but hairpin mode is off on its ports %s: a pod reaching its own service "
                "through the node gets no answer" % (name, ", ".join(off)),
                "nodenet.nat.hairpin role with hairpin_bridge: %s" % name))
    return problems


def check_br_netfilter(node, options):
    bridges = sorted(_pod_bridges(node))
    if not bridges:
        return []
    state = node.facts["br_netfilter"]
    if not state["loaded"]:
        return [Problem("br_netfilter_missing", "warning",
                        "bridge %s carries pods but br_netfilter is not loaded: traffic between pods on the bridge skips "
                        "the NAT rules (service DNAT, hairpin masquerade)" % ", ".join(bridges),
                        "nodenet.nat.forwarding with bridge_nf_call_iptables: true (loads br_netfilter)")]
    if state["bridge_nf_call_iptables"] is False:
        return [Problem("bridge_nf_call_off", "warning",
                        "bridge %s carries pods but net.bridge.bridge-nf-call-iptables = 0: bridged traffic skips the NAT rules"
                        % ", ".join(bridges),
                        "nodenet.nat.forwarding with bridge_nf_call_iptables: true")]
    return []


def check_mixed_backends(node, options):
    backend = node.facts["backend"]
    if not backend["mixed"]:
        return []
    return [Problem("backends_mixed", "warning",
                    "both legacy iptables (%d rules) and iptables-nft (%d rules) hold rules: each tool lists only its own, "
                    "and both apply" % (backend["legacy_rules"], backend["nft_rules"]),
                    "move everything to one front end (kube-proxy, CNI and this collection must agree; see iptables-wrappers)")]


def _could_translate(rule, destination):
    """Whether the masquerade/SNAT ``rule`` matches connections towards ``destination`` (a SnatDestination)."""
    address = ipaddress.ip_address(destination.destination)
    if rule.family != ("ipv4" if address.version == 4 else "ipv6"):
        return False
    if rule.destination and any(address in network for network in rule.destination) == rule.destination_negate:
        return False
    if rule.protocol and rule.protocol != destination.protocol:
        return False
    return not rule.destination_ports or (destination.port is not None and any(
        ports.first <= destination.port <= ports.last for ports in rule.destination_ports))


def check_port_exhaustion(node, options):
    """Busy SNAT destinations that a masquerade/SNAT rule without random-fully could be translating."""
    if node.rules is None:
        raise CheckSkipped(node.unreadable["rules"])
    risky = [rule for rule in node.rules if rule.type in NAT_TYPES and not rule.random_fully]
    if not risky:
        return []
    if node.snat_destinations is None:
        raise CheckSkipped(node.unreadable.get("snat_destinations") or node.unreadable["conntrack"])
    problems = []
    for destination, count in node.snat_destinations.most_common():
        if count < options["port_exhaustion_threshold"]:
            break
        # A rule for other destinations (the hairpin role's, pods -> pods) cannot be the one translating these.
        names = sorted(set(rule.name for rule in risky if _could_translate(rule, destination)))
        if not names:
            continue
        problems.append(Problem(
            "port_exhaustion_risk", "warning",
            "%d %s connections from %s to %s port %s share one source port space (threshold %d), and rules %s "
            "masquerade without random-fully: port allocation collides (insert_failed) as it fills"
            % (count, destination.protocol, destination.snat_address, destination.destination, destination.port,
               options["port_exhaustion_threshold"], ", ".join(names)),
            "set random_fully: true on %s (node_egress_random_fully: true), or SNAT to several addresses" % ", ".join(names)))
    return problems


# id(s) a check reports -> check. Order is the order of the report.
CHECKS = (
    ("forwarding_off", check_forwarding),
    ("masquerade_missing", check_masquerade),
    ("conntrack_near_full", check_conntrack_usage),
    ("conntrack_table_full", check_table_full_logged),
    ("rp_filter_strict_multihomed", check_rp_filter),
    ("hairpin_off", check_hairpin),
    ("br_netfilter_missing", check_br_netfilter),
    ("backends_mixed", check_mixed_backends),
    ("port_exhaustion_risk", check_port_exhaustion),
)


def diagnose(node, options):
    """(problems as dicts, skipped checks as [{id, reason}]). ``options``: pod_networks, conntrack_threshold,
    port_exhaustion_threshold."""
    problems, skipped = [], []
    for check_id, check in CHECKS:
        try:
            problems.extend(problem._asdict() for problem in check(node, options))
        except CheckSkipped as exc:
            skipped.append(dict(id=check_id, reason=str(exc)))
    return problems, skipped
