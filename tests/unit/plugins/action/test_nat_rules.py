# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nat_rules action plugin: plain module execution without rollback_timeout; with it, the confirmation over a new
connection and what the task reports (a fake connection, a fake clock)."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.connection import ConnectionBase

from ansible_collections.nodenet.nat.plugins.action import nat_rules as action
from ansible_collections.nodenet.nat.plugins.action.nat_rules import ActionModule, confirm_command, parse_confirmation

COOKIE = "/run/nodenet-nat/netns-4026531840/rollback-0123456789abcdef.cookie"
OUTCOME = "/run/nodenet-nat/netns-4026531840/rollback-0123456789abcdef.outcome"
WAITING = dict(status="waiting", timeout=10, cookie=COOKIE, outcome=OUTCOME, watcher=4242)


class Clock(object):
    """time.monotonic and time.sleep of the plugin: sleeping advances it, so do commands (``cost`` seconds)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Task(object):
    def __init__(self, args, async_val=0):
        self.args = args
        self.async_val = async_val
        self.check_mode = False
        self.action = "nodenet.nat.nat_rules"


class Shell(object):
    tmpdir = None

    @staticmethod
    def join_path(*parts):
        return "/".join(parts)


class Connection(object):
    """A connection whose reset is its own (as ssh's); ``answers`` are what each command gets: a dict or an exception."""

    has_native_async = False

    def __init__(self):
        self._shell = Shell()
        self.resets = 0

    def reset(self):
        self.resets += 1

    def get_option(self, name):
        assert name == "timeout"
        return 5


class Plugin(ActionModule):
    """The plugin with a fake module and fake commands; ``clock`` is the test's (the clock fixture sets it)."""

    clock = None

    def __init__(self, args, module_result, answers=(), connection=None, async_val=0):
        super(Plugin, self).__init__(Task(args, async_val), connection or Connection(), None, None, None)
        self.module_result = module_result
        self.answers = list(answers)
        self.modules = []
        self.commands = []
        self.transferred = {}
        self.fixed_perms = []
        self.removed_tmp = []

    def _make_tmp_path(self, remote_user=None):
        self._connection._shell.tmpdir = "/tmp/ansible-tmp-1"
        return self._connection._shell.tmpdir

    def _transfer_data(self, remote_path, data):
        self.transferred[remote_path] = data
        return remote_path

    def _fixup_perms2(self, remote_paths, remote_user=None, execute=True):
        self.fixed_perms.append((tuple(remote_paths), execute))

    def _remove_tmp_path(self, tmp_path, force=False):
        self.removed_tmp.append(tmp_path)
        self._connection._shell.tmpdir = None

    def _execute_module(self, module_name=None, module_args=None, task_vars=None, wrap_async=False, **kwargs):
        self.modules.append((module_name, module_args, wrap_async))
        return json.loads(json.dumps(self.module_result))

    def _low_level_execute_command(self, cmd, sudoable=True, **kwargs):
        self.commands.append((cmd, self.clock.now))
        self.clock.now += 0.2
        if cmd.startswith("rm -f -- "):
            return dict(rc=0, stdout="", stderr="")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            self.clock.now += 5        # an unreachable host costs a connection timeout
            raise answer
        return answer


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(action.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(action.time, "sleep", clock.sleep)
    monkeypatch.setattr(Plugin, "clock", clock)
    return clock


def _answer(removed, outcome):
    lines = ["nodenet-rollback %s" % ("removed" if removed else "gone"), "nodenet-rollback outcome"]
    return dict(rc=0, stdout="\n".join(lines + ([json.dumps(outcome)] if outcome is not None else [])) + "\n", stderr="")


def _result(rollback, **fields):
    return dict(dict(changed=True, commands=["add table ip nodenet_nat"], rollback=dict(rollback)), **fields)


UNREACHABLE = AnsibleConnectionFailure("Failed to connect to the host via ssh: ssh: connect to host 198.51.100.2 port 22: Connection timed out")


def test_without_rollback_timeout_the_module_runs_once_on_the_task_arguments():
    args = dict(state="merged", config='[{"name": "egress", "type": "masquerade"}]')
    plugin = Plugin(args, dict(changed=True, summary={}))
    assert plugin.run(task_vars=dict(inventory_hostname="node1")) == dict(changed=True, summary={})
    assert plugin.modules == [(None, args, False)] and plugin.commands == [] and plugin.transferred == {}


def _big_config():
    """JSON text of rules just over the size that ships as a file."""
    rule = dict(name="svc-0", type="dnat", protocol="tcp", destination_type="local", destination_ports=[10000],
                to_destination=["10.244.0.1:8080", "10.244.0.2:8080"])
    count = action.SHIP_CONFIG_ABOVE // len(json.dumps(rule)) + 1
    text = json.dumps([dict(rule, name="svc-%d" % index, destination_ports=[10000 + index]) for index in range(count)])
    assert len(text) > action.SHIP_CONFIG_ABOVE
    return text


@pytest.mark.parametrize("async_val", [0, 30])
def test_a_big_config_goes_to_the_host_as_a_file_in_the_task_directory(async_val):
    config = _big_config()
    plugin = Plugin(dict(state="overridden", backend="nft", config=config), dict(changed=False), async_val=async_val)
    plugin.run(task_vars={})
    path = "/tmp/ansible-tmp-1/" + action.SHIPPED_CONFIG_NAME
    assert plugin.transferred == {path: config}
    assert plugin.fixed_perms == [(("/tmp/ansible-tmp-1", path), False)]
    assert plugin.modules == [(None, dict(state="overridden", backend="nft", config_path=path), bool(async_val))]
    # The directory goes with the task; an async job's wrapper removes it when the job ends.
    assert plugin.removed_tmp == ([] if async_val else ["/tmp/ansible-tmp-1"])


@pytest.mark.parametrize("args", [dict(config=json.dumps([dict(name="egress", type="masquerade")] * 3)),
                                  dict(config=[dict(name="egress", type="masquerade")] * 30000),
                                  dict(config="x" * (2 << 20), config_path="/etc/rules.json")])
def test_small_text_a_list_or_a_config_path_already_given_pass_as_they_are(args):
    plugin = Plugin(args, dict(changed=False))
    plugin.run(task_vars={})
    assert plugin.modules == [(None, args, False)] and plugin.transferred == {}


def test_async_is_refused_with_rollback_timeout():
    result = Plugin(dict(rollback_timeout=10), None, async_val=30).run(task_vars={})
    assert result["failed"] is True and "remove async and poll" in result["msg"]


def test_nothing_to_confirm_when_nothing_changed(clock):
    plugin = Plugin(dict(rollback_timeout=10), dict(changed=False, rollback=dict(status="not_needed", timeout=10)))
    result = plugin.run(task_vars={})
    assert result["rollback"] == dict(status="not_needed", timeout=10)
    assert plugin.commands == [] and plugin._connection.resets == 0
    assert plugin.modules == [(None, dict(rollback_timeout=10), False)]


def test_a_reachable_host_confirms_over_a_new_connection(clock):
    plugin = Plugin(dict(rollback_timeout=10), _result(WAITING), answers=[_answer(True, dict(status="confirmed", persisted=[]))])
    result = plugin.run(task_vars=dict(inventory_hostname="node1"))
    assert plugin._connection.resets == 1
    assert plugin.commands[0][0] == confirm_command(COOKIE, OUTCOME)
    assert plugin.commands[1][0] == "rm -f -- " + OUTCOME
    assert result["changed"] is True and "failed" not in result
    assert result["rollback"] == dict(status="confirmed", timeout=10, watcher=4242, waited=0.2, attempts=1)


def test_connections_without_a_reset_of_their_own_are_left_alone(clock):
    class Podman(Connection):
        reset = ConnectionBase.reset

    plugin = Plugin(dict(rollback_timeout=10), _result(WAITING), answers=[_answer(True, dict(status="confirmed", persisted=[]))],
                    connection=Podman())
    assert plugin.run(task_vars={})["rollback"]["status"] == "confirmed"


def test_a_cut_off_host_restores_and_the_controller_learns_it_when_it_is_back(clock):
    # Unreachable until the host's deadline (10 s) has passed, then the confirmation finds the cookie claimed.
    answers = [UNREACHABLE, UNREACHABLE, _answer(False, dict(status="rolled_back", restore=dict(commands=["x"], verified=True)))]
    plugin = Plugin(dict(rollback_timeout=10), _result(WAITING, persisted=["/etc/nftables.d/nodenet-nat.nft"]), answers=answers)
    result = plugin.run(task_vars=dict(inventory_hostname="node1"))
    assert result["failed"] is True and result["changed"] is False
    assert result["rollback"]["status"] == "rolled_back" and result["rollback"]["attempts"] == 3
    assert result["rollback"]["restore"] == dict(commands=["x"], verified=True)
    assert result["persisted"] == []
    assert result["msg"].startswith("rollback_timeout: node1 had no confirmation 10 s after the change")
    # One attempt a second after each failure.
    starts = [when for command, when in plugin.commands]
    assert starts[1] - starts[0] == pytest.approx(6.2) and starts[2] - starts[1] == pytest.approx(6.2)


def test_a_host_that_never_comes_back_is_reported_unconfirmed(clock):
    plugin = Plugin(dict(rollback_timeout=10), _result(WAITING), answers=[UNREACHABLE] * 100)
    result = plugin.run(task_vars=dict(inventory_hostname="node1"))
    assert result["failed"] is True and result["rollback"]["status"] == "unconfirmed"
    # It gave up after the timeout, the grace and one connection timeout.
    assert clock.now - 1000 == pytest.approx(10 + action.GRACE + 5, abs=7)
    assert "could not reach node1 again after the change" in result["msg"]
    assert "Connection timed out" in result["msg"] and COOKIE in result["msg"] and OUTCOME in result["msg"]


def test_a_failed_restore_is_reported(clock):
    answers = [_answer(False, dict(status="restore_failed", restore=dict(error="applying of the previous ipv4 ruleset failed")))]
    result = Plugin(dict(rollback_timeout=10), _result(WAITING), answers=answers).run(task_vars={})
    assert result["failed"] is True and result["rollback"]["status"] == "restore_failed"
    assert result["msg"].endswith("putting its previous owned NAT rules back failed: applying of the previous ipv4 ruleset failed")


def test_a_watcher_that_gave_no_outcome(clock):
    # The cookie was still there (so no restore ran) but no outcome came: the watcher was killed. The change stays.
    kept = Plugin(dict(rollback_timeout=10), _result(WAITING, persisted=["/etc/x"]), answers=[_answer(True, None)]).run(task_vars={})
    assert "failed" not in kept and kept["rollback"]["status"] == "confirmed" and kept["persisted"] == []
    assert "gave no outcome" in kept["warnings"][0]
    # The cookie was gone and no outcome: nothing is known.
    unknown = Plugin(dict(rollback_timeout=10), _result(WAITING), answers=[_answer(False, None)]).run(task_vars={})
    assert unknown["failed"] is True and unknown["rollback"]["status"] == "unconfirmed"


def test_a_lost_answer_is_read_again():
    """A first confirmation whose answer was lost removed the cookie; the second finds it gone and trusts the outcome."""
    assert parse_confirmation(_answer(False, dict(status="confirmed", persisted=[]))["stdout"]) == \
        (False, dict(status="confirmed", persisted=[]))
    assert parse_confirmation("BECOME-SUCCESS\nnodenet-rollback removed\nnodenet-rollback outcome\n") == (True, None)
    assert parse_confirmation("garbage") == (False, None)


def test_paths_from_the_module_are_checked(clock):
    bad = dict(WAITING, cookie="/run/x; rm -rf /")
    with pytest.raises(Exception, match="unexpected rollback file path"):
        Plugin(dict(rollback_timeout=10), _result(bad)).run(task_vars={})
