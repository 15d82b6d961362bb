# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How rules are written: NatRule -> iptables rule lines, and entries -> iptables-restore scripts.

Owned objects, all in table ``nat``: one chain per used hook (``NODENET-PREROUTING`` ...) and one
jump rule per such chain, inserted at the top of the built-in chain (``-I PREROUTING 1``) so DNAT and
masquerade exemptions win over foreign catch-all rules, as kube-proxy does with its own jumps. The
jump is added only when missing, so other tools inserting at the top later are not fought over.

A rule's lines carry its name as ``-m comment --comment NAME``. One NatRule can need several lines:
iptables takes one address per match, multiport takes at most 15 ports, and a DNAT to several
endpoints is a random cascade (probability 1/(n-i), the last endpoint unconditional, as in kube-proxy).
The lines are the product sources x destinations x port groups x endpoints.

A negated match (``! -s``) takes exactly one network: "not in any of several" has no single-line
form in iptables, so such a rule is refused with UnsupportedRule (express the exemptions as ``return``
rules placed before it, as ip-masq-agent does).

A hook chain of more than SEGMENT_THRESHOLD lines is split into segments: the hook chain jumps, in
order, to segment chains ``NODENET-PRE-<digest>`` (POST, IN, OUT) of about SEGMENT_SPACING rules each
(``return`` rules stay in the hook chain, where they leave the owned rules as before). A rule ends a
segment when its name says so (a digest), so segments keep their bounds when rules elsewhere come and
go, and a segment is named after its first rule. iptables-nft edits a chain by position or rule text
only after listing all of its rules, which costs the kernel about 17 s at 100 000 rules; a flushed and
refilled segment of a few hundred lines costs milliseconds.

A change to chains that exist and read back as written edits only what differs in one
``iptables-restore --noflush``: segments that changed are flushed and refilled, others keep their lines,
and a chain without segments edits the lines that differ (``-D CHAIN rule`` / ``-I CHAIN n rule``);
otherwise the owned chains are declared again (which flushes them) and rewritten.

In a segment chain only a rule's first line carries the comment; a line without one belongs to the rule of
the line before it. x_tables keeps 256 bytes of comment in every line, and iptables-legacy copies the whole
table out of the kernel and back for any change: a one-service change at 50 000 two-endpoint services takes
0.5 s instead of 0.7 s. Hook chains keep the comment on every line: their lines are deleted by their text,
which must tell the lines of different rules apart. Segments written with a comment on every line read the same.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import difflib
import hashlib
import itertools
import zlib

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
# Segments (see the module docstring): hook chains longer than SEGMENT_THRESHOLD lines are split; about one
# rule in SEGMENT_SPACING ends a segment, and none holds more than SEGMENT_MAX rules.
SEGMENT_THRESHOLD = 2048
SEGMENT_SPACING = 128
SEGMENT_MAX = 1024
SEGMENT_PREFIXES = dict((hook, "%s%s-" % (CHAIN_PREFIX, short)) for hook, short in
                        (("prerouting", "PRE"), ("input", "IN"), ("output", "OUT"), ("postrouting", "POST")))
SEGMENT_CHAIN_PREFIXES = tuple(SEGMENT_PREFIXES.values())
MULTIPORT_SLOTS = 15        # xt_multiport: a range takes two slots
TARGETS = {"masquerade": "MASQUERADE", "snat": "SNAT", "dnat": "DNAT", "mark": "MARK", "return": "RETURN"}

# One iptables rule line: a NatRule holding at most one source, destination, port group and
# endpoint (name = the comment), and the statistic probability of a DNAT cascade step.
Line = collections.namedtuple("Line", ["rule", "probability"])


class UnsupportedRule(RuleError):
    """A rule that iptables cannot express; the message names the rule and the field."""


def jump_tokens(hook):
    return ["-m", "comment", "--comment", JUMP_COMMENT, "-j", OWNED_CHAINS[hook]]


def comment_text(name):
    return '-m comment --comment "%s"' % name


def line_rule_names(chain, comments):
    """The rule name of each line of ``chain``, from the lines' comments in order (None: the line has none): in a
    segment chain, a line without a comment is the rule's of the line before it."""
    in_segment = chain.startswith(SEGMENT_CHAIN_PREFIXES)
    names, name = [], None
    for comment in comments:
        if comment is not None:
            name = comment
        elif not in_segment:
            name = None
        names.append(name)
    return names


def segment_lines(entry):
    """An entry's lines in a segment chain: the comment on the first only (see the module docstring)."""
    compiled = entry.compiled
    if len(compiled) == 1:
        return compiled
    # The comment follows the matches (or opens a line without any) and a target or statistic match follows it.
    comment = comment_text(entry.name) + " "
    return [compiled[0]] + [text.replace(comment, "", 1) for text in compiled[1:]]


def rule_lines(rule):
    """The Line list of one rule (see the module docstring for the product order)."""
    return [Line(variant if endpoint is None else variant._replace(to_destination=(endpoint,)), probability)
            for variant, cascade in _variants(rule) for endpoint, probability in cascade]


def compile_rule(rule):
    """The compiled form of one rule: the texts of its lines, without ``-A CHAIN``."""
    texts = []
    for variant, cascade in _variants(rule):
        # The lines of one variant differ only in the DNAT step: its matches are written once.
        matches = _match_text(variant)
        for endpoint, probability in cascade:
            statistic = "" if probability is None else " -m statistic --mode random --probability %0.10f" % probability
            texts.append("%s%s -j %s" % (matches, statistic, " ".join([TARGETS[rule.type]] + _target_args(rule, endpoint))))
    return texts


def _variants(rule):
    """[(rule with at most one source, destination and port group, [(endpoint or None, statistic probability)])]."""
    for field in ("source", "destination"):
        if getattr(rule, field + "_negate") and len(getattr(rule, field)) != 1:
            raise UnsupportedRule("rule %r: %s_negate needs exactly one network in %s with the iptables backends, got %d "
                                  "(place return rules for the exempt networks before it instead)"
                                  % (rule.name, field, field, len(getattr(rule, field))))
    endpoints = rule.to_destination
    cascade = [(endpoint, 1.0 / (len(endpoints) - index) if index < len(endpoints) - 1 else None)
               for index, endpoint in enumerate(endpoints)] or [(None, None)]
    if len(rule.source) < 2 and len(rule.destination) < 2 and len(rule.destination_ports) < 2:
        return [(rule, cascade)]    # the common case, without splitting anything
    variants = []
    for source, destination, ports in itertools.product(_singles(rule.source), _singles(rule.destination),
                                                        _port_groups(rule.destination_ports)):
        same = source == rule.source and destination == rule.destination and ports == rule.destination_ports
        variants.append((rule if same else rule._replace(source=source, destination=destination, destination_ports=ports), cascade))
    return variants


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


def _match_text(rule):
    """The matches of a rule holding at most one source, destination and port group, its comment last."""
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
    return " ".join(args + [comment_text(rule.name)])


def join_ports(addresses, version, ports):
    if ports is None:
        return addresses
    return "%s:%s" % (addresses if version == 4 else "[%s]" % addresses, ports)


def _target_args(rule, endpoint):
    """The target's options; ``endpoint``: the DNAT step's endpoint."""
    args = []
    if rule.type == "masquerade" and rule.to_ports:
        args += ["--to-ports", format_port_range(rule.to_ports)]
    elif rule.type == "snat":
        ports = format_port_range(rule.to_ports) if rule.to_ports else None
        args += ["--to-source", join_ports(format_address_range(rule.to_source), rule.to_source[0].version, ports)]
    elif rule.type == "dnat":
        args += ["--to-destination", format_endpoint(endpoint)]
    elif rule.type == "mark":
        args += ["--set-xmark", format_mark(rule.set_mark)]
    if rule.random_fully:
        args.append("--random-fully")
    return args


# ---------------------------------------------------------------- restore scripts

def _ends_segment(entry):
    return zlib.crc32(entry.name.encode("utf-8")) % SEGMENT_SPACING == 0


def _returns(entry):
    return entry.compiled[-1].endswith(" -j RETURN")


def hook_layout(hook, entries):
    """[(segment chain, [entries])] of one hook's entries in order; segment None: entries written in the hook chain."""
    if sum(len(entry.compiled) for entry in entries) <= SEGMENT_THRESHOLD:
        return [(None, list(entries))]
    layout, segment = [], []
    for entry in entries:
        if _returns(entry):
            if segment:
                layout.append((segment_chain(hook, segment[0].name), segment))
                segment = []
            layout.append((None, [entry]))
            continue
        segment.append(entry)
        if _ends_segment(entry) or len(segment) >= SEGMENT_MAX:
            layout.append((segment_chain(hook, segment[0].name), segment))
            segment = []
    if segment:
        layout.append((segment_chain(hook, segment[0].name), segment))
    return layout


def segment_chain(hook, first_name):
    return SEGMENT_PREFIXES[hook] + hashlib.sha256(first_name.encode("utf-8")).hexdigest()[:12]


def segment_jump(segment):
    """The hook chain's line that jumps to ``segment``."""
    return "-j " + segment


def jumped_segment(hook, line):
    """The segment chain of ``hook`` that ``line`` (of the hook chain) jumps to, or None: rule lines never start with ``-j``."""
    jump = segment_jump(SEGMENT_PREFIXES[hook])
    return line[len(segment_jump("")):] if line.startswith(jump) else None


def chain_layout(entries):
    """{hook chain: hook_layout of its entries} of one family's entries, in hook order."""
    by_hook = collections.OrderedDict()
    for entry in entries:
        by_hook.setdefault(entry.chain, []).append(entry)
    return collections.OrderedDict((OWNED_CHAINS[hook], hook_layout(hook, hook_entries)) for hook, hook_entries in by_hook.items())


def layout_chains(layout):
    """The chains of a layout: the hook chains, then their segments."""
    return list(layout) + [segment for parts in layout.values() for segment, dummy in parts if segment is not None]


def unchanged_segments(current, desired):
    """The segments that hold the same entry objects in both layouts, so the same lines (a run that takes the entries
    of its run record keeps those of the config items that did not change)."""
    before = dict(part for parts in current.values() for part in parts if part[0] is not None)
    unchanged = set()
    for parts in desired.values():
        for segment, entries in parts:
            old = before.get(segment)
            if old is not None and len(old) == len(entries) and all(a is b for a, b in zip(old, entries)):
                unchanged.add(segment)
    return unchanged


def chain_lines(layout, unchanged=frozenset()):
    """{chain: [line text]} of a layout: the hook chains, then their segments. A segment in ``unchanged`` maps to
    None: not written out, it reads the same on both sides of a delta (at 50 000 rules, writing out every segment
    twice cost a fifth of a one-rule change)."""
    hooks, segments = collections.OrderedDict(), collections.OrderedDict()
    for chain, parts in layout.items():
        lines = hooks[chain] = []
        for segment, part in parts:
            if segment is None:
                lines.extend(text for entry in part for text in entry.compiled)
            else:
                lines.append(segment_jump(segment))
                segments[segment] = None if segment in unchanged else [text for entry in part for text in segment_lines(entry)]
    hooks.update(segments)
    return hooks


def marker_chain(token):
    return MARKER_PREFIX + token


def full_script(desired_lines, facts, token=None):
    """The iptables-restore script that rewrites one family's owned objects to ``desired_lines`` (chain_lines of the
    entries it keeps), or None when nothing is owned before or after.

    ``facts`` (from the read): ``chains`` the owned chains declared, ``jumps`` {builtin chain: [jump spec]}.
    ``token``: the family keeps its rules with the marker chain of this run (and no other).
    """
    used_hooks = [hook for hook in CHAINS if OWNED_CHAINS[hook] in desired_lines]
    used_chains = list(desired_lines)
    marker = [marker_chain(token)] if token and used_chains else []
    stale_chains = [chain for chain in facts["chains"] if chain not in desired_lines and chain not in marker]
    if not used_chains and not stale_chains and not any(facts["jumps"].values()):
        return None
    # Declaring a chain under --noflush creates it or flushes it (both variants); stale chains are
    # flushed too so that -X succeeds even when they reference each other. A stale marker is flushed with -F,
    # which fails when it is not there: a change from the run record proves that the host carried it.
    stale_markers = [chain for chain in stale_chains if chain.startswith(MARKER_PREFIX)]
    declared = [chain for chain in used_chains + stale_chains + marker if chain not in stale_markers]
    script = ["*nat"] + [":%s - [0:0]" % chain for chain in declared] + ["-F %s" % chain for chain in stale_markers]
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
    for chain, lines in desired_lines.items():
        script.extend("-A %s %s" % (chain, text) for text in lines)
    script.append("COMMIT")
    return "\n".join(script) + "\n"


def delta_script(current_lines, desired_lines, markers=(), token=None, owned_chains=None):
    """The script that turns chains holding exactly ``current_lines`` into ``desired_lines`` (chain_lines of the
    layouts before and after, a segment that is the same in both left out on both sides), or None when a hook
    chain must appear or disappear, a hook chain gains or loses its segments, or the owned chains (``owned_chains``,
    as read) are not those of ``current_lines`` (then full_script rewrites the family).

    New and changed segments are declared (created or flushed) and filled, segments no longer used go;
    a hook chain's own lines change by a line-level diff (a change of one rule touches that rule's lines
    wherever they are). An empty change gives the empty string. A change with a ``token`` also replaces
    the family's marker chains (``markers``) by this run's: deleting one that is not there fails the change.
    """
    hooks = [OWNED_CHAINS[hook] for hook in CHAINS]
    if [chain for chain in hooks if chain in current_lines] != [chain for chain in hooks if chain in desired_lines]:
        return None
    if owned_chains is not None and set(owned_chains) - set(markers) != set(current_lines):
        return None
    declared, script = [], []
    for chain in hooks:
        if chain in desired_lines:
            old, new = current_lines[chain], desired_lines[chain]
            if _segmented(chain, old) != _segmented(chain, new):
                return None
            script += _chain_delta(chain, old, new)
    for chain, lines in desired_lines.items():
        if chain not in hooks and current_lines.get(chain) != lines:
            declared.append(chain)
            script += ["-A %s %s" % (chain, text) for text in lines]
    gone = [chain for chain in current_lines if chain not in desired_lines]
    if not script and not gone:
        return ""
    marker = [marker_chain(token)] if token else []
    declared += gone + marker
    script += ["-X %s" % chain for chain in gone + ([chain for chain in markers if chain not in marker] if token else [])]
    return "*nat\n%s\nCOMMIT\n" % "\n".join([":%s - [0:0]" % chain for chain in declared] + script)


def _segmented(chain, lines):
    """Whether the hook chain ``chain`` holding ``lines`` jumps to segments."""
    hook = HOOK_OF_CHAIN[chain]
    return any(jumped_segment(hook, line) for line in lines)


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
