# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nftables backend: the collection owns ``table ip nodenet_nat`` and ``table ip6 nodenet_nat``.

Each table holds the nat base chains ``prerouting`` (priority dstnat), ``input`` (100),
``output`` (-100) and ``postrouting`` (srcnat), only those with rules, and the maps and shared
chains of its keyed rules (compile.py). Nothing outside the two tables is read or written.

Both families change in ONE ``nft -f`` script, one kernel transaction: all of it applies or none.
A change whose tables keep their skeleton only adds and deletes map elements (script.py); any
other change replaces the tables.

Every table carries a marker chain ``state_<token>`` naming the run that last wrote it. Listing
the chains of the ruleset is cheap (no rules, no map elements), so a run reads the marker first and,
when the run record names the same token, takes the recorded entries instead of listing every
element (run_record.py). The trust this takes: a hand edit of the owned tables' map elements
that leaves the marker in place is not seen by nat_rules until a change fails to apply (then it
reads everything and replaces the tables) or a full read runs (``state: gathered``, nat_info).
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import (
    BackendError, HostState, NatBackend, Transaction, run_listing,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.compile import (
    MARKER_PREFIX, NFT_FAMILIES, TABLE, compile_rule, normalize, plan_with_replaced, skeleton, table_plan,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.listing import parse_family
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.script import delta_script, full_script
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES, RuleError

CHECK_ARGV = ["nft", "-c", "-f", "-"]
APPLY_ARGV = ["nft", "-f", "-"]
_FAMILY_OF = dict((nft_family, family) for family, nft_family in NFT_FAMILIES.items())


def list_chains_argv(nft="nft"):
    """The listing of every table's chains without their rules: what tells which tables are there. Not ``nft list
    tables``: nft 1.0.6 dumps every rule of every table for it, 12 s of kernel time beside 100 000 iptables-nft rules."""
    return [nft, "-j", "list", "chains"]


LIST_CHAINS_ARGV = list_chains_argv()


def list_table_argv(family):
    return ["nft", "-j", "list", "table", NFT_FAMILIES[family], TABLE]


def _objects(listing, command):
    """The ``nftables`` list of an ``nft -j`` listing; BackendError when it is something else."""
    try:
        return json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        raise BackendError("%s printed what is not an nft JSON listing: %r" % (command, listing[:200]))


def listed_chains(chains_listing, table):
    """{family: [chain names]} of the tables called ``table`` (ip and ip6) in ``nft -j list chains`` output."""
    chains = {}
    for item in _objects(chains_listing, " ".join(LIST_CHAINS_ARGV)):
        chain = item.get("chain")
        if chain is not None and chain["table"] == table and chain["family"] in _FAMILY_OF:
            chains.setdefault(_FAMILY_OF[chain["family"]], []).append(chain["name"])
    return chains


def owned_tables(chains_listing):
    """{family: [marker tokens]} of the owned tables in ``nft -j list chains`` output."""
    return dict((family, [name[len(MARKER_PREFIX):] for name in names if name.startswith(MARKER_PREFIX)])
                for family, names in listed_chains(chains_listing, TABLE).items())


def _common_stamp(markers):
    """The token every owned table carries as its only marker, else None."""
    tokens = set(tuple(found) for found in markers.values())
    if len(tokens) == 1:
        found, = tokens
        if len(found) == 1:
            return found[0]
    return None


class NftBackend(NatBackend):
    """Compiles, renders and reads the owned ``nodenet_nat`` tables (see the module docstring)."""

    name = "nft"

    def compile(self, rule):
        return compile_rule(rule)

    def normalize(self, entries):
        return normalize(entries)

    def read(self, run_command, counters=False):
        facts = self._marker_facts(run_command)
        if not facts["tables"]:
            return HostState([], facts)
        outputs = dict((family, run_listing(run_command, list_table_argv(family), "%s %s table" % (NFT_FAMILIES[family], TABLE)))
                       for family in FAMILIES if family in facts["tables"])
        entries, unrecognized, counters = self._entries(outputs)
        facts.update(unrecognized=unrecognized, counters=counters)
        return HostState(entries, facts)

    def recorded(self, run_command, record, deferred=False):
        facts = self._marker_facts(run_command)
        if facts["stamp"] is None or record.stamp != facts["stamp"] or set(entry.family for entry in record.entries) != facts["tables"]:
            return None
        return HostState(list(record.entries), dict(facts, from_record=True))

    @staticmethod
    def _marker_facts(run_command):
        """Facts of the owned tables as ``nft -j list chains`` shows them: which there are, their markers, the stamp."""
        markers = owned_tables(run_listing(run_command, LIST_CHAINS_ARGV, "nft chains"))
        return {"tables": set(markers), "markers": markers, "stamp": _common_stamp(markers), "unrecognized": [], "counters": {}}

    def parse(self, outputs):
        """HostState of {family: ``nft -j list table`` output} (offline); facts: ``tables`` and ``unrecognized``."""
        present = dict((family, text) for family, text in outputs.items() if text and text.strip())
        entries, unrecognized, dummy = self._entries(present)
        return HostState(entries, {"tables": set(present), "unrecognized": unrecognized})

    def _entries(self, outputs):
        """(entries, unrecognized, counters) of the listed tables, families in FAMILIES order."""
        entries, unrecognized, counters = [], [], {}
        for family in FAMILIES:
            if family not in outputs:
                continue
            rules, family_unrecognized, family_counters = parse_family(family, _objects(outputs[family], " ".join(list_table_argv(family))))
            unrecognized += family_unrecognized
            counters.update(family_counters)
            for rule in rules:
                try:
                    entries.append(self.entry(rule))
                except RuleError as error:
                    unrecognized.append("%s %s: %s" % (NFT_FAMILIES[family], TABLE, error))
        return entries, unrecognized, counters

    def render(self, desired, current, token):
        """One Transaction for both families: element changes when the skeletons stay, else the tables replaced."""
        names = set()
        for entry in desired:
            if entry.name in names:
                raise RuleError("nft: rule names must be unique; repeated: %s" % entry.name)
            names.add(entry.name)
        desired_plans = self._plans(desired)
        present = current.facts.get("tables", set())
        touched = [family for family in FAMILIES if family in present or desired_plans[family] is not None]
        if not touched:
            return []
        text = None
        if not current.facts.get("unrecognized") and all((family in present) == (desired_plans[family] is not None) for family in FAMILIES):
            current_plans = self._current_plans(desired_plans, current.entries, desired)
            if all(self._same_skeleton(current_plans[family], desired_plans[family]) for family in FAMILIES):
                text = delta_script(current_plans, desired_plans, current.facts.get("markers", {}), token)
        if text is None:
            text = full_script(desired_plans, present, token)
        return [Transaction(tuple(touched), text, list(CHECK_ARGV), list(APPLY_ARGV))]

    @staticmethod
    def _plans(entries):
        by_family = dict((family, []) for family in FAMILIES)
        for entry in entries:
            by_family[entry.family].append(entry)
        return dict((family, table_plan(family, family_entries) if family_entries else None)
                    for family, family_entries in by_family.items())

    @classmethod
    def _current_plans(cls, desired_plans, current, desired):
        """The plans of ``current``: derived from the desired plans when few entries were replaced in place (the
        same names in the same order; plan_with_replaced), else built."""
        if len(current) == len(desired):
            pairs = [(old, new) for old, new in zip(current, desired) if old is not new]
            if len(pairs) * 4 <= len(current):
                plans = {}
                for family, plan in desired_plans.items():
                    family_pairs = [(old, new) for old, new in pairs if new.family == family]
                    plans[family] = plan if plan is None or not family_pairs else plan_with_replaced(plan, family_pairs)
                if all(plans[family] is not None or desired_plans[family] is None for family in FAMILIES):
                    return plans
        return cls._plans(current)

    @staticmethod
    def _same_skeleton(current, desired):
        if current is None or desired is None:
            return current is desired
        return skeleton(current) == skeleton(desired)

    def applied_stamp(self, current, desired, transactions, token):
        return token
