# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rule as a user-facing dict (``before``, ``after``, ``gathered``, ``parsed``, the run record) and back.

``rule_to_params`` leaves fields at their defaults out; ``rule_from_record`` reads such a dict
that this collection wrote itself, without validating it again.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    RULE_DEFAULTS, Endpoint, Mark, NatRule, PortRange, format_address_range, format_endpoint, format_mark, format_port_range,
    parse_address, parse_network,
)


def _port_range_param(port_range):
    return port_range.first if port_range.first == port_range.last else format_port_range(port_range)


def _networks_param(networks):
    return [str(network) for network in networks]


_PARAM_FORMATTERS = dict(
    source=_networks_param,
    destination=_networks_param,
    destination_ports=lambda ranges: [_port_range_param(port_range) for port_range in ranges],
    mark=format_mark,
    set_mark=format_mark,
    ct_state=list,
    to_source=format_address_range,
    to_destination=lambda endpoints: [format_endpoint(endpoint) for endpoint in endpoints],
    to_ports=_port_range_param,
)


def rule_to_params(rule):
    """The user-facing dict of a rule: fields at their defaults are left out.

    ``rule_from_params(rule_to_params(rule), i) == rule`` for every valid rule.
    """
    params = {}
    for field, value in zip(rule._fields, rule):
        if field in RULE_DEFAULTS and value == RULE_DEFAULTS[field]:
            continue
        formatter = _PARAM_FORMATTERS.get(field)
        params[field] = formatter(value) if formatter else value
    return params


def _port_range_of_param(value):
    first, dummy, last = str(value).partition("-")
    return PortRange(int(first), int(last or first))


def _mark_of_param(text):
    value, dummy, mask = text.partition("/")
    return Mark(int(value, 16), int(mask, 16))


def _endpoint_of_param(text):
    if text.startswith("["):
        address, dummy, port = text[1:].partition("]:")
        return Endpoint(parse_address(address), int(port))
    address, colon, port = text.rpartition(":")
    if not colon or ":" in address:
        return Endpoint(parse_address(text), None)
    return Endpoint(parse_address(address), int(port))


def _address_range_of_param(text):
    first, dummy, last = text.partition("-")
    return parse_address(first), parse_address(last or first)


def _networks_of_param(texts):
    return tuple(parse_network(text)[0] for text in texts)


_PARAM_PARSERS = dict(
    source=_networks_of_param,
    destination=_networks_of_param,
    destination_ports=lambda values: tuple(_port_range_of_param(value) for value in values),
    mark=_mark_of_param,
    set_mark=_mark_of_param,
    ct_state=tuple,
    to_source=_address_range_of_param,
    to_destination=lambda texts: tuple(_endpoint_of_param(text) for text in texts),
    to_ports=_port_range_of_param,
)


def rule_from_record(params):
    """The NatRule of a ``rule_to_params`` dict that this collection wrote itself (a run record).

    The inverse of rule_to_params without rule_from_params' validation, which such a dict has
    passed already: reading back ten thousands of recorded rules stays cheap.
    """
    fields = dict(RULE_DEFAULTS)
    for field, value in params.items():
        parser = _PARAM_PARSERS.get(field)
        fields[field] = parser(value) if parser else value
    return NatRule(**fields)
