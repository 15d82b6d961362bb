# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How rules are written: NatRule list -> TablePlan, the owned table of one family as data.

A rule of a *keyed* shape -- protocol and one port, plus one destination host (``daddr``) or
``destination_type: local`` (``local``), optionally preceded by source hosts (``saddr``) -- is not
written as a rule of its own. Consecutive keyed rules of one shape and chain (a stretch) become the
elements of verdict maps, each looked up by one base-chain rule::

    fib daddr type local meta l4proto . th dport vmap @prerouting_local_1
    ip saddr . ip daddr . meta l4proto . th dport vmap @prerouting_saddr_daddr_2

A stretch needs more than one map only where rules repeat a key (``_levels``).
Each element carries the rule's name as its comment and jumps to a chain holding the rest of the
rule (its other matches and its statement). Rules with the same rest share that chain, so the
number of chains does not grow with the number of rules. A DNAT's endpoints live in a data map
per run and endpoint count K, keyed like the verdict map plus the endpoint index::

    dnat ip to meta l4proto . th dport . numgen random mod 2 map @prerouting_local_1_dnat2

So the table holds a fixed number of objects (maps, chains) for any number of services; what
grows is map elements, which the kernel finds by hash. ``jump`` (not ``goto``) keeps sequential
semantics: the keys of one map are distinct, so at most one rule of a run matches a packet, and a
shared chain whose other matches fail returns to the rule after the lookup, as the rule would.
``return`` rules are never keyed (in a shared chain they would only leave that chain).
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import hashlib

from ansible_collections.nodenet.nat.plugins.module_utils.model import CHAINS, FULL_MARK, RuleError, format_port_range

TABLE = "nodenet_nat"
NFT_FAMILIES = {"ipv4": "ip", "ipv6": "ip6"}
ADDRESS_TYPES = {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr"}
BASE_CHAIN_PRIORITIES = dict(prerouting="dstnat", input="100", output="-100", postrouting="srcnat")
# The chain whose name carries the token of the run that wrote the table (see NftBackend).
MARKER_PREFIX = "state_"
# Model ct_state values that are conntrack status bits in nft (``ct status``), not states.
CT_STATUSES = ("dnat", "snat")

# A map key shape: source hosts in the key or not, and "daddr" (one destination host) or "local".
Shape = collections.namedtuple("Shape", ["saddr", "destination"])

# One family's owned table: map declarations and shared chains by name (in writing order), base
# chain rules by hook, and where each keyed entry went. Map elements follow from the placements
# (placement_elements), so a change compares placements and writes only the elements that differ.
TablePlan = collections.namedtuple("TablePlan", ["family", "maps", "chains", "base", "placements"])

# A keyed entry in a plan: its verdict map, its DNAT data map (or None) and its shared chain.
Placement = collections.namedtuple("Placement", ["entry", "map", "data_map", "chain"])


def quote(text):
    if '"' in text or "\\" in text or "\n" in text:
        raise RuleError("nft: %r cannot be written as a quoted nft string" % (text,))
    return '"%s"' % text


def skeleton(plan):
    """Everything of a plan but the map elements: equal skeletons differ only in elements (maps and chains are
    compared by name, whatever order they were declared in)."""
    return plan.family, dict(plan.maps), dict(plan.chains), dict(plan.base)


# ---------------------------------------------------------------------------
# Rule text
# ---------------------------------------------------------------------------

def _set_text(items):
    return items[0] if len(items) == 1 else "{ %s }" % ", ".join(items)


def _address_text(address):
    """An address as nft reads it before ``:port`` or ``-``: IPv6 in brackets."""
    return "[%s]" % address if address.version == 6 else str(address)


def _op(negate):
    return "!= " if negate else ""


def match_texts(rule):
    family = NFT_FAMILIES[rule.family]
    texts = []
    if rule.source:
        texts.append("%s saddr %s%s" % (family, _op(rule.source_negate), _set_text([str(net) for net in rule.source])))
    if rule.destination:
        texts.append("%s daddr %s%s" % (family, _op(rule.destination_negate), _set_text([str(net) for net in rule.destination])))
    if rule.destination_type:
        texts.append("fib daddr type %s%s" % (_op(rule.destination_type_negate), rule.destination_type))
    if rule.in_interface:
        texts.append("iifname %s" % quote(rule.in_interface))
    if rule.out_interface:
        texts.append("oifname %s" % quote(rule.out_interface))
    if rule.protocol:
        texts.append("meta l4proto %s" % rule.protocol)
    if rule.destination_ports:
        texts.append("th dport %s" % _set_text([format_port_range(ports) for ports in rule.destination_ports]))
    if rule.mark:
        texts.append("meta mark & 0x%08x %s 0x%08x" % (rule.mark.mask, "!=" if rule.mark_negate else "==", rule.mark.value))
    states = [state for state in rule.ct_state if state not in CT_STATUSES]
    statuses = [state for state in rule.ct_state if state in CT_STATUSES]
    if states and statuses:
        # nft matches conntrack states and status bits with two expressions, which would AND them.
        raise RuleError("rule %s: ct_state: %r mixes conntrack states (%s) with NAT status (%s); the nft backend "
                        "cannot match either one in a single rule: write one rule for each"
                        % (rule.name, list(rule.ct_state), ", ".join(states), ", ".join(statuses)))
    if states:
        texts.append("ct state %s" % ",".join(states))
    if statuses:
        texts.append("ct status %s" % ",".join(statuses))
    return texts


def _dnat_text(rule):
    family = NFT_FAMILIES[rule.family]
    endpoints = rule.to_destination
    if len(endpoints) == 1:
        address, port = endpoints[0]
        if port is None:
            return "dnat %s to %s" % (family, _address_text(address))
        return "dnat %s to %s:%d" % (family, _address_text(address), port)
    targets = ["%d : %s" % (index, address if port is None else "%s . %d" % (address, port))
               for index, (address, port) in enumerate(endpoints)]
    return "dnat %s to numgen random mod %d map { %s }" % (family, len(endpoints), ", ".join(targets))


def _nat_options_text(rule):
    return "%s%s" % (":%s" % format_port_range(rule.to_ports) if rule.to_ports else "", " fully-random" if rule.random_fully else "")


def statement_text(rule):
    if rule.type == "dnat":
        return _dnat_text(rule)
    if rule.type == "snat":
        first, last = rule.to_source
        addresses = _address_text(first) if first == last else "%s-%s" % (_address_text(first), _address_text(last))
        return "snat %s to %s%s" % (NFT_FAMILIES[rule.family], addresses, _nat_options_text(rule))
    if rule.type == "masquerade":
        return "masquerade%s%s" % (" to " if rule.to_ports else "", _nat_options_text(rule))
    if rule.type == "mark":
        # mark = (mark & ~mask) | value; nft prints back the shortest equivalent form.
        return "meta mark set meta mark & 0x%08x | 0x%08x" % (~rule.set_mark.mask & FULL_MARK, rule.set_mark.value)
    return "return"


def rule_text(rule):
    """An ordinary rule, with its own counter (read back per rule, as the elements of a verdict map have theirs)."""
    return " ".join(match_texts(rule) + ["counter", statement_text(rule), "comment %s" % quote(rule.name)])


# ---------------------------------------------------------------------------
# Keyed rules
# ---------------------------------------------------------------------------

def _hosts(networks, negate):
    """The host addresses of ``networks`` as texts, or None unless every network is one host (and not negated)."""
    if not networks or negate or any(network.prefixlen != network.max_prefixlen for network in networks):
        return None
    return [str(network.network_address) for network in networks]


def map_keys(rule):
    """(Shape, [key tuple]) when ``rule`` can be verdict map elements, else None.

    A key is a tuple of texts: [source host,] [destination host,] protocol, port; a rule with
    several source or destination hosts has one key per combination. A ``local`` rule keeps any
    destination match in its rest.
    """
    if rule.type == "return" or rule.protocol is None or len(rule.destination_ports) != 1:
        return None
    port = rule.destination_ports[0]
    if port.first != port.last:
        return None
    tails = [(rule.protocol, str(port.first))]
    destinations = _hosts(rule.destination, rule.destination_negate)
    if destinations is not None:
        shape_destination, tails = "daddr", [(destination,) + tails[0] for destination in destinations]
    elif rule.destination_type == "local" and not rule.destination_type_negate:
        shape_destination = "local"
    else:
        return None
    # Not for DNAT: its data map would be keyed by five fields, which nft 1.0.6 cannot list back.
    sources = _hosts(rule.source, rule.source_negate) if rule.type != "dnat" else None
    if sources is not None:
        return Shape(True, shape_destination), [(source,) + tail for source in sources for tail in tails]
    return Shape(False, shape_destination), tails


def key_fields(shape):
    """The NatRule fields a key of ``shape`` stands for: cleared from the rule's rest."""
    fields = dict(destination_ports=())
    if shape.saddr:
        fields["source"] = ()
    if shape.destination == "daddr":
        fields["destination"] = ()
    else:
        fields["destination_type"] = None
    return fields


def key_expression(family, shape):
    nft_family = NFT_FAMILIES[family]
    parts = ["%s saddr" % nft_family] if shape.saddr else []
    if shape.destination == "daddr":
        parts.append("%s daddr" % nft_family)
    return " . ".join(parts + ["meta l4proto", "th dport"])


def _key_type(family, shape):
    parts = [ADDRESS_TYPES[family]] * (int(shape.saddr) + int(shape.destination == "daddr"))
    return " . ".join(parts + ["inet_proto", "inet_service"])


# Shapes by the name compiled entries carry.
SHAPES = dict(("%s%s" % ("saddr_" if shape.saddr else "", shape.destination), shape)
              for shape in (Shape(saddr, destination) for saddr in (False, True) for destination in ("daddr", "local")))


def compile_rule(rule):
    """The compiled form of one rule (JSON-ready, see the module docstring).

    Ordinary rule: ``[None, None, rule text]``. Keyed rule: ``[shape name, keys, rest matches,
    statement]``, where a DNAT's statement is its endpoints ``[[address, port or None], ...]``
    (written as a lookup in its run's data map when the plan is built).
    """
    keyed = map_keys(rule)
    if keyed is None:
        return [None, None, rule_text(rule)]
    shape, keys = keyed
    quote(rule.name)
    rest = rule._replace(**key_fields(shape))
    matches = " ".join(match_texts(rest))
    shape_name = "%s%s" % ("saddr_" if shape.saddr else "", shape.destination)
    if rule.type == "dnat":
        return [shape_name, [list(key) for key in keys], matches, [[str(address), port] for address, port in rule.to_destination]]
    return [shape_name, [list(key) for key in keys], matches, statement_text(rest)]


def _stretches(entries):
    """Split one chain's entries into stretches: runs of consecutive keyed entries of one shape, or one unkeyed entry."""
    stretches = []
    for entry in entries:
        shape = entry.compiled[0]
        if shape is not None and stretches and stretches[-1][0] == shape:
            stretches[-1][1].append(entry)
        else:
            stretches.append((shape, [entry]))
    return stretches


def _entry_name(entry):
    return entry.name


def _levels(stretch):
    """The stretch's entries in levels: an entry sharing a key with earlier entries goes one level below the
    lowest of them, so each level holds distinct keys and same-key entries keep their order.

    Entries with distinct keys never match the same packet, so only the order of same-key entries
    matters; the levels depend on that order alone, which makes them the same for every order of
    the stretch that keeps it (and for the order ``normalize`` gives back).
    """
    keys = [tuple(key) for entry in stretch for key in entry.compiled[1]]
    if len(set(keys)) == len(keys):
        return [sorted(stretch, key=_entry_name)]
    last_level, levels = {}, []
    for entry in stretch:
        keys = [tuple(key) for key in entry.compiled[1]]
        level = max([last_level[key] + 1 for key in keys if key in last_level] or [0])
        for key in keys:
            last_level[key] = level
        if level == len(levels):
            levels.append([])
        levels[level].append(entry)
    return [sorted(level, key=_entry_name) for level in levels]


def runs(entries):
    """Split one chain's entries into (Shape, [entry]) runs: each level of a stretch is one verdict map; Shape
    None is one ordinary rule. A keyed rule is a map element even alone, so that any change of the rules around
    it moves only elements."""
    result = []
    for shape, stretch in _stretches(entries):
        if shape is None:
            result.append((None, stretch))
        else:
            result.extend((SHAPES[shape], level) for level in _levels(stretch))
    return result


def by_chain(entries):
    """Consecutive entries of one (family, chain), in order (entries come in canonical order)."""
    groups = []
    for entry in entries:
        if not groups or (groups[-1][0].family, groups[-1][0].chain) != (entry.family, entry.chain):
            groups.append([])
        groups[-1].append(entry)
    return groups


def normalize(entries):
    """``entries`` (canonical order) as a listing gives them back: each run's entries by name, runs in level order.

    Rules of one run are looked up at once, so their order does not change what the kernel does,
    and a map keeps no order to read back.
    """
    return [entry for chain_entries in by_chain(entries) for dummy, run in runs(chain_entries) for entry in run]


# ---------------------------------------------------------------------------
# Table plan
# ---------------------------------------------------------------------------

def _dnat_map(nft_family, map_name, key, endpoints):
    """(data map name, its declaration, the dnat statement) of a DNAT to ``endpoints`` in the run of ``map_name``."""
    count, with_port = len(endpoints), endpoints[0][1] is not None
    data_name = "%s_dnat%d%s" % (map_name, count, "" if with_port else "_address")
    selector = "%s . numgen random mod %d" % (key, count) if count > 1 else key
    value_type = "%s daddr . th dport" % nft_family if with_port else "%s daddr" % nft_family
    return data_name, "typeof %s : %s" % (selector, value_type), "dnat %s to %s map @%s" % (nft_family, selector, data_name)


def _shared_chain(statement, text):
    """The name of the shared chain holding ``text``: its statement's kind and a digest of the text."""
    kind = statement.split(None, 1)[0]
    return "%s_%s" % ("mark" if kind == "meta" else kind, hashlib.sha256(text.encode("utf-8")).hexdigest()[:12])


def _place(family, map_name, entry, maps, chains):
    """(data map name or None, shared chain name) of a keyed entry in the run of ``map_name``; the data map and
    chain it needs are added to ``maps`` and ``chains`` when missing."""
    dummy, keys, matches, statement = entry.compiled
    data_name = None
    if isinstance(statement, list):
        data_name, declaration, statement = _dnat_map(NFT_FAMILIES[family], map_name, key_expression(family, SHAPES[entry.compiled[0]]), statement)
        if data_name not in maps:
            maps[data_name] = declaration
    text = "%s %s" % (matches, statement) if matches else statement
    chain = _shared_chain(statement, text)
    if chain not in chains:
        chains[chain] = (text,)
    return data_name, chain


class _PlanBuilder(object):
    def __init__(self, family):
        self.family = family
        self.maps = collections.OrderedDict()
        self.chains = collections.OrderedDict()
        self.base = collections.OrderedDict((hook, []) for hook in CHAINS)
        self.placements = {}
        self._runs = 0

    def add_run(self, hook, shape, run):
        self._runs += 1
        map_name = "%s_%s%s_%d" % (hook, "saddr_" if shape.saddr else "", shape.destination, self._runs)
        key = key_expression(self.family, shape)
        self.base[hook].append("%s%s vmap @%s" % ("fib daddr type local " if shape.destination == "local" else "", key, map_name))
        # counter: every element (every rule of the run) counts its own packets.
        self.maps[map_name] = "type %s : verdict; counter" % _key_type(self.family, shape)
        # Entries whose rest and statement kind agree share the data map and chain: place each kind once.
        places = {}
        for entry in run:
            dummy, keys, matches, statement = entry.compiled
            kind = (matches, len(statement), statement[0][1] is not None) if isinstance(statement, list) else (matches, statement)
            place = places.get(kind)
            if place is None:
                place = places[kind] = _place(self.family, map_name, entry, self.maps, self.chains)
            self.placements[entry.name] = Placement(entry, map_name, place[0], place[1])

    def plan(self):
        return TablePlan(self.family, self.maps, self.chains,
                         collections.OrderedDict((hook, tuple(rules)) for hook, rules in self.base.items() if rules),
                         self.placements)


def table_plan(family, entries):
    """The TablePlan holding ``entries`` (all of ``family``, canonical order)."""
    builder = _PlanBuilder(family)
    for chain_entries in by_chain(entries):
        hook = chain_entries[0].chain
        for shape, run in runs(chain_entries):
            if shape is None:
                builder.base[hook].append(run[0].compiled[2])
            else:
                builder.add_run(hook, shape, run)
    return builder.plan()


def plan_with_replaced(plan, pairs):
    """The plan of ``plan``'s entries with each ``new`` of ``pairs`` [(old, new)] put back to ``old``, or None
    when that is more than moving placements (then build that plan from its entries).

    Where the old and new entry of every pair are keyed with the same shape and keys, the runs and their
    maps are the same and only the pairs' data maps and chains can differ: a change of a few rules among
    tens of thousands then costs the work of those rules, not of a second plan.
    """
    placements, maps, chains = dict(plan.placements), dict(plan.maps), dict(plan.chains)
    uses = collections.Counter(placement.chain for placement in placements.values())
    uses.update(placement.data_map for placement in placements.values() if placement.data_map)
    for old, new in pairs:
        placement = placements.get(new.name)
        if placement is None or old.compiled[:2] != new.compiled[:2] or (old.name, old.family, old.chain) != (new.name, new.family, new.chain):
            return None
        data_name, chain = _place(plan.family, placement.map, old, maps, chains)
        uses.subtract(name for name in (placement.data_map, placement.chain) if name)
        uses.update(name for name in (data_name, chain) if name)
        placements[old.name] = Placement(old, placement.map, data_name, chain)
    for name, count in uses.items():
        if count == 0:
            maps.pop(name, None)
            chains.pop(name, None)
    return TablePlan(plan.family, maps, chains, plan.base, placements)


def placement_elements(placement):
    """[(map name, key text, element text)] that one keyed entry puts in its maps."""
    entry, map_name, data_name, chain = placement
    dummy, keys, dummy_matches, statement = entry.compiled
    elements = []
    for key_parts in keys:
        key_text = " . ".join(key_parts)
        elements.append((map_name, key_text, '%s comment "%s" : jump %s' % (key_text, entry.name, chain)))
        if data_name is None:
            continue
        if len(statement) == 1:
            address, port = statement[0]
            elements.append((data_name, key_text, "%s : %s" % (key_text, address if port is None else "%s . %d" % (address, port))))
            continue
        for index, (address, port) in enumerate(statement):
            element_key = "%s . %d" % (key_text, index)
            elements.append((data_name, element_key, "%s : %s" % (element_key, address if port is None else "%s . %d" % (address, port))))
    return elements


def map_elements(plan):
    """{map name: [element text]} of every map of ``plan``, maps in plan order."""
    elements = collections.OrderedDict((name, []) for name in plan.maps)
    for placement in plan.placements.values():
        for map_name, dummy_key, text in placement_elements(placement):
            elements[map_name].append(text)
    return elements
