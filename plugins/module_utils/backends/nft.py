# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nftables backend: the collection owns ``table ip nodenet_nat`` and ``table ip6 nodenet_nat``.

Each table holds the nat base chains ``prerouting`` (priority dstnat), ``input`` (100),
``output`` (-100) and ``postrouting`` (srcnat), only those with rules. A transaction replaces
one table atomically (``add table`` + ``delete table`` + the new table, one ``nft -f``); an empty
ruleset is just ``add`` + ``delete``, which removes the table. Nothing outside the two tables is
read or written. One transaction per family, as iptables has one restore per family.

Scale (as kube-proxy's nftables mode): a run of at least MIN_MAP_RUN consecutive rules of one
chain that match one destination host, a protocol and one port (``destination`` shape), or
``destination_type: local``, a protocol and one port (``local`` shape, NodePort-like), compiles
into ONE verdict-map lookup::

    ip daddr . meta l4proto . th dport vmap @prerouting_destination_1
    fib daddr type local meta l4proto . th dport vmap @prerouting_local_2

Each element jumps to a per-rule chain holding the rest of the rule (its other matches, its
statement, its ``comment "NAME"``), so the per-packet cost does not grow with the number of
rules in the run. ``jump`` (not ``goto``) keeps sequential semantics: keys in one map are
distinct, so at most one rule of the run can match, and a per-rule chain whose other matches
fail falls through to the rule after the lookup, as the rule would. ``return`` rules never
compile into maps (in a per-rule chain it would only leave that chain). DNAT to several
endpoints is ``dnat ip to numgen random mod N map { 0 : a . port, ... }``.

Parsing reads ``nft -j list table`` (JSON), never text, and rebuilds the NatRule values,
turning each map element back into its rule.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import hashlib
import ipaddress
import json
import re

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState, NatBackend, Transaction
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, FAMILIES, FULL_MARK, PROTOCOLS, Endpoint, Mark, PortRange, RuleError, format_port_range, make_rule,
    normalize_ct_states, normalize_networks, normalize_port_ranges,
)

TABLE = "nodenet_nat"
NFT_FAMILIES = {"ipv4": "ip", "ipv6": "ip6"}
CHECK_ARGV = ["nft", "-c", "-f", "-"]
APPLY_ARGV = ["nft", "-f", "-"]
# What ``nft list table`` prints on stderr (rc 1) when the table does not exist.
MISSING_TABLE_ERROR = "No such file or directory"
# Shortest run of same-shape rules that becomes a verdict map (a lone rule reads better as itself).
MIN_MAP_RUN = 2

_BASE_CHAIN_PRIORITIES = dict(prerouting="dstnat", input="100", output="-100", postrouting="srcnat")
_ADDRESS_TYPES = {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr"}
# Model ct_state values that are conntrack status bits in nft (``ct status``), not states.
_CT_STATUSES = ("dnat", "snat")
_UNSAFE_CHAIN_CHARACTERS = re.compile(r"[^A-Za-z0-9_./-]")


def _quote(text):
    if '"' in text or "\\" in text or "\n" in text:
        raise RuleError("nft: %r cannot be written as a quoted nft string" % (text,))
    return '"%s"' % text


# ---------------------------------------------------------------------------
# NatRule -> nft script
# ---------------------------------------------------------------------------

def _rule_chain_name(rule_name):
    """Per-rule chain name: readable, and unique because the hash covers the unreplaced name."""
    digest = hashlib.sha256(rule_name.encode("utf-8")).hexdigest()[:8]
    return "rule_%s_%s" % (_UNSAFE_CHAIN_CHARACTERS.sub("_", rule_name), digest)


def _set_text(items):
    return items[0] if len(items) == 1 else "{ %s }" % ", ".join(items)


def _address_text(address):
    """An address as nft reads it before ``:port`` or ``-``: IPv6 in brackets."""
    return "[%s]" % address if address.version == 6 else str(address)


def _op(negate):
    return "!= " if negate else ""


def _match_texts(rule):
    family = NFT_FAMILIES[rule.family]
    texts = []
    if rule.source:
        texts.append("%s saddr %s%s" % (family, _op(rule.source_negate), _set_text([str(net) for net in rule.source])))
    if rule.destination:
        texts.append("%s daddr %s%s" % (family, _op(rule.destination_negate), _set_text([str(net) for net in rule.destination])))
    if rule.destination_type:
        texts.append("fib daddr type %s%s" % (_op(rule.destination_type_negate), rule.destination_type))
    if rule.in_interface:
        texts.append("iifname %s" % _quote(rule.in_interface))
    if rule.out_interface:
        texts.append("oifname %s" % _quote(rule.out_interface))
    if rule.protocol:
        texts.append("meta l4proto %s" % rule.protocol)
    if rule.destination_ports:
        texts.append("th dport %s" % _set_text([format_port_range(ports) for ports in rule.destination_ports]))
    if rule.mark:
        texts.append("meta mark & 0x%08x %s 0x%08x" % (rule.mark.mask, "!=" if rule.mark_negate else "==", rule.mark.value))
    states = [state for state in rule.ct_state if state not in _CT_STATUSES]
    statuses = [state for state in rule.ct_state if state in _CT_STATUSES]
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


def _to_ports_text(rule):
    return ":%s" % format_port_range(rule.to_ports) if rule.to_ports else ""


def _fully_random_text(rule):
    return " fully-random" if rule.random_fully else ""


def _snat_text(rule):
    first, last = rule.to_source
    addresses = _address_text(first) if first == last else "%s-%s" % (_address_text(first), _address_text(last))
    return "snat %s to %s%s%s" % (NFT_FAMILIES[rule.family], addresses, _to_ports_text(rule), _fully_random_text(rule))


def _masquerade_text(rule):
    return "masquerade%s%s" % (" to " + _to_ports_text(rule) if rule.to_ports else "", _fully_random_text(rule))


def _statement_text(rule):
    if rule.type == "dnat":
        return _dnat_text(rule)
    if rule.type == "snat":
        return _snat_text(rule)
    if rule.type == "masquerade":
        return _masquerade_text(rule)
    if rule.type == "mark":
        # mark = (mark & ~mask) | value; nft prints back the shortest equivalent form.
        return "meta mark set meta mark & 0x%08x | 0x%08x" % (~rule.set_mark.mask & FULL_MARK, rule.set_mark.value)
    return "return"


def _rule_text(rule):
    return " ".join(_match_texts(rule) + [_statement_text(rule), "comment %s" % _quote(rule.name)])


def _map_key(rule):
    """(shape, key) when ``rule`` can be one element of a verdict map, else None."""
    if rule.type == "return" or rule.protocol is None or len(rule.destination_ports) != 1:
        return None
    port = rule.destination_ports[0]
    if port.first != port.last:
        return None
    if len(rule.destination) == 1 and not rule.destination_negate and rule.destination[0].num_addresses == 1:
        return "destination", (rule.destination[0].network_address, rule.protocol, port.first)
    if not rule.destination and rule.destination_type == "local" and not rule.destination_type_negate:
        return "local", (rule.protocol, port.first)
    return None


# What the map key matches, removed from the rule that goes into the per-rule chain.
_KEY_FIELDS = dict(
    destination=dict(destination=(), destination_ports=()),
    local=dict(destination_type=None, destination_ports=()),
)


def _runs(rules):
    """Split one chain's rules into (shape, [rules]) runs; shape None is a single ordinary rule."""
    runs = []
    current_shape, current_keys, current_rules = None, set(), []

    def flush():
        if len(current_rules) >= MIN_MAP_RUN:
            runs.append((current_shape, list(current_rules)))
        else:
            runs.extend((None, [rule]) for rule in current_rules)

    for rule in rules:
        shape, key = _map_key(rule) or (None, None)
        if shape is not None and shape == current_shape and key not in current_keys:
            current_keys.add(key)
            current_rules.append(rule)
            continue
        flush()
        # A repeated key starts a new map: a map holds each key once, and the earlier rule wins anyway.
        current_shape, current_keys, current_rules = shape, {key}, [rule]
    flush()
    return runs


def _map_element_text(rule):
    key = _map_key(rule)[1]
    return '%s comment %s : jump %s' % (" . ".join(str(part) for part in key), _quote(rule.name), _rule_chain_name(rule.name))


def _table_body(family, rules):
    """Lines of the table block: maps, then per-rule chains, then base chains (in CHAINS order)."""
    nft_family = NFT_FAMILIES[family]
    maps, rule_chains, base_chains = [], [], []
    for chain in CHAINS:
        base_rules = []
        for shape, run in _runs([rule for rule in rules if rule.chain == chain]):
            if shape is None:
                base_rules.append(_rule_text(run[0]))
                continue
            map_name = "%s_%s_%d" % (chain, shape, len(maps) + 1)
            key_type = "inet_proto . inet_service"
            if shape == "destination":
                key_type = "%s . %s" % (_ADDRESS_TYPES[family], key_type)
                base_rules.append("%s daddr . meta l4proto . th dport vmap @%s" % (nft_family, map_name))
            else:
                base_rules.append("fib daddr type local meta l4proto . th dport vmap @%s" % map_name)
            maps.append(["\tmap %s {" % map_name, "\t\ttype %s : verdict" % key_type, "\t\telements = {"]
                        + ["\t\t\t%s," % _map_element_text(rule) for rule in run] + ["\t\t}", "\t}"])
            for rule in run:
                rule_chains.append(["\tchain %s {" % _rule_chain_name(rule.name),
                                    "\t\t%s" % _rule_text(rule._replace(**_KEY_FIELDS[shape])), "\t}"])
        if base_rules:
            base_chains.append(["\tchain %s {" % chain,
                                "\t\ttype nat hook %s priority %s; policy accept;" % (chain, _BASE_CHAIN_PRIORITIES[chain])]
                               + ["\t\t%s" % text for text in base_rules] + ["\t}"])
    # Per-rule chains are created in rule order; parse orders map elements by chain handle.
    return [line for block in maps + rule_chains + base_chains for line in block]


def render_table(family, rules):
    """The ``nft -f`` script that makes the family's owned table hold exactly ``rules`` (all of that family)."""
    table = "%s %s" % (NFT_FAMILIES[family], TABLE)
    lines = ["add table %s" % table, "delete table %s" % table]
    if rules:
        lines += ["table %s {" % table] + _table_body(family, rules) + ["}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# nft -j list table -> NatRule
# ---------------------------------------------------------------------------

class _Unrecognized(ValueError):
    """Something in the owned table that this renderer does not write."""


def _expect(condition, what):
    if not condition:
        raise _Unrecognized(what)


def _as_list(value):
    if isinstance(value, dict) and "set" in value:
        return value["set"]
    return value if isinstance(value, list) else [value]


def _prefix_network(prefix):
    return ipaddress.ip_network("%s/%d" % (prefix["addr"], prefix["len"]))


def _networks(value):
    networks = []
    for item in _as_list(value):
        if isinstance(item, str):
            networks.append(ipaddress.ip_network(item))
        elif "prefix" in item:
            networks.append(_prefix_network(item["prefix"]))
        else:
            first, last = item["range"]
            networks.extend(ipaddress.summarize_address_range(ipaddress.ip_address(first), ipaddress.ip_address(last)))
    return normalize_networks(networks)


def _port_range(value):
    if isinstance(value, int):
        return PortRange(value, value)
    return PortRange(*value["range"])


def _mark_update(expression):
    """(and_mask, xor_value) such that the new mark is (mark & and_mask) ^ xor_value."""
    if expression == {"meta": {"key": "mark"}}:
        return FULL_MARK, 0
    if isinstance(expression, int):
        return 0, expression
    (operator, (inner, constant)), = expression.items()
    and_mask, xor_value = _mark_update(inner)
    if operator == "&":
        return and_mask & constant, xor_value & constant
    if operator == "|":
        return and_mask & ~constant & FULL_MARK, xor_value | constant
    _expect(operator == "^", "mark expression %s" % operator)
    return and_mask, xor_value ^ constant


def _set_mark(expression):
    and_mask, value = _mark_update(expression)
    mask = ~and_mask & FULL_MARK
    _expect(not value & ~mask, "meta mark set that toggles bits")
    return Mark(value, mask)


def _nat_flags(statement):
    flags = statement.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags
    _expect(set(flags) <= {"fully-random"}, "nat flags %s" % flags)
    return bool(flags)


def _endpoint(value):
    if isinstance(value, dict):
        address, port = value["concat"]
        return Endpoint(ipaddress.ip_address(address), port)
    return Endpoint(ipaddress.ip_address(value), None)


def _dnat_fields(statement):
    address = statement["addr"]
    if isinstance(address, str):
        return dict(to_destination=(Endpoint(ipaddress.ip_address(address), statement.get("port")),))
    numgen = address["map"]["key"]["numgen"]
    targets = sorted(address["map"]["data"]["set"], key=lambda pair: pair[0])
    _expect(numgen["mode"] == "random" and numgen.get("offset", 0) == 0 and
            [index for index, _target in targets] == list(range(numgen["mod"])) and "port" not in statement,
            "dnat map")
    return dict(to_destination=tuple(_endpoint(target) for _index, target in targets))


def _address_range(value):
    """(first, last) address of an snat target; nft prints an aligned range as a prefix."""
    if isinstance(value, str):
        return ipaddress.ip_address(value), ipaddress.ip_address(value)
    if "prefix" in value:
        network = _prefix_network(value["prefix"])
        return network.network_address, network.broadcast_address
    first, last = value["range"]
    return ipaddress.ip_address(first), ipaddress.ip_address(last)


def _port_fields(statement):
    """to_ports and random_fully of an snat or masquerade statement."""
    return dict(to_ports=_port_range(statement["port"]) if "port" in statement else None, random_fully=_nat_flags(statement))


def _snat_fields(statement):
    return dict(_port_fields(statement), to_source=_address_range(statement["addr"]))


def _statement_fields(kind, statement):
    """(type, fields) of the rule's final statement."""
    if kind == "dnat":
        return "dnat", _dnat_fields(statement)
    if kind == "snat":
        return "snat", _snat_fields(statement)
    if kind == "masquerade":
        return "masquerade", _port_fields(statement or {})
    if kind == "mangle" and statement["key"] == {"meta": {"key": "mark"}}:
        return "mark", dict(set_mark=_set_mark(statement["value"]))
    _expect(kind == "return", "statement %s" % kind)
    return "return", {}


def _match_fields(family, match):
    """The NatRule fields one ``match`` expression sets."""
    operator, left, right = match["op"], match["left"], match["right"]
    negate = operator == "!="
    _expect(operator in ("==", "!=", "in"), "operator %s" % operator)
    (kind, attributes), = left.items()
    if kind == "payload" and attributes.get("protocol") == NFT_FAMILIES[family] and attributes["field"] in ("saddr", "daddr"):
        field = "source" if attributes["field"] == "saddr" else "destination"
        return {field: _networks(right), field + "_negate": negate}
    if kind == "payload" and attributes["field"] == "dport" and attributes["protocol"] in PROTOCOLS + ("th",):
        _expect(not negate, "negated port match")
        fields = dict(destination_ports=normalize_port_ranges(_port_range(item) for item in _as_list(right)))
        if attributes["protocol"] != "th":
            # nft folds "meta l4proto tcp th dport" into "tcp dport".
            fields["protocol"] = attributes["protocol"]
        return fields
    if kind == "fib" and attributes == {"result": "type", "flags": ["daddr"]}:
        _expect(right == "local", "fib type %s" % right)
        return dict(destination_type="local", destination_type_negate=negate)
    if kind == "meta" and attributes["key"] in ("iifname", "oifname") and not negate:
        return {"in_interface" if attributes["key"] == "iifname" else "out_interface": right}
    if kind == "meta" and attributes["key"] == "l4proto" and not negate:
        _expect(right in PROTOCOLS, "protocol %s" % right)
        return dict(protocol=right)
    if kind in ("meta", "&"):
        mask = FULL_MARK
        if kind == "&":
            attributes, mask = attributes
            (kind, attributes), = attributes.items()
        _expect(kind == "meta" and attributes["key"] == "mark", "match on %s" % kind)
        if isinstance(right, dict):
            # nft prints a mask of leading one bits as a prefix: "meta mark 0x0/24".
            mask = FULL_MARK << (32 - right["prefix"]["len"]) & FULL_MARK
            right = right["prefix"]["addr"]
        return dict(mark=Mark(right, mask), mark_negate=negate)
    _expect(kind == "ct" and attributes["key"] in ("state", "status") and not negate, "match on %s" % kind)
    return dict(ct_state=normalize_ct_states(_as_list(right)))


def _rule_fields(family, expressions):
    """(type, fields) of one rule: matches, then exactly one final statement."""
    fields = {}
    for expression in expressions[:-1]:
        _expect("match" in expression, "statement %s before the last" % ", ".join(expression))
        for field, value in _match_fields(family, expression["match"]).items():
            _expect(field not in fields, "%s matched twice" % field)
            fields[field] = value
    (kind, statement), = expressions[-1].items()
    rule_type, statement_fields = _statement_fields(kind, statement)
    fields.update(statement_fields)
    return rule_type, fields


def _element_parts(element):
    """(key values, verdict) of one map element."""
    key, verdict = element
    if "elem" in key:
        key = key["elem"]["val"]
    return key["concat"], verdict


class _TableListing(object):
    """One family's ``nft -j list table`` output."""

    def __init__(self, family, objects):
        self.family = family
        self.chains = {}
        self.maps = {}
        self.rules_by_chain = collections.defaultdict(list)
        self.unrecognized = []
        for item in objects:
            (kind, value), = item.items()
            if kind == "chain":
                self.chains[value["name"]] = value
            elif kind == "map":
                self.maps[value["name"]] = value
            elif kind == "rule":
                self.rules_by_chain[value["chain"]].append(value)

    def rules(self):
        """NatRule list: base chains in CHAINS order, rules (and map elements) in their order."""
        rules = []
        for chain in CHAINS:
            if self.chains.get(chain, {}).get("hook") != chain:
                continue
            for listed in self.rules_by_chain[chain]:
                try:
                    rules.extend(self._rules_of(chain, listed))
                except _Unrecognized as error:
                    self._unrecognized(chain, listed, error)
                except (KeyError, TypeError, ValueError) as error:
                    self._unrecognized(chain, listed, "%s %s" % (type(error).__name__, error))
        return rules

    def _unrecognized(self, chain, listed, problem):
        self.unrecognized.append("%s %s chain %s handle %s: %s" % (NFT_FAMILIES[self.family], TABLE, chain, listed.get("handle"), problem))

    def _rule(self, chain, listed, extra_fields=None):
        _expect("comment" in listed, "rule without a name comment")
        rule_type, fields = _rule_fields(self.family, listed["expr"])
        fields.update(extra_fields or {})
        return make_rule(name=listed["comment"], type=rule_type, chain=chain, family=self.family, **fields)

    def _rules_of(self, chain, listed):
        expressions = listed["expr"]
        if "vmap" not in expressions[-1]:
            return [self._rule(chain, listed)]
        fields = {}
        for expression in expressions[:-1]:
            fields.update(_match_fields(self.family, expression["match"]))
        vmap = expressions[-1]["vmap"]
        key_parts = [list(part.values())[0] for part in vmap["key"]["concat"]]
        local = fields == dict(destination_type="local", destination_type_negate=False)
        _expect(local or not fields, "map lookup after other matches")
        _expect(key_parts[-2:] == [{"key": "l4proto"}, {"protocol": "th", "field": "dport"}], "map key")
        _expect(key_parts[:-2] == ([] if local else [{"protocol": NFT_FAMILIES[self.family], "field": "daddr"}]), "map key")
        elements = []
        for element in self.maps[vmap["data"].lstrip("@")].get("elem", []):
            key, verdict = _element_parts(element)
            target = verdict["jump"]["target"]
            rule_chain_rules = self.rules_by_chain[target]
            _expect(len(rule_chain_rules) == 1, "chain %s does not hold one rule" % target)
            key_fields = dict(fields, protocol=key[-2], destination_ports=(PortRange(key[-1], key[-1]),))
            if not local:
                key_fields["destination"] = (ipaddress.ip_network(key[0]),)
            elements.append((self.chains[target]["handle"], self._rule(chain, rule_chain_rules[0], key_fields)))
        # Per-rule chains were created in rule order, so their handles restore it.
        return [rule for _handle, rule in sorted(elements, key=lambda pair: pair[0])]


class NftBackend(NatBackend):
    """Renders and parses the owned ``nodenet_nat`` tables (see the module docstring)."""

    name = "nft"

    def list_commands(self):
        """[(family, argv)]: ``nft -j list table <ip|ip6> nodenet_nat`` (the owned tables only)."""
        return [(family, ["nft", "-j", "list", "table", NFT_FAMILIES[family], TABLE]) for family in FAMILIES]

    def listing_absent(self, err):
        # Listing a table that does not exist fails.
        return MISSING_TABLE_ERROR in err

    def parse(self, outputs):
        """HostState from {family: stdout of its list command, or None}.

        The caller passes None (or "") for a family whose table does not exist (``listing_absent``).
        ``rules`` come ordered by family (FAMILIES), then base chain (CHAINS), then position, so
        compare them with the desired rules sorted stably by (family, chain).
        ``facts['tables']`` is the set of families whose table exists; ``facts['unrecognized']``
        lists rules in the owned tables that this backend did not write (a hand edit): they are
        not in ``rules`` and the next render replaces them.
        """
        rules, tables, unrecognized = [], set(), []
        for family in FAMILIES:
            text = outputs.get(family)
            if not text or not text.strip():
                continue
            listing = _TableListing(family, json.loads(text)["nftables"])
            tables.add(family)
            rules.extend(listing.rules())
            unrecognized.extend(listing.unrecognized)
        return HostState(rules, {"tables": tables, "unrecognized": unrecognized})

    def render(self, rules, current):
        """One Transaction per family that has rules or whose table exists (see NatBackend.render)."""
        duplicates = sorted(name for name, count in collections.Counter(rule.name for rule in rules).items() if count > 1)
        if duplicates:
            raise RuleError("nft: rule names must be unique; repeated: %s" % ", ".join(duplicates))
        transactions = []
        for family in FAMILIES:
            family_rules = [rule for rule in rules if rule.family == family]
            if family_rules or family in current.facts.get("tables", ()):
                transactions.append(Transaction(family, render_table(family, family_rules), list(CHECK_ARGV), list(APPLY_ARGV)))
        return transactions
