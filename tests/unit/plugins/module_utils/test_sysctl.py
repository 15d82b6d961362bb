# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sysctl helpers on a temporary root: keys <-> paths, read/write/rollback, persistence files, kernel modules."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import stat

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils import sysctl


def put_key(root, key, value):
    path = sysctl.key_path(str(root), key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(value)
    return path


@pytest.mark.parametrize("parts, key", [
    (["net", "ipv4", "ip_forward"], "net.ipv4.ip_forward"),
    (["net", "ipv4", "conf", "eth0.100", "rp_filter"], "net.ipv4.conf.eth0/100.rp_filter"),
    (["net", "bridge", "bridge-nf-call-iptables"], "net.bridge.bridge-nf-call-iptables"),
])
def test_key_round_trip_and_path(tmp_path, parts, key):
    assert sysctl.key_from_parts(parts) == key
    assert sysctl.key_parts(key) == parts
    assert sysctl.key_path(str(tmp_path), key) == os.path.join(str(tmp_path), "proc", "sys", *parts)


def test_key_path_default_root():
    assert sysctl.key_path("/", "net.ipv4.conf.eth0/100.forwarding") == "/proc/sys/net/ipv4/conf/eth0.100/forwarding"


@pytest.mark.parametrize("bad", ["", "a/b", ".", ".."])
def test_key_from_parts_rejects_bad_component(bad):
    with pytest.raises(ValueError, match="invalid sysctl key component"):
        sysctl.key_from_parts(["net", "ipv4", "conf", bad, "forwarding"])


def test_read_key_normalizes_whitespace_and_reports_absence(tmp_path):
    put_key(tmp_path, "net.ipv4.tcp_rmem", "4096\t131072\t6291456\n")
    assert sysctl.read_key(str(tmp_path), "net.ipv4.tcp_rmem") == "4096 131072 6291456"
    assert sysctl.read_key(str(tmp_path), "net.ipv4.ip_forward") is None


def test_write_key(tmp_path):
    path = put_key(tmp_path, "net.ipv4.conf.eth0/100.forwarding", "0\n")
    sysctl.write_key(str(tmp_path), "net.ipv4.conf.eth0/100.forwarding", "1")
    with open(path) as handle:
        assert handle.read() == "1\n"
    assert path.endswith(os.path.join("conf", "eth0.100", "forwarding"))


def test_write_key_failure_names_key_and_value(tmp_path):
    with pytest.raises(sysctl.SysctlError, match=r"cannot set net\.ipv4\.ip_forward to '1'"):
        sysctl.write_key(str(tmp_path), "net.ipv4.ip_forward", "1")


def test_key_problem(tmp_path, deny_write):
    root = str(tmp_path)
    path = put_key(tmp_path, "net.ipv4.ip_forward", "0\n")
    assert sysctl.key_problem(root, "net.ipv4.ip_forward") is None
    assert sysctl.key_problem(root, "net.ipv6.conf.all.forwarding").startswith("net.ipv6.conf.all.forwarding does not exist")
    deny_write(path)
    assert sysctl.key_problem(root, "net.ipv4.ip_forward") == "net.ipv4.ip_forward is not writable (%s)" % path


def test_apply_keys_restores_in_write_order_on_failure(tmp_path, monkeypatch):
    root = str(tmp_path)
    put_key(tmp_path, "net.ipv4.ip_forward", "0\n")
    put_key(tmp_path, "net.ipv4.conf.eth0.forwarding", "0\n")
    writes = []
    real_write = sysctl.write_key

    def write_key(root_dir, key, value):
        if key == "net.ipv4.conf.all.rp_filter":
            raise sysctl.SysctlError("cannot set %s to %r: Invalid argument" % (key, value))
        writes.append((key, value))
        real_write(root_dir, key, value)
    monkeypatch.setattr(sysctl, "write_key", write_key)

    changes = [("net.ipv4.ip_forward", "0", "1"), ("net.ipv4.conf.eth0.forwarding", "0", "1"), ("net.ipv4.conf.all.rp_filter", "0", "7")]
    with pytest.raises(sysctl.SysctlError) as caught:
        sysctl.apply_keys(root, changes)
    assert "net.ipv4.conf.all.rp_filter to '7'" in str(caught.value)
    assert "restored the keys already written: net.ipv4.ip_forward, net.ipv4.conf.eth0.forwarding" in str(caught.value)
    assert writes == [("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.eth0.forwarding", "1"),
                      ("net.ipv4.ip_forward", "0"), ("net.ipv4.conf.eth0.forwarding", "0")]
    assert sysctl.read_key(root, "net.ipv4.ip_forward") == "0"


def test_apply_keys_failure_on_first_key_changes_nothing(tmp_path):
    with pytest.raises(sysctl.SysctlError, match="nothing was changed"):
        sysctl.apply_keys(str(tmp_path), [("net.ipv4.ip_forward", "0", "1")])


def test_render_and_parse_sysctl_conf():
    text = sysctl.render_sysctl_conf({"b.key": "1", "a.key": "2 3"}, ["owner", "", "restore a.key = 0"])
    assert text == "# owner\n#\n# restore a.key = 0\na.key = 2 3\nb.key = 1\n"
    assert sysctl.parse_sysctl_conf(text + "\n; other\nc.key=4\n") == (
        {"a.key": "2 3", "b.key": "1", "c.key": "4"}, ["owner", "", "restore a.key = 0", "other"])
    assert sysctl.render_sysctl_conf({"b": "1", "a": "1"}, sort_key=lambda key: key != "b") == "b = 1\na = 1\n"
    assert sysctl.render_sysctl_conf({}) == ""


def test_write_file_atomic_creates_directories_and_replaces(tmp_path):
    path = str(tmp_path / "etc" / "sysctl.d" / "90-test.conf")
    sysctl.write_file_atomic(path, "a = 1\n")
    sysctl.write_file_atomic(path, "a = 2\n")
    assert sysctl.read_text(path) == "a = 2\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(os.path.dirname(path)) == ["90-test.conf"]


def test_write_file_atomic_failure_leaves_no_temp_file(tmp_path):
    target = tmp_path / "conf"
    target.mkdir()
    with pytest.raises(sysctl.SysctlError, match="cannot write %s" % target):
        sysctl.write_file_atomic(str(target), "a = 1\n")
    assert sorted(os.listdir(str(tmp_path))) == ["conf"]


def test_file_problem(tmp_path, deny_write):
    assert sysctl.file_problem(str(tmp_path / "missing" / "dir" / "x.conf")) is None
    assert sysctl.file_problem(str(tmp_path)) == "%s is a directory" % tmp_path
    (tmp_path / "plain").write_text("")
    assert sysctl.file_problem(str(tmp_path / "plain" / "x.conf")).endswith("is not a directory")
    deny_write(str(tmp_path))
    assert sysctl.file_problem(str(tmp_path / "x.conf")).endswith("directory %s is not writable" % tmp_path)


def test_read_text_and_remove_file(tmp_path):
    path = str(tmp_path / "x.conf")
    assert sysctl.read_text(path) is None
    assert sysctl.remove_file(path) is False
    sysctl.write_file_atomic(path, "x\n")
    assert sysctl.remove_file(path) is True
    assert not os.path.exists(path)


def test_kernel_module_loaded(tmp_path):
    assert not sysctl.kernel_module_loaded(str(tmp_path), "br_netfilter")
    (tmp_path / "sys" / "module" / "br_netfilter").mkdir(parents=True)
    assert sysctl.kernel_module_loaded(str(tmp_path), "br_netfilter")


def test_load_kernel_module_runs_modprobe_argv():
    calls = []
    sysctl.load_kernel_module(lambda argv: calls.append(argv) or (0, "", ""), "br_netfilter")
    assert calls == [["modprobe", "br_netfilter"]]


def test_load_kernel_module_failures_name_the_module():
    with pytest.raises(sysctl.SysctlError, match="cannot load kernel module br_netfilter: modprobe br_netfilter exited with 1: FATAL"):
        sysctl.load_kernel_module(lambda argv: (1, "", "FATAL: Module br_netfilter not found\n"), "br_netfilter")

    def missing_binary(argv):
        raise OSError(2, "No such file or directory")
    with pytest.raises(sysctl.SysctlError, match="cannot run modprobe br_netfilter: No such file or directory"):
        sysctl.load_kernel_module(missing_binary, "br_netfilter")
