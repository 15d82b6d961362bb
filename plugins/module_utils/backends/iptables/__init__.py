# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables backend (iptables-nft or iptables-legacy): owned ``NODENET-*`` chains of table nat.

lines.py writes rules as lines and restore scripts, save.py reads ``iptables-save -t nat``. One
``iptables-restore --noflush`` per family applies a change.

The run record's stamp says whether the owned objects are still those the last run left: every
change also replaces the family's empty marker chain ``NODENET-RUN-<token>``, and the stamp is each
family's marker. Checking it lists no rule, and the kernel's listing of tens of thousands of rules is
what a run must not pay for a no-op or a one-rule change (iptables-nft-save: about 17 s for 100 000
rules, the kernel walking its rules; iptables-legacy-save and the parse of its text: about 0.6 s):

- with the nft binary (iptables-nft's chains are nft chains), ``nft -j list chains`` lists every
  chain of both families in milliseconds;
- otherwise (iptables-legacy, or iptables-nft without nft) ``iptables -S NODENET-RUN-<token>`` looks
  up each recorded marker: legacy hands the table over in one piece (0.2 s at 100 000 rules) and
  the command prints one chain; the owned chains are then those the recorded entries make. A change
  goes without that look for the families it changes (``stamp_carried``): its transaction deletes the
  recorded marker, which fails it as a whole when the host does not carry it.

The trust this takes is the nft backend's: a hand edit of the owned rules that leaves the marker is
not seen by nat_rules until a change fails to apply (lines go by their text, so a changed line that
is not there fails) or a full read runs (``state: gathered``, nat_info). A run from the record trusts
its jumps too; only removing a family's last rule on iptables-nft, which needs to know whether other
tools use the nat table (it goes with the last rule when nothing else is in it), reads it in full
first (``needs_full_read``).
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import (
    HostState, NatBackend, Transaction, run_listing,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.lines import (
    BUILTIN_CHAINS, CHAIN_PREFIX, MARKER_PREFIX, UnsupportedRule, chain_layout, chain_lines, compile_rule, delta_script, full_script, jump_tokens,
    layout_chains, marker_chain, unchanged_segments,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.save import owned_objects, parse_owned, rule_counters
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import list_chains_argv, listed_chains
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.compile import NFT_FAMILIES
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES, RuleError

VARIANTS = {"nft": "iptables", "legacy": "iptables-legacy"}
VARIANT_OF_BACKEND = dict((name, variant) for variant, name in VARIANTS.items())
# Family -> the prefix of its tools (iptables-nft-save, ip6tables-legacy-restore, ...).
TOOL_PREFIXES = {"ipv4": "iptables", "ipv6": "ip6tables"}
NOTHING_OWNED = {"chains": [], "jumps": {}, "others": None}

__all__ = ["IptablesBackend", "UnsupportedRule", "CHAIN_PREFIX", "VARIANTS", "VARIANT_OF_BACKEND", "TOOL_PREFIXES"]


def marker_stamp(chains):
    """The stamp of {family: [chain names in table nat]}: each family's marker token, or None when a family with
    owned chains does not have exactly one marker."""
    parts = []
    for family in FAMILIES:
        owned = [chain for chain in chains.get(family, ()) if chain.startswith(CHAIN_PREFIX)]
        markers = [chain[len(MARKER_PREFIX):] for chain in owned if chain.startswith(MARKER_PREFIX)]
        if owned and len(markers) != 1:
            return None
        parts.append("%s=%s" % (family, "".join(markers)))
    return " ".join(parts)


def stamp_markers(stamp):
    """{family: marker token, '' for a family without owned chains} of a marker stamp, or None for another stamp."""
    try:
        markers = dict(part.split("=", 1) for part in stamp.split(" "))
    except (AttributeError, ValueError):
        return None
    return markers if sorted(markers) == sorted(FAMILIES) else None


class IptablesBackend(NatBackend):
    """``variant`` is ``nft`` (iptables-nft) or ``legacy``; ``binaries`` maps family -> (save, restore) paths.

    ``nft``: the nft binary, with which iptables-nft's nat table is deleted when the last owned object
    goes and nothing else is in it (iptables-nft leaves an empty ``table ip nat`` behind otherwise;
    without nft it stays, empty).
    """

    def __init__(self, variant, binaries=None, nft=None):
        if variant not in VARIANTS:
            raise ValueError("iptables variant must be one of %s, got %r" % (", ".join(sorted(VARIANTS)), variant))
        self.variant = variant
        self.name = VARIANTS[variant]
        self.nft = nft if variant == "nft" else None
        self.binaries = binaries or dict(
            (family, ("%s-%s-save" % (prefix, variant), "%s-%s-restore" % (prefix, variant)))
            for family, prefix in TOOL_PREFIXES.items())

    def compile(self, rule):
        return compile_rule(rule)

    def list_argv(self, family, counters=False):
        return [self.binaries[family][0]] + (["-c"] if counters else []) + ["-t", "nat"]

    def _owned(self, run_command, counters=False):
        return dict((family, owned_objects(run_listing(run_command, self.list_argv(family, counters), "%s nat table" % TOOL_PREFIXES[family])))
                    for family in FAMILIES)

    def read(self, run_command, counters=False):
        owned = self._owned(run_command, counters)
        state = self._parsed(owned)
        state.facts["stamp"] = marker_stamp(dict((family, objects.chains) for family, objects in owned.items()))
        if counters:
            state.facts["counters"] = dict(item for family in FAMILIES for item in rule_counters(owned[family]).items())
        return state

    def recorded(self, run_command, record, deferred=False):
        if self.nft:
            chains = listed_chains(run_listing(run_command, list_chains_argv(self.nft), "nft chains"), "nat")
            if marker_stamp(chains) != record.stamp:
                return None
            markers, layouts = {}, {}
        else:
            markers = stamp_markers(record.stamp)
            if markers is None:
                return None
            markers = dict((family, token) for family, token in markers.items() if token)
            if not deferred and not self._carries_markers(run_command, markers):
                return None
            # The owned chains are those the recorded entries make, and the family's marker; render edits their lines.
            layouts = dict((family, chain_layout([entry for entry in record.entries if entry.family == family])) for family in markers)
            chains = dict((family, layout_chains(layouts[family]) + [marker_chain(token)]) for family, token in markers.items())
        facts = self._recorded_facts(record.entries, chains, record.stamp)
        for family, layout in layouts.items():
            facts[family]["layout"] = layout
        facts["deferred_markers"] = markers if deferred else {}
        return HostState(list(record.entries), facts)

    def stamp_carried(self, run_command, host, changing):
        # A family's change deletes its recorded marker with -X (never declared first, see lines.py), which fails
        # the whole transaction when the host does not carry it.
        deferred = host.facts.get("deferred_markers") or {}
        return self._carries_markers(run_command, dict((family, token) for family, token in deferred.items() if family not in changing))

    def _carries_markers(self, run_command, markers):
        """Whether each family's nat table holds its marker chain ({family: token}): one ``iptables -S <marker>``
        each, which prints one chain (the plain tool sits next to its save tool: iptables-legacy-save, iptables-legacy)."""
        for family, token in sorted(markers.items()):
            save = self.binaries[family][0]
            rc, dummy, dummy = run_command([save[:-len("-save")], "-w", "-t", "nat", "-S", marker_chain(token)])
            if rc != 0:
                return False
        return True

    @staticmethod
    def _recorded_facts(entries, chains, stamp):
        """Facts of a host holding the recorded entries: its owned chains as listed, one jump per used chain, and
        ``others`` unknown (None)."""
        facts = dict(stamp=stamp, unrecognized=[], from_record=True)
        for family in FAMILIES:
            hooks = set(entry.chain for entry in entries if entry.family == family)
            jumps = dict((BUILTIN_CHAINS[hook], [(" ".join(jump_tokens(hook)), jump_tokens(hook))]) for hook in hooks)
            facts[family] = {"chains": [chain for chain in chains.get(family, ()) if chain.startswith(CHAIN_PREFIX)],
                             "jumps": jumps, "others": None}
        return facts

    def needs_full_read(self, desired, current):
        # Whether the table iptables-nft made goes with a family's last rule depends on other tools' rules in it.
        return self.nft is not None and bool(current.facts.get("from_record")) and any(
            current.facts[family]["chains"] and not any(entry.family == family for entry in desired) for family in FAMILIES)

    def parse(self, outputs):
        """HostState of {family: ``iptables-save -t nat`` output} (offline)."""
        return self._parsed(dict((family, owned_objects(outputs.get(family) or "")) for family in FAMILIES))

    def _parsed(self, owned):
        entries, facts = [], {"unrecognized": []}
        for family in FAMILIES:
            rules, drift = parse_owned(family, owned[family])
            facts[family] = {"chains": owned[family].chains, "jumps": owned[family].jumps, "others": owned[family].others}
            facts["unrecognized"] += drift
            entries += self._entries(rules, facts["unrecognized"])
        return HostState(entries, facts)

    def _entries(self, rules, unrecognized):
        entries = []
        for rule in rules:
            try:
                entries.append(self.entry(rule))
            except RuleError as error:
                unrecognized.append(str(error))
        return entries

    def render(self, desired, current, token):
        """One Transaction per family that changes: changed lines only when the owned chains read back as written."""
        transactions = []
        for family in FAMILIES:
            wanted = [entry for entry in desired if entry.family == family]
            facts = current.facts.get(family, NOTHING_OWNED)
            if not wanted and self.nft and facts.get("others") == 0 and (facts["chains"] or any(facts["jumps"].values())):
                # The last owned object goes and the table holds nothing else: remove the table iptables-nft made.
                text = "delete table %s nat\n" % NFT_FAMILIES[family]
                transactions.append(Transaction((family,), text, [self.nft, "-c", "-f", "-"], [self.nft, "-f", "-"]))
                continue
            text, wanted_layout = None, chain_layout(wanted)
            if not current.facts.get("unrecognized"):
                markers = [chain for chain in facts["chains"] if chain.startswith(MARKER_PREFIX)]
                current_layout = facts.get("layout") or chain_layout([entry for entry in current.entries if entry.family == family])
                unchanged = unchanged_segments(current_layout, wanted_layout)
                text = delta_script(chain_lines(current_layout, unchanged), chain_lines(wanted_layout, unchanged), markers, token, facts["chains"])
            if text is None:
                text = full_script(chain_lines(wanted_layout), facts, token)
            if text:
                restore = self.binaries[family][1]
                transactions.append(Transaction((family,), text, [restore, "-w", "--test", "--noflush"], [restore, "-w", "--noflush"]))
        return transactions

    def applied_stamp(self, current, desired, transactions, token):
        # A family that changed holds this run's marker when it keeps rules, nothing owned otherwise.
        changed = set(family for transaction in transactions for family in transaction.families)
        chains = {}
        for family in FAMILIES:
            if family not in changed:
                chains[family] = current.facts.get(family, NOTHING_OWNED)["chains"]
            else:
                chains[family] = [marker_chain(token)] if any(entry.family == family for entry in desired) else []
        return marker_stamp(chains)
