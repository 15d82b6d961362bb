# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How rules are read: ``nft -j list table`` (JSON, never text) -> NatRule list.

Ordinary base-chain rules are read one by one; a verdict-map lookup turns back into one rule per
element name (the element comment), its key giving the keyed fields, the shared chain it jumps to
giving the rest, and the run's data map giving a DNAT's endpoints. The rules of one map come back
sorted by name (compile.normalize): a map keeps no order.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import ipaddress

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import RuleEntry
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft.compile import (
    MARKER_PREFIX, NFT_FAMILIES, TABLE, Shape, compile_rule, table_plan,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, FULL_MARK, PROTOCOLS, Endpoint, Mark, PortRange, make_rule, normalize_ct_states, normalize_networks,
    normalize_port_ranges, parse_address, parse_network,
)


class _Unrecognized(ValueError):
    """Something in the owned table that this backend does not write."""


def _expect(condition, what):
    if not condition:
        raise _Unrecognized(what)


def _as_list(value):
    if isinstance(value, dict) and "set" in value:
        return value["set"]
    return value if isinstance(value, list) else [value]


def _host_network(address_text):
    return parse_network(address_text)[0] or parse_network(address_text + ("/128" if ":" in address_text else "/32"))[0]


def _prefix_network(prefix):
    return ipaddress.ip_network("%s/%d" % (prefix["addr"], prefix["len"]))


def _networks(value):
    networks = []
    for item in _as_list(value):
        if isinstance(item, str):
            networks.append(_host_network(item))
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
        return Endpoint(parse_address(address), port)
    return Endpoint(parse_address(value), None)


def _dnat_fields(statement):
    address = statement["addr"]
    if isinstance(address, str):
        return dict(to_destination=(Endpoint(parse_address(address), statement.get("port")),))
    numgen = address["map"]["key"]["numgen"]
    targets = sorted(address["map"]["data"]["set"], key=lambda pair: pair[0])
    _expect(numgen["mode"] == "random" and numgen.get("offset", 0) == 0 and
            [index for index, _target in targets] == list(range(numgen["mod"])) and "port" not in statement,
            "dnat map")
    return dict(to_destination=tuple(_endpoint(target) for _index, target in targets))


def _address_range(value):
    """(first, last) address of an snat target; nft prints an aligned range as a prefix."""
    if isinstance(value, str):
        return parse_address(value), parse_address(value)
    if "prefix" in value:
        network = _prefix_network(value["prefix"])
        return network.network_address, network.broadcast_address
    first, last = value["range"]
    return parse_address(first), parse_address(last)


def _port_fields(statement):
    """to_ports and random_fully of an snat or masquerade statement."""
    return dict(to_ports=_port_range(statement["port"]) if "port" in statement else None, random_fully=_nat_flags(statement))


def _statement_fields(kind, statement):
    """(type, fields) of the rule's final statement."""
    if kind == "dnat":
        return "dnat", _dnat_fields(statement)
    if kind == "snat":
        return "snat", dict(_port_fields(statement), to_source=_address_range(statement["addr"]))
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


def _matches(family, expressions):
    fields = {}
    for expression in expressions:
        _expect("match" in expression, "statement %s before the last" % ", ".join(expression))
        for field, value in _match_fields(family, expression["match"]).items():
            _expect(field not in fields, "%s matched twice" % field)
            fields[field] = value
    return fields


def _counter(expressions):
    """(expressions without the counter before the statement, [packets, bytes] or None)."""
    if len(expressions) > 1 and "counter" in expressions[-2]:
        counter = expressions[-2]["counter"]
        return expressions[:-2] + expressions[-1:], [counter["packets"], counter["bytes"]]
    return expressions, None


def _rule_fields(family, expressions):
    """(type, fields) of one rule: matches, then exactly one final statement."""
    fields = _matches(family, expressions[:-1])
    (kind, statement), = expressions[-1].items()
    rule_type, statement_fields = _statement_fields(kind, statement)
    fields.update(statement_fields)
    return rule_type, fields


def _key_shape(family, key):
    """The Shape of a map lookup key expression, or _Unrecognized."""
    parts = [list(part.items())[0] for part in key["concat"]]
    address = [("payload", {"protocol": NFT_FAMILIES[family], "field": field}) for field in ("saddr", "daddr")]
    tail = parts[-2:]
    _expect(len(tail) == 2 and tail[0] == ("meta", {"key": "l4proto"}) and tail[1][0] == "payload"
            and tail[1][1]["field"] == "dport", "map key")
    head = parts[:-2]
    saddr = bool(head) and head[0] == address[0]
    head = head[1:] if saddr else head
    _expect(head in ([], [address[1]]), "map key")
    return Shape(saddr, "daddr" if head else "local")


def _key_values(element):
    """(key values tuple, comment) of one map element's key."""
    key, comment = element, None
    if "elem" in key:
        comment = key["elem"].get("comment")
        key = key["elem"]["val"]
    values = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    return tuple(values), comment


class TableListing(object):
    """One family's ``nft -j list table`` output read into rules; ``unrecognized`` lists what it could not read."""

    def __init__(self, family, objects):
        self.family = family
        self.chains = {}
        self.maps = {}
        self.rules_by_chain = collections.defaultdict(list)
        self.unrecognized = []
        # {rule name: [packets, bytes]}: a rule's counter, or the sum of its elements' counters.
        self.counters = {}
        self._endpoints = {}
        for item in objects:
            (kind, value), = item.items()
            if kind == "chain":
                self.chains[value["name"]] = value
            elif kind == "map":
                self.maps[value["name"]] = value
            elif kind == "rule":
                self.rules_by_chain[value["chain"]].append(value)
            elif kind not in ("table", "metainfo"):
                self._unrecognized("%s %s" % (kind, value.get("name")), "object this collection does not write")

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
                    self._unrecognized_rule(chain, listed, error)
                except (KeyError, TypeError, ValueError, IndexError) as error:
                    self._unrecognized_rule(chain, listed, "%s %s" % (type(error).__name__, error))
        if not self.unrecognized:
            self._check_objects(rules)
        return rules

    def _check_objects(self, rules):
        """Objects in the table that the rules read do not account for (hand edits) are drift too."""
        plan = table_plan(self.family, [RuleEntry(rule.name, rule.family, rule.chain, compile_rule(rule), None, None) for rule in rules])
        expected = set(plan.maps) | set(plan.chains) | set(plan.base)
        found = set(self.maps) | set(name for name in self.chains if not name.startswith(MARKER_PREFIX))
        for name in sorted(found - expected):
            self._unrecognized(name, "object this collection does not write")

    def _unrecognized(self, where, problem):
        self.unrecognized.append("%s %s %s: %s" % (NFT_FAMILIES[self.family], TABLE, where, problem))

    def _unrecognized_rule(self, chain, listed, problem):
        self._unrecognized("chain %s handle %s" % (chain, listed.get("handle")), problem)

    def _rule(self, chain, listed):
        _expect("comment" in listed, "rule without a name comment")
        expressions, counter = _counter(listed["expr"])
        _expect(counter is not None, "rule without a counter")
        rule_type, fields = _rule_fields(self.family, expressions)
        self.counters[listed["comment"]] = counter
        return make_rule(name=listed["comment"], type=rule_type, chain=chain, family=self.family, **fields)

    def _rules_of(self, chain, listed):
        expressions = listed["expr"]
        if "vmap" not in expressions[-1]:
            return [self._rule(chain, listed)]
        vmap = expressions[-1]["vmap"]
        shape = _key_shape(self.family, vmap["key"])
        prefix = _matches(self.family, expressions[:-1])
        _expect(prefix == (dict(destination_type="local", destination_type_negate=False) if shape.destination == "local" else {}),
                "map lookup after other matches")
        fields_by_name, counts = collections.OrderedDict(), collections.Counter()
        for element in self.maps[vmap["data"].lstrip("@")].get("elem", []):
            key, verdict = element
            values, name = _key_values(key)
            _expect(name is not None, "map element without a name comment")
            fields = self._element_fields(chain, shape, values, verdict["jump"]["target"])
            counter = key.get("elem", {}).get("counter", {"packets": 0, "bytes": 0})
            total = self.counters.setdefault(name, [0, 0])
            total[0] += counter["packets"]
            total[1] += counter["bytes"]
            counts[name] += 1
            if name not in fields_by_name:
                fields_by_name[name] = dict(fields, source=set(fields.get("source", ())), destination=set(fields.get("destination", ())))
                continue
            merged = fields_by_name[name]
            _expect(dict(merged, source=None, destination=None) == dict(fields, source=None, destination=None),
                    "map elements of %s disagree" % name)
            merged["source"].update(fields.get("source", ()))
            merged["destination"].update(fields.get("destination", ()))
        rules = []
        for name, fields in sorted(fields_by_name.items()):
            # A rule's elements are every (source host, destination host) pair of its keys.
            pairs = (len(fields["source"]) if shape.saddr else 1) * (len(fields["destination"]) if shape.destination == "daddr" else 1)
            _expect(counts[name] == pairs, "map elements of %s are not every pair of its hosts" % name)
            fields.update(source=normalize_networks(sorted(fields["source"])), destination=normalize_networks(sorted(fields["destination"])))
            rules.append(make_rule(name=name, chain=chain, family=self.family, **fields))
        return rules

    def _element_fields(self, chain, shape, key, target):
        """The fields of the rule one map element stands for: its key, then the shared chain's rule."""
        values = list(key)
        fields = {}
        if shape.saddr:
            fields["source"] = (_host_network(values.pop(0)),)
        if shape.destination == "daddr":
            fields["destination"] = (_host_network(values.pop(0)),)
        else:
            fields["destination_type"] = "local"
        protocol, port = values
        _expect(protocol in PROTOCOLS, "protocol %s" % protocol)
        fields.update(protocol=protocol, destination_ports=(PortRange(port, port),))
        target_rules = self.rules_by_chain[target]
        _expect(len(target_rules) == 1, "chain %s does not hold one rule" % target)
        expressions = target_rules[0]["expr"]
        rest = _matches(self.family, expressions[:-1])
        _expect(rest.pop("protocol", protocol) == protocol, "protocol of chain %s" % target)
        _expect(not set(rest) & set(fields), "chain %s matches a key field" % target)
        (kind, statement), = expressions[-1].items()
        if kind == "dnat" and isinstance(statement.get("addr"), dict) and isinstance(statement["addr"].get("map", {}).get("data"), str):
            rule_type, statement_fields = "dnat", self._mapped_endpoints(statement, key)
        else:
            rule_type, statement_fields = _statement_fields(kind, statement)
        fields.update(rest)
        fields.update(statement_fields)
        fields["type"] = rule_type
        _expect(rule_type != "return", "return in a shared chain")
        return fields

    def _mapped_endpoints(self, statement, key):
        lookup = statement["addr"]["map"]
        data_name = lookup["data"].lstrip("@")
        parts = lookup["key"]["concat"] if "concat" in lookup["key"] else [lookup["key"]]
        count = parts[-1]["numgen"]["mod"] if "numgen" in parts[-1] else 1
        endpoints_by_key = self._endpoints.get(data_name)
        if endpoints_by_key is None:
            endpoints_by_key = self._endpoints[data_name] = self._read_data_map(data_name, count)
        by_index = endpoints_by_key.get(key, {})
        _expect(sorted(by_index) == list(range(count)), "endpoints of %s in %s" % (" . ".join(map(str, key)), data_name))
        return dict(to_destination=tuple(by_index[index] for index in range(count)))

    def _read_data_map(self, data_name, count):
        """{key values: {index: Endpoint}} of one DNAT data map."""
        endpoints = collections.defaultdict(dict)
        for key, value in self.maps[data_name].get("elem", []):
            values, dummy = _key_values(key)
            index = values[-1] if count > 1 else 0
            endpoints[values[:-1] if count > 1 else values][index] = _endpoint(value)
        return endpoints


def parse_family(family, objects):
    """(rules, unrecognized, counters) of one family's listing (the ``nftables`` list of ``nft -j list table``)."""
    listing = TableListing(family, objects)
    return listing.rules(), listing.unrecognized, listing.counters
