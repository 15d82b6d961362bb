# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollback_timeout, the host's half: the watcher keeps a confirmed change and restores an unconfirmed one.

The real backends run inside a throwaway network namespace; the watcher is the real detached process
(module_utils/rollback.py daemonize), and the confirmation is the action plugin's own shell command run with sh.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from ansible_collections.nodenet.nat.plugins.action.nat_rules import confirm_command, parse_confirmation
from ansible_collections.nodenet.nat.plugins.module_utils import rollback
from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import content, entry_params
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import NatRulesError, canonical_order, offline_backend
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordError, RecordStore
from support import FakeHost

EGRESS = dict(name="egress", type="masquerade", source=["10.244.0.0/16"], random_fully=True)
EXEMPT = dict(name="exempt", type="return", source=["10.244.0.0/16"], destination=["10.244.0.0/16"])
EGRESS6 = dict(name="egress6", type="masquerade", source=["fd00:10:244::/56"])
# The change that would cut a controller off: its ssh goes to a black hole.
CUT = dict(name="cut-ssh", type="dnat", in_interface="mgmt0", protocol="tcp", destination_ports=[22], to_destination=["192.0.2.254:22"])
BINARIES = {"nft": ["nft"], "iptables": ["iptables-nft-restore", "ip6tables-nft-restore"],
            "iptables-legacy": ["iptables-legacy-restore", "ip6tables-legacy-restore"]}
# A rule of another tool, and a second one added while the change waits for its confirmation.
FOREIGN = {
    "nft": [["nft", "add table ip foreign"], ["nft", "add chain ip foreign post { type nat hook postrouting priority srcnat; }"],
            ["nft", "add rule ip foreign post tcp dport 8081 snat to 203.0.113.98"]],
    "iptables": [["iptables-nft", "-w", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp", "--dport", "8081", "-j", "SNAT",
                  "--to-source", "203.0.113.98"]],
}
FOREIGN_LATER = {
    "nft": [["nft", "add rule ip foreign post tcp dport 8082 snat to 203.0.113.97"]],
    "iptables": [["iptables-nft", "-w", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp", "--dport", "8082", "-j", "SNAT",
                  "--to-source", "203.0.113.97"]],
}
LISTING = {"nft": ["nft", "list", "ruleset"], "iptables": ["iptables-nft-save", "-t", "nat"], "iptables-legacy": ["iptables-legacy-save", "-t", "nat"]}


def _foreign(backend_name, table):
    commands = table["nft" if backend_name == "nft" else "iptables"]
    if backend_name == "iptables-legacy":
        commands = [["iptables-legacy"] + argv[1:] for argv in commands]
    return commands


@pytest.fixture(name="netns")
def fixture_netns_runner(netns):
    """A runner whose commands run in a new network namespace, gone when the test ends."""
    return netns.run


@pytest.fixture
def store(tmp_path):
    return RecordStore(str(tmp_path / "run"))


@pytest.fixture
def watchers():
    """Pids of the watchers a test started; any still running at its end is killed (a failed test leaves none behind)."""
    pids = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(condition, seconds=15):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "still waiting after %s s" % seconds
        time.sleep(0.05)


def _params(config, backend, **params):
    return dict(dict(state="overridden", config=config, backend=backend, scope=None, running_config=None, persist=False, persist_path=None,
                     result_rules="summary"), **params)


def _run(runner, store, config, backend, check_mode=False, spawn=rollback.daemonize, **params):
    result = rollback.run_nat_rules(_params(config, backend, **params), FakeHost(runner, check_mode=check_mode), store, spawn=spawn)
    del result["invocation"]
    return result


def _owned(runner, backend_name):
    return [content(entry) for entry in canonical_order(offline_backend(backend_name).read(runner).entries)]


def _names(runner, backend_name):
    return [entry_params(entry)["name"] for entry in canonical_order(offline_backend(backend_name).read(runner).entries)]


def _confirm(rollback_result, wait=10):
    """The action plugin's confirmation command, run here (waiting up to ``wait`` s for the outcome): (removed the cookie,
    the watcher's outcome)."""
    command = confirm_command(rollback_result["cookie"], rollback_result["outcome"], wait=wait * 10)
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return parse_confirmation(done.stdout)


def _lock_is_free(store):
    try:
        with RecordStore(store.directory, lock_timeout=0):
            return True
    except RecordError:
        return False


def _skip_without(backend_name):
    if not all(shutil.which(binary) for binary in BINARIES[backend_name]):
        pytest.skip("%s tools are not installed" % backend_name)


@pytest.mark.parametrize("backend_name", sorted(BINARIES))
def test_a_confirmed_change_stays(netns, store, watchers, backend_name):
    _skip_without(backend_name)
    _run(netns, store, [EXEMPT, EGRESS], backend_name)
    result = _run(netns, store, [EXEMPT, EGRESS, CUT, EGRESS6], backend_name, rollback_timeout=30)
    waiting = result["rollback"]
    watchers.append(waiting["watcher"])
    assert result["changed"] is True and waiting["status"] == "waiting" and waiting["timeout"] == 30
    assert os.path.exists(waiting["cookie"]) and _alive(waiting["watcher"])
    assert _names(netns, backend_name) == ["cut-ssh", "exempt", "egress", "egress6"]
    # The watcher holds the host lock until the change is confirmed or restored: no other run computes from it meanwhile.
    assert not _lock_is_free(store)

    removed, outcome = _confirm(waiting)
    assert removed is True and outcome == dict(status="confirmed", persisted=[])
    _wait(lambda: not _alive(waiting["watcher"]))
    assert _lock_is_free(store)
    assert _names(netns, backend_name) == ["cut-ssh", "exempt", "egress", "egress6"]
    assert set(os.listdir(store.directory)) == {"%s.record" % backend_name, "lock", os.path.basename(waiting["outcome"])}
    # The record is the change's: the next run is a no-op.
    assert _run(netns, store, [EXEMPT, EGRESS, CUT, EGRESS6], backend_name, rollback_timeout=30)["rollback"] == \
        dict(status="not_needed", timeout=30)


@pytest.mark.parametrize("backend_name", sorted(BINARIES))
def test_an_unconfirmed_change_is_restored_exactly_and_nothing_else_is_touched(netns, store, watchers, backend_name):
    _skip_without(backend_name)
    for argv in _foreign(backend_name, FOREIGN):
        assert netns(argv)[0] == 0, argv
    _run(netns, store, [EXEMPT, EGRESS, EGRESS6], backend_name)
    before = _owned(netns, backend_name)
    result = _run(netns, store, [CUT], backend_name, rollback_timeout=1)
    waiting = result["rollback"]
    watchers.append(waiting["watcher"])
    assert result["summary"]["removed"] == ["exempt", "egress", "egress6"] and _names(netns, backend_name) == ["cut-ssh"]
    # Another tool changes its rules while the change waits: the restore must leave that alone.
    for argv in _foreign(backend_name, FOREIGN_LATER):
        assert netns(argv)[0] == 0, argv
    foreign = [line for line in netns(LISTING[backend_name])[1].splitlines() if "203.0.113.9" in line]
    assert len(foreign) == 2

    _wait(lambda: os.path.exists(waiting["outcome"]))
    removed, outcome = _confirm(waiting)
    assert removed is False     # the watcher claimed the cookie first
    assert outcome["status"] == "rolled_back" and outcome["restore"]["verified"] is True
    assert outcome["restore"]["commands"] and [len(t["families"]) for t in outcome["restore"]["transactions"]] == \
        ([2] if backend_name == "nft" else [1, 1])
    assert _owned(netns, backend_name) == before
    assert [line for line in netns(LISTING[backend_name])[1].splitlines() if "203.0.113.9" in line] == foreign
    _wait(lambda: not _alive(waiting["watcher"]))
    assert _lock_is_free(store)
    assert set(os.listdir(store.directory)) == {"%s.record" % backend_name, "lock", os.path.basename(waiting["outcome"])}
    # The restore recorded what it made: the previous config is a no-op again.
    assert _run(netns, store, [EXEMPT, EGRESS, EGRESS6], backend_name)["changed"] is False


def test_persist_files_are_written_only_once_confirmed(netns, store, watchers, tmp_path):
    path = str(tmp_path / "etc" / "nodenet-nat.nft")
    kept = _run(netns, store, [EGRESS], "nft", rollback_timeout=30, persist=True, persist_path=path)
    watchers.append(kept["rollback"]["watcher"])
    assert kept["persisted"] == [path] and not os.path.exists(path)
    assert _confirm(kept["rollback"])[1] == dict(status="confirmed", persisted=[path])
    assert '"egress"' in (tmp_path / "etc" / "nodenet-nat.nft").read_text()

    undone = _run(netns, store, [EGRESS, CUT], "nft", rollback_timeout=1, persist=True, persist_path=path)
    watchers.append(undone["rollback"]["watcher"])
    assert undone["persisted"] == [path]
    _wait(lambda: os.path.exists(undone["rollback"]["outcome"]))
    assert _confirm(undone["rollback"])[1]["status"] == "rolled_back"
    assert '"cut-ssh"' not in (tmp_path / "etc" / "nodenet-nat.nft").read_text()
    # No rule changes but the file differs: written at once, nothing armed.
    os.unlink(path)
    again = _run(netns, store, [EGRESS], "nft", rollback_timeout=30, persist=True, persist_path=path)
    assert again["changed"] is True and again["persisted"] == [path] and again["rollback"]["status"] == "not_needed"
    assert os.path.exists(path)


def test_check_mode_and_read_only_states_arm_nothing(netns, store):
    _run(netns, store, [EGRESS], "nft")
    checked = _run(netns, store, [CUT], "nft", check_mode=True, rollback_timeout=5)
    assert checked["changed"] is True and "rollback" not in checked
    assert _names(netns, "nft") == ["egress"]
    gathered = _run(netns, store, None, "nft", state="gathered", rollback_timeout=5)
    assert "rollback" not in gathered
    assert sorted(os.listdir(store.directory)) == ["lock", "nft.record"]


def test_a_killed_watcher_leaves_the_change_and_releases_the_lock(netns, store, watchers):
    """The guarantee depends on the watcher: killed before the deadline, nothing restores (the controller's
    confirmation then finds the cookie, removes it, and gets no outcome)."""
    _run(netns, store, [EGRESS], "nft")
    waiting = _run(netns, store, [CUT], "nft", rollback_timeout=1)["rollback"]
    watchers.append(waiting["watcher"])
    os.kill(waiting["watcher"], signal.SIGKILL)
    _wait(lambda: not _alive(waiting["watcher"]))
    assert _lock_is_free(store)
    time.sleep(1.5)
    assert _names(netns, "nft") == ["cut-ssh"]
    assert _confirm(waiting, wait=0.5) == (True, None)


def test_no_watcher_no_change(netns, store):
    """When the watcher cannot be started the change is not left unwatched: the previous rules come back at once."""
    def cannot_fork(work):
        raise OSError(11, "Resource temporarily unavailable")

    _run(netns, store, [EGRESS], "nft")
    with pytest.raises(NatRulesError, match=r"cannot be watched \(.*Resource temporarily unavailable\); the previous owned rules were "
                                            r"restored") as caught:
        _run(netns, store, [CUT], "nft", rollback_timeout=5, spawn=cannot_fork)
    assert caught.value.result["changed"] is False
    assert _names(netns, "nft") == ["egress"]
    assert sorted(os.listdir(store.directory)) == ["lock", "nft.record"]


@pytest.mark.parametrize("timeout", [0, -1, 3601])
def test_rollback_timeout_range(timeout, store):
    with pytest.raises(NatRulesError, match="rollback_timeout: %d is not between 1 and 3600 seconds" % timeout):
        rollback.run_nat_rules(_params([EGRESS], "nft", rollback_timeout=timeout), FakeHost(), store)


# -- the watcher alone (in this process, a fake host) --------------------------------------------


class _Store(object):
    def __init__(self):
        self.forgotten = []
        self.saved = []

    def save(self, *args):
        self.saved.append(args)

    def forget(self, name):
        self.forgotten.append(name)


def _watcher(tmp_path, runner, deadline, backend_name="nft"):
    files = rollback.paths(str(tmp_path), "0123456789abcdef")
    with open(files[0], "w") as cookie:
        cookie.write("x")
    return rollback.Watcher(offline_backend(backend_name), [], [], runner, _Store(), files, deadline)


def test_a_cookie_removed_in_time_keeps_the_change(tmp_path):
    watcher = _watcher(tmp_path, None, time.monotonic() + 0.3)
    os.unlink(watcher.cookie)
    assert watcher.watch() == dict(status="confirmed", persisted=[])
    with open(watcher.outcome) as outcome:
        assert json.load(outcome) == dict(status="confirmed", persisted=[])


def test_a_failing_restore_is_reported_and_the_record_forgotten(tmp_path):
    def runner(argv, data=None):
        if argv[:2] == ["nft", "-j"]:
            return 0, '{"nftables": [{"chain": {"family": "ip", "table": "nodenet_nat", "name": "state_00", "handle": 1}}]}', ""
        return 1, "", "Error: Could not process rule: Operation not permitted\n"

    watcher = _watcher(tmp_path, runner, time.monotonic() - 1)
    outcome = watcher.watch()
    assert outcome["status"] == "restore_failed"
    assert "applying of the previous ipv4 ruleset failed (rc=1) running nft -f -: Error: Could not process rule" in outcome["restore"]["error"]
    assert watcher.store.forgotten == ["nft"]
    assert sorted(os.listdir(str(tmp_path))) == [os.path.basename(watcher.outcome)]
