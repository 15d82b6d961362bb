# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How nat_info reads a node: the host -> a ``Node`` (facts, and the evidence the checklist reads).

``gather`` reads files below ``root`` and runs read-only commands through ``run_command``; it
never judges what it finds (checklist.py does). Evidence that cannot be read is None, with the
reason in ``Node.unreadable``, so that a check can say why it did not run.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import ipaddress
import os

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import BackendError, entry_rule
from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import (
    BackendUnavailable, mixed_backends, select_backend, xtables_listings,
)
from ansible_collections.nodenet.nat.plugins.module_utils.model.dicts import rule_to_params
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import (
    BRIDGE_KEYS, IPV4_FORWARD, IPV6_FORWARD, MAX_KEY, conf_key, host_path, key_path, read_key, read_text,
)

STAT_COLUMNS = ("insert_failed", "drop", "early_drop")
CONNTRACK_STAT_PATH = "/proc/net/stat/nf_conntrack"
CONNTRACK_TABLE_PATH = "/proc/net/nf_conntrack"
CONNTRACK_COUNT_KEY = "net.netfilter.nf_conntrack_count"
IFF_PROMISC = 0x100
BUSIEST_DESTINATIONS = 5

# Connections sharing one SNAT source address towards one destination port (after DNAT).
SnatDestination = collections.namedtuple("SnatDestination", ["protocol", "snat_address", "destination", "port"])


class Node(object):
    """What ``gather`` found: ``facts`` (returned as is) and the evidence the checks read.

    Evidence that could not be read is None, with the reason in ``unreadable[name]``.
    """

    def __init__(self):
        self.facts = {}
        self.rules = None
        self.counters = None
        self.unrecognized = None
        self.snat_destinations = None
        self.kernel_log = None
        self.unreadable = {}


def _flag(value):
    return None if value is None else value != "0"


def _int_or_none(text):
    return None if text is None else int(text.split()[0])


def parse_ipv4_routes(text):
    """[(interface, network)] from /proc/net/route (addresses are little-endian hex)."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        address, mask = (ipaddress.IPv4Address(bytes(bytearray.fromhex(field))[::-1]) for field in (fields[1], fields[7]))
        routes.append((fields[0], ipaddress.IPv4Network("%s/%s" % (address, mask), strict=False)))
    return routes


def parse_ipv6_routes(text):
    """[(interface, network)] from /proc/net/ipv6_route (destination hex, prefix length hex, ..., interface)."""
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        address = ipaddress.IPv6Address(bytes(bytearray.fromhex(fields[0])))
        routes.append((fields[9], ipaddress.IPv6Network("%s/%d" % (address, int(fields[1], 16)), strict=False)))
    return routes


def read_routes(root):
    routes = []
    for path, parse in (("/proc/net/route", parse_ipv4_routes), ("/proc/net/ipv6_route", parse_ipv6_routes)):
        text = read_text(host_path(root, path))
        if text:
            routes.extend(parse(text))
    return routes


def _overlaps_any(network, networks):
    return any(network.version == other.version and network.overlaps(other) for other in networks)


def read_links(root):
    """{name: {"bridge": bool, "bridge_port": bool, "flags": int}} from /sys/class/net."""
    links = {}
    base = host_path(root, "/sys/class/net")
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        flags = read_text(os.path.join(path, "flags"))
        links[name] = dict(bridge=os.path.isdir(os.path.join(path, "bridge")),
                           bridge_port=os.path.isdir(os.path.join(path, "brport")),
                           flags=int(flags, 16) if flags else 0)
    return links


def read_bridges(root, links, routes, pod_networks):
    """{bridge: {"pod_bridge", "promiscuous", "ports": {port: {"hairpin": bool}}}}.

    A bridge carries pods when one of its routes overlaps a pod CIDR; without pod CIDRs, when it has ports.
    """
    bridges = {}
    for name in sorted(name for name, link in links.items() if link["bridge"]):
        ports = {}
        brif = host_path(root, "/sys/class/net/%s/brif" % name)
        for port in sorted(os.listdir(brif)) if os.path.isdir(brif) else []:
            ports[port] = dict(hairpin=_flag((read_text(os.path.join(brif, port, "hairpin_mode")) or "0").strip()))
        own_routes = [network for interface, network in routes if interface == name]
        carries_pods = any(_overlaps_any(network, pod_networks) for network in own_routes) if pod_networks else bool(ports)
        bridges[name] = dict(pod_bridge=carries_pods, promiscuous=bool(links[name]["flags"] & IFF_PROMISC), ports=ports)
    return bridges


def find_uplinks(links, routes, pod_networks):
    """Interfaces that route somewhere other than pods: not loopback, bridges or bridge ports,
    with an IPv4 route wider than a host route that is not inside a pod CIDR."""
    uplinks = set()
    for interface, network in routes:
        link = links.get(interface)
        if (network.version != 4 or link is None or interface == "lo" or link["bridge"] or link["bridge_port"]
                or network.prefixlen == 32 or _overlaps_any(network, pod_networks)):
            continue
        uplinks.add(interface)
    return sorted(uplinks)


def read_rp_filter(root, interfaces):
    """{interface: value the kernel applies}: the higher of conf.all and the interface's own."""
    all_value = _int_or_none(read_key(root, conf_key("ipv4", "all", "rp_filter"))) or 0
    return dict((interface, max(all_value, _int_or_none(read_key(root, conf_key("ipv4", interface, "rp_filter"))) or 0))
                for interface in interfaces)


def parse_proc_conntrack_stat(text):
    """Per-CPU [{cpu, insert_failed, drop, early_drop}] from /proc/net/stat/nf_conntrack (hex columns)."""
    lines = text.splitlines()
    header = lines[0].split()
    per_cpu = []
    for cpu, line in enumerate(lines[1:]):
        values = dict(zip(header, (int(field, 16) for field in line.split())))
        per_cpu.append(dict([("cpu", cpu)] + [(column, values.get(column, 0)) for column in STAT_COLUMNS]))
    return per_cpu


def parse_conntrack_stats_command(text):
    """Per-CPU [{cpu, insert_failed, drop, early_drop}] from ``conntrack -S`` (cpu=0 found=0 ...)."""
    per_cpu = []
    for line in text.splitlines():
        values = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if "cpu" in values:
            per_cpu.append(dict([("cpu", int(values["cpu"]))] + [(column, int(values.get(column, 0))) for column in STAT_COLUMNS]))
    return per_cpu


def _run(run_command, argv):
    """stdout of ``argv``, or (None, why not)."""
    try:
        rc, out, err = run_command(argv)
    except OSError as exc:
        return None, "%s: %s" % (argv[0], exc.strerror or exc)
    if rc != 0:
        return None, "%s exited with %d: %s" % (" ".join(argv), rc, (err or out).strip())
    return out, None


def read_conntrack_stats(root, run_command, which):
    """(per_cpu, source) from /proc/net/stat/nf_conntrack, else ``conntrack -S``; (None, why not)."""
    text = read_text(host_path(root, CONNTRACK_STAT_PATH))
    if text:
        return parse_proc_conntrack_stat(text), CONNTRACK_STAT_PATH
    binary = which("conntrack")
    if binary is None:
        return None, "%s is missing and the conntrack binary is not installed" % CONNTRACK_STAT_PATH
    out, error = _run(run_command, [binary, "-S"])
    return (parse_conntrack_stats_command(out), "conntrack -S") if error is None else (None, error)


def read_conntrack(root, run_command, which, node):
    count, maximum = (_int_or_none(read_key(root, key)) for key in (CONNTRACK_COUNT_KEY, MAX_KEY))
    facts = dict(loaded=maximum is not None, count=count, max=maximum,
                 usage_percent=round(100.0 * count / maximum, 1) if count is not None and maximum else None)
    if not facts["loaded"]:
        node.unreadable["conntrack"] = "nf_conntrack is not loaded (%s does not exist)" % key_path(root, MAX_KEY)
        return facts
    per_cpu, source = read_conntrack_stats(root, run_command, which)
    if per_cpu is None:
        node.unreadable["conntrack_stats"] = source
        source = None
    facts.update(stats_source=source, per_cpu=per_cpu,
                 stats=dict((column, sum(cpu[column] for cpu in per_cpu)) for column in STAT_COLUMNS) if per_cpu is not None else None)
    return facts


def parse_flow(line):
    """SnatDestination of one conntrack entry (/proc/net/nf_conntrack or ``conntrack -L -o extended``),
    or None when the entry is not source-NATed.

    The reply tuple tells the translated addresses: its destination is the SNAT address, its source
    and source port the real destination (after any DNAT).
    """
    fields = line.split()
    if len(fields) < 3:
        return None
    original, reply = {}, {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep:
            continue
        tuple_fields = reply if key in original else original
        tuple_fields.setdefault(key, value)
    if "src" not in reply or reply.get("dst") == original.get("src"):
        return None
    return SnatDestination(fields[2], reply["dst"], reply["src"], int(reply["sport"]) if "sport" in reply else None)


def count_snat_destinations(lines):
    counts = collections.Counter()
    for line in lines:
        destination = parse_flow(line)
        if destination is not None:
            counts[destination] += 1
    return counts


def read_snat_destinations(root, run_command, which):
    """(Counter of SnatDestination, None) from /proc/net/nf_conntrack or ``conntrack -L``; (None, why not)."""
    path = host_path(root, CONNTRACK_TABLE_PATH)
    if os.path.exists(path):
        try:
            with open(path) as handle:
                return count_snat_destinations(handle), None
        except (IOError, OSError) as exc:
            return None, "cannot read %s: %s" % (path, exc.strerror or exc)
    binary = which("conntrack")
    if binary is None:
        return None, "%s does not exist and the conntrack binary is not installed" % CONNTRACK_TABLE_PATH
    lines = []
    # Without -f, conntrack -L lists IPv4 entries only.
    for family in ("ipv4", "ipv6"):
        out, error = _run(run_command, [binary, "-L", "-f", family, "-o", "extended"])
        if error is not None:
            return None, error
        lines.extend(out.splitlines())
    return count_snat_destinations(lines), None


def read_kernel_log(run_command, which):
    """(dmesg text, None), or (None, why not): containers and dmesg_restrict often refuse it."""
    binary = which("dmesg")
    if binary is None:
        return None, "dmesg is not installed"
    return _run(run_command, [binary])


def read_ruleset(requested, run_command, which, node):
    """Backend facts; sets ``node.rules`` to the owned rules (NatRule), ``node.counters`` to their counters
    ({name: [packets, bytes]}) and ``node.unrecognized`` to the owned objects the backend did not write,
    when they can be read."""
    facts = dict(name=None, reason=None)
    listings = xtables_listings(which, run_command)
    try:
        backend, facts["reason"] = select_backend(requested, run_command, which, listings)
        facts["name"] = backend.name
        state = backend.read(run_command, counters=True)
        node.rules = [entry_rule(entry) for entry in state.entries]
        node.counters = state.facts.get("counters") or {}
        node.unrecognized = list(state.facts.get("unrecognized") or [])
    except (BackendUnavailable, BackendError) as exc:
        node.unreadable["rules"] = str(exc)
        facts["error"] = str(exc)
    facts.update(mixed_backends(listings))
    return facts


def rule_counters(node):
    """{rule name: {packets, bytes}} of the owned rules that carry counters (nat hooks count the first packet of each connection)."""
    counters = {}
    for rule in node.rules:
        found = node.counters.get(rule.name)
        if found is not None:
            counters[rule.name] = dict(packets=found[0], bytes=found[1])
    return counters


def rule_facts(node):
    """``rules`` (as config items) and ``counters`` of the owned rules; None each when they cannot be read."""
    if node.rules is None:
        return dict(rules=None, counters=None)
    return dict(rules=[rule_to_params(rule) for rule in node.rules], counters=rule_counters(node))


def gather(root, run_command, which, backend="auto", pod_networks=()):
    """A Node for this host. ``run_command(argv)`` -> (rc, stdout, stderr); ``which(name)`` -> path or None;
    ``pod_networks`` (ip_network) tell which bridges carry pods and which routes are not uplinks."""
    node = Node()
    facts = node.facts
    facts["backend"] = read_ruleset(backend, run_command, which, node)
    facts["forwarding"] = dict(ipv4=_flag(read_key(root, IPV4_FORWARD)), ipv6=_flag(read_key(root, IPV6_FORWARD)))
    facts["rule_count"] = len(node.rules) if node.rules is not None else None
    facts["unrecognized"] = node.unrecognized
    facts["conntrack"] = read_conntrack(root, run_command, which, node)
    links = read_links(root)
    routes = read_routes(root)
    facts["bridges"] = read_bridges(root, links, routes, pod_networks)
    facts["br_netfilter"] = dict((key.rsplit(".", 1)[1].replace("-", "_"), _flag(read_key(root, key))) for key in BRIDGE_KEYS)
    facts["br_netfilter"]["loaded"] = os.path.isdir(os.path.dirname(key_path(root, BRIDGE_KEYS[0])))
    facts["uplinks"] = find_uplinks(links, routes, pod_networks)
    facts["rp_filter"] = read_rp_filter(root, facts["uplinks"])
    if facts["conntrack"]["loaded"]:
        node.snat_destinations, reason = read_snat_destinations(root, run_command, which)
        if reason:
            node.unreadable["snat_destinations"] = reason
        else:
            facts["conntrack"]["busiest_snat_destinations"] = [
                dict(destination._asdict(), count=count) for destination, count in node.snat_destinations.most_common(BUSIEST_DESTINATIONS)]
    node.kernel_log, reason = read_kernel_log(run_command, which)
    if reason:
        node.unreadable["kernel_log"] = reason
    return node
