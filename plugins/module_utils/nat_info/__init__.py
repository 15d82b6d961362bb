# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nat_info: facts about a NAT node and the troubleshooting checklist run over them.

Two rooms: facts.py reads the host into a ``Node`` (how the node is read), checklist.py turns a
Node into problems (how it is judged). This file holds the module's options and runs one, then
the other.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress

from ansible_collections.nodenet.nat.plugins.module_utils.nat_info.checklist import diagnose
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info.facts import gather

DEFAULT_CONNTRACK_THRESHOLD = 90
DEFAULT_PORT_EXHAUSTION_THRESHOLD = 10000


def pod_cidr_networks(cidrs):
    """ip_network of each pod CIDR; ValueError names the bad one."""
    networks = []
    for index, cidr in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(u"%s" % cidr, strict=False))
        except ValueError:
            raise ValueError("pod_cidrs[%d]: %r is not an IPv4 or IPv6 network" % (index, cidr))
    return networks


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
