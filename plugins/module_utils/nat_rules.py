# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nat_rules engine: desired ruleset per state, compare with the host, apply one transaction.

Nothing here imports AnsibleModule: commands run through a ``run_command(argv, data=None)``
callable returning ``(rc, stdout, stderr)``, and the backend comes from a selector, so the
whole flow is unit-testable with fakes.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState
from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import BackendUnavailable, select_backend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import VARIANT_OF_BACKEND, IptablesBackend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS, FAMILIES, RuleError, rule_from_params, rule_names, rule_to_params, rules_from_config,
)
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import SysctlError, read_text, write_file_atomic

ACTION_STATES = ("merged", "replaced", "overridden", "deleted")
OFFLINE_STATES = ("rendered", "parsed")
STATES = ACTION_STATES + ("gathered",) + OFFLINE_STATES

# Where ``persist`` writes the owned ruleset when ``persist_path`` is not given.
DEFAULT_PERSIST_PATHS = {"nft": "/etc/nftables.d/nodenet-nat.nft", "iptables": "/etc/iptables/nodenet-nat.rules"}
PERSIST_HEADER = "# Managed by nodenet.nat.nat_rules (owned NAT rules only); changes here are overwritten.\n"

# Fields whose value says which addresses a rule uses; giving one of them in ``merged``
# re-infers the family instead of keeping the existing rule's.
_ADDRESS_FIELDS = ("source", "destination", "to_source", "to_destination")


class NatRulesError(Exception):
    """A failure the module reports with ``fail_json``; ``result`` holds what is known so far."""

    def __init__(self, message, result=None):
        super(NatRulesError, self).__init__(message)
        self.result = result or {}


def canonical_order(rules):
    """Rules grouped by family and chain, keeping the user's order inside each chain.

    Only the order within one chain of one family changes what the kernel does, so this
    is the order rulesets are compared and rendered in.
    """
    return sorted(rules, key=lambda rule: (FAMILIES.index(rule.family), CHAINS.index(rule.chain)))


def merge_params(existing, params):
    """User dict ``params`` laid over the existing rule's fields (``state: merged``).

    Given fields (not None) replace the existing ones; lists are replaced, not extended.
    A different ``type`` starts from scratch, since target fields do not carry over between types.
    """
    given = dict((field, value) for field, value in params.items() if value is not None)
    if given.get("type", existing.type) != existing.type:
        return given
    merged = rule_to_params(existing)
    if "family" not in given and any(field in given for field in _ADDRESS_FIELDS):
        del merged["family"]
    merged.update(given)
    return merged


def _put_in_place(current, rules):
    """Current rules with same-named ones replaced in place; new ones appended in config order."""
    by_name = dict((rule.name, rule) for rule in rules)
    current_names = set(rule.name for rule in current)
    kept = [by_name.get(rule.name, rule) for rule in current]
    return kept + [rule for rule in rules if rule.name not in current_names]


def desired_rules(state, current, config):
    """The owned ruleset ``state`` asks for, given the current owned rules; raises RuleError."""
    if state == "merged":
        rule_names(config)
        existing = dict((rule.name, rule) for rule in current)
        rules = [rule_from_params(merge_params(existing[params["name"]], params) if params["name"] in existing else params, index)
                 for index, params in enumerate(config)]
        return canonical_order(_put_in_place(current, rules))
    if state == "replaced":
        return canonical_order(_put_in_place(current, rules_from_config(config)))
    if state == "overridden":
        return canonical_order(rules_from_config(config))
    if state == "deleted":
        if not config:
            return []
        names = set(rule_names(config))
        return [rule for rule in current if rule.name not in names]
    raise ValueError("state %r has no desired ruleset" % state)


def in_scope(rule, scope):
    return not scope or rule.name.startswith(scope)


def check_scope(config, scope):
    """Raise RuleError for a config rule whose name lies outside ``scope``."""
    for index, params in enumerate(config):
        name = params.get("name") or ""
        if not name.startswith(scope):
            raise RuleError("config[%d] (name=%s): name: %r does not start with the scope %r" % (index, name, name, scope))


def splice_scope(current, scoped_desired, scope):
    """The whole owned ruleset with the rules of ``scope`` replaced by ``scoped_desired``.

    Other rules keep their order. In each chain the scope's rules go where its first rule
    was, or after the other rules when it had none there, so that several callers, each
    with its own scope, converge to a stable order whatever order they run in.
    """
    positions = {}
    for index, rule in enumerate(current):
        if in_scope(rule, scope):
            positions.setdefault((rule.family, rule.chain), index)
    others = [(index, 0, rule) for index, rule in enumerate(current) if not in_scope(rule, scope)]
    placed = [(positions.get((rule.family, rule.chain), len(current)), -1, rule) for rule in scoped_desired]
    merged = sorted(others + placed, key=lambda item: item[:2])
    return canonical_order([rule for dummy_index, dummy_tie, rule in merged])


def script_lines(transactions):
    """The scripts of ``transactions`` as one list of lines (the ``commands`` return value)."""
    return [line for transaction in transactions for line in transaction.text.splitlines()]


def describe_transactions(transactions):
    return [dict(family=transaction.family, argv=list(transaction.apply_argv), script=transaction.text)
            for transaction in transactions]


def _run_transactions(run_command, transactions, argv_field, what):
    for transaction in transactions:
        argv = list(getattr(transaction, argv_field))
        rc, dummy, err = run_command(argv, data=transaction.text)
        if rc != 0:
            raise NatRulesError("%s of the %s ruleset failed (rc=%s) running %s: %s"
                                % (what, transaction.family, rc, " ".join(argv), err.strip()))


def read_host(backend, run_command):
    """HostState of the owned objects, from the backend's read-only list commands."""
    outputs = {}
    for family, argv in backend.list_commands():
        rc, out, err = run_command(list(argv))
        if rc != 0 and not backend.listing_absent(err):
            raise NatRulesError("reading the %s ruleset failed (rc=%s) running %s: %s" % (family, rc, " ".join(argv), err.strip()))
        outputs[family] = out if rc == 0 else None
    return backend.parse(outputs)


def host_drift(host):
    """What the backend would rewrite although the rules compare equal (hand edits, missing jumps)."""
    return list(host.facts.get("unrecognized", []))


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


def persist_files(backend, desired, persist_path):
    """{path: text}: the owned ruleset as files that restore it on a host without it.

    nft: one file for both families, for ``include`` in /etc/nftables.conf. iptables: the IPv4
    file at ``persist_path`` and the IPv6 file at ``persist_path`` + "6", for
    ``iptables-restore --noflush`` / ``ip6tables-restore --noflush`` at boot.
    """
    kind = "nft" if backend.name == "nft" else "iptables"
    path = persist_path or DEFAULT_PERSIST_PATHS[kind]
    paths = dict((family, path) for family in FAMILIES) if kind == "nft" else {"ipv4": path, "ipv6": path + "6"}
    files = dict((file_path, PERSIST_HEADER) for file_path in paths.values())
    for transaction in backend.render(desired, HostState([], {})):
        files[paths[transaction.family]] += transaction.text
    return files


def _persist(backend, desired, persist_path, check_mode):
    """Paths whose content changed (written unless in check mode)."""
    changed = []
    for path, text in sorted(persist_files(backend, desired, persist_path).items()):
        if read_text(path) != text:
            changed.append(path)
            if not check_mode:
                write_file_atomic(path, text)
    return changed


def _as_params(rules):
    return [rule_to_params(rule) for rule in rules]


class NatRulesRun(object):
    """One module invocation.

    ``select_backend(requested)`` -> (NatBackend, reason) may run read-only commands (state
    ``auto`` detection); ``offline_backend(name)`` -> NatBackend must not (rendered, parsed).
    """

    def __init__(self, params, run_command, select_backend, offline_backend, check_mode=False, diff=False):
        self.params = params
        self.run_command = run_command
        self.select_backend = select_backend
        self.offline_backend = offline_backend
        self.check_mode = check_mode
        self.diff = diff

    def run(self):
        """The result dict; raises NatRulesError (bad input, failing command)."""
        state = self.params["state"]
        config = self.params.get("config") or []
        try:
            if state in OFFLINE_STATES:
                return self._offline(state, config)
            return self._online(state, config)
        except RuleError as error:
            raise NatRulesError(str(error))

    def _offline(self, state, config):
        requested = self.params["backend"]
        if requested == "auto":
            raise NatRulesError("backend: state %s works offline and needs an explicit backend (nft, iptables or iptables-legacy), not auto"
                                % state)
        backend = self.offline_backend(requested)
        result = dict(changed=False, backend=backend.name, backend_reason="requested")
        if state == "rendered":
            transactions = backend.render(canonical_order(rules_from_config(config)), HostState([], {}))
            result.update(rendered=script_lines(transactions), transactions=describe_transactions(transactions))
            return result
        running_config = self.params.get("running_config")
        if running_config is None:
            raise NatRulesError("running_config: is required with state parsed")
        host = backend.parse({running_config_family(running_config): running_config})
        result["parsed"] = _as_params(host.rules)
        drift = host_drift(host)
        if drift:
            result["drift"] = drift
        return result

    def _online(self, state, config):
        try:
            backend, reason = self.select_backend(self.params["backend"])
        except BackendUnavailable as error:
            raise NatRulesError(str(error))
        result = dict(changed=False, backend=backend.name, backend_reason=reason)
        scope = self.params.get("scope") or ""
        check_scope(config, scope)
        current = read_host(backend, self.run_command)
        if state == "gathered":
            result["gathered"] = _as_params([rule for rule in current.rules if in_scope(rule, scope)])
            return result
        current_rules = canonical_order(current.rules)
        scoped_current = [rule for rule in current_rules if in_scope(rule, scope)]
        desired = splice_scope(current_rules, desired_rules(state, scoped_current, config), scope)
        result.update(before=_as_params(scoped_current), commands=[], transactions=[])
        after = desired
        drift = host_drift(current)
        if drift:
            result["drift"] = drift
        if desired != current_rules or drift:
            transactions = backend.render(desired, current)
            result.update(changed=True, commands=script_lines(transactions), transactions=describe_transactions(transactions))
            try:
                # Every family validates before any applies, so a bad input changes nothing.
                _run_transactions(self.run_command, transactions, "check_argv", "validation")
                if not self.check_mode:
                    _run_transactions(self.run_command, transactions, "apply_argv", "applying")
            except NatRulesError as error:
                error.result = result
                raise
            if not self.check_mode:
                after = canonical_order(read_host(backend, self.run_command).rules)
                if after != desired:
                    result["warnings"] = ["the %s ruleset read back after applying differs from the desired rules; "
                                          "compare after with the config" % backend.name]
        result["after"] = _as_params([rule for rule in after if in_scope(rule, scope)])
        if self.params.get("persist"):
            try:
                result["persisted"] = _persist(backend, desired, self.params.get("persist_path"), self.check_mode)
            except SysctlError as error:
                raise NatRulesError(str(error), result)
            result["changed"] = result["changed"] or bool(result["persisted"])
        if self.diff:
            # Mappings, which the callbacks serialize into text before diffing.
            result["diff"] = dict(before=dict(rules=result["before"]), after=dict(rules=result["after"]))
        return result


def run_nat_rules(params, run_command, which, check_mode=False, diff=False):
    """The module's result for ``params`` on this host; raises NatRulesError.

    ``run_command(argv, data=None)`` -> (rc, stdout, stderr); ``which(name)`` -> path or None.
    """
    return NatRulesRun(params, run_command, lambda requested: select_backend(requested, run_command, which), offline_backend,
                       check_mode=check_mode, diff=diff).run()
