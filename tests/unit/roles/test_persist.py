# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/persist: the unit loads the files nat_rules writes by default, and systemd accepts it."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import shutil
import subprocess

import jinja2
import pytest
import yaml

from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import IptablesBackend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend
from ansible_collections.nodenet.nat.plugins.module_utils.persistence import persist_paths

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "persist")
LOADER = os.path.abspath(os.path.join(ROLE, "files", "nodenet-nat-restore.sh"))


def role_yaml(name):
    with open(os.path.join(ROLE, name)) as handle:
        return yaml.safe_load(handle)


def render_unit(**variables):
    with open(os.path.join(ROLE, "templates", "nodenet-nat.service.j2")) as handle:
        template = jinja2.Template(handle.read(), keep_trailing_newline=True)
    values = dict(role_yaml("defaults/main.yml"), ansible_managed="Ansible managed", **role_yaml("vars/main.yml"))
    values.update(variables)
    return template.render(**values)


def test_the_unit_loads_every_file_nat_rules_writes_by_default():
    defaults = set(persist_paths(NftBackend()).values()) | set(persist_paths(IptablesBackend("nft")).values())
    assert sorted(role_yaml("vars/main.yml")["__persist_rules_files"]) == sorted(defaults)
    exec_start = re.search(r"^ExecStart=(.*)$", render_unit(), re.MULTILINE).group(1).split()
    assert exec_start[0] == "/usr/local/sbin/nodenet-nat-restore"
    assert sorted(exec_start[1:]) == sorted(defaults)


def test_the_unit_runs_once_after_the_host_firewall_and_before_the_network():
    unit = render_unit()
    assert "Type=oneshot\nRemainAfterExit=yes\n" in unit
    after = re.search(r"^After=(.*)$", unit, re.MULTILINE).group(1).split()
    assert {"nftables.service", "netfilter-persistent.service", "iptables.service", "ip6tables.service"} <= set(after)
    assert "network-pre.target" in re.search(r"^Before=(.*)$", unit, re.MULTILINE).group(1).split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path):
    unit = tmp_path / "nodenet-nat.service"
    unit.write_text(render_unit(persist_script_path=LOADER))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
