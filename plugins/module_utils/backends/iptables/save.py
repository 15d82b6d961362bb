# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How rules are read: ``iptables-save -t nat`` output -> owned lines -> NatRule list.

Reading has two steps. ``owned_objects`` picks the owned chain declarations, the owned chains'
lines and the jump rules to them out of the listing, a plain text scan. ``parse_owned`` turns the
owned lines into rules, merging consecutive lines with the same comment back into one rule (in a segment
chain, a line without a comment belongs to the rule of the line before it), and
reports as drift whatever is not in the shape lines.py writes (unknown lines, missing or extra
jumps, chains without rules).
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import itertools
import shlex

from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.lines import (
    BUILTIN_CHAINS, CHAIN_PREFIX, HOOK_OF_CHAIN, MARKER_PREFIX, OWNED_CHAINS, TARGETS, Line, jump_tokens, jumped_segment, line_rule_names,
    rule_lines,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, FULL_MARK, Endpoint, Mark, PortRange, address_families, make_rule, parse_address, parse_network,
)

PROBABILITY_TOLERANCE = 1e-6  # the kernel keeps probability as a 31-bit fraction
_RULE_TYPES = dict((target, rule_type) for rule_type, target in TARGETS.items())

# The owned part of one family's listing: declared owned chains, {chain: [spec]} of their lines,
# {builtin chain: [(spec, tokens)]} of jumps to owned chains, {chain: [(packets, bytes)]} of the
# lines when the listing has counters (iptables-save -c), and ``others``: how many rules, chains
# and non-ACCEPT policies of other tools the nat table holds.
OwnedObjects = collections.namedtuple("OwnedObjects", ["chains", "lines", "jumps", "counters", "others"])


class _Unparsable(ValueError):
    """A line in an owned chain that no NatRule renders to."""


def tokens_of(spec):
    """The tokens of one saved rule: iptables-save quotes only values with spaces or quotes."""
    return shlex.split(spec) if '"' in spec or "'" in spec or "\\" in spec else spec.split()


def owned_objects(text):
    """OwnedObjects of one family's ``iptables-save -t nat`` output (a text scan, no rule parsing)."""
    chains, lines, jumps, counters = [], collections.OrderedDict(), {}, {}
    others = 0
    in_nat = False
    for raw in text.splitlines():
        line = raw.strip()
        counter = None
        if line.startswith("["):
            # iptables-save -c: "[packets:bytes] -A CHAIN ..."
            counter_text, dummy, line = line[1:].partition("] ")
            packets, dummy, octets = counter_text.partition(":")
            counter = (int(packets), int(octets))
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat or line.startswith("#"):
            continue
        elif line.startswith(":" + CHAIN_PREFIX):
            chains.append(line[1:].split()[0])
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["", ""])[:2]
            others += name not in BUILTIN_CHAINS.values() or policy != "ACCEPT"
        elif line.startswith("-A "):
            dummy, chain, spec = (line.split(None, 2) + [""])[:3]
            if chain.startswith(CHAIN_PREFIX):
                lines.setdefault(chain, []).append(spec)
                counters.setdefault(chain, []).append(counter)
            elif chain in BUILTIN_CHAINS.values() and CHAIN_PREFIX in spec:
                tokens = tokens_of(spec)
                target = tokens[tokens.index("-j") + 1] if "-j" in tokens[:-1] else ""
                if target.startswith(CHAIN_PREFIX):
                    jumps.setdefault(chain, []).append((spec, tokens))
                    continue
                others += 1
            else:
                others += 1
    return OwnedObjects(chains, lines, jumps, counters, others)


def rule_counters(owned):
    """{rule name: [packets, bytes]} summed over each rule's lines, of a listing with counters."""
    totals = {}
    for chain, specs in owned.lines.items():
        names = line_rule_names(chain, [_comment(spec) for spec in specs])
        for name, counter in zip(names, owned.counters.get(chain, ())):
            if name is not None and counter is not None:
                total = totals.setdefault(name, [0, 0])
                total[0] += counter[0]
                total[1] += counter[1]
    return totals


def _comment(spec):
    tokens = tokens_of(spec)
    return tokens[tokens.index("--comment") + 1] if "--comment" in tokens[:-1] else None


def parse_owned(family, owned):
    """(rules, drift) of one family's OwnedObjects; drift lists what render would rewrite."""
    rules, drift, used = [], [], set()
    for chain in [OWNED_CHAINS[hook] for hook in CHAINS if OWNED_CHAINS[hook] in owned.chains]:
        hook = HOOK_OF_CHAIN[chain]
        where = "%s %s" % (family, chain)
        chain_rules = _parse_chain(family, hook, _segments_expanded(hook, owned, used), where, drift)
        if not chain_rules:
            drift.append("%s: owned chain without rules" % where)
        found = [tokens for dummy, tokens in owned.jumps.get(BUILTIN_CHAINS[hook], [])]
        if found != [jump_tokens(hook)]:
            drift.append("%s: expected one jump rule from %s, found %d" % (where, BUILTIN_CHAINS[hook], len(found)))
        rules.extend(chain_rules)
    drift[:0] = ["%s %s: chain this collection does not use" % (family, chain) for chain in owned.chains
                 if chain not in HOOK_OF_CHAIN and chain not in used and not chain.startswith(MARKER_PREFIX)]
    for builtin in sorted(owned.jumps):
        if CHAIN_PREFIX + builtin not in owned.chains:
            drift.append("%s %s: jump rule to a chain this collection does not keep there" % (family, builtin))
    return rules, drift


def _segments_expanded(hook, owned, used):
    """[(line, whether it may continue the rule of the line before it)] of a hook chain, each jump to one of its
    segments replaced by the segment's lines (once): in a segment, all lines but its first may."""
    specs = []
    for spec in owned.lines.get(OWNED_CHAINS[hook], []):
        target = jumped_segment(hook, spec)
        if target is None or target in used or target not in owned.chains:
            specs.append((spec, False))
        else:
            used.add(target)
            specs.extend((line, index > 0) for index, line in enumerate(owned.lines.get(target, [])))
    return specs


def _parse_chain(family, hook, specs, where, drift):
    """Rules of one owned chain ([(line, whether it may continue the rule before it)]): consecutive lines with
    the same comment form one rule."""
    lines, continued = [], None
    for spec, continues in specs:
        try:
            lines.append(_parse_line(family, hook, tokens_of(spec), continued if continues else None))
            continued = lines[-1].rule.name
        except (_Unparsable, ValueError) as error:
            drift.append("%s: cannot read %r (%s)" % (where, spec, error))
            continued = None
    rules, seen = [], set()
    for name, group in itertools.groupby(lines, key=lambda line: line.rule.name):
        group = list(group)
        rule = _merge(group)
        if name in seen or not _same_lines(rule, group):
            drift.append("%s: rule %r is not in the shape this collection writes" % (where, name))
        seen.add(name)
        rules.append(rule)
    return rules


def _merge(lines):
    first = lines[0].rule
    if len(lines) == 1:
        return first

    def variant(rule):
        return rule.source, rule.destination, rule.destination_ports

    def union(field):
        return tuple(itertools.chain.from_iterable(_unique(getattr(line.rule, field) for line in lines)))

    endpoints = tuple(line.rule.to_destination[0] for line in lines
                      if variant(line.rule) == variant(first) and line.rule.to_destination)
    return first._replace(source=union("source"), destination=union("destination"),
                          destination_ports=union("destination_ports"), to_destination=endpoints)


def _unique(items):
    found = []
    for item in items:
        if item not in found:
            found.append(item)
    return found


def _same_lines(rule, found):
    try:
        expected = rule_lines(rule)
    except ValueError:
        return False
    return (len(expected) == len(found)
            and all(a.rule == b.rule and (a.probability is None) == (b.probability is None)
                    and abs((a.probability or 0) - (b.probability or 0)) < PROBABILITY_TOLERANCE
                    for a, b in zip(expected, found)))


def _parse_line(family, hook, tokens, continued=None):
    """The Line that ``tokens`` (one saved rule without ``-A CHAIN``) stands for; ``continued``: the name of a line
    without a comment."""
    fields = dict(chain=hook, family=family, name=continued, type=None)
    probability = None
    negate = False
    position = 0
    while position < len(tokens):
        option = tokens[position]
        if option == "!":
            negate = True
            position += 1
            continue
        if option == "--random-fully":
            fields["random_fully"] = True
            position += 1
            continue
        if option not in _OPTIONS or (negate and option not in _NEGATABLE):
            raise _Unparsable("unsupported option %s%s" % ("! " if negate else "", option))
        if position + 1 >= len(tokens):
            raise _Unparsable("%s without a value" % option)
        value = tokens[position + 1]
        position += 2
        if option == "--probability":
            probability = float(value)
        elif option == "--mode" and value != "random":
            raise _Unparsable("statistic mode %s" % value)
        elif _OPTIONS[option] is not None:     # None: a module name (its options follow) or --mode random
            _OPTIONS[option](fields, value, negate, family)
        negate = False
    if fields["name"] is None or fields["type"] is None:
        raise _Unparsable("no rule comment or no target")
    rule = make_rule(**fields)
    if address_families(rule) - set([family]):
        raise _Unparsable("an address of another family than %s" % family)
    return Line(rule, probability)


def _network(text):
    network = parse_network(text)[0]
    if network is None:
        raise ValueError("%s has host bits set" % text)
    return network


def _port_range(text, separator):
    first, dummy, last = text.partition(separator)
    return PortRange(int(first), int(last or first))


def _mark(text):
    value, dummy, mask = text.partition("/")
    return Mark(int(value, 0), int(mask, 0) if mask else FULL_MARK)


def _set(field, convert=lambda value: value):
    def handler(fields, value, negate, family):
        fields[field] = convert(value)
    return handler


def _set_negatable(field, convert):
    def handler(fields, value, negate, family):
        fields[field] = convert(value)
        fields[field + "_negate"] = negate
    return handler


def _split_ports(value, family):
    """``ADDRESSES[:PORTS]`` as NAT targets print it (IPv6 addresses in brackets when ports follow)."""
    if value.startswith("["):
        addresses, dummy, ports = value[1:].partition("]:")
        return addresses.rstrip("]"), ports
    if family == "ipv4":
        addresses, dummy, ports = value.partition(":")
        return addresses, ports
    return value, ""


def _snat_source(fields, value, negate, family):
    addresses, ports = _split_ports(value, family)
    first, dummy, last = addresses.partition("-")
    fields["to_source"] = (parse_address(first), parse_address(last or first))
    if ports:
        fields["to_ports"] = _port_range(ports, "-")


def _dnat_destination(fields, value, negate, family):
    address, port = _split_ports(value, family)
    fields["to_destination"] = (Endpoint(parse_address(address), int(port) if port else None),)


def _rule_type(target):
    if target not in _RULE_TYPES:
        raise _Unparsable("target %s" % target)
    return _RULE_TYPES[target]


def _destination_type(value):
    if value != "LOCAL":
        raise _Unparsable("address type %s" % value)
    return "local"


_OPTIONS = {
    "-s": _set_negatable("source", lambda value: (_network(value),)),
    "-d": _set_negatable("destination", lambda value: (_network(value),)),
    "-i": _set("in_interface"),
    "-o": _set("out_interface"),
    "-p": _set("protocol"),
    "--dport": _set("destination_ports", lambda value: (_port_range(value, ":"),)),
    "--dports": _set("destination_ports", lambda value: tuple(_port_range(item, ":") for item in value.split(","))),
    "--dst-type": _set_negatable("destination_type", _destination_type),
    "--mark": _set_negatable("mark", _mark),
    "--ctstate": _set("ct_state", lambda value: tuple(sorted(state.lower() for state in value.split(",")))),
    "--comment": _set("name"),
    "-j": _set("type", _rule_type),
    "--to-ports": _set("to_ports", lambda value: _port_range(value, "-")),
    "--to-source": _snat_source,
    "--to-destination": _dnat_destination,
    "--set-xmark": _set("set_mark", _mark),
}
_OPTIONS.update(dict.fromkeys(("-m", "--mode", "--probability")))   # read by _parse_line itself
_NEGATABLE = ("-s", "-d", "--dst-type", "--mark")
