# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flows left pointing at a removed UDP/SCTP DNAT endpoint: which, the conntrack commands, and the deletion."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.nodenet.nat.plugins.module_utils import flows
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import rule_from_params
from support import FakeHost

BACKEND = NftBackend()
DNS = dict(name="dns", type="dnat", destination=["10.96.0.10"], protocol="udp", destination_ports=[53],
           to_destination=["10.244.1.5:53", "10.244.2.5:53"])


def entries(*configs):
    return dict((config["name"], BACKEND.entry(rule_from_params(config, 0))) for config in configs)


def endpoints(stale):
    return [(flow.rule, str(flow.endpoint.address)) for flow in stale]


def test_a_removed_endpoint_of_a_udp_rule_is_stale():
    stale = flows.stale_flows(entries(DNS), entries(dict(DNS, to_destination=["10.244.2.5:53", "10.244.3.5:53"])))
    assert endpoints(stale) == [("dns", "10.244.1.5")]
    assert flows.delete_argvs(stale[0]) == [["conntrack", "-D", "-f", "ipv4", "-p", "udp", "--orig-dst", "10.96.0.10",
                                             "--orig-port-dst", "53", "--dst-nat", "10.244.1.5"]]


def test_every_endpoint_of_a_removed_or_rematched_rule_is_stale():
    assert endpoints(flows.stale_flows(entries(DNS), {})) == [("dns", "10.244.1.5"), ("dns", "10.244.2.5")]
    moved = entries(dict(DNS, destination_ports=[5353]))
    assert endpoints(flows.stale_flows(entries(DNS), moved)) == [("dns", "10.244.1.5"), ("dns", "10.244.2.5")]


def test_tcp_and_unchanged_rules_leave_no_stale_flow():
    tcp = dict(DNS, protocol="tcp")
    assert flows.stale_flows(entries(tcp), {}) == []
    assert flows.stale_flows(entries(DNS), entries(DNS)) == []


def test_a_node_port_narrows_by_port_only_and_ipv6_by_family():
    nodeport = dict(name="np", type="dnat", destination_type="local", protocol="sctp", destination_ports=[30132],
                    to_destination=["[fd00::5]:132"])
    stale, = flows.stale_flows(entries(nodeport), {})
    assert flows.delete_argvs(stale) == [["conntrack", "-D", "-f", "ipv6", "-p", "sctp", "--orig-port-dst", "30132",
                                          "--dst-nat", "fd00::5"]]


def test_nothing_deleted_is_fine_and_a_missing_tool_is_a_warning():
    stale = flows.stale_flows(entries(DNS), {})
    host = FakeHost(lambda argv: (1, "", "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"))
    assert flows.clear(host, stale) == []
    missing = FakeHost(which=lambda name: None)
    assert flows.clear(missing, stale) == ["conntrack is not installed: flows to the removed UDP/SCTP endpoints stay until they time out"]
