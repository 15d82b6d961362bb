# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nat_trace: a bounded packet trace of one flow through the node's netfilter chains.

ruleset.py arms it (the flow, the trace table), events.py reads it (nft's trace lines -> the path of each
packet, with the rules' names), monitor.py runs ``nft monitor``. This file runs one trace:

1. start ``nft -a monitor`` and wait until it prints a change of our own (then it listens);
2. add the trace table (its rule stops marking at a deadline by itself);
3. read trace lines until the wanted number of packets went through (and a short quiet spell passed) or
   the timeout;
4. always: stop the monitor, delete the trace table, and check that it is gone;
5. name the rules on the path, and compare the owned rules' counters before and after (``rule_hits``).

Legacy iptables (x_tables) chains never report to ``nft monitor``: a packet's path through them is not in
the trace, and the result says so; their counters still show in ``rule_hits``.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import BackendError
from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import (
    BACKEND_CHOICES, BackendUnavailable, mixed_backends, select_backend, xtables_listings,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import list_chains_argv
from ansible_collections.nodenet.nat.plugins.module_utils.commands import ModuleFailure
from ansible_collections.nodenet.nat.plugins.module_utils.nat_trace.events import (
    Namer, applied, count_packets, describe_event, parse_trace,
)
from ansible_collections.nodenet.nat.plugins.module_utils.nat_trace.monitor import MonitorError, NftMonitor
from ansible_collections.nodenet.nat.plugins.module_utils.nat_trace.ruleset import (
    MAX_PACKETS, MAX_TIMEOUT, PROTOCOLS, TRACE_FAMILY, TRACE_TABLE, flow_from_params, flow_params, remove_argv, sync_script,
    table_present, trace_script,
)

DEFAULT_TIMEOUT = 30
DEFAULT_PACKETS = 1
ARGUMENT_SPEC = dict(
    source=dict(type="str"),
    destination=dict(type="str"),
    protocol=dict(type="str", choices=list(PROTOCOLS)),
    port=dict(type="int"),
    timeout=dict(type="int", default=DEFAULT_TIMEOUT),
    packets=dict(type="int", default=DEFAULT_PACKETS),
    backend=dict(type="str", choices=list(BACKEND_CHOICES), default="auto"),
)
MODULE_OPTIONS = dict(required_one_of=[("source", "destination")], required_by=dict(port="protocol"))
# After the last wanted packet: its events come in one burst; wait this long for the rest of it.
SETTLE = 0.5
# nft monitor lists the whole ruleset before it listens, and a ruleset change meanwhile makes it start over (10 to 15 s
# beside 100 000 iptables-nft rules): the sync changes come further apart each time, SYNC_WAIT, twice that, ..., so that
# one wait outlasts the listing; SYNC_TIMEOUT leaves room for a listing of 30 s.
SYNC_TIMEOUT = 130.0
SYNC_WAIT = 0.5
LEGACY_NOTE = ("legacy iptables (x_tables) chains do not report to nft monitor trace (their TRACE target logs to the kernel "
               "log, from the initial network namespace only unless net.netfilter.nf_log_all_netns=1, and this module "
               "does not read it): the path leaves them out; rule_hits shows the owned rules whose counters moved")
NO_TIME_NOTE = ("the kernel has no 'meta time' match (Linux before 5.4): the trace rule has no deadline of its own, "
                "only the module's removal ends it")


class TraceError(Exception):
    """The trace could not run; the message says why (the trace table is removed before it is raised)."""


def validate(params):
    """(Flow, timeout, packets) of the module params; ValueError names the field and the value."""
    flow = flow_from_params(params)
    timeout = DEFAULT_TIMEOUT if params.get("timeout") is None else params["timeout"]
    packets = DEFAULT_PACKETS if params.get("packets") is None else params["packets"]
    if not 1 <= timeout <= MAX_TIMEOUT:
        raise ValueError("timeout: %r must be between 1 and %d seconds" % (timeout, MAX_TIMEOUT))
    if not 1 <= packets <= MAX_PACKETS:
        raise ValueError("packets: %r must be between 1 and %d" % (packets, MAX_PACKETS))
    return flow, timeout, packets


class TraceRun(object):
    """One trace. ``monitor_factory(argv)`` -> an object with readline(timeout) and stop() (NftMonitor);
    ``clock()`` is monotonic seconds, ``now()`` Unix time."""

    def __init__(self, params, host, monitor_factory=NftMonitor, clock=time.monotonic, now=time.time):
        self.params = params
        self.run_command = host.run_command
        self.which = host.which
        self.check_mode = host.check_mode
        self.monitor_factory = monitor_factory
        self.clock = clock
        self.now = now
        self.notes = []

    def run(self):
        flow, timeout, wanted = validate(self.params)
        nft = self.which("nft")
        if nft is None:
            raise TraceError("the trace needs the nft binary (package nftables) and nf_tables in the kernel; without them, "
                             "compare the counters of nodenet.nat.nat_info (result_rules: all) before and after sending the flow")
        backend = self._backend()
        script = trace_script(flow, int(self.now()) + timeout + 1)
        result = dict(changed=False, flow=flow_params(flow), trace_ruleset=script, backend=backend.name if backend else None,
                      packets=[], path=[], owned_rules=[], rule_hits={}, timed_out=False, removed=True, notes=self.notes)
        if self.check_mode:
            self.notes.append("check mode: nothing was traced; trace_ruleset is the table a trace adds")
            return result
        before = self._counters(backend)
        lines, result["trace_ruleset"] = self._trace(nft, flow, script, timeout, wanted)
        result["removed"] = self._remove(nft)
        packets = Namer(self.run_command, self.which).name_all(parse_trace(lines))[:wanted]
        result["timed_out"] = not packets
        result["packets"] = packets
        if packets:
            result["path"] = [describe_event(event) for event in packets[0]["events"]]
            result["owned_rules"] = [event["name"] for event in packets[0]["events"] if applied(event) and event["owned"] and event["name"]]
        result["rule_hits"] = self._hits(before, self._counters(backend))
        return result

    def _backend(self):
        """The backend whose owned rules' counters make ``rule_hits`` (None, with a note, when there is none)."""
        listings = xtables_listings(self.which, self.run_command)
        requested = self.params.get("backend") or "auto"
        try:
            backend, dummy = select_backend(requested, self.run_command, self.which, listings)
        except BackendUnavailable as error:
            self.notes.append("rule_hits: %s" % error)
            backend = None
        if mixed_backends(listings)["legacy_rules"] or "iptables-legacy" in (requested, backend and backend.name):
            self.notes.append(LEGACY_NOTE)
        return backend

    def _counters(self, backend):
        if backend is None:
            return None
        try:
            return backend.read(self.run_command, counters=True).facts.get("counters") or {}
        except BackendError as error:
            self.notes.append("rule_hits: %s" % error)
            return None

    @staticmethod
    def _hits(before, after):
        if before is None or after is None:
            return {}
        hits = {}
        for name, (packets, octets) in after.items():
            was = before.get(name, [0, 0])
            if packets > was[0]:
                hits[name] = dict(packets=packets - was[0], bytes=octets - was[1])
        return hits

    def _trace(self, nft, flow, script, timeout, wanted):
        """(monitor lines, the script applied); the trace table is gone when it returns or raises."""
        monitor = None
        try:
            monitor = self.monitor_factory([nft, "-a", "monitor"])
            self._sync(nft, monitor)
            rc, dummy, err = self.run_command([nft, "-f", "-"], data=script)
            if rc != 0 and "time" in err:
                script = trace_script(flow)
                self.notes.append(NO_TIME_NOTE)
                rc, dummy, err = self.run_command([nft, "-f", "-"], data=script)
            if rc != 0:
                raise TraceError("adding the trace table failed (rc=%s): %s" % (rc, err.strip()))
            return self._collect(monitor, timeout, wanted), script
        except MonitorError as error:
            raise TraceError(str(error))
        finally:
            if monitor is not None:
                monitor.stop()
            self._remove(nft)

    def _sync(self, nft, monitor):
        """Return once the monitor printed our own add-and-delete of the trace table (it listens then)."""
        marker = "delete table %s %s" % (TRACE_FAMILY, TRACE_TABLE)
        deadline = self.clock() + SYNC_TIMEOUT
        wait = SYNC_WAIT
        while self.clock() < deadline:
            rc, dummy, err = self.run_command([nft, "-f", "-"], data=sync_script())
            if rc != 0:
                raise TraceError("nft cannot change the ruleset here (rc=%s): %s" % (rc, err.strip()))
            wait_until = min(deadline, self.clock() + wait)
            while self.clock() < wait_until:
                line = monitor.readline(max(0.0, wait_until - self.clock()))
                # nft -a adds "# handle N"
                if line is not None and line.split(" #")[0].strip() == marker:
                    return
            wait *= 2
        raise TraceError("nft monitor printed none of the ruleset changes made to sync with it within %d s (it lists the whole "
                         "ruleset before it listens)" % SYNC_TIMEOUT)

    def _collect(self, monitor, timeout, wanted):
        """Trace lines until ``wanted`` packets went through and their events came (a quiet spell, the next
        packet, or at most 2 x SETTLE), or ``timeout`` seconds passed."""
        lines = []
        deadline = self.clock() + timeout
        seen = 0
        while True:
            now = self.clock()
            if now >= deadline:
                return lines
            line = monitor.readline(min(SETTLE, deadline - now) if seen >= wanted else deadline - now)
            if line is None:
                if seen >= wanted:
                    return lines
                continue
            if not line.startswith("trace id "):
                continue
            if count_packets([line]):
                if seen >= wanted:
                    return lines
                seen += 1
                if seen == wanted:
                    deadline = min(deadline, self.clock() + 2 * SETTLE)
            lines.append(line)

    def _remove(self, nft):
        """Delete the trace table if it is there; True when it is gone."""
        rc, out, dummy = self.run_command(list_chains_argv(nft))
        if rc == 0 and table_present(out):
            self.run_command(remove_argv(nft))
            rc, out, dummy = self.run_command(list_chains_argv(nft))
        return rc == 0 and not table_present(out)


def nat_trace(params, host):
    """The module's engine (commands.run_module): the trace's result; ModuleFailure names what went wrong."""
    try:
        return TraceRun(params, host).run()
    except (ValueError, TraceError) as error:
        raise ModuleFailure(str(error))
