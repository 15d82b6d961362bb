# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forwarding logic on a temporary root that stands in for /proc/sys, /sys/module and /etc."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils import forwarding, sysctl
from support import FakeHost

CONF = "/etc/sysctl.d/90-nodenet-nat.conf"
MODULES_LOAD = "/etc/modules-load.d/90-nodenet-nat.conf"
INTERFACES = ("all", "default", "eth0", "eth0.100")
BRIDGE_VALUES = {key: "1" for key in forwarding.BRIDGE_KEYS}


def params(**options):
    result = dict(ipv4=None, ipv6=None, rp_filter=None, route_localnet=None, bridge_nf_call_iptables=None,
                  interfaces=None, persist=True, sysctl_file=CONF, state="present")
    result.update(options)
    return result


def interface(name, **options):
    result = dict(name=name, forwarding=None, ipv6_forwarding=None, rp_filter=None, route_localnet=None)
    result.update(options)
    return result


def put_keys(root, values):
    for key, value in values.items():
        path = sysctl.key_path(root, key)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path))
        with open(path, "w") as handle:
            handle.write(value + "\n")


def read_keys(root):
    """{key: value} of every key under the root's /proc/sys."""
    base = sysctl.host_path(root, "/proc/sys")
    values = {}
    for directory, dummy, names in os.walk(base):
        for name in names:
            parts = os.path.relpath(os.path.join(directory, name), base).split(os.sep)
            key = sysctl.key_from_parts(parts)
            values[key] = sysctl.read_key(root, key)
    return values


def read_host_file(root, path):
    return sysctl.read_text(sysctl.host_path(root, path))


def snapshot(root):
    return read_keys(root), read_host_file(root, CONF), read_host_file(root, MODULES_LOAD)


def load_br_netfilter(root):
    os.makedirs(sysctl.host_path(root, "/sys/module/br_netfilter"))
    put_keys(root, BRIDGE_VALUES)


@pytest.fixture
def root(tmp_path):
    """A node: IPv4 forwarding off, rp_filter strict, IPv6 forwarding off, no br_netfilter."""
    root = str(tmp_path)
    values = {forwarding.IPV4_FORWARD: "0"}
    for name in INTERFACES:
        values[forwarding.conf_key("ipv4", name, "forwarding")] = "0"
        values[forwarding.conf_key("ipv4", name, "rp_filter")] = "1"
        values[forwarding.conf_key("ipv4", name, "route_localnet")] = "0"
        values[forwarding.conf_key("ipv6", name, "forwarding")] = "0"
    put_keys(root, values)
    os.makedirs(sysctl.host_path(root, "/etc/sysctl.d"))
    os.makedirs(sysctl.host_path(root, "/sys/module"))
    return root


def no_commands(argv):
    raise AssertionError("unexpected command %r" % (argv,))


def converge(root, check_mode=False, run_command=no_commands, **options):
    """The engine's result, with the warnings it gave as ``warnings``."""
    host = FakeHost(run_command, check_mode=check_mode)
    result = forwarding.converge(params(**options), host, root)
    result["warnings"] = host.warnings
    return result


NODE_OPTIONS = dict(ipv4=True, rp_filter="loose", interfaces=[interface("eth0.100", forwarding=False, route_localnet=True)])

NODE_FILE = """\
# Managed by nodenet.nat.forwarding; rewritten on every run, do not edit.
# Values before nodenet.nat.forwarding first set them (state=absent writes them back):
# restore net.ipv4.ip_forward = 0
# restore net.ipv4.conf.all.rp_filter = 1
# restore net.ipv4.conf.default.rp_filter = 1
# restore net.ipv4.conf.eth0/100.forwarding = 0
# restore net.ipv4.conf.eth0/100.route_localnet = 0
#
net.ipv4.ip_forward = 1
net.ipv4.conf.all.rp_filter = 2
net.ipv4.conf.default.rp_filter = 2
net.ipv4.conf.eth0/100.forwarding = 0
net.ipv4.conf.eth0/100.route_localnet = 1
"""


def test_desired_settings_maps_options_to_keys():
    settings = forwarding.desired_settings(params(
        ipv4=True, ipv6=False, rp_filter="off", route_localnet=True, bridge_nf_call_iptables=False,
        interfaces=[interface("eth0.100", forwarding=True, ipv6_forwarding=False, rp_filter="strict", route_localnet=False)]))
    assert [(s.key, s.value, s.field) for s in settings] == [
        ("net.ipv4.ip_forward", "1", "ipv4"),
        ("net.ipv6.conf.all.forwarding", "0", "ipv6"),
        ("net.ipv4.conf.all.rp_filter", "0", "rp_filter"),
        ("net.ipv4.conf.default.rp_filter", "0", "rp_filter"),
        ("net.ipv4.conf.all.route_localnet", "1", "route_localnet"),
        ("net.bridge.bridge-nf-call-iptables", "0", "bridge_nf_call_iptables"),
        ("net.bridge.bridge-nf-call-ip6tables", "0", "bridge_nf_call_iptables"),
        ("net.ipv4.conf.eth0/100.forwarding", "1", "interfaces[0].forwarding"),
        ("net.ipv6.conf.eth0/100.forwarding", "0", "interfaces[0].ipv6_forwarding"),
        ("net.ipv4.conf.eth0/100.rp_filter", "1", "interfaces[0].rp_filter"),
        ("net.ipv4.conf.eth0/100.route_localnet", "0", "interfaces[0].route_localnet"),
    ]


def test_desired_settings_leaves_unset_options_unmanaged():
    assert forwarding.desired_settings(params(interfaces=[interface("eth0")])) == []
    assert [s.key for s in forwarding.desired_settings(params(ipv6=True))] == ["net.ipv6.conf.all.forwarding"]


@pytest.mark.parametrize("options, message", [
    (dict(interfaces=[interface("eth0/1")]), "interfaces[0].name: 'eth0/1' is not a valid interface name"),
    (dict(interfaces=[interface("a" * 16)]), "interfaces[0].name: '%s' is not a valid interface name" % ("a" * 16)),
    (dict(interfaces=[interface("..")]), "interfaces[0].name: '..' is not a valid interface name"),
    (dict(interfaces=[interface("eth0"), interface("eth0")]), "interfaces[1].name: 'eth0' is already listed as interfaces[0]"),
    (dict(rp_filter="loose", interfaces=[interface("all", rp_filter="strict")]),
     "rp_filter and interfaces[0].rp_filter both set net.ipv4.conf.all.rp_filter, to 2 and 1"),
    (dict(rp_filter="medium"), "rp_filter: 'medium' is not one of loose, off, strict"),
    (dict(ipv4="maybe"), "ipv4: 'maybe' is not a boolean"),
])
def test_desired_settings_rejects_bad_input(options, message):
    with pytest.raises(forwarding.ForwardingError) as caught:
        forwarding.desired_settings(params(**options))
    assert str(caught.value) == message


def test_desired_settings_merges_a_repeated_key_with_the_same_value():
    settings = forwarding.desired_settings(params(ipv6=True, interfaces=[interface("all", ipv6_forwarding=True)]))
    assert [(s.key, s.field) for s in settings] == [("net.ipv6.conf.all.forwarding", "ipv6")]


def test_plan_rewrites_interface_forwarding_after_a_cascading_key():
    settings = forwarding.desired_settings(params(ipv4=True, ipv6=True, interfaces=[
        interface("eth0.100", forwarding=False, ipv6_forwarding=True, rp_filter="strict")]))
    before = {s.key: "1" for s in settings}
    before.update({"net.ipv4.ip_forward": "0", "net.ipv4.conf.eth0/100.forwarding": "0"})
    # ip_forward changes: it resets eth0.100's IPv4 forwarding, which is written again after it;
    # IPv6 forwarding is unchanged, so eth0.100's IPv6 key is left alone.
    assert forwarding.plan_changes(settings, before) == [
        ("net.ipv4.ip_forward", "0", "1"), ("net.ipv4.conf.eth0/100.forwarding", "0", "0")]


def test_check_mode_reports_and_changes_nothing(root):
    before = snapshot(root)
    result = converge(root, check_mode=True, **NODE_OPTIONS)
    assert snapshot(root) == before
    assert result["changed"] is True
    assert result["sysctls"]["net.ipv4.ip_forward"] == {"before": "0", "after": "1"}
    assert result["sysctls"]["net.ipv4.conf.eth0/100.forwarding"] == {"before": "0", "after": "0"}
    assert result["persisted_file"] == CONF
    runtime_diff, file_diff = result["diff"]
    assert "net.ipv4.ip_forward = 0\n" in runtime_diff["before"] and "net.ipv4.ip_forward = 1\n" in runtime_diff["after"]
    assert file_diff == dict(before_header=CONF, after_header=CONF, before="", after=NODE_FILE)


def test_apply_then_idempotent(root):
    result = converge(root, **NODE_OPTIONS)
    assert result["changed"] is True
    assert read_host_file(root, CONF) == NODE_FILE
    keys = read_keys(root)
    assert keys["net.ipv4.ip_forward"] == "1"
    assert keys["net.ipv4.conf.all.rp_filter"] == keys["net.ipv4.conf.default.rp_filter"] == "2"
    assert keys["net.ipv4.conf.eth0/100.route_localnet"] == "1"
    assert keys["net.ipv4.conf.eth0.rp_filter"] == "1", "an unmanaged key was touched"
    assert result["sysctls"]["net.ipv4.conf.eth0/100.route_localnet"] == {"before": "0", "after": "1"}
    assert result["kernel_modules_loaded"] == []

    before = snapshot(root)
    for check_mode in (True, False):
        again = converge(root, check_mode=check_mode, **NODE_OPTIONS)
        assert again["changed"] is False
        assert again["diff"][1:] == []
        assert snapshot(root) == before


def test_persist_false_writes_runtime_only(root):
    result = converge(root, ipv4=True, persist=False)
    assert result["changed"] is True and result["persisted_file"] is None
    assert read_keys(root)["net.ipv4.ip_forward"] == "1"
    assert read_host_file(root, CONF) is None


def test_tasks_sharing_the_file_keep_each_others_keys_and_records(root):
    converge(root, ipv4=True)
    put_keys(root, {"net.ipv4.conf.all.route_localnet": "1"})  # changed by hand after the first task
    converge(root, route_localnet=False)
    values, record = forwarding.parse_owned_file(CONF, read_host_file(root, CONF))
    assert values == {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.route_localnet": "0"}
    assert record == {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.route_localnet": "1"}
    # A later change of a managed value keeps the first recorded value.
    converge(root, ipv4=False)
    assert forwarding.parse_owned_file(CONF, read_host_file(root, CONF))[1]["net.ipv4.ip_forward"] == "0"


def test_absent_restores_recorded_values_and_removes_files(root):
    load_br_netfilter(root)
    original = read_keys(root)
    converge(root, bridge_nf_call_iptables=False, ipv6=True, **NODE_OPTIONS)
    assert read_host_file(root, MODULES_LOAD) is None  # false: br_netfilter is not needed at boot

    converge(root, bridge_nf_call_iptables=True)
    assert read_host_file(root, MODULES_LOAD).endswith("\nbr_netfilter\n")
    changed = snapshot(root)

    checked = converge(root, check_mode=True, state="absent")
    assert checked["changed"] is True and snapshot(root) == changed
    assert checked["sysctls"]["net.ipv4.ip_forward"] == {"before": "1", "after": "0"}

    result = converge(root, state="absent")
    assert result["changed"] is True
    assert read_keys(root) == original
    assert read_host_file(root, CONF) is None and read_host_file(root, MODULES_LOAD) is None
    assert result["sysctls"]["net.bridge.bridge-nf-call-iptables"] == {"before": "1", "after": "1"}
    assert result["diff"][1] == dict(before_header=CONF, after_header=CONF, before=changed[1], after="")
    assert result["persisted_file"] is None and result["warnings"] == []

    assert converge(root, state="absent")["changed"] is False


def test_absent_skips_keys_that_no_longer_exist(root):
    converge(root, ipv4=True, interfaces=[interface("eth0.100", forwarding=False)])
    os.unlink(sysctl.key_path(root, "net.ipv4.conf.eth0/100.forwarding"))
    result = converge(root, state="absent")
    assert result["warnings"] == ["net.ipv4.conf.eth0/100.forwarding no longer exists; its recorded value 0 was not restored"]
    assert read_keys(root)["net.ipv4.ip_forward"] == "0"
    assert read_host_file(root, CONF) is None


def test_unknown_interface_fails_before_any_change(root):
    before = snapshot(root)
    with pytest.raises(forwarding.ForwardingError) as caught:
        converge(root, ipv4=True, interfaces=[interface("eth0"), interface("eth9", forwarding=True)])
    assert str(caught.value).startswith("interfaces[1].name: unknown interface 'eth9' (")
    assert snapshot(root) == before


def test_missing_ipv6_key_names_field_key_and_value(root):
    os.unlink(sysctl.key_path(root, "net.ipv6.conf.eth0.forwarding"))
    with pytest.raises(forwarding.ForwardingError, match=r"^interfaces\[0\]\.ipv6_forwarding: cannot set 1: net\.ipv6\.conf\.eth0\.forwarding does not exist"):
        converge(root, interfaces=[interface("eth0", ipv6_forwarding=True)])


def test_read_only_key_fails_before_any_change(root, deny_write):
    before = snapshot(root)
    deny_write(sysctl.key_path(root, "net.ipv4.conf.default.rp_filter"))
    with pytest.raises(forwarding.ForwardingError) as caught:
        converge(root, ipv4=True, rp_filter="loose")
    assert str(caught.value).startswith("rp_filter: cannot set 2: net.ipv4.conf.default.rp_filter is not writable")
    assert snapshot(root) == before


def test_unwritable_sysctl_dir_fails_before_any_change(root, deny_write):
    before = snapshot(root)
    deny_write(sysctl.host_path(root, "/etc/sysctl.d"))
    with pytest.raises(forwarding.ForwardingError, match="directory .*/etc/sysctl.d is not writable"):
        converge(root, ipv4=True)
    assert snapshot(root) == before


def test_write_failing_midway_restores_the_keys_written(root, monkeypatch):
    before = snapshot(root)
    real_write = sysctl.write_key

    def write_key(root_dir, key, value):
        if key == "net.ipv4.conf.eth0/100.forwarding" and value == "1":
            raise sysctl.SysctlError("cannot set %s to %r: Invalid argument" % (key, value))
        real_write(root_dir, key, value)
    monkeypatch.setattr(sysctl, "write_key", write_key)
    with pytest.raises(forwarding.ForwardingError) as caught:
        converge(root, ipv4=True, rp_filter="loose", interfaces=[interface("eth0.100", forwarding=True)])
    assert "cannot set net.ipv4.conf.eth0/100.forwarding to '1'" in str(caught.value)
    assert "restored the keys already written: net.ipv4.ip_forward, net.ipv4.conf.all.rp_filter" in str(caught.value)
    assert snapshot(root) == before


def test_file_write_failure_restores_runtime_keys(root, monkeypatch):
    before = snapshot(root)

    def fail(path, text, mode=0o644):
        raise sysctl.SysctlError("cannot write %s: No space left on device" % path)
    monkeypatch.setattr(sysctl, "write_file_atomic", fail)
    with pytest.raises(forwarding.ForwardingError, match="No space left on device; the keys and files already changed were restored"):
        converge(root, ipv4=True)
    assert snapshot(root) == before


def test_refuses_a_file_it_did_not_write(root):
    conf = sysctl.host_path(root, CONF)
    sysctl.write_file_atomic(conf, "vm.swappiness = 10\n")
    before = snapshot(root)
    for state in ("present", "absent"):
        with pytest.raises(forwarding.ForwardingError, match="sysctl_file: .* was not written by nodenet.nat.forwarding"):
            converge(root, ipv4=True, state=state)
    assert snapshot(root) == before


def test_relative_sysctl_file_is_rejected(root):
    with pytest.raises(forwarding.ForwardingError, match="sysctl_file: 'x.conf' is not an absolute path"):
        converge(root, ipv4=True, sysctl_file="x.conf")


def test_bridge_loads_br_netfilter_only_when_missing(root):
    calls = []

    def modprobe(argv):
        calls.append(argv)
        load_br_netfilter(root)
        return 0, "", ""

    checked = converge(root, check_mode=True, run_command=modprobe, bridge_nf_call_iptables=True)
    assert calls == [] and checked["changed"] is True
    assert checked["kernel_modules_loaded"] == ["br_netfilter"]
    assert checked["sysctls"]["net.bridge.bridge-nf-call-iptables"] == {"before": None, "after": "1"}

    result = converge(root, run_command=modprobe, bridge_nf_call_iptables=True)
    assert calls == [["modprobe", "br_netfilter"]]
    assert result["changed"] is True and result["kernel_modules_loaded"] == ["br_netfilter"]
    assert read_host_file(root, MODULES_LOAD) == "# %s\nbr_netfilter\n" % forwarding.OWNER_LINE
    assert "net.bridge.bridge-nf-call-ip6tables = 1\n" in read_host_file(root, CONF)

    again = converge(root, bridge_nf_call_iptables=True)  # no_commands: modprobe must not run again
    assert again["changed"] is False and again["kernel_modules_loaded"] == []


def test_bridge_built_into_the_kernel_needs_no_modprobe(root):
    put_keys(root, {key: "0" for key in forwarding.BRIDGE_KEYS})  # built in: keys exist, no /sys/module/br_netfilter
    result = converge(root, bridge_nf_call_iptables=True)  # no_commands: modprobe must not run
    assert result["changed"] is True and result["kernel_modules_loaded"] == []
    assert all(read_keys(root)[key] == "1" for key in forwarding.BRIDGE_KEYS)


def test_bridge_sets_keys_when_module_is_loaded(root):
    load_br_netfilter(root)
    result = converge(root, bridge_nf_call_iptables=False, persist=False)
    assert result["changed"] is True
    assert all(read_keys(root)[key] == "0" for key in forwarding.BRIDGE_KEYS)


def test_bridge_false_without_module_changes_no_runtime_key(root):
    result = converge(root, bridge_nf_call_iptables=False)
    assert result["sysctls"]["net.bridge.bridge-nf-call-iptables"] == {"before": None, "after": None}
    assert "net.bridge.bridge-nf-call-iptables = 0\n" in read_host_file(root, CONF)
    assert not any(key.startswith("net.bridge.") for key in read_keys(root))


def test_modprobe_failure_is_clear_and_changes_nothing(root):
    before = snapshot(root)
    with pytest.raises(forwarding.ForwardingError, match="cannot load kernel module br_netfilter: modprobe br_netfilter exited with 1"):
        converge(root, run_command=lambda argv: (1, "", "FATAL: Module br_netfilter not found"), ipv4=True, bridge_nf_call_iptables=True)
    assert snapshot(root) == before
