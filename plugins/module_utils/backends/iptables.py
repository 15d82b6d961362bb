# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables backend (iptables-nft or iptables-legacy): iptables-restore scripts and iptables-save parsing.

Owned objects, all in table ``nat``: one chain per used hook (``NODENET-PREROUTING`` ...) and one
jump rule per such chain, inserted at the top of the built-in chain (``-I PREROUTING 1``) so DNAT and
masquerade exemptions win over foreign catch-all rules, as kube-proxy does with its own jumps. The
jump is added only when missing, so other tools inserting at the top later are not fought over.

Every line of a rule carries ``-m comment --comment NAME``. One NatRule can need several lines:
iptables takes one address per match, multiport takes at most 15 ports, and a DNAT to several
endpoints is a random cascade (probability 1/(n-i), the last endpoint unconditional, as in kube-proxy).
The lines are the product sources x destinations x port groups x endpoints; parsing merges
consecutive lines with the same comment back into one rule.

A negated match (``! -s``) takes exactly one network: "not in any of several" has no single-line
form in iptables, so such a rule is refused with UnsupportedRule (express the exemptions as ``return``
rules placed before it, as ip-masq-agent does).
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import ipaddress
import itertools
import shlex

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState, NatBackend, Transaction
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, FAMILIES, FULL_MARK, Endpoint, Mark, PortRange, RuleError, address_families, format_address_range, format_endpoint,
    format_mark, format_port_range, make_rule)

CHAIN_PREFIX = "NODENET-"
JUMP_COMMENT = "nodenet-nat"
BUILTIN_CHAINS = dict((hook, hook.upper()) for hook in CHAINS)
OWNED_CHAINS = dict((hook, CHAIN_PREFIX + builtin) for hook, builtin in BUILTIN_CHAINS.items())
VARIANTS = {"nft": "iptables", "legacy": "iptables-legacy"}
VARIANT_OF_BACKEND = dict((name, variant) for variant, name in VARIANTS.items())
# Family -> the prefix of its tools (iptables-nft-save, ip6tables-legacy-restore, ...).
TOOL_PREFIXES = {"ipv4": "iptables", "ipv6": "ip6tables"}
MULTIPORT_SLOTS = 15        # xt_multiport: a range takes two slots
PROBABILITY_TOLERANCE = 1e-6  # the kernel keeps probability as a 31-bit fraction
TARGETS = {"masquerade": "MASQUERADE", "snat": "SNAT", "dnat": "DNAT", "mark": "MARK", "return": "RETURN"}
_RULE_TYPES = dict((target, rule_type) for rule_type, target in TARGETS.items())

# One iptables rule line: a NatRule holding at most one source, destination, port group and
# endpoint (name = the comment), and the statistic probability of a DNAT cascade step.
_Line = collections.namedtuple("_Line", ["rule", "probability"])


class UnsupportedRule(RuleError):
    """A rule that iptables cannot express; the message names the rule and the field."""


class _Unparsable(ValueError):
    """A line in an owned chain that no NatRule renders to."""


def _jump_tokens(hook):
    return ["-m", "comment", "--comment", JUMP_COMMENT, "-j", OWNED_CHAINS[hook]]


class IptablesBackend(NatBackend):
    """``variant`` is ``nft`` (iptables-nft) or ``legacy``; ``binaries`` maps family -> (save, restore) paths."""

    def __init__(self, variant, binaries=None):
        if variant not in VARIANTS:
            raise ValueError("iptables variant must be one of %s, got %r" % (", ".join(sorted(VARIANTS)), variant))
        self.variant = variant
        self.name = VARIANTS[variant]
        self.binaries = binaries or dict(
            (family, ("%s-%s-save" % (prefix, variant), "%s-%s-restore" % (prefix, variant)))
            for family, prefix in TOOL_PREFIXES.items())

    def list_commands(self):
        return [(family, [self.binaries[family][0], "-t", "nat"]) for family in FAMILIES]

    def parse(self, outputs):
        rules, facts, drift = [], {}, []
        for family in FAMILIES:
            family_rules, facts[family] = _parse_family(family, outputs.get(family, ""), drift)
            rules.extend(family_rules)
        facts["unrecognized"] = drift
        return HostState(rules, facts)

    def render(self, rules, current):
        transactions = []
        for family in FAMILIES:
            text = _render_family(family, [rule for rule in rules if rule.family == family],
                                  current.facts.get(family, {"chains": [], "jumps": {}}))
            if text is not None:
                restore = self.binaries[family][1]
                transactions.append(Transaction(family, text, [restore, "-w", "--test", "--noflush"], [restore, "-w", "--noflush"]))
        return transactions


# ---------------------------------------------------------------- render

def _render_family(family, rules, facts):
    """The iptables-restore script for one family, or None when nothing is owned before or after."""
    used_hooks = [hook for hook in CHAINS if any(rule.chain == hook for rule in rules)]
    used_chains = [OWNED_CHAINS[hook] for hook in used_hooks]
    stale_chains = [chain for chain in facts["chains"] if chain not in used_chains]
    if not used_chains and not stale_chains and not any(facts["jumps"].values()):
        return None
    # Declaring a chain under --noflush creates it or flushes it (both variants); stale chains are
    # flushed too so that -X succeeds even when they reference each other.
    script = ["*nat"] + [":%s - [0:0]" % chain for chain in used_chains + stale_chains]
    kept_jumps = set()
    for builtin, specs in sorted(facts["jumps"].items()):
        hook = builtin.lower()
        keep = _jump_tokens(hook) if hook in used_hooks else None
        for spec in specs:
            if builtin not in kept_jumps and shlex.split(spec) == keep:
                kept_jumps.add(builtin)     # the first correct jump stays where it is
            else:
                script.append("-D %s %s" % (builtin, spec))
    script.extend("-X %s" % chain for chain in stale_chains)
    for hook in used_hooks:
        builtin = BUILTIN_CHAINS[hook]
        if builtin not in kept_jumps:
            script.append("-I %s 1 %s" % (builtin, " ".join(_jump_tokens(hook))))
    for rule in rules:
        script.extend("-A %s %s" % (OWNED_CHAINS[rule.chain], _format_line(line)) for line in _rule_lines(rule))
    script.append("COMMIT")
    return "\n".join(script) + "\n"


def _rule_lines(rule):
    """The _Line list of one rule (see the module docstring for the product order)."""
    for field in ("source", "destination"):
        if getattr(rule, field + "_negate") and len(getattr(rule, field)) != 1:
            raise UnsupportedRule("rule %r: %s_negate needs exactly one network in %s with the iptables backends, got %d "
                                  "(place return rules for the exempt networks before it instead)"
                                  % (rule.name, field, field, len(getattr(rule, field))))
    lines = []
    combinations = itertools.product(_singles(rule.source), _singles(rule.destination), _port_groups(rule.destination_ports))
    for source, destination, ports in combinations:
        variant = rule._replace(source=source, destination=destination, destination_ports=ports)
        endpoints = rule.to_destination
        if not endpoints:
            lines.append(_Line(variant, None))
        for index, endpoint in enumerate(endpoints):
            remaining = len(endpoints) - index
            lines.append(_Line(variant._replace(to_destination=(endpoint,)), 1.0 / remaining if remaining > 1 else None))
    return lines


def _singles(networks):
    return [(network,) for network in networks] or [()]


def _port_groups(ranges):
    """Split port ranges into groups that fit one multiport match."""
    groups, group, slots = [], [], 0
    for port_range in ranges:
        cost = 1 if port_range.first == port_range.last else 2
        if slots + cost > MULTIPORT_SLOTS:
            groups.append(tuple(group))
            group, slots = [], 0
        group.append(port_range)
        slots += cost
    groups.append(tuple(group))
    return groups


def _format_line(line):
    rule = line.rule
    args = []
    for option, networks, negate in (("-s", rule.source, rule.source_negate), ("-d", rule.destination, rule.destination_negate)):
        if networks:
            args += (["!"] if negate else []) + [option, str(networks[0])]
    if rule.in_interface:
        args += ["-i", rule.in_interface]
    if rule.out_interface:
        args += ["-o", rule.out_interface]
    if rule.protocol:
        args += ["-p", rule.protocol]
    if len(rule.destination_ports) == 1:
        args += ["-m", rule.protocol, "--dport", format_port_range(rule.destination_ports[0], ":")]
    elif rule.destination_ports:
        args += ["-m", "multiport", "--dports", ",".join(format_port_range(port_range, ":") for port_range in rule.destination_ports)]
    if rule.destination_type:
        args += ["-m", "addrtype"] + (["!"] if rule.destination_type_negate else []) + ["--dst-type", rule.destination_type.upper()]
    if rule.mark:
        args += ["-m", "mark"] + (["!"] if rule.mark_negate else []) + ["--mark", format_mark(rule.mark)]
    if rule.ct_state:
        args += ["-m", "conntrack", "--ctstate", ",".join(state.upper() for state in rule.ct_state)]
    args += ["-m", "comment", "--comment", '"%s"' % rule.name]
    if line.probability is not None:
        args += ["-m", "statistic", "--mode", "random", "--probability", "%0.10f" % line.probability]
    args += ["-j", TARGETS[rule.type]] + _target_args(rule)
    return " ".join(args)


def _target_args(rule):
    args = []
    if rule.type == "masquerade" and rule.to_ports:
        args += ["--to-ports", format_port_range(rule.to_ports)]
    elif rule.type == "snat":
        ports = format_port_range(rule.to_ports) if rule.to_ports else None
        args += ["--to-source", _join_ports(format_address_range(rule.to_source), rule.to_source[0].version, ports)]
    elif rule.type == "dnat":
        args += ["--to-destination", format_endpoint(rule.to_destination[0])]
    elif rule.type == "mark":
        args += ["--set-xmark", format_mark(rule.set_mark)]
    if rule.random_fully:
        args.append("--random-fully")
    return args


# ---------------------------------------------------------------- parse

def _parse_family(family, text, drift):
    """(rules, facts) of one family's ``iptables-save -t nat`` output; appends to ``drift``.

    ``drift`` (``facts['unrecognized']``) lists owned objects not in the shape render writes
    (unknown lines, missing or extra jumps, chains without rules): render rewrites them, so a
    caller that finds it non-empty should apply even when the rules compare equal.
    """
    chains, jumps, owned_lines = [], {}, collections.OrderedDict()
    in_nat = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat or line.startswith("#"):
            continue
        elif line.startswith(":" + CHAIN_PREFIX):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            dummy, chain, spec = (line.split(None, 2) + [""])[:3]
            if chain.startswith(CHAIN_PREFIX):
                owned_lines.setdefault(chain, []).append(spec)
            elif chain in BUILTIN_CHAINS.values() and any(token.startswith(CHAIN_PREFIX) for token in _target(spec)):
                jumps.setdefault(chain, []).append(spec)
    rules = []
    hooks = dict((chain, hook) for hook, chain in OWNED_CHAINS.items())
    drift.extend("%s %s: chain this collection does not use" % (family, chain) for chain in chains if chain not in hooks)
    for chain in [OWNED_CHAINS[hook] for hook in CHAINS if OWNED_CHAINS[hook] in chains]:
        where = "%s %s" % (family, chain)
        chain_rules = _parse_chain(family, hooks[chain], owned_lines.get(chain, []), where, drift)
        if not chain_rules:
            drift.append("%s: owned chain without rules" % where)
        specs = [shlex.split(spec) for spec in jumps.get(BUILTIN_CHAINS[hooks[chain]], [])]
        if specs != [_jump_tokens(hooks[chain])]:
            drift.append("%s: expected one jump rule from %s, found %d" % (where, BUILTIN_CHAINS[hooks[chain]], len(specs)))
        rules.extend(chain_rules)
    for builtin in sorted(jumps):
        if CHAIN_PREFIX + builtin not in chains:
            drift.append("%s %s: jump rule to a chain this collection does not keep there" % (family, builtin))
    return rules, {"chains": chains, "jumps": jumps}


def _target(spec):
    tokens = shlex.split(spec)
    return tokens[tokens.index("-j") + 1:tokens.index("-j") + 2] if "-j" in tokens else []


def _parse_chain(family, hook, specs, where, drift):
    """Rules of one owned chain: consecutive lines with the same comment form one rule."""
    lines = []
    for spec in specs:
        try:
            lines.append(_parse_line(family, hook, shlex.split(spec)))
        except (_Unparsable, ValueError) as error:
            drift.append("%s: cannot read %r (%s)" % (where, spec, error))
    rules, seen = [], set()
    for name, group in itertools.groupby(lines, key=lambda line: line.rule.name):
        group = list(group)
        rule = _merge(group)
        if name in seen or not _same_lines(_rule_lines(rule), group):
            drift.append("%s: rule %r is not in the shape this collection writes" % (where, name))
        seen.add(name)
        rules.append(rule)
    return rules


def _merge(lines):
    first = lines[0].rule

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


def _same_lines(expected, found):
    return (len(expected) == len(found)
            and all(a.rule == b.rule and (a.probability is None) == (b.probability is None)
                    and abs((a.probability or 0) - (b.probability or 0)) < PROBABILITY_TOLERANCE
                    for a, b in zip(expected, found)))


def _parse_line(family, hook, tokens):
    """The _Line that ``tokens`` (one saved rule without ``-A CHAIN``) stands for."""
    fields = dict(chain=hook, family=family, name=None, type=None)
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
    return _Line(rule, probability)


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


def _join_ports(addresses, version, ports):
    if ports is None:
        return addresses
    return "%s:%s" % (addresses if version == 4 else "[%s]" % addresses, ports)


def _snat_source(fields, value, negate, family):
    addresses, ports = _split_ports(value, family)
    first, dummy, last = addresses.partition("-")
    fields["to_source"] = (ipaddress.ip_address(first), ipaddress.ip_address(last or first))
    if ports:
        fields["to_ports"] = _port_range(ports, "-")


def _dnat_destination(fields, value, negate, family):
    address, port = _split_ports(value, family)
    fields["to_destination"] = (Endpoint(ipaddress.ip_address(address), int(port) if port else None),)


def _rule_type(target):
    if target not in _RULE_TYPES:
        raise _Unparsable("target %s" % target)
    return _RULE_TYPES[target]


def _destination_type(value):
    if value != "LOCAL":
        raise _Unparsable("address type %s" % value)
    return "local"


_OPTIONS = {
    "-s": _set_negatable("source", lambda value: (ipaddress.ip_network(value),)),
    "-d": _set_negatable("destination", lambda value: (ipaddress.ip_network(value),)),
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
