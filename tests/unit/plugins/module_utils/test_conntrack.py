# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""conntrack tuning on a copy of a recorded node (tests/unit/fixtures/proc/node/root): sizing, raise-only,
module loading, read-only keys, check mode, persistence."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import shutil

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils import conntrack
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import host_path, key_path
from support import FakeHost

RECORDED_NODE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "proc", "node", "root")
MAX = conntrack.MAX_KEY
HASHSIZE = conntrack.HASHSIZE_PATH
ESTABLISHED = conntrack.TIMEOUT_KEYS["tcp_established"]
SYSCTL_FILE = conntrack.DEFAULT_SYSCTL_FILE
MODPROBE_FILE = "/etc/modprobe.d/90-nodenet-nat-conntrack.conf"
MODULES_LOAD_FILE = "/etc/modules-load.d/90-nodenet-nat-conntrack.conf"


@pytest.fixture
def root(tmp_path):
    """The recorded node: nf_conntrack loaded, max 262144, hashsize 262144, 2 CPUs, established timeout 432000."""
    path = str(tmp_path / "root")
    shutil.copytree(RECORDED_NODE, path)
    return path


class FakeRunner(object):
    """run_command stand-in: records argv; ``modprobe nf_conntrack`` makes the recorded keys appear."""

    def __init__(self, root, rc=0, err=""):
        self.root, self.rc, self.err = root, rc, err
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        if argv == ["modprobe", "nf_conntrack"] and self.rc == 0:
            for sub in ("proc/sys/net/netfilter", "sys/module/nf_conntrack"):
                shutil.copytree(os.path.join(RECORDED_NODE, sub), os.path.join(self.root, sub))
        return self.rc, "", self.err


class Warnings(list):
    def __call__(self, message):
        self.append(message)


def value(root, name):
    path = host_path(root, name) if name.startswith("/") else key_path(root, name)
    with open(path) as handle:
        return int(handle.read())


def text(root, path):
    full_path = host_path(root, path)
    if not os.path.exists(full_path):
        return None
    with open(full_path) as handle:
        return handle.read()


def set_cpus(root, cpu_list):
    with open(host_path(root, conntrack.CPU_ONLINE_PATH), "w") as handle:
        handle.write(cpu_list + "\n")


def unload(root):
    shutil.rmtree(os.path.join(root, "proc/sys/net/netfilter"))
    shutil.rmtree(os.path.join(root, "sys/module/nf_conntrack"))


def refuse_writes(monkeypatch, root, refusals):
    """Make the kernel refuse writes as in a container: {name: errno}."""
    paths = dict((host_path(root, name) if name.startswith("/") else key_path(root, name), code)
                 for name, code in refusals.items())
    real_write = conntrack._write_value

    def write(path, number):
        if path in paths:
            raise OSError(paths[path], os.strerror(paths[path]))
        real_write(path, number)
    monkeypatch.setattr(conntrack, "_write_value", write)


def tune(root, params, check_mode=False, runner=None, warnings=None):
    host = FakeHost(runner or FakeRunner(root), check_mode=check_mode)
    result = conntrack.tune(params, host, root)
    if warnings is not None:
        warnings.extend(host.warnings)
    return result


@pytest.mark.parametrize("cpu_list, count", [("0", 1), ("0-1", 2), ("0-3,6,8-9", 7), ("0-63\n", 64)])
def test_parse_cpu_list(cpu_list, count):
    assert conntrack.parse_cpu_list(cpu_list) == count


@pytest.mark.parametrize("cpu_list, expected_max", [
    ("0-1", 131072),     # 2 x 32768 = 65536 is below min: min wins
    ("0-7", 262144),     # 8 x 32768
    ("0-15", 524288),    # 16 x 32768
])
def test_kube_proxy_sizing_uses_online_cpus(root, cpu_list, expected_max):
    set_cpus(root, cpu_list)
    result = tune(root, dict(max_per_core=32768, min=131072, raise_only=False, persist=False))
    assert result["settings"][MAX] == dict(before=262144, after=expected_max)
    assert value(root, MAX) == expected_max
    # hashsize follows the table size, a quarter of it, as kube-proxy does
    assert value(root, HASHSIZE) == expected_max // 4


def test_raise_only_refuses_to_lower_and_raises(root):
    result = tune(root, dict(max=100000, hashsize=1024, persist=False))
    assert result["changed"] is False
    assert result["settings"][MAX] == dict(before=262144, after=262144)
    assert value(root, MAX) == 262144 and value(root, HASHSIZE) == 262144

    result = tune(root, dict(max=1048576, persist=False))
    assert result["changed"] is True
    assert (value(root, MAX), value(root, HASHSIZE)) == (1048576, 262144)


def test_raise_only_false_lowers(root):
    tune(root, dict(max=100000, hashsize=1024, raise_only=False, persist=False))
    assert (value(root, MAX), value(root, HASHSIZE)) == (100000, 1024)


def test_timeouts_and_be_liberal_are_set_and_never_raise_only(root):
    result = tune(root, dict(timeouts=dict(tcp_established=86400, udp=10, udp_stream=None), tcp_be_liberal=True,
                             persist=False))
    assert result["settings"] == {
        ESTABLISHED: dict(before=432000, after=86400),
        conntrack.TIMEOUT_KEYS["udp"]: dict(before=30, after=10),
        conntrack.BE_LIBERAL_KEY: dict(before=0, after=1),
    }
    assert value(root, ESTABLISHED) == 86400 and value(root, conntrack.BE_LIBERAL_KEY) == 1


def test_persists_values_in_effect_and_second_run_changes_nothing(root):
    params = dict(max=100000, timeouts=dict(tcp_close_wait=3600))
    first = tune(root, params)
    assert first["changed"] is True
    # raise_only kept the recorded 262144: that is what boots with, not the lower value asked for
    assert text(root, SYSCTL_FILE) == (
        "# %s\n" % conntrack.FILE_HEADER
        + "net.netfilter.nf_conntrack_max = 262144\nnet.netfilter.nf_conntrack_tcp_timeout_close_wait = 3600\n")
    assert text(root, MODPROBE_FILE).endswith("options nf_conntrack hashsize=262144\n")
    assert text(root, MODULES_LOAD_FILE).endswith("\nnf_conntrack\n")
    assert first["files"] == {SYSCTL_FILE: "written", MODPROBE_FILE: "written", MODULES_LOAD_FILE: "written"}

    second = tune(root, params)
    assert second["changed"] is False
    assert "diff" not in second
    assert set(second["files"].values()) == {"unchanged"}


def test_companion_without_content_is_removed(root):
    tune(root, dict(max=1048576))
    assert text(root, MODPROBE_FILE) is not None
    result = tune(root, dict(timeouts=dict(generic=120)))
    assert result["files"][MODPROBE_FILE] == "removed"
    assert text(root, MODPROBE_FILE) is None
    assert "nf_conntrack_max" not in text(root, SYSCTL_FILE)


def test_absent_removes_the_owned_files_and_leaves_the_kernel_values(root):
    tune(root, dict(max=1048576, timeouts=dict(tcp_time_wait=30)))
    owned = [MODPROBE_FILE, MODULES_LOAD_FILE, SYSCTL_FILE]
    assert all(text(root, path) is not None for path in owned)

    predicted = tune(root, dict(state="absent"), check_mode=True)
    assert predicted["changed"] is True
    assert [entry["after"] for entry in predicted["diff"]] == ["", "", ""]
    assert all(text(root, path) is not None for path in owned)

    removed = tune(root, dict(state="absent", max=1))
    assert removed["changed"] is True
    assert removed["files"] == dict((path, "removed") for path in owned)
    assert all(text(root, path) is None for path in owned)
    assert removed["settings"] == {} and value(root, MAX) == 1048576

    again = tune(root, dict(state="absent"))
    assert again["changed"] is False and set(again["files"].values()) == {"absent"}


def test_check_mode_predicts_and_changes_nothing(root):
    result = tune(root, dict(max=1048576, timeouts=dict(tcp_time_wait=30)), check_mode=True)
    assert result["changed"] is True
    assert result["settings"][MAX] == dict(before=262144, after=1048576)
    assert result["settings"][HASHSIZE] == dict(before=262144, after=262144)
    assert result["diff"][0] == dict(
        before_header="kernel settings", after_header="kernel settings",
        before="net.netfilter.nf_conntrack_max = 262144\nnet.netfilter.nf_conntrack_tcp_timeout_time_wait = 120\n",
        after="net.netfilter.nf_conntrack_max = 1048576\nnet.netfilter.nf_conntrack_tcp_timeout_time_wait = 30\n")
    assert [entry["after_header"] for entry in result["diff"][1:]] == [MODPROBE_FILE, MODULES_LOAD_FILE, SYSCTL_FILE]
    assert value(root, MAX) == 262144
    assert not os.path.exists(host_path(root, "/etc"))


def test_loads_nf_conntrack_when_missing(root):
    unload(root)
    runner = FakeRunner(root)
    result = tune(root, dict(max=1048576, persist=False), runner=runner)
    assert runner.calls == [["modprobe", "nf_conntrack"]]
    assert result["loaded_module"] is True
    assert result["settings"][MAX] == dict(before=262144, after=1048576)
    assert value(root, MAX) == 1048576


def test_check_mode_with_module_missing_predicts_load_without_running_modprobe(root):
    unload(root)
    runner = FakeRunner(root)
    result = tune(root, dict(max=1048576, persist=False), check_mode=True, runner=runner)
    assert runner.calls == []
    assert result["changed"] is True and result["loaded_module"] is True
    assert result["settings"][MAX] == dict(before=None, after=1048576)


def test_modprobe_failure_says_where_to_load_it(root):
    unload(root)
    runner = FakeRunner(root, rc=1, err="modprobe: FATAL: Module nf_conntrack not found in directory /lib/modules/6.1")
    with pytest.raises(conntrack.ConntrackError, match="nf_conntrack.*not found.*load it on the host") as caught:
        tune(root, dict(max=1048576), runner=runner)
    assert caught.value.result["loaded_module"] is True


CONTAINER_REFUSALS = {MAX: errno.EACCES, HASHSIZE: errno.EOPNOTSUPP}


def test_read_only_warn_skips_keys_says_why_and_sets_the_rest(root, monkeypatch):
    refuse_writes(monkeypatch, root, CONTAINER_REFUSALS)
    warnings = Warnings()
    params = dict(max=2097152, timeouts=dict(tcp_established=86400))
    result = tune(root, params, warnings=warnings)
    assert [entry["key"] for entry in result["skipped_keys"]] == [MAX, HASHSIZE]
    assert "Permission denied" in result["skipped_keys"][0]["reason"]
    assert "initial network namespace" in result["skipped_keys"][0]["reason"]
    assert "Operation not supported" in result["skipped_keys"][1]["reason"]
    assert len(warnings) == 2 and warnings[0].startswith(MAX + " left unchanged")
    assert result["settings"][MAX] == dict(before=262144, after=262144)
    assert value(root, ESTABLISHED) == 86400
    # skipped keys are not persisted: they would fail again at boot
    assert "nf_conntrack_max" not in text(root, SYSCTL_FILE)
    assert text(root, MODPROBE_FILE) is None
    # a second run skips them again and changes nothing
    assert tune(root, params)["changed"] is False


def test_read_only_skip_is_quiet(root, monkeypatch):
    refuse_writes(monkeypatch, root, {MAX: errno.EINVAL})
    warnings = Warnings()
    result = tune(root, dict(max=1048576, on_readonly="skip", persist=False), warnings=warnings)
    assert warnings == []
    assert [entry["key"] for entry in result["skipped_keys"]] == [MAX]
    assert "Invalid argument" in result["skipped_keys"][0]["reason"]


def test_read_only_fail_stops_before_the_timeouts(root, monkeypatch):
    refuse_writes(monkeypatch, root, {MAX: errno.EACCES})
    with pytest.raises(conntrack.ConntrackError, match="nf_conntrack_max: read-only") as caught:
        tune(root, dict(max=1048576, timeouts=dict(tcp_established=86400), on_readonly="fail"))
    assert caught.value.result["skipped_keys"][0]["key"] == MAX
    assert value(root, ESTABLISHED) == 432000


def test_read_only_mount_for_timeouts_has_no_namespace_hint(root, monkeypatch):
    refuse_writes(monkeypatch, root, {ESTABLISHED: errno.EROFS})
    result = tune(root, dict(timeouts=dict(tcp_established=86400), persist=False))
    assert "Read-only file system" in result["skipped_keys"][0]["reason"]
    assert "namespace" not in result["skipped_keys"][0]["reason"]


def test_check_mode_reports_may_be_read_only_when_access_says_so(root, deny_write):
    deny_write(key_path(root, MAX))
    warnings = Warnings()
    result = tune(root, dict(max=1048576, persist=False), check_mode=True, warnings=warnings)
    assert result["skipped_keys"][0]["key"] == MAX
    assert result["skipped_keys"][0]["reason"].startswith("may be read-only")
    # the hash size still looks writable: only a real run can tell
    assert result["settings"][HASHSIZE] == dict(before=262144, after=262144)
    assert len(warnings) == 1


def test_other_write_errors_fail_naming_the_key(root, monkeypatch):
    refuse_writes(monkeypatch, root, {ESTABLISHED: errno.EIO})
    with pytest.raises(conntrack.ConntrackError, match="cannot set %s to 86400" % ESTABLISHED):
        tune(root, dict(timeouts=dict(tcp_established=86400), persist=False))


@pytest.mark.parametrize("params, message", [
    (dict(max=0), "max must be between 1 and 2147483647, got 0"),
    (dict(max_per_core=-5), "max_per_core must be between 1 and 2147483647, got -5"),
    (dict(timeouts=dict(udp=0)), "timeouts.udp must be between 1 and 2147483, got 0"),
    (dict(max_per_core=2 ** 30), "max_per_core \\(1073741824\\) x 2 CPUs = 2147483648 exceeds"),
])
def test_bad_values_fail_before_anything_changes(root, params, message):
    with pytest.raises(conntrack.ConntrackError, match=message):
        tune(root, params)
    assert value(root, MAX) == 262144
    assert not os.path.exists(host_path(root, "/etc"))


def test_unwritable_persistence_fails_before_the_kernel_changes(root):
    os.makedirs(host_path(root, "/etc"))
    with open(host_path(root, "/etc/sysctl.d"), "w") as handle:
        handle.write("a file where the directory should be\n")
    with pytest.raises(conntrack.ConntrackError, match="cannot persist.*etc/sysctl.d/90-nodenet-nat-conntrack.conf: Not a directory"):
        tune(root, dict(max=1048576))
    assert value(root, MAX) == 262144
