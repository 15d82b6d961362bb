# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables backend (iptables-nft or iptables-legacy): owned ``NODENET-*`` chains of table nat.

lines.py writes rules as lines and restore scripts, save.py reads ``iptables-save -t nat``. One
``iptables-restore --noflush`` per family applies a change. The run record's stamp is the digest of
the owned lines as iptables-save prints them: a run that finds the same digest takes the recorded
entries instead of parsing every owned line, and any edit of the owned objects changes the digest.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import (
    HostState, NatBackend, Transaction, run_listing,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.lines import (
    CHAIN_PREFIX, UnsupportedRule, compile_rule, delta_script, full_script,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.save import owned_objects, parse_owned, rule_counters
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
        owned = self._owned(run_command)
        stamp = _stamp(dict((family, objects.digest) for family, objects in owned.items()))
        facts = dict((family, {"chains": objects.chains, "jumps": objects.jumps, "others": objects.others}) for family, objects in owned.items())
        facts.update(stamp=stamp, unrecognized=[])
        if record is not None and record.stamp == stamp:
            return HostState(list(record.entries), dict(facts, from_record=True))
        state = self._parsed(owned)
        state.facts["stamp"] = stamp
        return state

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
            if not current.facts.get("unrecognized"):
                text = delta_script([entry for entry in current.entries if entry.family == family], wanted)
            if text is None:
                text = full_script(wanted, facts)
            if text:
                restore = self.binaries[family][1]
                transactions.append(Transaction((family,), text, [restore, "-w", "--test", "--noflush"], [restore, "-w", "--noflush"]))
        return transactions

    def applied_stamp(self, run_command, token):
        return _stamp(dict((family, objects.digest) for family, objects in self._owned(run_command).items()))
