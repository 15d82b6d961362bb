# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
name: nodeport_rules
short_description: NodePort services as nodenet.nat.nat_rules rules, with kube-proxy semantics
version_added: 0.1.0
description:
  - Turns a list of NodePort services into the C(config) list of M(nodenet.nat.nat_rules) that the
    C(nodenet.nat.nodeport) role applies with O(nodenet.nat.nat_rules#module:scope=nodeport-).
  - Per service and IP family, in the C(prerouting) chain, under C(Cluster) policy, a C(mark) rule sets the
    masquerade bit for every connection to the node port, then one C(mark) rule per pod CIDR clears it again
    (traffic from pods keeps its source). Then, under either policy, a C(mark) rule sets the bit for connections
    from the service's own backends (hairpin), and a C(dnat) rule spreads connections randomly over the backends.
    The C(output) chain gets the C(mark) (C(Cluster) only) and C(dnat) rules for clients on the node itself,
    never for loopback destinations. The C(postrouting) chain gets one C(masquerade) rule per family for
    packets carrying the bit.
  - C(Local) policy uses only the backends inside the pod CIDRs and sets no masquerade bit, so the backend sees
    the client address; a C(Local) service without a local backend gets no rules.
  - A family without backends, or without C(source_ranges) entries when source ranges are given, or
    without O(addresses) entries when addresses are given, gets no rules for that service.
  - Rule names are C(nodeport-<service>-np-...) for the node port, C(nodeport-<service>-cip-...) for the
    cluster IP, each ending in C(-v4) or C(-v6), and C(nodeport-masquerade-v4), C(nodeport-masquerade-v6).
positional: _input
options:
  _input:
    description:
      - The services. Keys C(name) (a DNS label of at most 40 characters, unique), C(port), C(protocol)
        (C(tcp), C(udp) or C(sctp); default C(tcp)), C(backends) (a non-empty list of C(address), C(port)),
        C(external_traffic_policy) (C(Cluster) or C(Local); default C(Cluster)), C(cluster_ip) (optional) and
        C(source_ranges) (optional list of CIDRs).
    type: list
    elements: dict
    required: true
  pod_cidrs:
    description: The node's pod CIDRs, IPv4 and IPv6.
    type: list
    elements: str
    default: []
  addresses:
    description: Node addresses the node ports answer on. Empty means every local address.
    type: list
    elements: str
    default: []
  mark:
    description: The masquerade bit, as a number or a C(0x) hexadecimal string.
    type: raw
    default: "0x4000"
  prefix:
    description: Prefix of every rule name (the role's scope).
    type: str
    default: nodeport-
  as_json:
    description:
      - Return the rules as JSON text rather than a list. M(nodenet.nat.nat_rules) takes either; ansible passes a
        text on without walking it, which matters at thousands of services.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Render the rules of one service
  ansible.builtin.debug:
    msg: >-
      {{ [{'name': 'web', 'port': 30080, 'backends': [{'address': '10.244.1.10', 'port': 8080}]}]
         | nodenet.nat.nodeport_rules(pod_cidrs=['10.244.1.0/24']) }}
"""

RETURN = r"""
_value:
  description: Rules for O(nodenet.nat.nat_rules#module:config), in order (a JSON text of that list with O(as_json=true)).
  type: raw
"""

import collections
import ipaddress
import json
import re

from ansible.errors import AnsibleFilterError

from ansible_collections.nodenet.nat.plugins.module_utils.model import Endpoint, format_endpoint

NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
NAME_MAX = 40
PROTOCOLS = ("tcp", "udp", "sctp")
POLICIES = ("Cluster", "Local")
SERVICE_KEYS = ("name", "port", "protocol", "backends", "external_traffic_policy", "cluster_ip", "source_ranges")
BACKEND_KEYS = ("address", "port")
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}


def _fail(service, field, value, why):
    raise AnsibleFilterError("nodeport_services: service %r, %s=%r: %s" % (service, field, value, why))


def _network(service, field, value):
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as error:
        _fail(service, field, value, str(error))


def _address(service, field, value):
    try:
        return ipaddress.ip_address(str(value))
    except ValueError as error:
        _fail(service, field, value, str(error))


def _port(service, field, value):
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 1 <= port <= 65535 or isinstance(value, bool):
        _fail(service, field, value, "a port is a number from 1 to 65535")
    return port


def _mark(value):
    try:
        number = value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        raise AnsibleFilterError("nodeport_masquerade_mark=%r: not a number" % (value,)) from None
    if not 0 < number <= 0xFFFFFFFF:
        raise AnsibleFilterError("nodeport_masquerade_mark=%r: must be a non-zero 32-bit value" % (value,))
    return "0x%x" % number


def _unknown_keys(name, field, value, known):
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        _fail(name, field, value, "has unknown keys %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(known))))


def _service(raw, seen):
    if not isinstance(raw, dict):
        raise AnsibleFilterError("nodeport_services: every entry is a dict, got %r" % (raw,))
    raw = dict(raw)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > NAME_MAX:
        _fail(name, "name", name, "a service name is a DNS label: 1 to %d of a-z, 0-9, '-', starting and ending "
              "with a letter or digit (it becomes part of rule names)" % NAME_MAX)
    if name in seen:
        _fail(name, "name", name, "duplicate service name")
    seen.add(name)
    _unknown_keys(name, "service", raw, SERVICE_KEYS)
    protocol = raw.get("protocol") or "tcp"
    if protocol not in PROTOCOLS:
        _fail(name, "protocol", protocol, "one of %s" % ", ".join(PROTOCOLS))
    policy = raw.get("external_traffic_policy") or "Cluster"
    if policy not in POLICIES:
        _fail(name, "external_traffic_policy", policy, "one of %s" % ", ".join(POLICIES))
    backends = raw.get("backends")
    if not isinstance(backends, list) or not backends:
        _fail(name, "backends", backends, "a non-empty list of {address, port}")
    parsed = []
    for backend in backends:
        if not isinstance(backend, dict):
            _fail(name, "backends", backend, "each backend is {address, port}")
        _unknown_keys(name, "backends[]", backend, BACKEND_KEYS)
        parsed.append((_address(name, "backends[].address", backend.get("address")),
                       _port(name, "backends[].port", backend.get("port"))))
    cluster_ip = raw.get("cluster_ip")
    source_ranges = raw.get("source_ranges") or []
    if not isinstance(source_ranges, list):
        _fail(name, "source_ranges", source_ranges, "a list of CIDRs")
    return {
        "name": name,
        "port": _port(name, "port", raw.get("port")),
        "protocol": protocol,
        "local": policy == "Local",
        "backends": parsed,
        "cluster_ip": _address(name, "cluster_ip", cluster_ip) if cluster_ip else None,
        "source_ranges": [_network(name, "source_ranges", item) for item in source_ranges],
    }


def nodeport_rules(services, pod_cidrs=None, addresses=None, mark="0x4000", prefix="nodeport-", as_json=False):
    if not isinstance(services, list):
        raise AnsibleFilterError("nodeport_services must be a list, got %r" % (services,))
    pod_networks = [_network("-", "nodeport_pod_cidrs", item) for item in pod_cidrs or []]
    node_addresses = [_address("-", "nodeport_addresses", item) for item in addresses or []]
    bit = _mark(mark)
    # One string for setting the bit (value/mask) and for matching it (value/mask).
    bit_set, bit_clear = "%s/%s" % (bit, bit), "0x0/%s" % bit
    # Rules by (target kind, rule kind), each list in service order: emitted kind by kind, so that the
    # rules of one kind form one run that the nft backend turns into one map lookup. Rules of
    # different services never match the same packet, so only each service's own order matters,
    # and it is kept: mark, clears, hairpin, dnat.
    groups = collections.OrderedDict(((target, kind), []) for target in ("np", "cip")
                                     for kind in ("mark", "clear", "hairpin", "dnat", "out-mark", "out-dnat"))
    families = set()
    seen = set()
    for service in [_service(raw, seen) for raw in services]:
        for version in (4, 6):
            suffix = "-v%d" % version
            family = "ipv%d" % version
            pods = [net for net in pod_networks if net.version == version]
            backends = [(address, port) for address, port in service["backends"] if address.version == version]
            if service["local"]:
                backends = [(address, port) for address, port in backends if any(address in net for net in pods)]
            ranges = [str(net) for net in service["source_ranges"] if net.version == version]
            if not backends or (service["source_ranges"] and not ranges):
                continue
            targets = []
            if node_addresses:
                mine = [str(address) for address in node_addresses if address.version == version]
                if mine:
                    targets.append(("np", {"destination": mine}, {"destination": mine}))
            else:
                targets.append(("np", {"destination_type": "local"},
                                {"destination_type": "local", "destination": [LOOPBACK[version]], "destination_negate": True}))
            if service["cluster_ip"] is not None and service["cluster_ip"].version == version:
                cluster_ip = {"destination": [str(service["cluster_ip"])]}
                targets.append(("cip", cluster_ip, cluster_ip))
            common = {"family": family, "protocol": service["protocol"], "destination_ports": [service["port"]]}
            limited = dict(common, source=ranges) if ranges else dict(common)
            dnat = {"type": "dnat", "to_destination": [format_endpoint(Endpoint(address, port)) for address, port in backends]}
            backend_sources = sorted(set(str(address) for address, _port_ in backends))
            for key, match, output_match in targets:
                families.add(version)
                stem = "%s%s-%s-" % (prefix, service["name"], key)
                if not service["local"]:
                    groups[key, "mark"].append(dict(limited, name=stem + "mark" + suffix, type="mark", chain="prerouting",
                                                    set_mark=bit_set, **match))
                    groups[key, "clear"].extend(dict(common, name="%sclear%d%s" % (stem, index, suffix), type="mark", chain="prerouting",
                                                     source=[str(net)], set_mark=bit_clear, **match) for index, net in enumerate(pods))
                groups[key, "hairpin"].append(dict(common, name=stem + "hairpin" + suffix, type="mark", chain="prerouting",
                                                   source=backend_sources,
                                                   set_mark=bit_set, **match))
                groups[key, "dnat"].append(dict(limited, name=stem + "dnat" + suffix, chain="prerouting", **dict(dnat, **match)))
                if not service["local"]:
                    groups[key, "out-mark"].append(dict(limited, name=stem + "out-mark" + suffix, type="mark", chain="output",
                                                        set_mark=bit_set, **output_match))
                groups[key, "out-dnat"].append(dict(limited, name=stem + "out-dnat" + suffix, chain="output", **dict(dnat, **output_match)))
    postrouting = [{"name": "%smasquerade-v%d" % (prefix, version), "family": "ipv%d" % version, "type": "masquerade",
                    "chain": "postrouting", "mark": bit_set, "random_fully": True} for version in sorted(families)]
    rules = [rule for rules in groups.values() for rule in rules] + postrouting
    return json.dumps(rules) if as_json else rules


class FilterModule(object):
    def filters(self):
        return {"nodeport_rules": nodeport_rules}
