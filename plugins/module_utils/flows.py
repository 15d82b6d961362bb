# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection-tracking flows that a ruleset change leaves pointing at a removed DNAT endpoint.

A UDP (or SCTP) client that keeps its source port, as resolvers do, keeps matching its conntrack
entry: the entry's DNAT was decided once, when the flow began, so after its endpoint is removed or
replaced the client's packets still go to the old endpoint until the entry times out. As kube-proxy
does, the flows of every endpoint a change takes away from a UDP or SCTP DNAT rule are deleted
(``conntrack -D -p udp --dst-nat ENDPOINT``, narrowed to the rule's destination host and port). TCP
needs none of this: a new connection is a new flow.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import content, entry_rule

# Protocols whose flows outlive a change of endpoint for a client that keeps its source port.
DATAGRAM_PROTOCOLS = ("udp", "sctp")
# What conntrack prints (exit status 1) when nothing matched.
NOTHING_DELETED = "0 flow entries have been deleted"

# One removed endpoint of one rule: ``destinations`` are the rule's destination hosts (empty: any),
# ``port`` its one destination port (None: any).
StaleFlow = collections.namedtuple("StaleFlow", ["rule", "family", "protocol", "destinations", "port", "endpoint"])


def _match(rule):
    return rule.family, rule.protocol, rule.destination, rule.destination_negate, rule.destination_type, rule.destination_ports


def stale_flows(before, after):
    """StaleFlow list for the rules of ``before`` ({name: entry}) that ``after`` ({name: entry}) removes or changes."""
    flows = []
    for name in sorted(before):
        if name in after and content(after[name]) == content(before[name]):
            continue
        old = entry_rule(before[name])
        if old.type != "dnat" or old.protocol not in DATAGRAM_PROTOCOLS:
            continue
        kept = ()
        if name in after:
            new = entry_rule(after[name])
            if new.type == "dnat" and _match(new) == _match(old):
                kept = new.to_destination
        hosts = () if old.destination_negate else tuple(
            str(net.network_address) for net in old.destination if net.prefixlen == net.max_prefixlen)
        ports = old.destination_ports
        port = ports[0].first if len(ports) == 1 and ports[0].first == ports[0].last else None
        flows.extend(StaleFlow(name, old.family, old.protocol, hosts, port, endpoint)
                     for endpoint in old.to_destination if endpoint not in kept)
    return flows


def delete_argvs(flow):
    """The ``conntrack -D`` commands that delete the flows of one StaleFlow (one per destination host)."""
    base = ["conntrack", "-D", "-f", flow.family, "-p", flow.protocol]
    if flow.port is not None:
        base += ["--orig-port-dst", str(flow.port)]
    base += ["--dst-nat", str(flow.endpoint.address)]
    return [base[:6] + ["--orig-dst", host] + base[6:] for host in flow.destinations] or [base]


def describe(flow):
    return dict(rule=flow.rule, protocol=flow.protocol, destinations=list(flow.destinations), port=flow.port,
                endpoint=str(flow.endpoint.address))


def clear(host, flows):
    """Delete the flows; returns the problems (a missing conntrack tool, a failing command) as messages."""
    if not flows:
        return []
    if host.which("conntrack") is None:
        return ["conntrack is not installed: flows to the removed UDP/SCTP endpoints stay until they time out"]
    problems = []
    for flow in flows:
        for argv in delete_argvs(flow):
            rc, dummy, err = host.run_command(argv)
            if rc != 0 and NOTHING_DELETED not in err:
                problems.append("%s failed (rc=%s): %s" % (" ".join(argv), rc, err.strip()))
    return problems
