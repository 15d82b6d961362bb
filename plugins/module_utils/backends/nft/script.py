# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a change is written: TablePlans -> one ``nft -f`` script for both families.

Two forms. The full form replaces each owned table (``add table`` + ``delete table`` + the new
table; a family without rules keeps only the first two lines, which remove its table). The delta
form, for tables whose skeleton (maps, chains, base rules) stays the same, deletes and adds only
the map elements that differ. Either way every table gets a new marker chain, named after the
token of the run that wrote it, and the whole script is one kernel transaction: all of it applies
or none of it does.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.compile import (
    BASE_CHAIN_PRIORITIES, MARKER_PREFIX, NFT_FAMILIES, TABLE, map_elements, placement_elements,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES


def table_name(family):
    return "%s %s" % (NFT_FAMILIES[family], TABLE)


def marker_chain(token):
    return MARKER_PREFIX + token


def _table_block(plan, token):
    lines = ["table %s {" % table_name(plan.family)]
    elements = map_elements(plan)
    for name, declaration in plan.maps.items():
        lines += ["\tmap %s {" % name, "\t\t%s" % declaration]
        if elements[name]:
            lines += ["\t\telements = {"] + ["\t\t\t%s," % element for element in elements[name]] + ["\t\t}"]
        lines.append("\t}")
    for name, rules in plan.chains.items():
        lines += ["\tchain %s {" % name] + ["\t\t%s" % rule for rule in rules] + ["\t}"]
    if token is not None:
        lines += ["\tchain %s {" % marker_chain(token), "\t}"]
    for hook, rules in plan.base.items():
        lines += ["\tchain %s {" % hook, "\t\ttype nat hook %s priority %s; policy accept;" % (hook, BASE_CHAIN_PRIORITIES[hook])]
        lines += ["\t\t%s" % rule for rule in rules] + ["\t}"]
    return lines + ["}"]


def full_script(plans, present, token):
    """Replace the owned tables: ``plans`` {family: TablePlan, or None for no rules}; ``present``: families whose table exists."""
    lines = []
    for family in FAMILIES:
        plan = plans.get(family)
        if plan is None and family not in present:
            continue
        lines += ["add table %s" % table_name(family), "delete table %s" % table_name(family)]
        if plan is not None:
            lines += _table_block(plan, token)
    return "\n".join(lines) + "\n" if lines else ""


def _element_changes(current, desired):
    """({map: [key]} to delete, {map: [element]} to add) between two plans of equal skeletons."""
    removed, added = {}, {}
    old_placements, new_placements = current.placements, desired.placements
    # Equal placements (the same entry in the same maps and chain, mostly the very same objects) put in equal elements.
    moved = [(old_placements.get(name), new) for name, new in new_placements.items() if old_placements.get(name) != new]
    moved += [(old, None) for name, old in old_placements.items() if name not in new_placements]
    for old, new in moved:
        old_elements = set(placement_elements(old)) if old else set()
        new_elements = set(placement_elements(new)) if new else set()
        for map_name, key, dummy_text in old_elements - new_elements:
            removed.setdefault(map_name, []).append(key)
        for map_name, dummy_key, text in new_elements - old_elements:
            added.setdefault(map_name, []).append(text)
    return removed, added


def delta_script(current_plans, desired_plans, markers, token):
    """Element changes between plans of equal skeletons, and the marker moved to ``token``.

    ``markers`` {family: the tokens of the marker chains its table holds now}.
    """
    lines = []
    for family in FAMILIES:
        current, desired = current_plans.get(family), desired_plans.get(family)
        if desired is None:
            continue
        table = table_name(family)
        removed, added = _element_changes(current, desired)
        lines += ["delete element %s %s { %s }" % (table, name, ", ".join(sorted(keys))) for name, keys in sorted(removed.items())]
        lines += ["add element %s %s { %s }" % (table, name, ", ".join(sorted(texts))) for name, texts in sorted(added.items())]
        lines += ["delete chain %s %s" % (table, marker_chain(old)) for old in markers.get(family, ())]
        lines.append("add chain %s %s" % (table, marker_chain(token)))
    return "\n".join(lines) + "\n"
