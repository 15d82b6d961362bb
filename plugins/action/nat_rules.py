# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's half of nat_rules: a big ``config`` shipped as a file, and ``rollback_timeout`` (the host's half:
module_utils/rollback.py).

The module runs once, as with ansible's own ``normal`` action. A ``config`` of JSON text over SHIP_CONFIG_ABOVE characters
goes to the host as a file in the task's temporary directory (the module's ``config_path``): ansible embeds a module's
arguments in the module file it sends, as JSON inside a Python string, which at 50 000 rules (7 MB) costs it about half a
second more than copying the text as it is.

With ``rollback_timeout``, the module applies the change and returns at once, leaving a cookie file and a watcher
process on the host. This plugin then proves that the controller can still reach the host the way it normally does: it
resets the connection (an ssh ControlPersist master opened before the change would survive a NAT change that blocks
every new connection, since conntrack keeps an established flow's NAT) and runs one short command over a new
connection that removes the cookie, which makes the watcher keep the change. While the host cannot be reached it tries
again every second. Past the deadline the watcher has put the previous rules back; the plugin keeps trying a little
longer (GRACE seconds plus one connection timeout) to read what the host did, and reports it.
"""
from __future__ import annotations

import json
import re
import shlex
import time

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash
from ansible_collections.nodenet.nat.plugins.module_utils.gc_pause import gc_paused

display = Display()

# After the host's deadline: how long to keep trying to learn what the host did (plus one connection timeout).
GRACE = 30
# How long the host-side command waits for the watcher's outcome, in tenths of a second (a restore of tens of
# thousands of rules takes seconds).
OUTCOME_WAIT = 600
_MARK = "nodenet-rollback"
# JSON text of ``config`` longer than this goes to the host as a file (about 7 000 rules).
SHIP_CONFIG_ABOVE = 1 << 20
SHIPPED_CONFIG_NAME = "nat_rules_config.json"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")


def confirm_command(cookie, outcome, wait=OUTCOME_WAIT):
    """The shell command that confirms: remove the cookie (it says whether this command removed it or found it gone),
    then wait up to ``wait`` tenths of a second for the watcher's outcome file and print it. It may run more than once
    (a first answer lost with its connection): the outcome file is removed by a separate command once read."""
    return (
        "if rm -- {cookie} 2>/dev/null; then echo '{mark} removed'; else echo '{mark} gone'; fi; "
        "n=0; while [ ! -e {outcome} ] && [ $n -lt {wait} ]; do sleep 0.1; n=$((n + 1)); done; "
        "echo '{mark} outcome'; cat -- {outcome} 2>/dev/null; true"
    ).format(cookie=shlex.quote(cookie), outcome=shlex.quote(outcome), wait=int(wait), mark=_MARK)


def parse_confirmation(stdout):
    """(removed, outcome): whether the command removed the cookie, and the watcher's outcome dict (None: none came)."""
    lines = stdout.splitlines()
    removed = "%s removed" % _MARK in lines
    outcome = None
    if "%s outcome" % _MARK in lines:
        text = "\n".join(lines[lines.index("%s outcome" % _MARK) + 1:]).strip()
        if text:
            try:
                outcome = json.loads(text)
            except ValueError:
                outcome = None
    return removed, outcome


class ActionModule(ActionBase):
    """nodenet.nat.nat_rules: the module, a big config shipped as a file, and the confirmation of ``rollback_timeout``."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        self._nat_host = (task_vars or {}).get("inventory_hostname")
        confirming = self._task.args.get("rollback_timeout") is not None
        if confirming and self._task.async_val:
            return dict(failed=True, msg="rollback_timeout: the host waits for the confirmation itself; remove async and poll from this task")
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        # As ansible's normal action: an async task's wrapper removes the temporary directory when the job ends.
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        # Building the module parses every module_utils file it imports; with the play's variables in this worker, the
        # collector's passes over them cost more than the parsing (0.1 s for JSON text, 0.5 s for a list at 10 000 rules).
        with gc_paused():
            result = merge_hash(result, self._execute_module(module_args=self._module_args(), task_vars=task_vars, wrap_async=wrap_async))
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        rollback = result.get("rollback")
        if not confirming or result.get("failed") or not isinstance(rollback, dict) or rollback.get("status") != "waiting":
            return result       # no rollback_timeout, check mode, nothing changed, or the change failed: nothing to confirm
        return self._confirm(result, rollback)

    def _module_args(self):
        """The task's arguments, with a ``config`` of JSON text over SHIP_CONFIG_ABOVE characters moved to a file on the host."""
        args = self._task.args
        config = args.get("config")
        if not isinstance(config, str) or len(config) <= SHIP_CONFIG_ABOVE or args.get("config_path") is not None:
            return args
        tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
        path = self._connection._shell.join_path(tmpdir, SHIPPED_CONFIG_NAME)
        self._transfer_data(path, config)
        self._fixup_perms2((tmpdir, path), execute=False)
        shipped = dict((key, value) for key, value in args.items() if key != "config")
        shipped["config_path"] = path
        return shipped

    def _confirm(self, result, rollback):
        started = time.monotonic()
        cookie, outcome_path = rollback.pop("cookie"), rollback.pop("outcome")
        for path in (cookie, outcome_path):
            if not _SAFE_PATH.match(path) or ".." in path:
                raise AnsibleError("nat_rules returned an unexpected rollback file path: %r" % (path,))
        timeout = int(rollback["timeout"])
        give_up = started + timeout + GRACE + self._connection_timeout()
        command = confirm_command(cookie, outcome_path)
        self._reset_connection()
        attempts, error = 0, None
        while True:
            attempts += 1
            try:
                answer = self._low_level_execute_command(command, sudoable=True)
            except AnsibleError as failure:
                error = str(failure).strip()
            else:
                if answer.get("rc") == 0:
                    rollback.update(waited=round(time.monotonic() - started, 1), attempts=attempts)
                    removed, outcome = parse_confirmation(answer.get("stdout", ""))
                    self._forget_outcome(outcome_path)
                    return self._report(result, rollback, removed, outcome, outcome_path)
                error = "the confirmation command failed (rc=%s): %s" % (answer.get("rc"), (answer.get("stderr") or "").strip())
            display.vvv("nat_rules rollback_timeout: attempt %d to confirm failed: %s" % (attempts, error), host=self._host_name())
            if time.monotonic() + 1 >= give_up:
                break
            time.sleep(1)
        rollback.update(status="unconfirmed", waited=round(time.monotonic() - started, 1), attempts=attempts)
        result.update(failed=True, msg=(
            "rollback_timeout: could not reach %s again after the change (%d attempts in %d s; last error: %s). Unless the cookie %s "
            "was removed on the host, the host put its previous owned NAT rules back %d s after the change; %s on the host says "
            "what it did." % (self._host_name(), attempts, time.monotonic() - started, error, cookie, timeout, outcome_path)))
        return result

    def _report(self, result, rollback, removed, outcome, outcome_path):
        if outcome is None:
            if removed:
                # The cookie was there, so no restore ran; the watcher ended without a word (killed, or the host rebooted).
                rollback["status"] = "confirmed"
                result.setdefault("warnings", []).append(
                    "rollback_timeout: the change is kept, but the host's watcher process gave no outcome (it was stopped); "
                    "files that persist would have written were not written")
                if "persisted" in result:
                    result["persisted"] = []
                return result
            rollback["status"] = "unconfirmed"
            result.update(failed=True, msg="rollback_timeout: the host's watcher gave no outcome after the deadline; %s may say more"
                          % outcome_path)
            return result
        status = outcome.get("status")
        rollback["status"] = status
        if status == "confirmed":
            if "persisted" in result:
                result["persisted"] = outcome.get("persisted", [])
            if outcome.get("error"):
                result.update(failed=True, msg="rollback_timeout: the change is kept, but persisting it failed: %s" % outcome["error"])
            return result
        rollback["restore"] = outcome.get("restore", {})
        result["failed"] = True
        if "persisted" in result:
            result["persisted"] = []
        if status == "rolled_back":
            result["changed"] = False
            result["msg"] = ("rollback_timeout: %s had no confirmation %d s after the change (the change cut the controller off, or the "
                             "controller came back too late): it put its previous owned NAT rules back%s"
                             % (self._host_name(), rollback["timeout"],
                                "" if rollback["restore"].get("verified") else ", but reading them back did not show them as before"))
        else:
            result["msg"] = ("rollback_timeout: %s had no confirmation %d s after the change, and putting its previous owned NAT rules "
                             "back failed: %s" % (self._host_name(), rollback["timeout"], rollback["restore"].get("error")))
        return result

    def _forget_outcome(self, outcome_path):
        try:
            self._low_level_execute_command("rm -f -- %s" % shlex.quote(outcome_path), sudoable=True)
        except AnsibleError:
            pass        # a small file under /run, gone at boot

    def _reset_connection(self):
        """Make the next command open a new connection. Plugins without a reset of their own (podman, docker: one process
        per command) have nothing that outlives a command; ssh stops its ControlPersist master."""
        if type(self._connection).reset is ConnectionBase.reset:
            return
        try:
            self._connection.reset()
        except AnsibleError as error:
            display.vvv("nat_rules rollback_timeout: resetting the connection failed: %s" % error, host=self._host_name())

    def _connection_timeout(self):
        try:
            return int(self._connection.get_option("timeout") or 10)
        except (AnsibleError, KeyError, TypeError, ValueError):
            return 10

    def _host_name(self):
        return getattr(self, "_nat_host", None) or "the host"
