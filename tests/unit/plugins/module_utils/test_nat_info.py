# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nat_info on a copy of a recorded node (tests/unit/fixtures/proc/node): facts, and each problem of the
checklist appearing when its fault is seeded and disappearing once it is fixed."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import shutil

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils import nat_info
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info import facts as nat_facts
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import host_path

from support import FakeHost

RECORDED = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "proc", "node")
POD_CIDR = "10.244.0.0/16"
EGRESS_RULE = "-A NODENET-POSTROUTING -s 10.244.0.0/16 -o eth0 -m comment --comment egress -j MASQUERADE --random-fully"
FOREIGN_LEGACY_RULES = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n"
TABLE_FULL_LINE = "[12345.678901] nf_conntrack: nf_conntrack: table full, dropping packet"
# A source-NATed HTTPS connection from a pod, as /proc/net/nf_conntrack shows it.
SNAT_FLOW = ("ipv4     2 tcp      6 431999 ESTABLISHED src=10.244.1.2 dst=203.0.113.5 sport=%d dport=443 "
             "src=203.0.113.5 dst=198.51.100.10 sport=443 dport=%d [ASSURED] mark=0 zone=0 use=2")


def save_output(rules):
    """iptables-nft-save of a nat table holding this collection's postrouting chain with ``rules``."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", ":NODENET-POSTROUTING - [0:0]",
             "-A POSTROUTING -m comment --comment nodenet-nat -j NODENET-POSTROUTING"]
    return "\n".join(lines + list(rules) + ["COMMIT", ""])


class Host(object):
    """A recorded node below ``root`` plus the outputs of the commands nat_info runs."""

    def __init__(self, tmp_path):
        self.root = str(tmp_path / "root")
        shutil.copytree(os.path.join(RECORDED, "root"), self.root)
        self.binaries = dict((name, "/usr/sbin/" + name) for name in (
            "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore", "dmesg", "conntrack"))
        self.iptables_nft = {"ipv4": save_output([EGRESS_RULE]), "ipv6": save_output([])}
        self.iptables_legacy = None
        self.dmesg = (0, "[    0.000000] Linux version 6.1.0\n", "")
        self.params = dict(pod_cidrs=[POD_CIDR])
        self.calls = []

    def which(self, name):
        return self.binaries.get(name)

    def run_command(self, argv):
        self.calls.append(argv)
        name = os.path.basename(argv[0])
        if name.endswith("-save"):
            family = "ipv6" if name.startswith("ip6") else "ipv4"
            if "-legacy-" in name:
                return 0, self.iptables_legacy if family == "ipv4" else "", ""
            return 0, self.iptables_nft[family], ""
        if name == "dmesg":
            return self.dmesg
        if name == "conntrack":
            # the recording has IPv4 flows only
            if "ipv6" in argv:
                return 0, "", ""
            return 0, read(os.path.join(RECORDED, "commands", "conntrack-%s.txt" % argv[1].lstrip("-"))), ""
        return 127, "", "%s: not found" % name

    def write(self, path, text):
        full_path = host_path(self.root, path)
        if not os.path.isdir(os.path.dirname(full_path)):
            os.makedirs(os.path.dirname(full_path))
        with open(full_path, "w") as handle:
            handle.write(text)

    def remove(self, path):
        full_path = host_path(self.root, path)
        if os.path.isdir(full_path):
            shutil.rmtree(full_path)
        else:
            os.unlink(full_path)

    def mix_in_legacy_rules(self):
        self.binaries.update((name, "/usr/sbin/" + name) for name in (
            "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore"))
        self.iptables_legacy = FOREIGN_LEGACY_RULES

    def facts(self, **params):
        return nat_info.node_facts(dict(self.params, **params), FakeHost(self.run_command, which=self.which), self.root)


def read(path):
    with open(path) as handle:
        return handle.read()


def problem_ids(facts):
    return [problem["id"] for problem in facts["problems"]]


def make_healthy(host):
    """Fix the two faults the recording has: strict rp_filter on two uplinks, hairpin off on veth3c4d."""
    host.write(RP_FILTER_ALL, "2\n")
    host.write(HAIRPIN, "1\n")


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_recorded_node_facts(host):
    facts = host.facts()
    assert facts["backend"] == dict(name="iptables", reason=facts["backend"]["reason"], legacy_rules=0, nft_rules=3, mixed=False)
    assert "NODENET-* chains" in facts["backend"]["reason"]
    assert facts["forwarding"] == dict(ipv4=True, ipv6=False)
    assert facts["rules"] == [dict(name="egress", type="masquerade", chain="postrouting", family="ipv4",
                                   source=[POD_CIDR], out_interface="eth0", random_fully=True)]
    assert facts["rule_count"] == 1
    conntrack = facts["conntrack"]
    assert (conntrack["loaded"], conntrack["count"], conntrack["max"], conntrack["usage_percent"]) == (True, 2, 262144, 0.0)
    assert conntrack["stats_source"] == "/proc/net/stat/nf_conntrack"
    assert conntrack["per_cpu"] == [dict(cpu=0, insert_failed=0, drop=0, early_drop=0), dict(cpu=1, insert_failed=0, drop=0, early_drop=0)]
    assert conntrack["busiest_snat_destinations"] == [
        dict(protocol="udp", snat_address="198.51.100.10", destination="198.51.100.1", port=53, count=1)]
    assert facts["bridges"] == {"cni0": dict(pod_bridge=True, promiscuous=False,
                                             ports=dict(veth1a2b=dict(hairpin=True), veth3c4d=dict(hairpin=False)))}
    assert facts["br_netfilter"] == dict(loaded=True, bridge_nf_call_iptables=True, bridge_nf_call_ip6tables=True)
    assert facts["uplinks"] == ["eth0", "eth1"]
    assert facts["rp_filter"] == dict(eth0=1, eth1=1)
    assert problem_ids(facts) == ["rp_filter_strict_multihomed", "hairpin_off"]
    assert facts["skipped_checks"] == []


def test_healthy_node_has_no_problems(host):
    make_healthy(host)
    facts = host.facts()
    assert facts["problems"] == [] and facts["skipped_checks"] == []


def test_conntrack_stats_are_hex_columns_per_cpu(host):
    host.write(nat_facts.CONNTRACK_STAT_PATH,
               "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error\n"
               "00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000001 00000000 00000000\n"
               "00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000100 00000000 000000ff 00000000\n")
    conntrack = host.facts()["conntrack"]
    assert conntrack["per_cpu"] == [dict(cpu=0, insert_failed=10, drop=1, early_drop=0), dict(cpu=1, insert_failed=256, drop=0, early_drop=255)]
    assert conntrack["stats"] == dict(insert_failed=266, drop=1, early_drop=255)


def test_conntrack_commands_replace_missing_proc_files(host):
    host.remove(nat_facts.CONNTRACK_STAT_PATH)
    host.remove(nat_facts.CONNTRACK_TABLE_PATH)
    conntrack = host.facts()["conntrack"]
    assert conntrack["stats_source"] == "conntrack -S"
    assert [cpu["cpu"] for cpu in conntrack["per_cpu"]] == [0, 1]
    # conntrack -L lists one family per call
    assert ["/usr/sbin/conntrack", "-L", "-f", "ipv6", "-o", "extended"] in host.calls
    assert conntrack["busiest_snat_destinations"] == [
        dict(protocol="udp", snat_address="198.51.100.10", destination="198.51.100.1", port=53, count=1)]


def test_parse_conntrack_stats_command():
    text = "cpu=0   \tfound=0 invalid=3 insert=0 insert_failed=7 drop=2 early_drop=1 error=0\ncpu=1 insert_failed=0 drop=0\n"
    assert nat_facts.parse_conntrack_stats_command(text) == [
        dict(cpu=0, insert_failed=7, drop=2, early_drop=1), dict(cpu=1, insert_failed=0, drop=0, early_drop=0)]


@pytest.mark.parametrize("line, expected", [
    (SNAT_FLOW % (40000, 40000), nat_facts.SnatDestination("tcp", "198.51.100.10", "203.0.113.5", 443)),
    # DNAT to a pod and SNAT (hairpin): the real destination is the reply's source
    ("ipv4 2 tcp 6 100 ESTABLISHED src=10.244.1.2 dst=10.96.0.10 sport=5000 dport=80 src=10.244.1.3 dst=10.244.1.1 "
     "sport=8080 dport=5000 [ASSURED] mark=0 use=1", nat_facts.SnatDestination("tcp", "10.244.1.1", "10.244.1.3", 8080)),
    # DNAT only: the reply goes back to the original source
    ("ipv4 2 tcp 6 100 ESTABLISHED src=192.0.2.7 dst=198.51.100.10 sport=5000 dport=30080 src=10.244.1.3 dst=192.0.2.7 "
     "sport=8080 dport=5000 [ASSURED] mark=0 use=1", None),
    ("ipv6 10 udp 17 20 src=fd00:10:244:1::2 dst=2001:db8::53 sport=999 dport=53 src=2001:db8::53 dst=2001:db8::a "
     "sport=53 dport=999 mark=0 use=1", nat_facts.SnatDestination("udp", "2001:db8::a", "2001:db8::53", 53)),
    ("ipv4 2 icmp 1 29 src=10.244.1.2 dst=192.0.2.1 type=8 code=0 id=7 src=192.0.2.1 dst=198.51.100.10 type=0 code=0 id=7 "
     "mark=0 use=1", nat_facts.SnatDestination("icmp", "198.51.100.10", "192.0.2.1", None)),
])
def test_parse_flow(line, expected):
    assert nat_facts.parse_flow(line) == expected


def _seed_snat_flows(count):
    def seed(host):
        host.write(nat_facts.CONNTRACK_TABLE_PATH, "".join(SNAT_FLOW % (port, port) + "\n" for port in range(40000, 40000 + count)))
    return seed


def _seed_snat_flows_without_random_fully(count):
    def seed(host):
        _seed_snat_flows(count)(host)
        _set_egress_rule(EGRESS_RULE.replace(" --random-fully", ""))(host)
    return seed


def _set_egress_rule(rule):
    def change(host):
        host.iptables_nft["ipv4"] = save_output([rule])
    return change


def _write(path, text):
    return lambda host: host.write(path, text)


def _dmesg(rc, out, err=""):
    def change(host):
        host.dmesg = (rc, out, err)
    return change


def _seed_legacy_rules(host):
    host.mix_in_legacy_rules()


def _clear_legacy_rules(host):
    host.iptables_legacy = ""


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"
RP_FILTER_ALL = "/proc/sys/net/ipv4/conf/all/rp_filter"
RP_FILTER_ETH1 = "/proc/sys/net/ipv4/conf/eth1/rp_filter"
HAIRPIN = "/sys/class/net/cni0/brif/veth3c4d/hairpin_mode"
PROMISCUOUS_BRIDGE = "0x%x\n" % (0x1003 | nat_facts.IFF_PROMISC)

# (problem id, options, seed the fault, fix it)
SCENARIOS = [
    ("forwarding_off", {}, _write("/proc/sys/net/ipv4/ip_forward", "0\n"), _write("/proc/sys/net/ipv4/ip_forward", "1\n")),
    ("forwarding_off", dict(pod_cidrs=[POD_CIDR, "fd00:10:244::/56"]), _write("/proc/sys/net/ipv6/conf/all/forwarding", "0\n"),
     _write("/proc/sys/net/ipv6/conf/all/forwarding", "1\n")),
    ("masquerade_missing", {}, _set_egress_rule(EGRESS_RULE.replace("10.244.0.0/16", "10.244.1.0/24")),
     _set_egress_rule(EGRESS_RULE.replace("10.244.0.0/16", "10.0.0.0/8"))),
    ("masquerade_missing", {}, _set_egress_rule("-A NODENET-POSTROUTING -m mark --mark 0x4000/0x4000 -m comment "
                                                "--comment masq-marked -j MASQUERADE"), _set_egress_rule(EGRESS_RULE)),
    ("conntrack_near_full", {}, _write("/proc/sys/net/netfilter/nf_conntrack_count", "250000\n"),
     _write("/proc/sys/net/netfilter/nf_conntrack_count", "1000\n")),
    ("conntrack_table_full", {}, _dmesg(0, "boot\n%s\n" % TABLE_FULL_LINE), _dmesg(0, "boot\n")),
    ("rp_filter_strict_multihomed", {}, _write(RP_FILTER_ALL, "1\n"), _write(RP_FILTER_ALL, "2\n")),
    # the interface's own value counts when it is higher than all's
    ("rp_filter_strict_multihomed", {}, lambda host: (host.write(RP_FILTER_ALL, "0\n"), host.write(RP_FILTER_ETH1, "1\n")),
     _write(RP_FILTER_ETH1, "2\n")),
    # a single uplink left: asymmetric routes are not possible
    ("rp_filter_strict_multihomed", {}, _write(RP_FILTER_ALL, "1\n"),
     _write("/proc/net/route", read(os.path.join(RECORDED, "root/proc/net/route")).replace("eth1", "eth0"))),
    ("hairpin_off", {}, _write(HAIRPIN, "0\n"), _write(HAIRPIN, "1\n")),
    # kubelet's promiscuous-bridge mode
    ("hairpin_off", {}, _write(HAIRPIN, "0\n"), _write("/sys/class/net/cni0/flags", PROMISCUOUS_BRIDGE)),
    ("br_netfilter_missing", {}, lambda host: host.remove("/proc/sys/net/bridge"),
     lambda host: shutil.copytree(os.path.join(RECORDED, "root/proc/sys/net/bridge"), host_path(host.root, "/proc/sys/net/bridge"))),
    ("bridge_nf_call_off", {}, _write(BRIDGE_NF, "0\n"), _write(BRIDGE_NF, "1\n")),
    ("backends_mixed", {}, _seed_legacy_rules, _clear_legacy_rules),
    ("port_exhaustion_risk", dict(port_exhaustion_threshold=5), _seed_snat_flows_without_random_fully(5), _seed_snat_flows(4)),
    ("port_exhaustion_risk", dict(port_exhaustion_threshold=5), _seed_snat_flows_without_random_fully(5),
     _set_egress_rule(EGRESS_RULE)),
]


@pytest.mark.parametrize("problem_id, options, seed, fix", SCENARIOS)
def test_problem_appears_with_its_fault_and_disappears_once_fixed(host, problem_id, options, seed, fix):
    make_healthy(host)
    seed(host)
    found = host.facts(**options)
    assert problem_id in problem_ids(found)
    problem = found["problems"][problem_ids(found).index(problem_id)]
    assert problem["severity"] in ("error", "warning") and problem["message"] and problem["fix"]
    fix(host)
    assert problem_id not in problem_ids(host.facts(**options))


def test_seeded_problem_messages_carry_the_evidence(host):
    make_healthy(host)
    _seed_snat_flows_without_random_fully(5)(host)
    host.write("/proc/sys/net/netfilter/nf_conntrack_count", "250000\n")
    problems = dict((problem["id"], problem) for problem in host.facts(port_exhaustion_threshold=5)["problems"])
    assert problems["port_exhaustion_risk"]["message"].startswith("5 tcp connections from 198.51.100.10 to 203.0.113.5 port 443")
    assert "egress" in problems["port_exhaustion_risk"]["fix"]
    assert "95.4% full (250000 of 262144 entries, threshold 90%)" in problems["conntrack_near_full"]["message"]


def test_conntrack_threshold_option(host):
    make_healthy(host)
    host.write("/proc/sys/net/netfilter/nf_conntrack_count", "250000\n")
    assert problem_ids(host.facts(conntrack_threshold=96)) == []
    assert problem_ids(host.facts(conntrack_threshold=95)) == ["conntrack_near_full"]


def test_hairpin_only_on_bridges_carrying_pods(host):
    facts = host.facts(pod_cidrs=["10.99.0.0/16"])
    assert facts["bridges"]["cni0"]["pod_bridge"] is False
    assert "hairpin_off" not in problem_ids(facts)
    # without pod CIDRs, a bridge with ports counts as a pod bridge
    assert "hairpin_off" in problem_ids(host.facts(pod_cidrs=[]))


def test_unreadable_kernel_log_skips_the_check_and_says_why(host):
    make_healthy(host)
    host.dmesg = (1, "", "dmesg: read kernel buffer failed: Operation not permitted")
    facts = host.facts()
    assert facts["problems"] == []
    reason = "cannot read the kernel log: /usr/sbin/dmesg exited with 1: dmesg: read kernel buffer failed: Operation not permitted"
    assert facts["skipped_checks"] == [dict(id="conntrack_table_full", reason=reason)]


def test_unloaded_conntrack_and_missing_backend_are_skipped_checks(host):
    make_healthy(host)
    host.remove("/proc/sys/net/netfilter")
    host.remove(nat_facts.CONNTRACK_TABLE_PATH)
    host.binaries = dict(dmesg="/usr/bin/dmesg")
    facts = host.facts()
    assert facts["conntrack"] == dict(loaded=False, count=None, max=None, usage_percent=None)
    assert facts["backend"]["name"] is None and "no usable backend" in facts["backend"]["error"]
    assert facts["rules"] is None and facts["counters"] is None and facts["rule_count"] is None
    assert [entry["id"] for entry in facts["skipped_checks"]] == ["masquerade_missing", "conntrack_near_full", "port_exhaustion_risk"]
    assert "nf_conntrack is not loaded" in facts["skipped_checks"][1]["reason"]


@pytest.mark.parametrize("params, message", [
    (dict(pod_cidrs=["10.244.0.0/16", "pods"]), "pod_cidrs\\[1\\]: 'pods' is not an IPv4 or IPv6 network"),
    (dict(conntrack_threshold=0), "conntrack_threshold must be between 1 and 100, got 0"),
    (dict(port_exhaustion_threshold=0), "port_exhaustion_threshold must be at least 1, got 0"),
])
def test_bad_options_name_the_field(host, params, message):
    with pytest.raises(ValueError, match=message):
        host.facts(**params)
    assert host.calls == []


def test_port_exhaustion_blames_only_rules_that_match_the_busy_destination(host):
    """The hairpin role's masquerade has no random-fully but masquerades only pods -> pods: busy connections to
    the outside are not its doing."""
    make_healthy(host)
    _seed_snat_flows(5)(host)
    hairpin = ("-A NODENET-POSTROUTING -s 10.244.1.0/24 -d 10.244.1.0/24 -o cni0 -m conntrack --ctstate DNAT "
               "-m comment --comment hairpin-ipv4-masquerade -j MASQUERADE")
    host.iptables_nft["ipv4"] = save_output([EGRESS_RULE, hairpin])
    assert problem_ids(host.facts(port_exhaustion_threshold=5)) == []
    host.iptables_nft["ipv4"] = save_output([EGRESS_RULE.replace(" --random-fully", ""), hairpin])
    risk = host.facts(port_exhaustion_threshold=5)["problems"]
    assert [problem["id"] for problem in risk] == ["port_exhaustion_risk"]
    assert "rules egress masquerade" in risk[0]["message"] and "hairpin" not in risk[0]["message"]


def test_masquerade_missing_names_what_the_owned_masquerades_match_instead(host):
    make_healthy(host)
    host.iptables_nft["ipv4"] = save_output([
        "-A NODENET-POSTROUTING -m mark --mark 0x4000/0x4000 -m comment --comment nodeport-masquerade-v4 -j MASQUERADE --random-fully"])
    host.iptables_nft["ipv6"] = ""
    problem, = host.facts()["problems"]
    assert problem["id"] == "masquerade_missing"
    assert problem["message"] == (
        "no masquerade or SNAT rule of this collection covers pod CIDR 10.244.0.0/16: its traffic leaves with pod source "
        "addresses (nodeport-masquerade-v4 matches only packets with mark 0x4000/0x4000 (egress carries mark 0x0))")


def test_masquerade_missing_names_owned_objects_that_could_not_be_read(host):
    make_healthy(host)
    host.iptables_nft["ipv4"] = save_output([])
    facts = host.facts()
    assert facts["unrecognized"] == ["ipv4 NODENET-POSTROUTING: owned chain without rules", "ipv6 NODENET-POSTROUTING: owned chain without rules"]
    problem, = facts["problems"]
    assert problem["message"].endswith("(2 owned objects could not be read: ipv4 NODENET-POSTROUTING: owned chain without rules; "
                                       "ipv6 NODENET-POSTROUTING: owned chain without rules)")


@pytest.mark.parametrize("result_rules, other_rules, listed", [
    ("summary", nat_info.RULES_LISTED - 1, True),
    ("summary", nat_info.RULES_LISTED, False),
    ("all", nat_info.RULES_LISTED, True),
])
def test_the_rules_are_listed_up_to_a_thousand_unless_all_are_asked_for(host, result_rules, other_rules, listed):
    # Other sources' masquerades first, the pods' last: no masquerade_missing means the checklist read the last rule.
    other = ["-A NODENET-POSTROUTING -s 10.%d.%d.0/24 -m comment --comment other-%d -j MASQUERADE" % (index // 256, index % 256, index)
             for index in range(other_rules)]
    host.iptables_nft["ipv4"] = save_output(other + [EGRESS_RULE])
    facts = host.facts(result_rules=result_rules)
    assert facts["rule_count"] == other_rules + 1
    assert "masquerade_missing" not in problem_ids(facts)
    if listed:
        assert [rule["name"] for rule in facts["rules"]] == ["other-%d" % index for index in range(other_rules)] + ["egress"]
        assert "counters" in facts
    else:
        assert "rules" not in facts and "counters" not in facts
