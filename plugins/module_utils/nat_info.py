# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about a NAT node and the troubleshooting checklist run over them (nat_info).

``gather`` reads the host (files below ``root``, read-only commands through ``run_command``)
into a ``Node``; ``diagnose`` turns a Node into problems. Every check either reports, finds
nothing, or says why it could not run (``skipped_checks``): a check that cannot see its
evidence never passes silently.
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
from ansible_collections.nodenet.nat.plugins.module_utils.model import rule_to_params
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import (
    BRIDGE_KEYS, IPV4_FORWARD, IPV6_FORWARD, MAX_KEY, conf_key, host_path, key_path, read_key, read_text,
)

DEFAULT_CONNTRACK_THRESHOLD = 90
DEFAULT_PORT_EXHAUSTION_THRESHOLD = 10000
# The kernel's message when a new flow finds the conntrack table full.
TABLE_FULL_MESSAGE = "table full, dropping packet"
STAT_COLUMNS = ("insert_failed", "drop", "early_drop")
CONNTRACK_STAT_PATH = "/proc/net/stat/nf_conntrack"
CONNTRACK_TABLE_PATH = "/proc/net/nf_conntrack"
CONNTRACK_COUNT_KEY = "net.netfilter.nf_conntrack_count"
IFF_PROMISC = 0x100
RP_FILTER_STRICT = 1
BUSIEST_DESTINATIONS = 5

# A finding: ``id`` is stable (scripts match on it), ``fix`` says what to run or set.
Problem = collections.namedtuple("Problem", ["id", "severity", "message", "fix"])
# Connections sharing one SNAT source address towards one destination port (after DNAT).
SnatDestination = collections.namedtuple("SnatDestination", ["protocol", "snat_address", "destination", "port"])


class Node(object):
    """What ``gather`` found: ``facts`` (returned as is) and the evidence the checks read.

    Evidence that could not be read is None, with the reason in ``unreadable[name]``.
    """

    def __init__(self):
        self.facts = {}
        self.rules = None
        self.snat_destinations = None
        self.kernel_log = None
        self.unreadable = {}


# ---- reading the host ------------------------------------------------------------------------

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
    """Backend facts; sets ``node.rules`` to the owned rules (NatRule) when they can be read."""
    facts = dict(name=None, reason=None)
    listings = xtables_listings(which, run_command)
    try:
        backend, facts["reason"] = select_backend(requested, run_command, which, listings)
        facts["name"] = backend.name
        node.rules = [entry_rule(entry) for entry in backend.read(run_command).entries]
    except (BackendUnavailable, BackendError) as exc:
        node.unreadable["rules"] = str(exc)
        facts["error"] = str(exc)
    facts.update(mixed_backends(listings))
    return facts


def gather(root, run_command, which, backend="auto", pod_networks=()):
    """A Node for this host. ``run_command(argv)`` -> (rc, stdout, stderr); ``which(name)`` -> path or None;
    ``pod_networks`` (ip_network) tell which bridges carry pods and which routes are not uplinks."""
    node = Node()
    facts = node.facts
    facts["backend"] = read_ruleset(backend, run_command, which, node)
    facts["forwarding"] = dict(ipv4=_flag(read_key(root, IPV4_FORWARD)), ipv6=_flag(read_key(root, IPV6_FORWARD)))
    facts["rules"] = [rule_to_params(rule) for rule in node.rules] if node.rules is not None else None
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


def pod_cidr_networks(cidrs):
    """ip_network of each pod CIDR; ValueError names the bad one."""
    networks = []
    for index, cidr in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(u"%s" % cidr, strict=False))
        except ValueError:
            raise ValueError("pod_cidrs[%d]: %r is not an IPv4 or IPv6 network" % (index, cidr))
    return networks


# ---- the checklist ---------------------------------------------------------------------------

class CheckSkipped(Exception):
    """The evidence of a check could not be read; the message says why."""


def check_forwarding(node, options):
    families = ["ipv4"] + (["ipv6"] if any(network.version == 6 for network in options["pod_networks"]) else [])
    problems = []
    for family in families:
        if node.facts["forwarding"][family] is False:
            key = IPV4_FORWARD if family == "ipv4" else IPV6_FORWARD
            problems.append(Problem(
                "forwarding_off", "error",
                "%s forwarding is off (%s = 0): pod egress and DNAT to other hosts are not routed" % (family, key),
                "nodenet.nat.forwarding with %s: true (or sysctl -w %s=1)" % (family, key)))
    return problems


def _covers_egress(rule, network):
    """A masquerade/SNAT rule that applies to all egress of ``network`` (not only marked,
    state-restricted or destination-listed traffic)."""
    return (rule.type in ("masquerade", "snat") and rule.chain == "postrouting"
            and rule.family == ("ipv4" if network.version == 4 else "ipv6")
            and not rule.source_negate and rule.mark is None and not rule.ct_state
            and (not rule.destination or rule.destination_negate)
            and (not rule.source or any(network.subnet_of(source) for source in rule.source)))


def check_masquerade(node, options):
    if node.rules is None:
        raise CheckSkipped(node.unreadable["rules"])
    return [Problem("masquerade_missing", "error",
                    "no masquerade or SNAT rule of this collection covers pod CIDR %s: its traffic leaves with pod source "
                    "addresses" % network,
                    "nodenet.nat.node_egress role with %s in node_egress_pod_cidrs" % network)
            for network in options["pod_networks"] if not any(_covers_egress(rule, network) for rule in node.rules)]


def check_conntrack_usage(node, options):
    conntrack = node.facts["conntrack"]
    if not conntrack["loaded"]:
        raise CheckSkipped(node.unreadable["conntrack"])
    if conntrack["usage_percent"] < options["conntrack_threshold"]:
        return []
    return [Problem("conntrack_near_full", "warning",
                    "the conntrack table is %s%% full (%d of %d entries, threshold %d%%): new flows are dropped once it is full"
                    % (conntrack["usage_percent"], conntrack["count"], conntrack["max"], options["conntrack_threshold"]),
                    "raise the table size: nodenet.nat.conntrack with max or max_per_core")]


def check_table_full_logged(node, options):
    if node.kernel_log is None:
        raise CheckSkipped("cannot read the kernel log: %s" % node.unreadable["kernel_log"])
    lines = [line for line in node.kernel_log.splitlines() if TABLE_FULL_MESSAGE in line]
    if not lines:
        return []
    return [Problem("conntrack_table_full", "error",
                    "the kernel log shows %d conntrack \"%s\" messages, the last: %s" % (len(lines), TABLE_FULL_MESSAGE, lines[-1].strip()),
                    "raise the table size (nodenet.nat.conntrack with max or max_per_core) and look for what opens so many flows")]


def check_rp_filter(node, options):
    uplinks = node.facts["uplinks"]
    strict = sorted(interface for interface, value in node.facts["rp_filter"].items() if value == RP_FILTER_STRICT)
    if len(uplinks) < 2 or not strict:
        return []
    return [Problem("rp_filter_strict_multihomed", "warning",
                    "strict reverse path filtering (rp_filter=1) on %s of a node with %d uplinks (%s): packets arriving on an "
                    "interface other than the route back to their source are dropped" % (", ".join(strict), len(uplinks), ", ".join(uplinks)),
                    "nodenet.nat.forwarding with rp_filter: loose (and per-interface rp_filter loose or off)")]


def _pod_bridges(node):
    return dict((name, bridge) for name, bridge in node.facts["bridges"].items() if bridge["pod_bridge"])


def check_hairpin(node, options):
    problems = []
    for name, bridge in sorted(_pod_bridges(node).items()):
        # kubelet's promiscuous-bridge mode hairpins through the promiscuous bridge instead.
        off = sorted(port for port, state in bridge["ports"].items() if not state["hairpin"])
        if off and not bridge["promiscuous"]:
            problems.append(Problem(
                "hairpin_off", "warning",
                "bridge %s carries pods but hairpin mode is off on its ports %s: a pod reaching its own service "
                "through the node gets no answer" % (name, ", ".join(off)),
                "nodenet.nat.hairpin role with hairpin_bridge: %s" % name))
    return problems


def check_br_netfilter(node, options):
    bridges = sorted(_pod_bridges(node))
    if not bridges:
        return []
    state = node.facts["br_netfilter"]
    if not state["loaded"]:
        return [Problem("br_netfilter_missing", "warning",
                        "bridge %s carries pods but br_netfilter is not loaded: traffic between pods on the bridge skips "
                        "the NAT rules (service DNAT, hairpin masquerade)" % ", ".join(bridges),
                        "nodenet.nat.forwarding with bridge_nf_call_iptables: true (loads br_netfilter)")]
    if state["bridge_nf_call_iptables"] is False:
        return [Problem("bridge_nf_call_off", "warning",
                        "bridge %s carries pods but net.bridge.bridge-nf-call-iptables = 0: bridged traffic skips the NAT rules"
                        % ", ".join(bridges),
                        "nodenet.nat.forwarding with bridge_nf_call_iptables: true")]
    return []


def check_mixed_backends(node, options):
    backend = node.facts["backend"]
    if not backend["mixed"]:
        return []
    return [Problem("backends_mixed", "warning",
                    "both legacy iptables (%d rules) and iptables-nft (%d rules) hold rules: each tool lists only its own, "
                    "and both apply" % (backend["legacy_rules"], backend["nft_rules"]),
                    "move everything to one front end (kube-proxy, CNI and this collection must agree; see iptables-wrappers)")]


def check_port_exhaustion(node, options):
    if node.rules is None:
        raise CheckSkipped(node.unreadable["rules"])
    risky_rules = sorted(set(rule.name for rule in node.rules if rule.type in ("masquerade", "snat") and not rule.random_fully))
    if not risky_rules:
        return []
    if node.snat_destinations is None:
        raise CheckSkipped(node.unreadable.get("snat_destinations") or node.unreadable["conntrack"])
    busy = [(destination, count) for destination, count in node.snat_destinations.most_common()
            if count >= options["port_exhaustion_threshold"]]
    return [Problem("port_exhaustion_risk", "warning",
                    "%d %s connections from %s to %s port %s share one source port space (threshold %d), and rules %s "
                    "masquerade without random-fully: port allocation collides (insert_failed) as it fills"
                    % (count, destination.protocol, destination.snat_address, destination.destination, destination.port,
                       options["port_exhaustion_threshold"], ", ".join(risky_rules)),
                    "set random_fully: true on %s (node_egress_random_fully: true), or SNAT to several addresses" % ", ".join(risky_rules))
            for destination, count in busy]


# id(s) a check reports -> check. Order is the order of the report.
CHECKS = (
    ("forwarding_off", check_forwarding),
    ("masquerade_missing", check_masquerade),
    ("conntrack_near_full", check_conntrack_usage),
    ("conntrack_table_full", check_table_full_logged),
    ("rp_filter_strict_multihomed", check_rp_filter),
    ("hairpin_off", check_hairpin),
    ("br_netfilter_missing", check_br_netfilter),
    ("backends_mixed", check_mixed_backends),
    ("port_exhaustion_risk", check_port_exhaustion),
)


def diagnose(node, options):
    """(problems as dicts, skipped checks as [{id, reason}]). ``options``: pod_networks, conntrack_threshold,
    port_exhaustion_threshold."""
    problems, skipped = [], []
    for check_id, check in CHECKS:
        try:
            problems.extend(problem._asdict() for problem in check(node, options))
        except CheckSkipped as exc:
            skipped.append(dict(id=check_id, reason=str(exc)))
    return problems, skipped


def validate_options(params):
    """The checks' options from the module params; ValueError names the bad field and value."""
    for field, low, high in (("conntrack_threshold", 1, 100), ("port_exhaustion_threshold", 1, None)):
        value = params.get(field)
        if value is not None and (value < low or (high is not None and value > high)):
            raise ValueError("%s must be %s, got %r" % (field, "between %d and %d" % (low, high) if high else "at least %d" % low, value))
    return dict(
        pod_networks=pod_cidr_networks(params.get("pod_cidrs") or []),
        conntrack_threshold=params.get("conntrack_threshold") or DEFAULT_CONNTRACK_THRESHOLD,
        port_exhaustion_threshold=params.get("port_exhaustion_threshold") or DEFAULT_PORT_EXHAUSTION_THRESHOLD,
    )


def nat_info(params, root, run_command, which):
    """The ``nodenet_nat`` facts of this host, with ``problems`` and ``skipped_checks``; ValueError on bad params."""
    options = validate_options(params)
    node = gather(root, run_command, which, params.get("backend") or "auto", options["pod_networks"])
    node.facts["problems"], node.facts["skipped_checks"] = diagnose(node, options)
    return node.facts
