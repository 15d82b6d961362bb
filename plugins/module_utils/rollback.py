# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``rollback_timeout`` of nat_rules, the host's half: put the previous owned ruleset back unless the controller
confirms in time that it can still reach the host. The controller's half is plugins/action/nat_rules.py.

1. The run applies its change as without the option (validated, one transaction; one per family with iptables)
   and records it, under the host lock. Still holding the lock, ``Rollback.after_change`` (the engine's
   ``after_change`` hook) writes a cookie file and starts the watcher: a detached process (double fork, own session,
   stdio on /dev/null) that inherits the lock and everything it needs in memory. The module returns its result at
   once (``rollback.status: waiting``, the cookie's and the outcome file's paths).
2. The controller opens a new connection to the host (the old one was established before the change, and conntrack
   keeps an established flow's NAT, so it proves nothing) and removes the cookie.
3. The watcher looks for the cookie every POLL seconds. Gone before the deadline: the change stays and the persist
   files, if asked for, are written now. Still there at the deadline: the watcher claims it by renaming it; a rename
   and the controller's unlink of the same file cannot both succeed, so exactly one side wins. It then reads the
   owned objects, renders the previous entries against them (one ``nft -f``; one ``iptables-restore --noflush`` per
   family, all validated before any applies), applies, records, and reads back to verify.
4. Either way it writes the outcome file (JSON) and exits, which releases the lock; the controller reads it.

Nothing changes in check mode or when the run changes no rule (``rollback.status: not_needed``): no cookie, no wait.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import json
import os
import signal
import time

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import BackendError, content
from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import select_backend
from ansible_collections.nodenet.nat.plugins.module_utils.model import RuleError
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import (
    ACTION_STATES, ARGUMENT_SPEC as ENGINE_ARGUMENT_SPEC, MODULE_OPTIONS, NatRulesError, NatRulesRun, canonical_order,
    describe_transactions, invocation, offline_backend, run_nat_rules as run_engine, script_lines,
)
from ansible_collections.nodenet.nat.plugins.module_utils.persistence import persist
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordStore, new_token
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import SysctlError, write_file_atomic

__all__ = ["ARGUMENT_SPEC", "MODULE_OPTIONS", "run_nat_rules"]

ARGUMENT_SPEC = dict(ENGINE_ARGUMENT_SPEC, rollback_timeout=dict(type="int"))
MIN_TIMEOUT = 1
MAX_TIMEOUT = 3600
# How often the watcher looks for the cookie (the controller waits about this long for the outcome).
POLL = 0.1
COOKIE_TEXT = ("nodenet.nat.nat_rules: the owned NAT rules go back to what they were %d s after the change unless this file "
               "is removed (the controller removes it when it can still reach the host; removing it by hand keeps the change)\n")


def paths(directory, run_id):
    """(cookie, claimed cookie, outcome) of one armed run in the record directory."""
    base = os.path.join(directory, "rollback-%s" % run_id)
    return base + ".cookie", base + ".claimed", base + ".outcome"


def daemonize(work):
    """Run ``work()`` in a detached process and return its pid.

    Double fork: the intermediate child starts a new session and exits at once (reaped here), so the watcher has no
    controlling terminal, is adopted by init, and outlives the module, the connection's session and its SIGHUP. It
    keeps the parent's open files, the lock among them; its stdio goes to /dev/null and its directory is /.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setsid()
            watcher = os.fork()
            if watcher:
                os.write(write_end, str(watcher).encode("ascii"))
            else:
                os.close(write_end)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                os.chdir("/")
                null = os.open(os.devnull, os.O_RDWR)
                for descriptor in (0, 1, 2):
                    os.dup2(null, descriptor)
                work()
        finally:
            os._exit(0)     # never back into the module (or its AnsiballZ wrapper, which removes the payload)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        written = pipe.read()
    if not written:
        raise NatRulesError("rollback_timeout: the watcher process could not be started")
    return int(written)


def restore(backend, previous, run_command, store):
    """Make the owned ruleset ``previous`` again; the outcome's ``restore`` dict. Raises NatRulesError, BackendError, RuleError.

    The host is read in full (no run record) and ``previous`` rendered against it, as the engine renders a change:
    one transaction with nft; with iptables one per family, all validated before any applies.
    """
    token = new_token()
    current = backend.read(run_command)
    transactions = backend.render(previous, current, token)
    report = dict(commands=script_lines(transactions), transactions=describe_transactions(transactions))
    steps = ([("check_argv", "validation")] if len(transactions) > 1 else []) + [("apply_argv", "applying")]
    for field, what in steps:
        for transaction in transactions:
            argv = list(getattr(transaction, field))
            rc, dummy, err = run_command(argv, data=transaction.text)
            if rc != 0:
                raise NatRulesError("%s of the previous %s ruleset failed (rc=%s) running %s: %s"
                                    % (what, " and ".join(transaction.families), rc, " ".join(argv), err.strip()))
    store.save(backend.name, backend.applied_stamp(current, previous, transactions, token), previous)
    after = canonical_order(backend.read(run_command).entries)
    report["verified"] = [content(entry) for entry in after] == [content(entry) for entry in previous]
    return report


class Rollback(object):
    """The engine's ``after_change`` hook for one run with ``rollback_timeout``, and the watcher it starts."""

    def __init__(self, params, host, store, timeout, spawn=daemonize):
        self.params = params
        self.run_command = host.run_command
        self.store = store
        self.timeout = timeout
        self.spawn = spawn

    def after_change(self, backend, change, result):
        """Called under the lock after the change applied (``result["changed"]``) or was found unnecessary."""
        persist_path = self.params.get("persist_path")
        try:
            if not result["changed"]:
                # No rule changed: nothing to confirm. Persist now, as the engine does without rollback_timeout.
                if self.params.get("persist"):
                    result["persisted"] = persist(backend, change.desired, persist_path, False)
                    result["changed"] = bool(result["persisted"])
                result["rollback"] = dict(status="not_needed", timeout=self.timeout)
                return
            # The files that differ; the watcher writes them once the change is confirmed.
            to_persist = persist(backend, change.desired, persist_path, True) if self.params.get("persist") else None
        except SysctlError as error:
            raise NatRulesError(str(error), result)
        files = paths(self.store.directory, new_token())
        watcher = Watcher(backend, change.current, change.desired, self.run_command, self.store, files,
                          time.monotonic() + self.timeout, to_persist is not None, persist_path)
        try:
            write_file_atomic(files[0], COOKIE_TEXT % self.timeout, mode=0o600)
            pid = self.spawn(watcher.watch)
        except (SysctlError, OSError, NatRulesError) as error:
            self._abandon(change, result, files[0], error, watcher)
        if to_persist is not None:
            result["persisted"] = to_persist
        result["rollback"] = dict(status="waiting", timeout=self.timeout, cookie=files[0], outcome=files[2], watcher=pid)

    def _abandon(self, change, result, cookie, error, watcher):
        """No watcher could be started: the change is not kept unwatched. Restore the previous rules now and fail."""
        try:
            os.unlink(cookie)
        except OSError:
            pass
        try:
            restore(watcher.backend, change.current, self.run_command, self.store)
        except (NatRulesError, BackendError, RuleError) as failure:
            raise NatRulesError("rollback_timeout: the change applied but cannot be watched (%s), and restoring the previous owned "
                                "rules failed: %s" % (error, failure), result)
        result["changed"] = False
        raise NatRulesError("rollback_timeout: the change applied but cannot be watched (%s); the previous owned rules were "
                            "restored" % error, result)


class Watcher(object):
    """Waits for the controller's confirmation, then keeps the change or restores ``previous``; writes the outcome."""

    def __init__(self, backend, previous, desired, run_command, store, files, deadline, persist=False, persist_path=None):
        self.backend = backend
        self.previous = previous
        self.desired = desired
        self.run_command = run_command
        self.store = store
        self.cookie, self.claimed, self.outcome = files
        self.deadline = deadline
        self.persist = persist
        self.persist_path = persist_path

    def watch(self):
        """The watcher's whole life; returns the outcome dict (also written to the outcome file)."""
        try:
            while os.path.lexists(self.cookie):
                if time.monotonic() >= self.deadline:
                    try:
                        os.rename(self.cookie, self.claimed)
                    except OSError as error:
                        if error.errno != errno.ENOENT:
                            raise
                        break       # removed since the last look: confirmed in time
                    return self._finish(self._roll_back())
                time.sleep(POLL)
            return self._finish(self._keep())
        except Exception as error:  # pylint: disable=broad-except
            # A detached process has no one to raise to: whatever went wrong goes into the outcome.
            return self._finish(dict(status="restore_failed", restore=dict(error="the watcher failed: %s" % error)))

    def _keep(self):
        outcome = dict(status="confirmed", persisted=[])
        if self.persist:
            try:
                outcome["persisted"] = persist(self.backend, self.desired, self.persist_path, False)
            except SysctlError as error:
                outcome["error"] = str(error)
        return outcome

    def _roll_back(self):
        try:
            return dict(status="rolled_back", restore=restore(self.backend, self.previous, self.run_command, self.store))
        except (NatRulesError, BackendError, RuleError, OSError) as error:
            self.store.forget(self.backend.name)
            return dict(status="restore_failed", restore=dict(error=str(error)))
        finally:
            try:
                os.unlink(self.claimed)
            except OSError:
                pass

    def _finish(self, outcome):
        try:
            write_file_atomic(self.outcome, json.dumps(outcome, sort_keys=True) + "\n", mode=0o600)
        except SysctlError:
            pass        # the controller then reports that the host gave no outcome
        return outcome


def run_nat_rules(params, host, store=None, spawn=daemonize):
    """The nat_rules module's engine: the engine of nat_rules.py, armed with the restore when ``rollback_timeout`` is set."""
    timeout = params.get("rollback_timeout")
    if timeout is not None and not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise NatRulesError("rollback_timeout: %r is not between %d and %d seconds" % (timeout, MIN_TIMEOUT, MAX_TIMEOUT),
                            dict(invocation=invocation(params)))
    if timeout is None or host.check_mode or params.get("state") not in ACTION_STATES:
        return run_engine(params, host, store)
    store = store or RecordStore()
    # The engine persists nothing itself: after_change writes the files at once when no rule changed, else the watcher
    # writes them once the change is confirmed.
    run = NatRulesRun(dict(params, persist=False), host, lambda requested: select_backend(requested, host.run_command, host.which),
                      offline_backend, store)
    run.after_change = Rollback(params, host, store, timeout, spawn).after_change
    try:
        result = run.run()
    except NatRulesError as error:
        error.result["invocation"] = invocation(params)
        raise
    result["invocation"] = invocation(params)
    return result
