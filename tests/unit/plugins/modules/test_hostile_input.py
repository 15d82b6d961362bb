# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input through every module's arguments: quotes, semicolons, newlines, ``$()``, non-ASCII,
overlong values and huge lists give a clean failure that names the field, before any command
changes anything (and never a traceback).

Each module runs whole (its ``main()``, with ansible's own argument checks) against a host that
answers the read-only listings as an empty node does; every other command is recorded, and none
may run.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re

import pytest
from ansible.module_utils.testing import patch_module_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.nodenet.nat.plugins.module_utils import commands, forwarding as forwarding_utils, nat_rules as nat_rules_utils
from ansible_collections.nodenet.nat.plugins.module_utils import conntrack as conntrack_utils, sysctl
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import NAME_PATTERN, RULE_OPTIONS
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordStore
from ansible_collections.nodenet.nat.plugins.modules import conntrack, forwarding, nat_info, nat_rules, nat_trace

SNIPPETS = ['"', "'", ";", "\n", "\r\n", "$(reboot)", "`id`", "|", "&&", " -j ACCEPT", "\\", "\x00", "é", "日本", "{", "}", "%s",
            "../..", "*", "--", "\t"]
hostile_text = st.one_of(
    st.builds(lambda prefix, snippet, suffix: prefix + snippet + suffix,
              st.sampled_from(["", "web", "10.0.0.1", "eth0", "0x4000", "80"]), st.sampled_from(SNIPPETS),
              st.sampled_from(["", "x", "/32", ":80"])),
    st.lists(st.sampled_from(SNIPPETS + ["a", "1", ".", "/"]), min_size=1, max_size=12).map("".join),
    st.integers(300, 5000).map(lambda length: "a" * length),
)
# What a drawn value may be when it carries no harmful snippet: letters, digits, dots, slashes and dashes.
PLAIN = re.compile(r"[A-Za-z0-9./-]+")
hostile_value = st.one_of(hostile_text, st.lists(hostile_text, min_size=1, max_size=3),
                          st.integers(2000, 20000).map(lambda length: ["$(x)"] * length))


class EmptyNode(object):
    """Answers the read-only listings as a node without rules does; records every other command."""

    LISTINGS = {("nft", "-j", "list", "chains"): '{"nftables": [{"metainfo": {"version": "1.0.6"}}]}'}

    def __init__(self):
        self.changing = []

    def run_command(self, args, data=None):
        argv = (os.path.basename(args[0]),) + tuple(args[1:])
        if argv in self.LISTINGS:
            return 0, self.LISTINGS[argv], ""
        if argv[0].endswith("-save") or argv[-1] == "--version" or argv[:2] == ("nft", "-c") or "--test" in argv:
            return 0, "", ""
        if argv[0] in ("dmesg", "conntrack", "sysctl"):
            return 1, "", "not available here"
        self.changing.append(argv)
        return 0, "", ""


def _no_command_on_this_machine(argv, *args, **kwargs):
    raise AssertionError("a module ran %r on this machine, not through the test's node" % (argv,))


@pytest.fixture
def node(monkeypatch, tmp_path):
    empty = EmptyNode()
    monkeypatch.setattr(commands.ModuleHost, "run_command", lambda host, argv, data=None: empty.run_command(argv, data=data))
    # A command that goes around the node above would run on this machine: it fails the test instead.
    monkeypatch.setattr(commands.subprocess, "Popen", _no_command_on_this_machine)
    monkeypatch.setattr(commands.AnsibleModule, "get_bin_path", lambda module, name, *args, **kwargs: "/usr/sbin/" + name)
    monkeypatch.setattr(nat_rules_utils, "RecordStore", lambda: RecordStore(str(tmp_path / "run")))
    root = str(tmp_path / "root")
    # What a node with nf_conntrack loaded has, so that a value an option accepts (" 80", for max) converges.
    keys = ("net.ipv4.ip_forward", "net.ipv4.conf.eth0.forwarding", "net.ipv4.conf.eth0.rp_filter", "net.netfilter.nf_conntrack_max")
    paths = [sysctl.key_path(root, key) for key in keys]
    for path in paths + [sysctl.host_path(root, conntrack_utils.HASHSIZE_PATH)]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write("0\n")
    monkeypatch.setattr(forwarding, "converge", lambda params, host: forwarding_utils.converge(params, host, root))
    monkeypatch.setattr(conntrack, "tune", lambda params, host: conntrack_utils.tune(params, host, root))
    return empty


def run(module, args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    captured = capsys.readouterr()
    assert captured.out.strip(), captured.err
    return json.loads(captured.out)


def assert_refused(result, field, node):
    assert result.get("failed") is True, result
    assert field in result["msg"], (field, result["msg"])
    assert "Traceback" not in result["msg"] and "exception" not in result
    assert node.changing == []


RULE = dict(name="web", type="dnat", destination_type="local", protocol="tcp", destination_ports=[30080],
            to_destination=["10.244.1.10:8080"])
RULE_FIELDS_WITH_TEXT = sorted(set(RULE_OPTIONS) - {"name"})


def _run_and_check(module, args, field, value, node, capsys):
    node.changing[:] = []
    result = run(module, args, capsys)
    if result.get("failed"):
        assert_refused(result, field, node)
    else:
        # A hostile-looking value the option accepts (a file name may hold a semicolon, an unused option anything):
        # it never reached a command line.
        texts = value if isinstance(value, list) else [value]
        assert not any(text in " ".join(argv) for argv in node.changing for text in texts), node.changing


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["name"] + RULE_FIELDS_WITH_TEXT), value=hostile_value,
       backend=st.sampled_from(["nft", "iptables", "iptables-legacy"]), state=st.sampled_from(["overridden", "merged", "rendered"]))
def test_nat_rules_refuses_hostile_rule_fields(node, capsys, field, value, backend, state):
    node.changing[:] = []
    result = run(nat_rules, dict(state=state, backend=backend, config=[dict(RULE, **{field: value})]), capsys)
    if not result.get("failed"):
        # Only a name made of the characters every backend quotes safely gets through (such as "web../.."), or a
        # value without a harmful snippet: "1" is a port, "eth0--" an interface name, and an address or a port
        # may come with surrounding whitespace (the rule holds the parsed value, never the text).
        texts = value if isinstance(value, list) else [value]
        assert (field == "name" and NAME_PATTERN.fullmatch(value)) or all(PLAIN.fullmatch(text.strip()) for text in texts), result
        return
    assert_refused(result, "config[0]", node)
    assert field in result["msg"] or "name" in result["msg"], result["msg"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["state", "backend", "scope", "result_rules", "config", "persist_path"]), value=hostile_value)
def test_nat_rules_refuses_hostile_options(node, capsys, field, value):
    args = dict(state="overridden", backend="nft", config=[RULE])
    args[field] = value
    _run_and_check(nat_rules, args, field, value, node, capsys)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=hostile_text, backend=st.sampled_from(["nft", "iptables"]))
def test_nat_rules_parsed_takes_any_listing_without_a_traceback(node, capsys, value, backend):
    result = run(nat_rules, dict(state="parsed", backend=backend, running_config=value), capsys)
    assert result.get("failed") is not True or "running_config" in result["msg"], result
    assert node.changing == []


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["rp_filter", "sysctl_file", "state", "interfaces.name", "interfaces.rp_filter", "interfaces"]),
       value=hostile_value)
def test_forwarding_refuses_hostile_input(node, capsys, field, value):
    args = dict(ipv4=True, interfaces=[dict(name="eth0", forwarding=True)])
    if field.startswith("interfaces."):
        args["interfaces"][0][field.split(".")[1]] = value
        field = "interfaces"
    else:
        args[field] = value
    _run_and_check(forwarding, args, field, value, node, capsys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["max", "hashsize", "on_readonly", "sysctl_file", "timeouts", "state"]), value=hostile_value)
def test_conntrack_refuses_hostile_input(node, capsys, field, value):
    _run_and_check(conntrack, {field: value}, field, value, node, capsys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["pod_cidrs", "backend", "conntrack_threshold", "port_exhaustion_threshold"]), value=hostile_value)
def test_nat_info_refuses_hostile_input(node, capsys, field, value):
    _run_and_check(nat_info, {field: value}, field, value, node, capsys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["source", "destination", "protocol", "port", "timeout", "packets", "backend"]), value=hostile_value)
def test_nat_trace_refuses_hostile_input(node, capsys, field, value):
    # Check mode: a value the module took would otherwise start nft monitor on this machine.
    args = dict({"destination": "127.0.0.1", "protocol": "tcp", "_ansible_check_mode": True}, **{field: value})
    _run_and_check(nat_trace, args, field, value, node, capsys)
