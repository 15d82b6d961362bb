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

from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import BACKEND_CHOICES
from ansible_collections.nodenet.nat.plugins.module_utils.commands import ModuleFailure
from ansible_collections.nodenet.nat.plugins.module_utils.gc_pause import gc_paused
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info.checklist import diagnose
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info.facts import gather, rule_facts
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import SysctlError

DEFAULT_CONNTRACK_THRESHOLD = 90
DEFAULT_PORT_EXHAUSTION_THRESHOLD = 10000
RESULT_RULES = ("summary", "all")
# With result_rules=summary, the rules and their counters are listed up to this many rules: beyond it, ansible would
# scrub, ship and store megabytes of facts (ten seconds and more per host at tens of thousands of rules).
RULES_LISTED = 1000
ARGUMENT_SPEC = dict(
    pod_cidrs=dict(type="list", elements="str", default=[]),
    backend=dict(type="str", choices=list(BACKEND_CHOICES), default="auto"),
    conntrack_threshold=dict(type="int", default=DEFAULT_CONNTRACK_THRESHOLD),
    port_exhaustion_threshold=dict(type="int", default=DEFAULT_PORT_EXHAUSTION_THRESHOLD),
    result_rules=dict(type="str", choices=list(RESULT_RULES), default="summary"),
)


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


def node_facts(params, host, root="/"):
    """The ``nodenet_nat`` facts of this host, with ``problems`` and ``skipped_checks``, and the owned rules and their
    counters when ``result_rules`` lists them.

    Raises ValueError on bad params (before any command runs), SysctlError on a /proc or /sys file
    that exists but cannot be read."""
    options = validate_options(params)
    node = gather(root, host.run_command, host.which, params.get("backend") or "auto", options["pod_networks"])
    node.facts["problems"], node.facts["skipped_checks"] = diagnose(node, options)
    if params.get("result_rules") == "all" or node.rules is None or len(node.rules) <= RULES_LISTED:
        node.facts.update(rule_facts(node))
    return node.facts


def nat_info(params, host, root="/"):
    """The module's engine (commands.run_module): facts only, nothing changes."""
    try:
        with gc_paused():
            return dict(changed=False, ansible_facts=dict(nodenet_nat=node_facts(params, host, root)))
    except (ValueError, SysctlError) as error:
        raise ModuleFailure(str(error))
