# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the owned postrouting rules do to the egress of a pod CIDR (the evidence of masquerade_missing).

Egress here is the first packet of a new connection from an address inside the pod CIDR to an address
outside every range the rules list (the internet), of any protocol, not DNATed, and carrying no mark
bits when it reaches postrouting. The nat hooks see only that first packet of a connection; its
translation applies to the whole connection.

The owned rules of the CIDR's family are walked in order, as the kernel walks them, the mark rules of
prerouting (but those that match an input interface: pods arrive through their bridge, and a rule for
one interface marks other traffic, as kube-proxy marks external traffic), then postrouting, over
*classes* of such packets: a part of the pod CIDR and the mark its packets carry so far. A rule whose
source takes only some of a class splits it. Then, for the part the rule matches:

- ``mark`` changes the mark of the class (node_egress's ``-clear`` and ``-exempt``; the exemption
  rule sets its bit only for listed destinations, so egress keeps mark 0);
- ``masquerade`` / ``snat`` takes the class: it is covered (``egress-*-nat`` matches packets WITHOUT
  the exemption bit, so it takes egress; ``nodeport-masquerade-*`` matches only packets WITH 0x4000,
  which egress does not carry, so it does not);
- ``return`` lets the class leave untranslated (an exemption of all of its egress).

A rule matches a class when its source takes it and none of its other matches excludes egress: no
destination list (a negated one exempts destinations and still matches), no ``destination_type:
local``, no protocol (and so no ports), connection states that include ``new`` (a rule for DNATed
connections, as the hairpin role's, never sees plain egress), and a mark match that the class's
mark passes. An ``out_interface`` restricts egress to that interface: the rule still covers what
leaves through it, and the result names the interface.

What no rule takes leaves the node with its pod source address.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections

from ansible_collections.nodenet.nat.plugins.module_utils.model import format_mark, format_port_range

NAT_TYPES = ("masquerade", "snat")
# The chains egress walks (nat prerouting, then nat postrouting) and the rule types that act on it there.
WALKED = (("prerouting", ("mark", "return")), ("postrouting", NAT_TYPES + ("mark", "return")))

# A part of the pod CIDR, the mark its egress carries so far, and the rule that set it (None: no rule).
_Class = collections.namedtuple("_Class", ["network", "mark", "marked_by"])

# ``taken``: [(network, rule name, out_interface or None)], the parts a masquerade/SNAT rule translates;
# ``exempted``: [(network, rule name)], the parts a return rule lets out untranslated; ``untouched``:
# [network], the parts no rule takes; ``passed``: {NAT rule name: why it does not take (the rest of) egress}.
Egress = collections.namedtuple("Egress", ["network", "taken", "exempted", "untouched", "passed"])


def _family(network):
    return "ipv4" if network.version == 4 else "ipv6"


def split_by_source(network, sources, negate):
    """(matched, unmatched): the parts of ``network`` that a source match on ``sources`` (negated or not) matches."""
    if not sources:
        return [network], []
    inside, outside = [], [network]
    for source in sources:
        if source.version != network.version:
            continue
        rest = []
        for part in outside:
            if part.subnet_of(source):
                inside.append(part)
            elif source.subnet_of(part):
                inside.append(source)
                rest.extend(part.address_exclude(source))
            else:
                rest.append(part)
        outside = rest
    inside, outside = sorted(inside), sorted(outside)
    return (outside, inside) if negate else (inside, outside)


def _list(networks):
    return ", ".join(str(network) for network in networks)


def excludes_egress(rule, egress_class):
    """None when ``rule``'s matches other than its source let the class's egress through, else why not."""
    if rule.destination:
        everything = any(network.prefixlen == 0 for network in rule.destination)
        if not rule.destination_negate and not everything:
            return "matches only destinations %s" % _list(rule.destination)
        if rule.destination_negate and everything:
            return "matches no destination (it excludes %s)" % _list(rule.destination)
    if rule.destination_type and not rule.destination_type_negate:
        return "matches only %s destinations" % rule.destination_type
    if rule.protocol:
        ports = " port %s" % ",".join(format_port_range(ports) for ports in rule.destination_ports) if rule.destination_ports else ""
        return "matches only %s%s" % (rule.protocol, ports)
    if rule.ct_state and "new" not in rule.ct_state:
        return "matches only connections in state %s (egress is a new connection)" % ",".join(rule.ct_state)
    if rule.mark is not None:
        marked = (egress_class.mark & rule.mark.mask) == rule.mark.value
        if marked == rule.mark_negate:
            carried = "mark 0x%x" % egress_class.mark
            if egress_class.marked_by:
                carried += ", set by %s" % egress_class.marked_by
            return "matches only packets %s mark %s (egress carries %s)" % (
                "without" if rule.mark_negate else "with", format_mark(rule.mark), carried)
    return None


def walk_egress(rules, network):
    """Egress of ``network`` (an ip_network) through ``rules`` (NatRule, in host order); see the module docstring."""
    family = _family(network)
    classes = [_Class(network, 0, None)]
    taken, exempted, passed = [], [], collections.OrderedDict()
    for chain, types in WALKED:
        chain_rules = [rule for rule in rules if rule.chain == chain and rule.family == family and rule.type in types
                       and not (rule.in_interface and chain == "prerouting")]
        finished = []  # classes a prerouting return took out of the rest of that chain
        for rule in chain_rules:
            next_classes = []
            for egress_class in classes:
                matched, unmatched = split_by_source(egress_class.network, rule.source, rule.source_negate)
                why = excludes_egress(rule, egress_class) if matched else "matches only sources %s%s" % (
                    "outside " if rule.source_negate else "", _list(rule.source))
                if why:
                    if rule.type in NAT_TYPES:
                        passed.setdefault(rule.name, why)
                    next_classes.append(egress_class)
                    continue
                next_classes.extend(egress_class._replace(network=part) for part in unmatched)
                for part in matched:
                    if rule.type == "mark":
                        mark = (egress_class.mark & ~rule.set_mark.mask) | rule.set_mark.value
                        next_classes.append(_Class(part, mark, rule.name))
                    elif rule.type == "return" and chain == "prerouting":
                        finished.append(egress_class._replace(network=part))
                    elif rule.type == "return":
                        exempted.append((part, rule.name))
                    else:
                        taken.append((part, rule.name, rule.out_interface))
            classes = next_classes
        classes += finished
    return Egress(network, taken, exempted, sorted(egress_class.network for egress_class in classes), dict(passed))


def covered(egress):
    """Whether every part of the pod CIDR's egress is translated."""
    return not egress.untouched and not egress.exempted


def describe(egress):
    """The evidence of an egress that is not covered in full: [sentence] (what leaves untranslated, what the NAT rules
    that do not take it match instead)."""
    evidence = []
    if egress.untouched and egress.untouched != [egress.network]:
        evidence.append("%s leave with pod source addresses" % _list(egress.untouched))
    for network, name in egress.exempted:
        evidence.append("return rule %s lets %s out untranslated" % (name, network))
    if egress.taken:
        evidence.append("covered: %s" % _list(network for network, dummy, dummy in egress.taken))
    evidence.extend("%s %s" % (name, why) for name, why in egress.passed.items())
    return evidence
