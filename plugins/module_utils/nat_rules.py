# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nat_rules engine: desired ruleset per state, compare with the host, apply one transaction.

Nothing here imports AnsibleModule: commands run through a ``run_command(argv, data=None)``
callable returning ``(rc, stdout, stderr)``, the backend comes from a selector and the lock and
run record from a RecordStore, so the whole flow is unit-testable with fakes.

Rulesets are lists of RuleEntry (backends/base.py). An entry read from the run record keeps the
config item it was validated from; a config item equal to it is taken as is, without validating
and compiling it again, which is what keeps a run over tens of thousands of unchanged rules cheap.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import re

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import BackendError, HostState, content, entry_params
from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import BACKEND_CHOICES, BackendUnavailable, select_backend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import VARIANT_OF_BACKEND, IptablesBackend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend
from ansible_collections.nodenet.nat.plugins.module_utils.model import CHAINS, FAMILIES, RuleError
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import rule_from_params, rule_names
from ansible_collections.nodenet.nat.plugins.module_utils import flows
from ansible_collections.nodenet.nat.plugins.module_utils.commands import ModuleFailure
from ansible_collections.nodenet.nat.plugins.module_utils.gc_pause import gc_paused
from ansible_collections.nodenet.nat.plugins.module_utils.persistence import persist
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordError, RecordStore, new_token
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import SysctlError

ACTION_STATES = ("merged", "replaced", "overridden", "deleted")
OFFLINE_STATES = ("rendered", "parsed")
STATES = ACTION_STATES + ("gathered",) + OFFLINE_STATES
RESULT_RULES = ("summary", "changed", "all")
ARGUMENT_SPEC = dict(
    # Items are checked by model.rule_from_params, not by ansible (see the option's documentation).
    config=dict(type="raw"),
    config_path=dict(type="path"),
    state=dict(type="str", choices=list(STATES), default="merged"),
    backend=dict(type="str", choices=list(BACKEND_CHOICES), default="auto"),
    scope=dict(type="str"),
    running_config=dict(type="str"),
    persist=dict(type="bool", default=False),
    persist_path=dict(type="path"),
    result_rules=dict(type="str", choices=list(RESULT_RULES), default="summary"),
)
MODULE_OPTIONS = dict(required_if=[("state", "parsed", ["running_config"])], mutually_exclusive=[("config", "config_path")])
# Fields whose value says which addresses a rule uses; giving one of them in ``merged``
# re-infers the family instead of keeping the existing rule's.
_ADDRESS_FIELDS = ("source", "destination", "to_source", "to_destination")


class NatRulesError(ModuleFailure):
    """A failure the module reports with ``fail_json``; ``result`` holds what is known so far."""


class _PartlyApplied(NatRulesError):
    """Applying failed after the ``applied`` transactions went in."""

    def __init__(self, message, applied):
        super(_PartlyApplied, self).__init__(message)
        self.applied = applied


class _RecordNotCarried(Exception):
    """The host does not carry the stamp that a state from the run record took on trust: read it in full."""


_RANKS = dict(((family, chain), rank) for rank, (family, chain) in enumerate((family, chain) for family in FAMILIES for chain in CHAINS))


def canonical_order(rules):
    """Rules (or entries) grouped by family and chain, keeping the user's order inside each chain.

    Only the order within one chain of one family changes what the kernel does, so this
    is the order rulesets are compared and rendered in.
    """
    ranks = [_RANKS[rule.family, rule.chain] for rule in rules]
    if all(first <= second for first, second in zip(ranks, ranks[1:])):
        return list(rules)
    return [rule for dummy_rank, dummy_index, rule in sorted(zip(ranks, range(len(ranks)), rules))]


def merge_params(existing, params):
    """User dict ``params`` laid over the existing rule's dict ``existing`` (``state: merged``).

    Given fields (not None) replace the existing ones; lists are replaced, not extended.
    A different ``type`` starts from scratch, since target fields do not carry over between types.
    """
    given = dict((field, value) for field, value in params.items() if value is not None)
    if given.get("type", existing["type"]) != existing["type"]:
        return given
    merged = dict(existing)
    if "family" not in given and any(field in given for field in _ADDRESS_FIELDS):
        del merged["family"]
    merged.update(given)
    return merged


def config_items(config, field="config"):
    """The list of config items of ``config``: a list, the JSON text of one, or None (no rules)."""
    if isinstance(config, str):
        try:
            config = json.loads(config) if config.strip() else []
        except ValueError as error:
            raise RuleError("%s: is neither a list of rules nor the JSON text of one (%s)" % (field, error))
    if config is None:
        return []
    if not isinstance(config, list):
        shown = repr(config)
        if len(shown) > 200:
            shown = "%s... (%d characters)" % (shown[:200], len(shown))
        raise RuleError("%s: %s is not a list of rules" % (field, shown))
    return config


def given_config(params):
    """The config items of ``config``, or of the JSON text in the file at ``config_path``."""
    path = params.get("config_path")
    if path is None:
        return config_items(params.get("config"))
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (IOError, OSError) as error:
        raise RuleError("config_path: cannot read %s: %s" % (path, error.strerror))
    except ValueError as error:
        raise RuleError("config_path: %s is not UTF-8 text (%s)" % (path, error))
    return config_items(text, "config_path %s" % path)


def _put_in_place(current, entries):
    """Current entries with same-named ones replaced in place; new ones appended in config order."""
    by_name = dict((entry.name, entry) for entry in entries)
    current_names = set(entry.name for entry in current)
    kept = [by_name.get(entry.name, entry) for entry in current]
    return kept + [entry for entry in entries if entry.name not in current_names]


def _check_unique_names(config):
    names = set()
    for params in config:
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str) or name in names:
            rule_names(config)      # the error naming the item (invalid or repeated name)
        names.add(name)


def config_entries(backend, config, known):
    """Entries of the config items; an item equal to the one a ``known`` entry was validated from is that entry."""
    _check_unique_names(config)
    entries = []
    for index, params in enumerate(config):
        entry = known.get(params.get("name"))
        if entry is None or entry.given != params:
            entry = backend.entry(rule_from_params(params, index), given=params)
        entries.append(entry)
    return entries


def desired_entries(backend, state, current, config):
    """The owned entries ``state`` asks for, given the current owned entries; raises RuleError."""
    existing = dict((entry.name, entry) for entry in current)
    if state == "merged":
        _check_unique_names(config)
        entries = []
        for index, params in enumerate(config):
            if params["name"] in existing:
                rule = rule_from_params(merge_params(entry_params(existing[params["name"]]), params), index)
                entries.append(backend.entry(rule))
            else:
                entries.append(backend.entry(rule_from_params(params, index), given=params))
        return canonical_order(_put_in_place(current, entries))
    if state == "replaced":
        return canonical_order(_put_in_place(current, config_entries(backend, config, existing)))
    if state == "overridden":
        return canonical_order(config_entries(backend, config, existing))
    if state == "deleted":
        if not config:
            return []
        names = set(rule_names(config))
        return [entry for entry in current if entry.name not in names]
    raise ValueError("state %r has no desired ruleset" % state)


def in_scope(entry, scope):
    return not scope or entry.name.startswith(scope)


def check_scope(config, scope):
    """Raise RuleError for a config rule whose name lies outside ``scope`` (no scope: every name is inside)."""
    if not scope:
        return
    for index, params in enumerate(config):
        name = (params.get("name") if isinstance(params, dict) else None) or ""
        if not isinstance(name, str) or not name.startswith(scope):
            raise RuleError("config[%d] (name=%s): name: %r does not start with the scope %r" % (index, name, name, scope))


def splice_scope(current, scoped_desired, scope):
    """The whole owned ruleset with the entries of ``scope`` replaced by ``scoped_desired``.

    Other entries keep their order. In each chain the scope's entries go where its first entry
    was, or after the other entries when it had none there, so that several callers, each
    with its own scope, converge to a stable order whatever order they run in.
    """
    if not scope:
        return scoped_desired
    positions = {}
    for index, entry in enumerate(current):
        if in_scope(entry, scope):
            positions.setdefault((entry.family, entry.chain), index)
    others = [(index, 0, entry) for index, entry in enumerate(current) if not in_scope(entry, scope)]
    placed = [(positions.get((entry.family, entry.chain), len(current)), -1, entry) for entry in scoped_desired]
    merged = sorted(others + placed, key=lambda item: item[:2])
    return canonical_order([entry for dummy_index, dummy_tie, entry in merged])


def script_lines(transactions):
    """The scripts of ``transactions`` as one list of lines (the ``commands`` return value)."""
    return [line for transaction in transactions for line in transaction.text.splitlines()]


# With result_rules=summary, longer scripts and longer lists of names are counted, not listed (ansible scrubs and ships
# every string of a result: 0.1 s for 10 000 names, 0.35 s for 50 000).
COMMANDS_LISTED = 1000
NAMES_LISTED = 1000


def listed_commands(transactions, result_rules):
    """``commands`` (and ``commands_omitted`` when a long script is not listed) of the result."""
    lines = script_lines(transactions)
    if result_rules in (None, "summary") and len(lines) > COMMANDS_LISTED:
        return dict(commands=[], commands_omitted=len(lines))
    return dict(commands=lines)


def summary_names(names, result_rules):
    """The summary's lists of names ({added, removed, changed}: [name]), with ``omitted`` (how many each would
    name) instead of the names when they are more than NAMES_LISTED in all and result_rules is summary."""
    if result_rules in (None, "summary") and sum(len(listed) for listed in names.values()) > NAMES_LISTED:
        return dict(dict((key, []) for key in names), omitted=dict((key, len(listed)) for key, listed in names.items()))
    return names


def describe_transactions(transactions):
    return [dict(families=list(transaction.families), argv=list(transaction.apply_argv), lines=transaction.text.count("\n"))
            for transaction in transactions]


def offline_backend(name):
    """The backend called ``name`` without looking at the host (states rendered and parsed)."""
    if name == "nft":
        return NftBackend()
    return IptablesBackend(VARIANT_OF_BACKEND[name])


def running_config_family(text):
    """The family of one list command's output given as ``running_config``.

    IPv6 for ip6tables-save output (its header line names the tool: ``ip6tables-save``, or
    ``ip6tables-nft-save`` as iptables-nft prints it) and for an nft listing of
    an ``ip6`` table; IPv4 otherwise.
    """
    if re.search(r"ip6tables(-nft|-legacy)?-save", text) or re.search(r'"family"\s*:\s*"ip6"', text):
        return "ipv6"
    return "ipv4"


class _Change(object):
    """What one run computed from one read of the host: the current entries (canonical order), the desired
    ones, and what differs between them by name (computed once for the summary, the diff and stale flows)."""

    def __init__(self, host, current, desired):
        self.host = host
        self.current = current
        self.desired = desired
        self.drift = list(host.facts.get("unrecognized", []))
        # By name, in ruleset order: the entries only desired, only current, and in both with other content.
        if len(current) == len(desired) and all(old.name == new.name for old, new in zip(current, desired)):
            self.added, self.removed = [], []
            self.modified = [(old, new) for old, new in zip(current, desired) if _differ(old, new)]
            return
        before = dict((entry.name, entry) for entry in self.current)
        after = dict((entry.name, entry) for entry in self.desired)
        self.added = [entry for entry in self.desired if entry.name not in before]
        self.removed = [entry for entry in self.current if entry.name not in after]
        self.modified = [(before[entry.name], entry) for entry in self.desired if entry.name in before and _differ(before[entry.name], entry)]

    @property
    def learned(self):
        """Whether the desired entries know more than the record (config items to skip next time)."""
        return not self.host.facts.get("from_record") or any(
            desired is not current for desired, current in zip(self.desired, self.current))

    @property
    def needed(self):
        return bool(self.drift) or len(self.desired) != len(self.current) or any(
            _differ(current, desired) for current, desired in zip(self.current, self.desired))


def _differ(first, second):
    return first is not second and content(first) != content(second)


def invocation(params):
    """The arguments the result echoes: unless all rules are asked for, config's size instead of the rules
    (echoing ten thousand rules costs more than the run)."""
    config = params.get("config")
    if params.get("result_rules") == "all" or not config:
        return dict(module_args=params)
    size = "%d characters" % len(config) if isinstance(config, str) else "%d rules" % len(config)
    return dict(module_args=dict(params, config="(%s; result_rules=all shows them)" % size))


class NatRulesRun(object):
    """One module invocation.

    ``host`` runs commands and says check/diff mode (commands.py); ``select_backend(requested)`` ->
    (NatBackend, reason) may run read-only commands (state ``auto`` detection); ``offline_backend(name)``
    -> NatBackend must not (rendered, parsed). ``store`` is the RecordStore (lock and run record) of the host.
    """

    # Hook (rollback.py sets it for rollback_timeout): after_change(backend, change, result) at the end of an action
    # state's locked section, the change applied and recorded and the lock still held.
    after_change = None

    def __init__(self, params, host, select_backend, offline_backend, store):
        self.params = params
        self.host = host
        self.run_command = host.run_command
        self.select_backend = select_backend
        self.offline_backend = offline_backend
        self.store = store
        self.check_mode = host.check_mode
        self.diff = host.diff
        self.scope = params.get("scope") or ""

    def run(self):
        """The result dict; raises NatRulesError (bad input, failing command)."""
        state = self.params["state"]
        try:
            with gc_paused():
                config = given_config(self.params)
                if state in OFFLINE_STATES:
                    result = self._offline(state, config)
                else:
                    result = self._online(state, config)
        except (RuleError, BackendError, RecordError) as error:
            raise NatRulesError(str(error), dict(invocation=invocation(self.params)))
        except NatRulesError as error:
            error.result["invocation"] = invocation(self.params)
            raise
        result["invocation"] = invocation(self.params)
        return result

    def _offline(self, state, config):
        requested = self.params["backend"]
        if requested == "auto":
            raise NatRulesError("backend: state %s works offline and needs an explicit backend (nft, iptables or iptables-legacy), not auto"
                                % state)
        backend = self.offline_backend(requested)
        result = dict(changed=False, backend=backend.name, backend_reason="requested")
        if state == "rendered":
            entries = canonical_order(config_entries(backend, config, {}))
            transactions = backend.render(backend.normalize(entries), HostState([], {}), None)
            result.update(rendered=script_lines(transactions), transactions=describe_transactions(transactions))
            return result
        running_config = self.params.get("running_config")
        if running_config is None:
            raise NatRulesError("running_config: is required with state parsed")
        try:
            host = backend.parse({running_config_family(running_config): running_config})
        except BackendError as error:
            raise NatRulesError("running_config: %s" % error)
        result["parsed"] = [entry_params(entry) for entry in host.entries]
        drift = host.facts.get("unrecognized")
        if drift:
            result["drift"] = drift
        return result

    def _online(self, state, config):
        check_scope(config, self.scope)
        if state == "gathered":
            backend, result, dummy = self._select()
            host = backend.read(self.run_command)
            result["gathered"] = [entry_params(entry) for entry in canonical_order(host.entries) if in_scope(entry, self.scope)]
            return result
        with self.store:
            backend, result, recorded_host = self._select()
            result.update(commands=[], transactions=[])
            change = self._compute(backend, state, config, recorded_host if recorded_host is not None else self._recorded_or_read(backend))
            if change.needed and backend.needs_full_read(change.desired, change.host):
                change = self._compute(backend, state, config, backend.read(self.run_command))
            try:
                self._converge(backend, change, result)
            except (_RecordNotCarried, NatRulesError) as error:
                if isinstance(error, NatRulesError) and (not change.host.facts.get("from_record") or self.check_mode):
                    raise
                # The host does not hold what the record says (a flush, or a hand edit that kept the stamp): read
                # it in full and converge once more. When auto kept the backend for its record (not by detection,
                # which would only list every table again), it selects again first.
                if recorded_host is not None:
                    self.store.forget(backend.name)
                    backend, reason = self._selected("auto")
                    result.update(backend=backend.name, backend_reason=reason)
                change = self._compute(backend, state, config, backend.read(self.run_command))
                self._converge(backend, change, result)
            if self.after_change is not None:
                self.after_change(backend, change, result)
        if change.drift:
            result["drift"] = change.drift
        self._report(change, result)
        if self.params.get("persist"):
            try:
                result["persisted"] = persist(backend, change.desired, self.params.get("persist_path"), self.check_mode)
            except SysctlError as error:
                raise NatRulesError(str(error), result)
            result["changed"] = result["changed"] or bool(result["persisted"])
        return result

    def _select(self):
        """(backend, result with its name and why, HostState from its run record or None).

        ``auto`` detection lists every table of both iptables variants, which costs seconds at tens of thousands of
        rules; a backend whose run record the host still carries, with rules, holds this collection's rules, and when
        it is the only one it is kept without that listing (detection keeps a backend that holds them, too).
        """
        requested = self.params["backend"]
        recorded = self._recorded_backends() if requested == "auto" else []
        if len(recorded) == 1:
            [(backend, host)] = recorded
            reason = "%s holds this collection's rules as its last run left them (run record); kept it" % backend.name
        else:
            backend, reason = self._selected(requested)
            host = None
        return backend, dict(changed=False, backend=backend.name, backend_reason=reason), host

    def _selected(self, requested):
        """(backend, why) as select_backend gives them; raises NatRulesError."""
        try:
            return self.select_backend(requested)
        except BackendUnavailable as error:
            raise NatRulesError(str(error))

    def _recorded_backends(self):
        """[(backend, HostState)] of the installed backends whose run record, with rules, the host still carries.

        When one backend only has such a record, looks at its stamp that a change makes by itself are deferred, as
        with the backend named (_recorded_or_read): should the host not carry it, _online selects again.
        """
        records = []
        for name in [choice for choice in BACKEND_CHOICES if choice != "auto"]:
            record = self.store.load(name)
            if record is None or not record.entries:
                continue
            try:
                backend, dummy = self.select_backend(name)
            except BackendUnavailable:
                continue
            records.append((backend, record))
        recorded = []
        for backend, record in records:
            host = backend.recorded(self.run_command, record, deferred=len(records) == 1)
            if host is not None:
                recorded.append((backend, host))
        return recorded

    def _recorded_or_read(self, backend):
        """HostState from the run record while the host carries its stamp, else from a full read.

        Looks at the stamp that a change makes by itself are deferred (_converge makes those it does not).
        """
        record = self.store.load(backend.name)
        host = backend.recorded(self.run_command, record, deferred=True) if record is not None else None
        return host if host is not None else backend.read(self.run_command)

    def _compute(self, backend, state, config, host):
        current = canonical_order(host.entries)
        scoped = [entry for entry in current if in_scope(entry, self.scope)]
        desired = backend.normalize(splice_scope(current, desired_entries(backend, state, scoped, config), self.scope))
        return _Change(host, current, desired)

    def _converge(self, backend, change, result):
        """Apply the change, or record what a run learned without one; raises _RecordNotCarried when the host does
        not carry the stamp that ``change.host``, from the run record, took on trust."""
        if change.needed:
            self._apply(backend, change, result)
            return
        if not backend.stamp_carried(self.run_command, change.host, ()):
            raise _RecordNotCarried()
        if change.host.facts.get("stamp") and not self.check_mode and change.learned:
            self.store.save(backend.name, change.host.facts["stamp"], change.desired)

    def _apply(self, backend, change, result):
        """Validate (check mode) or apply the change's transactions, then record the new state."""
        token = new_token()
        transactions = backend.render(change.desired, change.host, token)
        # Check mode applies nothing, so no transaction proves a stamp.
        changing = () if self.check_mode else set(family for transaction in transactions for family in transaction.families)
        if not backend.stamp_carried(self.run_command, change.host, changing):
            raise _RecordNotCarried()
        result.update(changed=True, transactions=describe_transactions(transactions),
                      **listed_commands(transactions, self.params.get("result_rules")))
        try:
            if self.check_mode or len(transactions) > 1:
                # Several transactions (iptables: one per family) all validate before any applies.
                self._run_all(transactions, "check_argv", "validation")
            if not self.check_mode:
                # One transaction is atomic by itself: nft and iptables-restore apply all of it or none.
                try:
                    self._run_all(transactions, "apply_argv", "applying")
                except _PartlyApplied as partial:
                    self._roll_back(backend, change, partial)
        except NatRulesError as error:
            error.result = result
            raise
        if not self.check_mode:
            self.store.save(backend.name, backend.applied_stamp(change.host, change.desired, transactions, token), change.desired)
        self._clear_stale_flows(change, result)

    def _roll_back(self, backend, change, partial):
        """A later family failed after earlier ones applied (it passed validation, so the host changed in between).

        Put the applied families back as they were, rendered against the host as it is now, and fail saying so.
        """
        families = set(family for transaction in partial.applied for family in transaction.families)
        named = " and ".join(sorted(families))
        back = [transaction for transaction in backend.render(change.current, backend.read(self.run_command), new_token())
                if families & set(transaction.families)]
        try:
            self._run_all(back, "apply_argv", "rolling back")
        except NatRulesError as error:
            raise NatRulesError("%s; rolling the %s ruleset back failed too: %s" % (partial, named, error))
        raise NatRulesError("%s; the %s ruleset, applied before it, was rolled back: nothing changed" % (partial, named))

    def _clear_stale_flows(self, change, result):
        """Flows of removed UDP/SCTP endpoints: listed (would be cleared, in check mode), then deleted."""
        before = dict((entry.name, entry) for entry in change.removed)
        before.update((old.name, old) for old, new in change.modified)
        stale = flows.stale_flows(before, dict((new.name, new) for old, new in change.modified))
        if stale:
            result["cleared_flows"] = [flows.describe(flow) for flow in stale]
        if not self.check_mode:
            for problem in flows.clear(self.host, stale):
                self.host.warn(problem)

    def _run_all(self, transactions, argv_field, what):
        """Run each transaction's ``argv_field``; the first failure raises NatRulesError (_PartlyApplied when
        earlier transactions already applied)."""
        for count, transaction in enumerate(transactions):
            argv = list(getattr(transaction, argv_field))
            rc, dummy, err = self.run_command(argv, data=transaction.text)
            if rc != 0:
                message = "%s of the %s ruleset failed (rc=%s) running %s: %s" % (
                    what, " and ".join(transaction.families), rc, " ".join(argv), err.strip())
                if what == "applying" and count:
                    raise _PartlyApplied(message, transactions[:count])
                raise NatRulesError(message)

    def _report(self, change, result):
        """summary (counts and names), and before/after as result_rules asks: the changed rules, or all of them."""
        scope = self.scope
        added = [entry.name for entry in change.added if in_scope(entry, scope)]
        removed = [entry.name for entry in change.removed if in_scope(entry, scope)]
        modified = [new.name for old, new in change.modified if in_scope(new, scope)]
        before = [entry for entry in change.current if in_scope(entry, scope)] if scope else change.current
        after = [entry for entry in change.desired if in_scope(entry, scope)] if scope else change.desired
        present = set(entry.family for entry in after)
        mode = self.params.get("result_rules") or "summary"
        result["summary"] = dict(summary_names(dict(added=added, removed=removed, changed=modified), mode),
                                 before=len(before), after=len(after), families=[family for family in FAMILIES if family in present])
        if mode != "all":
            shown = set(added + removed + modified)
            before = [entry for entry in before if entry.name in shown]
            after = [entry for entry in after if entry.name in shown]
        if mode != "summary" or self.diff:
            listed = dict(before=[entry_params(entry) for entry in before], after=[entry_params(entry) for entry in after])
            if mode != "summary":
                result.update(listed)
            if self.diff:
                # Mappings, which the callbacks serialize into text before diffing.
                result["diff"] = dict(before=dict(rules=listed["before"]), after=dict(rules=listed["after"]))


def run_nat_rules(params, host, store=None):
    """The module's engine (commands.run_module): the result for ``params`` on this host; raises NatRulesError."""
    return NatRulesRun(params, host, lambda requested: select_backend(requested, host.run_command, host.which), offline_backend,
                       store or RecordStore()).run()
