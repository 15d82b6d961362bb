# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How rules are written: NatRule -> iptables rule lines, and entries -> iptables-restore scripts.

Owned objects, all in table ``nat``: one chain per used hook (``NODENET-PREROUTING`` ...) and one
jump rule per such chain, inserted at the top of the built-in chain (``-I PREROUTING 1``) so DNAT and
masquerade exemptions win over foreign catch-all rules, as kube-proxy does with its own jumps. The
jump is added only when missing, so other tools inserting at the top later are not fought over.

Every line of a rule carries ``-m comment --comment NAME``. One NatRule can need several lines:
iptables takes one address per match, multiport takes at most 15 ports, and a DNAT to several
endpoints is a random cascade (probability 1/(n-i), the last endpoint unconditional, as in kube-proxy).
The lines are the product sources x destinations x port groups x endpoints.

A negated match (``! -s``) takes exactly one network: "not in any of several" has no single-line
form in iptables, so such a rule is refused with UnsupportedRule (express the exemptions as ``return``
rules placed before it, as ip-masq-agent does).

A change to chains that exist and read back as written edits only the lines that differ
(``-D CHAIN rule`` / ``-I CHAIN n rule``) in one ``iptables-restore --noflush``; otherwise the owned chains
are declared again (which flushes them) and rewritten.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import difflib
import itertools

from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, RuleError, format_address_range, format_endpoint, format_mark, format_port_range,
)

CHAIN_PREFIX = "NODENET-"
JUMP_COMMENT = "nodenet-nat"
BUILTIN_CHAINS = dict((hook, hook.upper()) for hook in CHAINS)
OWNED_CHAINS = dict((hook, CHAIN_PREFIX + builtin) for hook, builtin in BUILTIN_CHAINS.items())
HOOK_OF_CHAIN = dict((chain, hook) for hook, chain in OWNED_CHAINS.items())
# An empty owned chain named after the run that last changed the family (iptables-nft; see IptablesBackend).
MARKER_PREFIX = CHAIN_PREFIX + "RUN-"
MULTIPORT_SLOTS = 15        # xt_multiport: a range takes two slots
TARGETS = {"masquerade": "MASQUERADE", "snat": "SNAT", "dnat": "DNAT", "mark": "MARK", "return": "RETURN"}

# One iptables rule line: a NatRule holding at most one source, destination, port group and
# endpoint (name = the comment), and the statistic probability of a DNAT cascade step.
Line = collections.namedtuple("Line", ["rule", "probability"])


class UnsupportedRule(RuleError):
    """A rule that iptables cannot express; the message names the rule and the field."""


def jump_tokens(hook):
    return ["-m", "comment", "--comment", JUMP_COMMENT, "-j", OWNED_CHAINS[hook]]


def rule_lines(rule):
    """The Line list of one rule (see the module docstring for the product order)."""
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
            lines.append(Line(variant, None))
        for index, endpoint in enumerate(endpoints):
            remaining = len(endpoints) - index
            lines.append(Line(variant._replace(to_destination=(endpoint,)), 1.0 / remaining if remaining > 1 else None))
    return lines


def compile_rule(rule):
    """The compiled form of one rule: the texts of its lines, without ``-A CHAIN``."""
    return [format_line(line) for line in rule_lines(rule)]


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


def format_line(line):
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


def join_ports(addresses, version, ports):
    if ports is None:
        return addresses
    return "%s:%s" % (addresses if version == 4 else "[%s]" % addresses, ports)


def _target_args(rule):
    args = []
    if rule.type == "masquerade" and rule.to_ports:
        args += ["--to-ports", format_port_range(rule.to_ports)]
    elif rule.type == "snat":
        ports = format_port_range(rule.to_ports) if rule.to_ports else None
        args += ["--to-source", join_ports(format_address_range(rule.to_source), rule.to_source[0].version, ports)]
    elif rule.type == "dnat":
        args += ["--to-destination", format_endpoint(rule.to_destination[0])]
    elif rule.type == "mark":
        args += ["--set-xmark", format_mark(rule.set_mark)]
    if rule.random_fully:
        args.append("--random-fully")
    return args


# ---------------------------------------------------------------- restore scripts

def chain_lines(entries):
    """{hook: [line text]} of one family's entries, hooks with lines only."""
    lines = collections.OrderedDict()
    for entry in entries:
        lines.setdefault(entry.chain, []).extend(entry.compiled)
    return lines


def marker_chain(token):
    return MARKER_PREFIX + token


def full_script(desired, facts, token=None):
    """The iptables-restore script that rewrites one family's owned objects, or None when nothing is owned before or after.

    ``facts`` (from the read): ``chains`` the owned chains declared, ``jumps`` {builtin chain: [jump spec]}.
    ``token``: the family keeps its rules with the marker chain of this run (and no other).
    """
    desired_lines = chain_lines(desired)
    used_hooks = [hook for hook in CHAINS if hook in desired_lines]
    used_chains = [OWNED_CHAINS[hook] for hook in used_hooks]
    marker = [marker_chain(token)] if token and used_chains else []
    stale_chains = [chain for chain in facts["chains"] if chain not in used_chains + marker]
    if not used_chains and not stale_chains and not any(facts["jumps"].values()):
        return None
    # Declaring a chain under --noflush creates it or flushes it (both variants); stale chains are
    # flushed too so that -X succeeds even when they reference each other.
    script = ["*nat"] + [":%s - [0:0]" % chain for chain in used_chains + stale_chains + marker]
    kept_jumps = set()
    for builtin, jumps in sorted(facts["jumps"].items()):
        hook = builtin.lower()
        keep = jump_tokens(hook) if hook in used_hooks else None
        for spec, tokens in jumps:
            if builtin not in kept_jumps and tokens == keep:
                kept_jumps.add(builtin)     # the first correct jump stays where it is
            else:
                script.append("-D %s %s" % (builtin, spec))
    script.extend("-X %s" % chain for chain in stale_chains)
    for hook in used_hooks:
        if BUILTIN_CHAINS[hook] not in kept_jumps:
            script.append("-I %s 1 %s" % (BUILTIN_CHAINS[hook], " ".join(jump_tokens(hook))))
    for hook in used_hooks:
        script.extend("-A %s %s" % (OWNED_CHAINS[hook], text) for text in desired_lines[hook])
    script.append("COMMIT")
    return "\n".join(script) + "\n"


def delta_script(current, desired, markers=(), token=None):
    """The script that turns chains holding exactly ``current``'s lines into ``desired``'s, or None
    when a chain must appear or disappear (then full_script rewrites the family).

    Per chain, the lines that differ are deleted and inserted by position (a line-level diff: a change
    of one rule touches that rule's lines wherever they are); an empty change gives the empty string.
    A change with a ``token`` also replaces the family's marker chains (``markers``) by this run's.
    """
    current_lines, desired_lines = chain_lines(current), chain_lines(desired)
    if set(current_lines) != set(desired_lines):
        return None
    script = []
    for hook in CHAINS:
        if hook in desired_lines:
            script += _chain_delta(OWNED_CHAINS[hook], current_lines[hook], desired_lines[hook])
    if script and token:
        script = [":%s - [0:0]" % marker_chain(token)] + script + ["-X %s" % chain for chain in markers]
    return "*nat\n%s\nCOMMIT\n" % "\n".join(script) if script else ""


def _chain_delta(chain, old, new):
    """-D/-I commands, in order, that turn the lines ``old`` of ``chain`` into ``new``.

    Lines go by their text (``-D CHAIN rule``): a line that is no longer there (an edit by hand behind the
    run record) fails the change instead of deleting another line, and the run then reads the host in full.
    Applied in order, everything before an opcode already reads as ``new[:first]``, so the opcode's new
    lines go in at position first + 1. Lines are nearly all distinct (each carries its rule's name), which
    keeps the matcher close to linear in the chain's length.
    """
    commands = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, old_first, old_end, first, end in matcher.get_opcodes():
        if tag == "equal":
            continue
        commands += ["-D %s %s" % (chain, text) for text in old[old_first:old_end]]
        commands += ["-I %s %d %s" % (chain, first + 1 + index, text) for index, text in enumerate(new[first:end])]
    return commands
