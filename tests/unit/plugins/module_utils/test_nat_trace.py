# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nat_trace: the trace table, reading nft's trace lines into paths and names, and a whole run against recorded
nodes (tests/unit/fixtures/trace: what ``nft -a monitor trace`` printed for a client's connection to a node port on
an nft, an iptables-nft and an iptables-legacy node of the lab, and the listings names come from). A live test
traces real packets inside a throwaway network namespace and checks that the trace table is gone afterwards."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shutil
import threading
import time

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils import nat_trace
from ansible_collections.nodenet.nat.plugins.module_utils.nat_trace import events, ruleset

from support import FakeHost, Netns, can_make_netns

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "trace")
FLOW = dict(source="198.51.100.2", destination="198.51.100.1", protocol="tcp", port=30080)


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


# ---- arming ----------------------------------------------------------------------------------------------------

def test_trace_table_matches_the_flow_with_a_deadline_at_both_hooks():
    flow = ruleset.flow_from_params(FLOW)
    script = ruleset.trace_script(flow, deadline=1800000000)
    rule = ('ip saddr 198.51.100.2 ip daddr 198.51.100.1 meta l4proto tcp th dport 30080 meta time < 1800000000 '
            'meta nftrace set 1 comment "nodenet.nat trace"')
    assert script == ("table inet nodenet_trace {\n"
                      "\tchain prerouting {\n\t\ttype filter hook prerouting priority -350; policy accept;\n\t\t%s\n\t}\n"
                      "\tchain output {\n\t\ttype filter hook output priority -350; policy accept;\n\t\t%s\n\t}\n}\n" % (rule, rule))
    assert ruleset.flow_params(flow) == dict(family="ipv4", source="198.51.100.2", destination="198.51.100.1", protocol="tcp", port=30080)


@pytest.mark.parametrize("params, text", [
    (dict(destination="fd00:10:244::/48", protocol="icmp"), "ip6 daddr fd00:10:244::/48 meta l4proto ipv6-icmp"),
    (dict(source="10.244.1.10"), "ip saddr 10.244.1.10"),
    (dict(source="10.244.1.10/24", protocol="udp", port=53), "ip saddr 10.244.1.0/24 meta l4proto udp th dport 53"),
])
def test_flow_matches(params, text):
    assert ruleset.match_text(ruleset.flow_from_params(params)) == text


@pytest.mark.parametrize("params, message", [
    (dict(protocol="tcp"), "source or destination is required"),
    (dict(source="10.0.0.1", destination="fd00::1"), "destination: 'fd00::1' is IPv6 but source: '10.0.0.1' is IPv4"),
    (dict(destination="node-a"), "destination: 'node-a' is not an IPv4 or IPv6 address or network"),
    (dict(destination="10.0.0.1", port=80), "port: 80 needs protocol tcp, udp or sctp"),
    (dict(destination="10.0.0.1", protocol="icmp", port=80), "port: 80 needs protocol tcp, udp or sctp"),
    (dict(destination="10.0.0.1", protocol="tcp", port=70000), "port: 70000 is not a port"),
    (dict(destination="10.0.0.1", timeout=0), "timeout: 0 must be between 1 and 600"),
    (dict(destination="10.0.0.1", packets=51), "packets: 51 must be between 1 and 50"),
])
def test_bad_params_name_the_field(params, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        nat_trace.validate(params)


# ---- reading ---------------------------------------------------------------------------------------------------

def test_nft_node_path_through_the_owned_table():
    packets = events.parse_trace(fixture("nodeport-nft.txt").splitlines())
    # the SYN, then the handshake's and the close's packets (which the NAT chains no longer see)
    assert len(packets) == 4 and [len(packet["events"]) for packet in packets[1:]] == [0, 0, 0]
    first = packets[0]
    assert first["packet"] == dict(iif="v-client", saddr="198.51.100.2", daddr="198.51.100.1", protocol="tcp", sport="53886", dport="30080")
    rules = [(event["chain"], event["verdict"]) for event in first["events"] if event["type"] == "rule"]
    assert rules[0] == ("prerouting", "jump mark_b93cef4bd8a1") and rules[-1] == ("postrouting", "accept")
    dnat = [event for event in first["events"] if event["rule"] and event["rule"].startswith("dnat ip to")]
    assert len(dnat) == 1 and dnat[0]["verdict"] == "accept" and dnat[0]["owned"]
    postrouting = [event for event in first["events"] if event["type"] == "packet"][-1]
    assert postrouting["chain"] == "postrouting" and postrouting["packet"]["dport"] == "8080" and postrouting["packet"]["oif"] == "cni0"
    masquerade = first["events"][-1]
    assert masquerade["name"] == "nodeport-masquerade-v4" and masquerade["handle"] == 52
    assert masquerade["rule"] == "meta mark & 0x00004000 == 0x00004000 counter masquerade fully-random comment \"nodeport-masquerade-v4\""


def test_iptables_nft_node_path_through_the_owned_chains():
    packets = events.parse_trace(fixture("nodeport-iptables.txt").splitlines())
    first = packets[0]
    assert [(event["table"], event["chain"], event["type"], event["verdict"]) for event in first["events"]] == [
        ("nat", "PREROUTING", "packet", None), ("nat", "PREROUTING", "rule", "jump NODENET-PREROUTING"),
        ("nat", "NODENET-PREROUTING", "rule", "continue"), ("nat", "NODENET-PREROUTING", "rule", "accept"),
        ("nat", "POSTROUTING", "packet", None), ("nat", "POSTROUTING", "rule", "jump NODENET-POSTROUTING"),
        ("nat", "NODENET-POSTROUTING", "rule", "accept")]
    assert [event["owned"] for event in first["events"] if event["type"] == "rule"] == [False, True, True, False, True]
    # the xtables comment match is not printed: no name until the positions are read
    assert all(event["name"] is None for event in first["events"])


def test_legacy_node_trace_shows_only_the_trace_table():
    packets = events.parse_trace(fixture("nodeport-legacy.txt").splitlines())
    assert len(packets) == 4 and all(packet["events"] == [] for packet in packets)


def test_a_reused_trace_id_starts_a_new_packet_and_foreign_traces_are_left_out():
    lines = fixture("nodeport-nft.txt").splitlines()
    foreign = 'trace id 0badf00d ip filter input rule tcp dport 22 accept # handle 3 (verdict accept)'
    packets = events.parse_trace([foreign] + lines + lines)
    assert len(packets) == 8 and len(packets[4]["events"]) == len(packets[0]["events"])
    assert events.count_packets(lines) == 4


def test_a_bridged_packet_whose_trace_id_changes_after_prerouting_keeps_its_path():
    """A pod's packet (on a bridge with br_netfilter) enters postrouting under another trace id."""
    packets = events.parse_trace(fixture("egress-bridged-nft.txt").splitlines())
    first = packets[0]
    assert [(event["chain"], event["type"], event["name"]) for event in first["events"]] == [
        ("prerouting", "packet", None), ("prerouting", "policy", None), ("postrouting", "packet", None),
        ("postrouting", "rule", "egress-ipv4-clear"), ("postrouting", "rule", "egress-ipv4-nat")]
    assert all(packet["events"] == [] for packet in packets[1:])


@pytest.mark.parametrize("rule, expected", [
    ("fib daddr type local meta l4proto . th dport vmap @prerouting_local_4", (["protocol", "dport"], "prerouting_local_4")),
    ("ip daddr . meta l4proto . th dport vmap @prerouting_daddr_5", (["daddr", "protocol", "dport"], "prerouting_daddr_5")),
    ("ip saddr . ip daddr . meta l4proto . th dport vmap @postrouting_saddr_daddr_1",
     (["saddr", "daddr", "protocol", "dport"], "postrouting_saddr_daddr_1")),
    ("iifname . ip6 daddr vmap @m", (["iif", "daddr"], "m")),
    ("meta mark set 0x1", None),
    ("ct state vmap @states", None),
])
def test_lookup_key(rule, expected):
    assert events.lookup_key(rule) == expected


def test_element_comment_finds_the_element_of_the_packet_key():
    listing = fixture("nft-map-prerouting_local_4.json")
    assert events.element_comment(listing, ["tcp", "30080"]) == "nodeport-web-np-dnat-v4"
    assert events.element_comment(listing, ["tcp", "30081"]) is None
    ranged = '{"nftables": [{"map": {"elem": [[{"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": [1, 99]}]}, "accept"]]}}]}'
    assert events.element_comment(ranged, ["10.1.2.3", "53"]) is None  # no comment, but it matched
    assert events.element_comment(ranged, ["11.1.2.3", "53"]) is None


def test_xtables_comments_by_position():
    comments = events.xtables_comments(fixture("iptables-nft-nat.save"), "NODENET-PREROUTING")
    assert comments[:2] == ["nodeport-web-np-mark-v4", "nodeport-web-np-clear0-v4"] and len(comments) == 10
    assert events.xtables_comments('-A X -m comment --comment "a b" -j RETURN\n-A X -j RETURN\n', "X") == ["a b", None]
    # In a segment chain of the iptables backend a line without a comment is the rule's of the line before it.
    segment = '-A NODENET-PRE-0123456789ab -m comment --comment svc -m statistic --mode random --probability 0.5 -j DNAT ' \
              '--to-destination 10.244.0.1:80\n-A NODENET-PRE-0123456789ab -j DNAT --to-destination 10.244.0.2:80\n'
    assert events.xtables_comments(segment, "NODENET-PRE-0123456789ab") == ["svc", "svc"]


# ---- a whole run against a recorded node -------------------------------------------------------------------------

class FakeMonitor(object):
    """Prints the sync transaction's events once it ran, then the recorded trace lines, then nothing."""

    def __init__(self, node, trace_lines):
        self.node = node
        self.lines = list(trace_lines)
        self.stopped = False

    def readline(self, timeout):
        if self.node.pending:
            return self.node.pending.pop(0)
        if self.node.armed and self.lines:
            return self.lines.pop(0)
        return None

    def stop(self):
        self.stopped = True


class RecordedNode(object):
    """The commands a trace runs on one of the lab's nodes, answered from the recordings."""

    def __init__(self, name, listings=None):
        self.trace = fixture("nodeport-%s.txt" % name).splitlines()
        self.listings = listings or {}
        self.binaries = ["nft"]
        self.pending, self.armed, self.table, self.scripts, self.calls = [], False, False, [], []
        self.monitor = None

    def which(self, name):
        return "/usr/sbin/" + name if name in self.binaries else None

    def run_command(self, argv, data=None):
        self.calls.append(argv)
        tool, args = os.path.basename(argv[0]), argv[1:]
        if tool == "nft" and args == ["-f", "-"]:
            self.scripts.append(data)
            if data == ruleset.sync_script():
                self.pending += ["add table inet nodenet_trace # handle 9", "delete table inet nodenet_trace # handle 9",
                                 "# new generation 4 by process 1 (nft)"]
            else:
                self.armed = self.table = True
            return 0, "", ""
        if tool == "nft" and args == ["-j", "list", "chains"]:
            chains = [("ip", "nodenet_nat", "prerouting")] + [("inet", "nodenet_trace", hook) for hook in ruleset.HOOKS if self.table]
            return 0, json.dumps({"nftables": [dict(chain=dict(family=family, table=table, name=name)) for family, table, name in chains]}), ""
        if tool == "nft" and args == ["delete", "table", "inet", "nodenet_trace"]:
            self.table = False
            return 0, "", ""
        if tuple(argv) in self.listings:
            return 0, self.listings[tuple(argv)], ""
        return 1, "", "%s: not recorded" % " ".join(argv)

    def run(self, check_mode=False, **params):
        def factory(argv):
            assert argv == ["/usr/sbin/nft", "-a", "monitor"]
            self.monitor = FakeMonitor(self, self.trace)
            return self.monitor
        return nat_trace.TraceRun(dict(dict(FLOW, backend="nft"), **params), FakeHost(self.run_command, self.which, check_mode=check_mode),
                                  monitor_factory=factory).run()


NFT_LISTINGS = {
    ("/usr/sbin/nft", "-j", "list", "map", "ip", "nodenet_nat", name): fixture("nft-map-%s.json" % name)
    for name in ("prerouting_local_1", "prerouting_local_2", "prerouting_local_3", "prerouting_local_4")}
IPTABLES_LISTINGS = dict(
    [(("/usr/sbin/iptables-nft-save", "-t", "nat"), fixture("iptables-nft-nat.save"))]
    + [(("/usr/sbin/nft", "-j", "list", "chain", "ip", "nat", chain), fixture("iptables-nft-chain-%s.json" % chain))
       for chain in ("PREROUTING", "POSTROUTING", "NODENET-PREROUTING", "NODENET-POSTROUTING")])


def test_a_trace_on_the_nft_node_names_the_owned_rules_and_removes_its_table():
    node = RecordedNode("nft", NFT_LISTINGS)
    result = node.run()
    assert result["removed"] and not node.table and node.monitor.stopped
    assert result["flow"]["port"] == 30080 and not result["timed_out"] and len(result["packets"]) == 1
    assert "meta time < " in node.scripts[1] and node.scripts[1] == result["trace_ruleset"]
    # mark and dnat (elements of prerouting_local_1 and _4), masquerade (its comment); the client is no pod and no
    # backend: the keys of the clear and hairpin rules matched, their sources (in their shared chains) did not
    assert result["owned_rules"] == ["nodeport-web-np-mark-v4", "nodeport-web-np-dnat-v4", "nodeport-masquerade-v4"]
    assert "ip nodenet_nat prerouting: nodeport-web-np-clear0-v4 (jump mark_e3b92ff0b3e7, where no rule matched)" in result["path"]
    assert "ip nodenet_nat prerouting: nodeport-web-np-mark-v4 (jump mark_b93cef4bd8a1)" in result["path"]
    assert result["path"][0] == "ip nodenet_nat prerouting: packet iif v-client 198.51.100.2:53886 -> 198.51.100.1:30080 tcp"
    assert result["path"][-2:] == [
        "ip nodenet_nat postrouting: packet iif v-client oif cni0 198.51.100.2:53886 -> 10.244.1.11:8080 tcp",
        "ip nodenet_nat postrouting: nodeport-masquerade-v4 (accept)"]


def test_a_trace_on_the_iptables_nft_node_names_rules_by_their_position():
    node = RecordedNode("iptables", IPTABLES_LISTINGS)
    node.binaries.append("iptables-nft-save")
    result = node.run()
    assert result["owned_rules"] == ["nodeport-web-np-mark-v4", "nodeport-web-np-dnat-v4", "nodeport-masquerade-v4"]
    assert "ip nat PREROUTING: nodenet-nat (jump NODENET-PREROUTING)" in result["path"]


def test_a_trace_on_the_legacy_node_says_what_it_cannot_show():
    node = RecordedNode("legacy")
    result = node.run(backend="iptables-legacy")
    assert result["packets"] == [dict(packet=result["packets"][0]["packet"], events=[])] and result["path"] == []
    assert not result["timed_out"] and result["removed"]
    assert any("legacy iptables (x_tables) chains do not report to nft monitor trace" in note for note in result["notes"])


def test_no_packet_within_the_timeout_is_reported_and_the_table_removed():
    node = RecordedNode("nft")
    node.trace = []
    started = time.monotonic()
    result = node.run(timeout=1)
    assert result["timed_out"] and result["packets"] == [] and result["removed"] and not node.table
    assert time.monotonic() - started < 5


def test_the_table_is_removed_when_the_trace_fails():
    node = RecordedNode("nft")

    class Broken(FakeMonitor):
        def readline(self, timeout):
            if self.node.armed:
                raise nat_trace.MonitorError("nft monitor ended (rc=1): netlink: Error")
            return FakeMonitor.readline(self, timeout)

    def factory(argv):
        node.monitor = Broken(node, [])
        return node.monitor

    with pytest.raises(nat_trace.TraceError, match="nft monitor ended"):
        nat_trace.TraceRun(dict(FLOW), FakeHost(node.run_command, node.which), monitor_factory=factory).run()
    assert not node.table and node.monitor.stopped


def test_check_mode_traces_nothing():
    node = RecordedNode("nft")
    result = node.run(check_mode=True)
    assert node.scripts == [] and node.monitor is None and result["trace_ruleset"].startswith("table inet nodenet_trace {")
    assert "check mode" in result["notes"][-1]


def test_without_nft_the_trace_fails_and_says_what_to_use_instead():
    node = RecordedNode("nft")
    node.binaries = []
    with pytest.raises(nat_trace.TraceError, match="needs the nft binary"):
        node.run()


# ---- live: a real trace in a throwaway network namespace ------------------------------------------------------------

def test_a_real_trace_follows_a_dnat_and_leaves_nothing_behind():
    if not can_make_netns() or not shutil.which("nft"):
        pytest.skip("needs root, unshare, nsenter and nft")
    with Netns() as namespace:
        run, enter = namespace.run, namespace.enter
        assert run(["ip", "link", "set", "lo", "up"])[0] == 0
        assert run(["nft", "-f", "-"], 'table ip nodenet_nat {\n chain output {\n  type nat hook output priority -100;\n'
                   '  tcp dport 9999 counter dnat to 127.0.0.1:9998 comment "svc-dnat"\n }\n}\n')[0] == 0
        results = []
        thread = threading.Thread(target=lambda: results.append(nat_trace.TraceRun(
            dict(destination="127.0.0.1", protocol="tcp", port=9999, timeout=20, backend="nft"), FakeHost(run, shutil.which),
            monitor_factory=lambda argv: nat_trace.NftMonitor(enter + argv)).run()))
        thread.start()
        deadline = time.monotonic() + 15
        while run(["nft", "list", "table", "inet", "nodenet_trace"])[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        connect = "import socket; s = socket.socket(); s.settimeout(1)\ntry: s.connect(('127.0.0.1', 9999))\nexcept OSError: pass\n"
        assert run(["python3", "-c", connect])[0] == 0
        thread.join(30)
        result, = results
        assert result["owned_rules"] == ["svc-dnat"] and result["rule_hits"] == {"svc-dnat": dict(packets=1, bytes=60)}
        assert result["path"][:2] == ["ip nodenet_nat output: packet oif lo 127.0.0.1:%s -> 127.0.0.1:9999 tcp"
                                      % result["packets"][0]["packet"]["sport"], "ip nodenet_nat output: svc-dnat (accept)"]
        assert result["removed"] and "nodenet_trace" not in run(["nft", "list", "tables"])[1]


def test_the_trace_table_is_there_while_a_chain_of_it_is_listed():
    def listing(*tables):
        return json.dumps({"nftables": [{"metainfo": {"version": "1.0.6"}}]
                           + [dict(chain=dict(family=family, table=table, name="prerouting")) for family, table in tables]})
    assert ruleset.table_present(listing(("ip", "nat"), ("inet", "nodenet_trace")))
    assert not ruleset.table_present(listing(("ip", "nodenet_trace"), ("inet", "filter")))
    # Output that cannot be read does not say the table is gone.
    assert ruleset.table_present("Error: cache initialization failed")


class ListingMonitor(object):
    """nft monitor beside a big ruleset: it lists the ruleset for ``listing`` seconds before it listens, and a ruleset
    change meanwhile is lost and makes it start over. Time is a fake clock that readline advances."""

    def __init__(self, listing):
        self.listing = listing
        self.now = 0.0
        self.listing_since = 0.0
        self.changes = self.lost = 0
        self.pending = []

    def run_command(self, argv, data=None):
        assert argv == ["/usr/sbin/nft", "-f", "-"] and data == ruleset.sync_script()
        self.changes += 1
        if self.now < self.listing_since + self.listing:
            self.lost += 1
            self.listing_since = self.now
        else:
            self.pending += ["add table inet nodenet_trace # handle 9", "delete table inet nodenet_trace # handle 9"]
        return 0, "", ""

    def readline(self, timeout):
        if self.pending:
            return self.pending.pop(0)
        self.now += timeout
        return None


@pytest.mark.parametrize("listing", [0.0, 0.3, 12.0, 30.0])
def test_the_sync_changes_come_further_apart_until_the_monitor_listens(listing):
    monitor = ListingMonitor(listing)
    trace = nat_trace.TraceRun(dict(FLOW), FakeHost(monitor.run_command, lambda name: "/usr/sbin/" + name), clock=lambda: monitor.now)
    trace._sync("/usr/sbin/nft", monitor)
    assert monitor.changes == monitor.lost + 1
    assert (monitor.lost > 0) == (listing > 0)


def test_a_monitor_that_never_listens_fails_the_sync_naming_the_wait():
    monitor = ListingMonitor(nat_trace.SYNC_TIMEOUT)
    trace = nat_trace.TraceRun(dict(FLOW), FakeHost(monitor.run_command, lambda name: "/usr/sbin/" + name), clock=lambda: monitor.now)
    with pytest.raises(nat_trace.TraceError, match="within 130 s"):
        trace._sync("/usr/sbin/nft", monitor)
