# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables backend (iptables-nft or iptables-legacy): owned ``NODENET-*`` chains of table nat.

lines.py writes rules as lines and restore scripts, save.py reads ``iptables-save -t nat``. One
``iptables-restore --noflush`` per family applies a change.

The run record's stamp says whether the owned objects are still those the last run left:

- iptables-legacy: the digest of the owned lines as iptables-save prints them (the kernel hands the
  whole table over at once, cheaply), so any edit of the owned objects changes it.
- iptables-nft (with the nft binary at hand): every change also replaces the family's empty marker
  chain ``NODENET-RUN-<token>``; the stamp is each family's marker. iptables-nft's chains are nft
  chains, listed by ``nft -j list chains`` in milliseconds, while the kernel's listing of their rules
  grows with the square of their number (about 17 s for 100 000 rules, for iptables-nft-save and
  nft alike). The trust this takes is the nft backend's: a hand edit of the owned rules that leaves
  the marker is not seen by nat_rules until a change fails to apply or a full read runs (``state:
  gathered``, nat_info). A run from the record knows the owned chains (listed) and trusts its jumps;
  only removing a family's last rule, which needs to know whether other tools use the nat table,
  reads it in full first (``needs_full_read``).
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import (
    HostState, NatBackend, Transaction, run_listing,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.lines import (
    BUILTIN_CHAINS, CHAIN_PREFIX, MARKER_PREFIX, UnsupportedRule, compile_rule, delta_script, full_script, jump_tokens,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.save import owned_objects, parse_owned, rule_counters
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import LIST_CHAINS_ARGV, listed_chains
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.compile import NFT_FAMILIES
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES, RuleError

VARIANTS = {"nft": "iptables", "legacy": "iptables-legacy"}
VARIANT_OF_BACKEND = dict((name, variant) for variant, name in VARIANTS.items())
# Family -> the prefix of its tools (iptables-nft-save, ip6tables-legacy-restore, ...).
TOOL_PREFIXES = {"ipv4": "iptables", "ipv6": "ip6tables"}
NOTHING_OWNED = {"chains": [], "jumps": {}, "others": None}

__all__ = ["IptablesBackend", "UnsupportedRule", "CHAIN_PREFIX", "VARIANTS", "VARIANT_OF_BACKEND", "TOOL_PREFIXES"]


def _stamp(digests):
    return hashlib.sha256(" ".join(digests[family] for family in FAMILIES).encode("ascii")).hexdigest()


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

    def read(self, run_command, record=None, counters=False):
        if counters:
            # Counters change with every packet, so such a listing has no stamp to compare with a record.
            owned = self._owned(run_command, counters=True)
            state = self._parsed(owned)
            state.facts["counters"] = dict(item for family in FAMILIES for item in rule_counters(owned[family]).items())
            return state
        if record is not None and self.nft:
            chains = self._listed_chains(run_command)
            stamp = marker_stamp(chains)
            if stamp is not None and record.stamp == stamp:
                return HostState(list(record.entries), self._recorded_facts(record.entries, chains, stamp))
        owned = self._owned(run_command)
        if self.nft:
            stamp = marker_stamp(dict((family, objects.chains) for family, objects in owned.items()))
        else:
            stamp = _stamp(dict((family, objects.digest) for family, objects in owned.items()))
        facts = dict((family, {"chains": objects.chains, "jumps": objects.jumps, "others": objects.others}) for family, objects in owned.items())
        facts.update(stamp=stamp, unrecognized=[])
        if record is not None and record.stamp == stamp:
            return HostState(list(record.entries), dict(facts, from_record=True))
        state = self._parsed(owned)
        state.facts["stamp"] = stamp
        return state

    def _listed_chains(self, run_command):
        return listed_chains(run_listing(run_command, [self.nft] + LIST_CHAINS_ARGV[1:], "nft chains"), "nat")

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
        return bool(current.facts.get("from_record")) and any(
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
            text = None
            marker_token = token if self.nft else None
            if not current.facts.get("unrecognized"):
                markers = [chain for chain in facts["chains"] if chain.startswith(MARKER_PREFIX)]
                text = delta_script([entry for entry in current.entries if entry.family == family], wanted, markers, marker_token,
                                    facts["chains"])
            if text is None:
                text = full_script(wanted, facts, marker_token)
            if text:
                restore = self.binaries[family][1]
                transactions.append(Transaction((family,), text, [restore, "-w", "--test", "--noflush"], [restore, "-w", "--noflush"]))
        return transactions

    def applied_stamp(self, run_command, token):
        if self.nft:
            return marker_stamp(self._listed_chains(run_command))
        return _stamp(dict((family, objects.digest) for family, objects in self._owned(run_command).items()))
