# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The interface every ruleset backend implements.

Backends are pure: they turn a list of NatRule into the text of one transaction per
family and parse the host's listing back into NatRule. Running commands is the caller's job,
so everything here is unit-testable offline.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections

# One transaction: ``text`` is fed on stdin to ``check_argv`` (validation, changes nothing)
# and then to ``apply_argv``.
Transaction = collections.namedtuple("Transaction", ["family", "text", "check_argv", "apply_argv"])

# What a backend found on the host: the owned rules plus backend facts the renderer needs
# (for iptables: which owned chains and jump rules exist; for nft: which owned tables exist).
HostState = collections.namedtuple("HostState", ["rules", "facts"])


class NatBackend(object):
    """Abstract backend. ``name`` is one of nft, iptables (iptables-nft), iptables-legacy."""

    name = None

    def list_commands(self):
        """[(family, argv)]: commands whose stdout ``parse`` reads (read-only)."""
        raise NotImplementedError

    def listing_absent(self, err):
        """Whether a failed list command means "nothing owned here" rather than an error."""
        return False

    def parse(self, outputs):
        """HostState from {family: stdout of the list command, or None when listing_absent}.

        Foreign objects are ignored.
        """
        raise NotImplementedError

    def render(self, rules, current):
        """[Transaction] that makes the owned objects hold exactly ``rules`` given HostState ``current``.

        An empty ``rules`` removes every owned object. Families with nothing owned before or after
        produce no transaction.
        """
        raise NotImplementedError
