#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: nat_trace
short_description: Trace the packets of one flow through the node's netfilter chains, for a bounded time
version_added: 0.2.0
description:
  - Turns on a packet trace for one flow (O(source), O(destination), O(protocol), O(port)), waits for O(packets) of its
    packets (at most O(timeout) seconds), turns the trace off and returns the path each packet took - every base chain
    it entered (with its addresses there, after any DNAT), every rule that matched (with its verdict and, when it has
    one, its name), every policy - and which of the collection's rules it went through.
  - "The trace lives in a table of its own, C(table inet nodenet_trace): a chain at the prerouting hook (packets that
    arrive) and one at the output hook (packets the node sends), priority -350, ahead of raw, conntrack and NAT, whose only
    rule matches the flow and sets C(meta nftrace). That rule also stops by itself at a deadline (C(meta time)), so a
    trace cannot outlive the module even if the module is killed. The module reads C(nft monitor trace) while the
    table is there, then deletes the table, also when it fails or times out, and checks that it is gone
    (RV(removed))."
  - Rules are named by their comment (the nft backend's rules, kube-proxy's), the comment of the verdict-map element
    the packet's key found (the nft backend's keyed rules), or, for iptables-nft rules, whose comment nft does not
    print, the comment of the rule at the same position in C(iptables-nft-save).
  - Works for nft tables and iptables-nft chains (both are nf_tables). B(Not available) - chains of legacy iptables
    (x_tables) do not report to C(nft monitor trace); their TRACE target writes to the kernel log, and only from
    the initial network namespace unless C(net.netfilter.nf_log_all_netns=1), which this module does not read. When
    legacy iptables holds rules, or O(backend) is V(iptables-legacy), the path leaves those chains out and
    RV(notes) says so; RV(rule_hits) still shows which owned rules counted connections while the trace ran.
  - The packets must come while the module waits. Send them from elsewhere once the trace table exists (the
    C(nodenet.nat.trace) playbook does that with a probe command), or trace traffic that flows anyway.
  - Needs the C(nft) binary and nf_tables in the kernel.
author:
  - nodenet.nat maintainers (@nodenet)
options:
  source:
    description: Source address or network of the flow (as the packet arrives, before any NAT).
    type: str
  destination:
    description:
      - Destination address or network of the flow (as the packet arrives, before any DNAT; for a node port, the node's
        address). One of O(source) and O(destination) is required.
    type: str
  protocol:
    description: Protocol of the flow; any when not set.
    type: str
    choices: [tcp, udp, sctp, icmp]
  port:
    description: Destination port of the flow (before any DNAT); needs O(protocol) V(tcp), V(udp) or V(sctp).
    type: int
  timeout:
    description: How long the trace may run, in seconds (1-600), from the moment it is on.
    type: int
    default: 30
  packets:
    description: How many packets of the flow to trace (1-50); the first is the one the NAT rules see.
    type: int
    default: 1
  backend:
    description:
      - The ruleset backend whose owned rules' counters make RV(rule_hits), as O(nodenet.nat.nat_rules#module:backend).
    type: str
    choices: [auto, nft, iptables, iptables-legacy]
    default: auto
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Nothing is traced; RV(trace_ruleset) is the table a trace would add.
  diff_mode:
    support: none
  platform:
    platforms: [linux]
notes:
  - The ruleset is changed only for the duration of the trace (the trace table is added, then deleted), so the module
    reports C(changed=false).
  - The counters of RV(rule_hits) count every connection that reached an owned rule while the trace ran, not only the
    traced flow.
seealso:
  - module: nodenet.nat.nat_info
"""

EXAMPLES = r"""
- name: Trace a connection to a node port, sent meanwhile by a client
  nodenet.nat.nat_trace:
    source: 198.51.100.2
    destination: 198.51.100.11
    protocol: tcp
    port: 30080
    timeout: 20
  register: trace

- name: Show the path
  ansible.builtin.debug:
    var: trace.path
"""

RETURN = r"""
flow:
  description: The flow traced - C(family), C(source), C(destination), C(protocol), C(port).
  returned: always
  type: dict
  sample: {family: ipv4, source: 198.51.100.2, destination: 198.51.100.11, protocol: tcp, port: 30080}
trace_ruleset:
  description: The trace table the module added (and deleted), as an nft script.
  returned: always
  type: str
path:
  description: The path of the first traced packet, one line per event - C(FAMILY TABLE CHAIN - what), where what is the
    packet as it entered a base chain, a matching rule (its name, or its text) with its verdict, or a policy.
  returned: always
  type: list
  elements: str
  sample:
    - "ip nodenet_nat prerouting: packet iif v-client 198.51.100.2:40896 -> 198.51.100.11:30080 tcp"
    - "ip nodenet_nat prerouting: nodeport-web-np-mark-v4 (jump mark_b93cef4bd8a1)"
    - "ip nodenet_nat prerouting: nodeport-web-np-dnat-v4 (jump dnat_687255995407)"
    - "ip nodenet_nat dnat_687255995407: dnat ip to meta l4proto . tcp dport . numgen random mod 2 map @prerouting_local_4_dnat2 (accept)"
    - "ip nodenet_nat postrouting: packet iif v-client oif cni0 198.51.100.2:40896 -> 10.244.1.11:8080 tcp"
    - "ip nodenet_nat postrouting: nodeport-masquerade-v4 (accept)"
owned_rules:
  description: The names of the collection's rules the first traced packet matched, in order.
  returned: always
  type: list
  elements: str
  sample: [nodeport-web-np-mark-v4, nodeport-web-np-dnat-v4, nodeport-masquerade-v4]
packets:
  description: Each traced packet - C(packet) (its fields as it arrived - C(iif), C(saddr), C(daddr), C(protocol), C(sport),
    C(dport)) and C(events), in order; an event has C(family), C(table), C(chain), C(type) (V(packet), V(rule), V(policy),
    V(verdict)), C(rule) (the rule's text), C(handle), C(verdict), C(name), C(owned) (a rule of this collection), and, for
    V(packet), C(packet) (the packet's fields at that chain).
  returned: always
  type: list
  elements: dict
rule_hits:
  description: Owned rules whose counters grew while the trace ran, with the C(packets) (connections) and C(bytes) they
    counted meanwhile (any traffic, not only the flow).
  returned: always
  type: dict
  sample: {nodeport-web-np-dnat-v4: {packets: 1, bytes: 60}, nodeport-masquerade-v4: {packets: 1, bytes: 60}}
timed_out:
  description: No packet of the flow came within O(timeout) (RV(packets) is empty).
  returned: always
  type: bool
removed:
  description: The trace table is gone after the trace (checked with C(nft -j list chains)).
  returned: always
  type: bool
backend:
  description: The backend whose counters make RV(rule_hits), or V(null) when none could be chosen.
  returned: always
  type: str
notes:
  description: What the trace could not show, and why (legacy iptables chains, a kernel without C(meta time), check mode).
  returned: always
  type: list
  elements: str
"""

from ansible_collections.nodenet.nat.plugins.module_utils.commands import run_module
from ansible_collections.nodenet.nat.plugins.module_utils.nat_trace import ARGUMENT_SPEC, MODULE_OPTIONS, nat_trace


def main():
    run_module(ARGUMENT_SPEC, nat_trace, **MODULE_OPTIONS)


if __name__ == "__main__":
    main()
