#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: nat_info
short_description: Facts about a NAT node and a diagnosis of the usual NAT faults
version_added: 0.1.0
description:
  - Gathers, under the single fact C(ansible_facts.nodenet_nat), the ruleset backend in use, the forwarding state,
    the rules this collection owns, the connection tracking usage and statistics, the bridges and their ports,
    and runs the troubleshooting checklist over them.
  - The checklist (each finding has a stable RV(ansible_facts.nodenet_nat.problems[].id)) -
    V(forwarding_off) IPv4 forwarding off (IPv6 too when O(pod_cidrs) has an IPv6 CIDR);
    V(masquerade_missing) a pod CIDR of O(pod_cidrs) whose egress no owned masquerade or SNAT rule translates in full
    (see below; rules of other tools are not read);
    V(conntrack_near_full) table usage at or above O(conntrack_threshold);
    V(conntrack_table_full) "table full, dropping packet" in the kernel log (C(dmesg));
    V(rp_filter_strict_multihomed) strict rp_filter on an uplink of a node with two or more uplinks;
    V(hairpin_off) ports without hairpin mode on a bridge that carries pods (unless the bridge is promiscuous,
    kubelet's promiscuous-bridge mode);
    V(br_netfilter_missing) / V(bridge_nf_call_off) a pod bridge whose traffic skips netfilter;
    V(backends_mixed) rules in both legacy iptables and iptables-nft;
    V(port_exhaustion_risk) at least O(port_exhaustion_threshold) connections share one SNAT address and destination
    address and port, and an owned masquerade or SNAT rule without random-fully matches that destination (its
    destination, protocol and ports; so the hairpin role's rule, for pod destinations only, is not blamed for
    connections to the outside).
  - Egress of a pod CIDR is the first packet of a new connection from inside the CIDR to an address outside every
    range the rules list, of any protocol, not DNATed, carrying no mark bits. The owned rules of its family are walked
    in order as the kernel walks them - the mark rules of prerouting (except those for one input interface), then
    postrouting - over the parts of the CIDR and the mark they carry so far. A mark rule changes the mark, a
    masquerade or SNAT rule translates what it matches, a return rule lets it out untranslated. A rule matches when
    its source takes (part of) the CIDR and none of its other matches excludes egress - no destination list (a
    negated one, an exemption, still matches), no C(destination_type=local), no protocol, connection states that
    include C(new), and a mark match that the carried mark passes. So the node_egress role's C(egress-*-nat) rule,
    which matches packets without its exemption bit, covers the CIDR, while the nodeport role's
    C(nodeport-masquerade-*), which matches only packets with the masquerade bit, and the hairpin role's rule, which
    matches only pod destinations, do not. A rule with an output interface covers what leaves through it. The
    finding names the parts left untranslated and what each owned masquerade or SNAT rule matches instead.
  - A check whose evidence cannot be read (no kernel log access in a container, no conntrack table, no backend)
    is listed in RV(ansible_facts.nodenet_nat.skipped_checks) with the reason, never passed silently.
  - Uplinks are the interfaces, other than loopback, bridges and bridge ports, with an IPv4 route wider than a host
    route that is not inside a pod CIDR. A bridge carries pods when one of its routes overlaps a pod CIDR, or, when
    O(pod_cidrs) is empty, when it has ports.
  - Read-only; runs C(iptables-save) variants, C(nft list), C(dmesg) and, when C(/proc/net/stat/nf_conntrack) or
    C(/proc/net/nf_conntrack) is missing, C(conntrack -S) / C(conntrack -L).
author:
  - nodenet.nat maintainers (@nodenet)
options:
  pod_cidrs:
    description:
      - The pod CIDRs (IPv4 or IPv6) this node should masquerade. Also tells which bridges carry pods.
    type: list
    elements: str
    default: []
  backend:
    description:
      - The ruleset backend whose owned rules are read, as O(nodenet.nat.nat_rules#module:backend).
    type: str
    choices: [auto, nft, iptables, iptables-legacy]
    default: auto
  conntrack_threshold:
    description:
      - Table usage, in percent of C(nf_conntrack_max), from which V(conntrack_near_full) is reported.
    type: int
    default: 90
  port_exhaustion_threshold:
    description:
      - Number of connections from one SNAT address to one destination address and port from which
        V(port_exhaustion_risk) is reported.
    type: int
    default: 10000
  result_rules:
    description:
      - Whether the facts list the owned rules and their counters. V(summary) lists them when there are at most 1000
        owned rules and gives only their number, RV(ansible_facts.nodenet_nat.rule_count), beyond that, so that
        gathering facts from nodes with tens of thousands of rules does not ship and store megabytes of facts per host
        (ansible takes longer over them than the module). V(all) lists them whatever their number.
      - The checklist reads every owned rule either way.
    type: str
    choices: [summary, all]
    default: summary
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details: The module changes nothing.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: [linux]
"""

EXAMPLES = r"""
- name: Diagnose a Kubernetes node
  nodenet.nat.nat_info:
    pod_cidrs: [10.244.0.0/16, "fd00:10:244::/56"]

- name: Read the counters of every owned rule, however many there are
  nodenet.nat.nat_info:
    result_rules: all

- name: Fail when the node has a NAT error
  ansible.builtin.assert:
    that: ansible_facts.nodenet_nat.problems | selectattr('severity', 'equalto', 'error') | list | length == 0
    fail_msg: "{{ ansible_facts.nodenet_nat.problems | map(attribute='message') | list }}"
"""

RETURN = r"""
ansible_facts:
  description: The facts.
  returned: always
  type: dict
  contains:
    nodenet_nat:
      description: Everything the module found.
      returned: always
      type: dict
      contains:
        backend:
          description:
            - C(name) (V(nft), V(iptables), V(iptables-legacy), or V(null) with C(error)), C(reason) for the choice,
              and C(legacy_rules), C(nft_rules), C(mixed) (both iptables front ends hold rules).
          type: dict
          sample: {name: nft, reason: "no iptables front end in use ...", legacy_rules: 0, nft_rules: 0, mixed: false}
        forwarding:
          description: C(ipv4) (C(net.ipv4.ip_forward)) and C(ipv6) (C(net.ipv6.conf.all.forwarding)); V(null) if absent.
          type: dict
          sample: {ipv4: true, ipv6: false}
        rule_count:
          description: The number of owned rules; V(null) when they cannot be read.
          type: int
          sample: 2
        rules:
          description: The owned rules, as O(nodenet.nat.nat_rules#module:config) takes them; V(null) when they cannot be read.
          returned: when O(result_rules=all), or when there are at most 1000 owned rules or they cannot be read
          type: list
          elements: dict
        counters:
          description:
            - Per owned rule name, the C(packets) and C(bytes) it matched since it was written (nft - the rule's
              counter, or the sum of its verdict-map elements' counters; iptables - C(iptables-save -c), summed over the
              rule's lines). V(null) when the rules cannot be read.
            - The nat hooks see only the first packet of each connection, so C(packets) counts the connections that
              reached the rule.
          returned: as RV(ansible_facts.nodenet_nat.rules)
          type: dict
          sample: {egress-ipv4-nat: {packets: 12, bytes: 720}, nodeport-web-np-dnat-v4: {packets: 30, bytes: 1800}}
        unrecognized:
          description:
            - Owned objects (in the owned nft tables or C(NODENET-) chains) that the backend did not write and could
              not read as rules, for example after a hand edit; a V(masquerade_missing) finding names them.
              V(null) when the rules cannot be read.
          type: list
          elements: str
          sample: []
        conntrack:
          description:
            - C(loaded), C(count), C(max), C(usage_percent); C(per_cpu) (C(cpu), C(insert_failed), C(drop), C(early_drop))
              and their sums C(stats), from C(stats_source); C(busiest_snat_destinations) (C(protocol), C(snat_address),
              C(destination), C(port), C(count)), the destinations with the most source-NATed connections.
          type: dict
          sample:
            loaded: true
            count: 2
            max: 262144
            usage_percent: 0.0
            stats_source: /proc/net/stat/nf_conntrack
            per_cpu: [{cpu: 0, insert_failed: 0, drop: 0, early_drop: 0}]
            stats: {insert_failed: 0, drop: 0, early_drop: 0}
            busiest_snat_destinations: [{protocol: udp, snat_address: 198.51.100.10, destination: 198.51.100.1, port: 53, count: 1}]
        bridges:
          description: Each bridge - C(pod_bridge) (carries pods), C(promiscuous), and C(ports) with their C(hairpin) mode.
          type: dict
          sample: {cni0: {pod_bridge: true, promiscuous: false, ports: {veth1a2b: {hairpin: true}}}}
        br_netfilter:
          description: C(loaded), C(bridge_nf_call_iptables), C(bridge_nf_call_ip6tables) (V(null) when not loaded).
          type: dict
        uplinks:
          description: The uplink interfaces (see the description).
          type: list
          elements: str
          sample: [eth0, eth1]
        rp_filter:
          description: The rp_filter value the kernel applies on each uplink (the higher of C(all) and its own).
          type: dict
          sample: {eth0: 1, eth1: 1}
        problems:
          description: The findings, in checklist order.
          type: list
          elements: dict
          contains:
            id:
              description: The check's stable identifier (see the description).
              type: str
            severity:
              description: V(error) (NAT is broken) or V(warning) (it breaks under some traffic).
              type: str
            message:
              description: What was found, with the evidence.
              type: str
            fix:
              description: What to run or set.
              type: str
          sample:
            - id: hairpin_off
              severity: warning
              message: "bridge cni0 carries pods but hairpin mode is off on its ports veth3c4d: ..."
              fix: "nodenet.nat.hairpin role with hairpin_bridge: cni0"
        skipped_checks:
          description: Checks that could not run, with C(id) and C(reason).
          type: list
          elements: dict
          sample: [{id: conntrack_table_full, reason: "cannot read the kernel log: dmesg exited with 1: ..."}]
"""

from ansible_collections.nodenet.nat.plugins.module_utils.commands import run_module
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info import ARGUMENT_SPEC, nat_info


def main():
    run_module(ARGUMENT_SPEC, nat_info)


if __name__ == "__main__":
    main()
