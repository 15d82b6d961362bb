# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The interface every ruleset backend implements, and the rule entry they all work on.

A backend compiles each NatRule once into a JSON-ready ``compiled`` form (its own: nft rule and
map-element texts, iptables lines) and renders transactions from lists of RuleEntry. Entries, not
rules, are what runs compare and what the run record keeps, so that rules unchanged since the
last run are neither validated nor compiled again: at tens of thousands of rules, building the
rule objects is what would cost most.

Backends run read-only commands only (``read``); applying a transaction is the caller's job.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections

from ansible_collections.nodenet.nat.plugins.module_utils.model.dicts import rule_from_record, rule_to_params
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import rule_from_params

# One transaction: ``text`` is fed on stdin to ``check_argv`` (validation, changes nothing) or to
# ``apply_argv``; ``families`` are those it changes. One transaction is atomic by itself.
Transaction = collections.namedtuple("Transaction", ["families", "text", "check_argv", "apply_argv"])

# What a backend found on the host: the owned rules as entries, plus backend facts the renderer
# needs (which owned tables, chains, jumps exist; ``unrecognized``: owned objects it did not write;
# ``stamp``: what identifies this state in a run record, or None).
HostState = collections.namedtuple("HostState", ["entries", "facts"])

# One rule: its identity and place (name, family, chain), the backend's ``compiled`` form, where
# it came from (``given``: the user's config item it was validated from, None when it was read from
# the host or merged) and its rule_to_params dict (``params``; a run record keeps only one of
# ``given`` and ``params``, so an entry read from a record may have None there).
RuleEntry = collections.namedtuple("RuleEntry", ["name", "family", "chain", "compiled", "given", "params"])


class BackendError(Exception):
    """A read-only command failed; the message names the command and what it printed."""


def run_listing(run_command, argv, what):
    """stdout of a read-only command; raises BackendError when it fails."""
    rc, out, err = run_command(list(argv))
    if rc != 0:
        raise BackendError("reading the %s failed (rc=%s) running %s: %s" % (what, rc, " ".join(argv), err.strip()))
    return out


def content(entry):
    """What makes two entries the same rule in the same place."""
    return entry.name, entry.family, entry.chain, entry.compiled


def entry_params(entry):
    """The user-facing dict (rule_to_params) of an entry."""
    if entry.params is not None:
        return entry.params
    return rule_to_params(rule_from_params(entry.given, 0))


def entry_rule(entry):
    """The NatRule of an entry."""
    if entry.params is not None:
        return rule_from_record(entry.params)
    return rule_from_params(entry.given, 0)


class NatBackend(object):
    """Abstract backend. ``name`` is one of nft, iptables (iptables-nft), iptables-legacy."""

    name = None

    def compile(self, rule):
        """The JSON-ready compiled form of one NatRule; raises RuleError for a rule it cannot write."""
        raise NotImplementedError

    def entry(self, rule, given=None):
        """The RuleEntry of ``rule``; ``given`` is the config item it was validated from (which then stands for its
        params, as in the run record: most entries of a big ruleset are never shown)."""
        return RuleEntry(rule.name, rule.family, rule.chain, self.compile(rule), given, rule_to_params(rule) if given is None else None)

    def read(self, run_command, counters=False):
        """HostState of every owned object, from read-only commands; ``facts["stamp"]`` is the stamp the host carries.

        ``counters``: with ``facts["counters"]`` {rule name: [packets, bytes]}. Raises BackendError.
        """
        raise NotImplementedError

    def recorded(self, run_command, record, deferred=False):
        """HostState of ``record``'s entries (``facts["from_record"]``) when the host still carries the stamp of
        the run that left it (run_record.RunRecord), else None: a read-only look that lists no owned rule.

        ``deferred``: a look that a change proves by itself may be left to ``stamp_carried`` (see there).
        Raises BackendError."""
        raise NotImplementedError

    def stamp_carried(self, run_command, host, changing):
        """Whether the host carries what ``host`` (from ``recorded(..., deferred=True)``) took on trust, but for the
        families ``changing``: a transaction that changes a family proves its stamp itself (it fails when the host
        does not carry it). Raises BackendError."""
        return True

    def parse(self, outputs):
        """HostState from {family: the text of one list command} (offline; state parsed)."""
        raise NotImplementedError

    def needs_full_read(self, desired, current):
        """Whether rendering ``desired`` needs what a read from the run record (``current``) does not hold."""
        return False

    def normalize(self, entries):
        """``entries`` (canonical order) in the order a read of the host gives them back."""
        return list(entries)

    def render(self, desired, current, token):
        """[Transaction] that makes the owned objects hold exactly the entries ``desired``.

        ``current`` is the HostState read before; ``token`` identifies this run (a backend may
        write it to the host as its stamp). An empty ``desired`` removes every owned object.
        """
        raise NotImplementedError

    def applied_stamp(self, current, desired, transactions, token):
        """The stamp of the host once ``transactions`` (rendered from ``current`` to ``desired`` with ``token``)
        applied, for the run record: known from what they write, without reading the host again."""
        raise NotImplementedError
