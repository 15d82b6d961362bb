# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module's argument spec, check/diff plumbing and failure path, on a temporary root."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.nodenet.nat.plugins.module_utils import commands, forwarding as forwarding_utils, sysctl
from ansible_collections.nodenet.nat.plugins.modules import forwarding

CONF = "/etc/sysctl.d/90-nodenet-nat.conf"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Points the module (which passes root "/") at a temporary root holding ip_forward and eth0.100's keys."""
    root = str(tmp_path)
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.eth0/100.forwarding", "net.ipv4.conf.eth0/100.rp_filter"):
        path = sysctl.key_path(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write("0\n")
    monkeypatch.setattr(forwarding, "converge", lambda params, host: forwarding_utils.converge(params, host, root))
    return root


def run_module(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            forwarding.main()
    return json.loads(capsys.readouterr().out)


ARGS = dict(ipv4=True, interfaces=[dict(name="eth0.100", forwarding=False, rp_filter="loose")])


def test_module_check_mode_with_diff(root, capsys):
    result = run_module(capsys, dict(ARGS, _ansible_check_mode=True, _ansible_diff=True))
    assert result["changed"] is True
    assert result["sysctls"]["net.ipv4.conf.eth0/100.rp_filter"] == {"before": "0", "after": "2"}
    assert [entry["before_header"] for entry in result["diff"]] == ["sysctl (runtime)", CONF]
    assert sysctl.read_key(root, "net.ipv4.ip_forward") == "0"
    assert not os.path.exists(sysctl.host_path(root, CONF))


def test_module_applies_then_reports_no_change(root, capsys):
    first = run_module(capsys, ARGS)
    assert first["changed"] is True and "diff" not in first
    assert first["persisted_file"] == CONF
    assert sysctl.read_key(root, "net.ipv4.ip_forward") == "1"
    assert run_module(capsys, ARGS)["changed"] is False


def test_module_failure_names_the_interface(root, capsys):
    result = run_module(capsys, dict(interfaces=[dict(name="eth9", forwarding=True)]))
    assert result["failed"] is True
    assert result["msg"].startswith("interfaces[0].name: unknown interface 'eth9'")


def test_module_rejects_a_bad_choice(root, capsys):
    result = run_module(capsys, dict(rp_filter="medium"))
    assert result["failed"] is True and "rp_filter" in result["msg"] and "medium" in result["msg"]


def test_module_absent_warns_about_a_vanished_key(root, capsys, monkeypatch):
    run_module(capsys, ARGS)
    os.unlink(sysctl.key_path(root, "net.ipv4.conf.eth0/100.rp_filter"))
    # Recorded at the call: how ansible-core reports warnings in the result depends on what else the
    # test process has imported (controller code changes it).
    warnings = []
    monkeypatch.setattr(commands.AnsibleModule, "warn", lambda module, message: warnings.append(message))
    result = run_module(capsys, dict(state="absent"))
    assert result["changed"] is True
    assert warnings == ["net.ipv4.conf.eth0/100.rp_filter no longer exists; its recorded value 0 was not restored"]
    assert sysctl.read_key(root, "net.ipv4.ip_forward") == "0"
