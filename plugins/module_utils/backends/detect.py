# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Choose the ruleset backend of a host.

``auto`` follows kubernetes-sigs/iptables-wrappers: the backend that already holds rules
wins, so this collection never writes NAT rules into a netfilter front end the rest of the
host does not use. A backend that already holds objects this collection owns is kept, so
the choice is stable from one run to the next.

Only read-only commands run here. Legacy tables are listed without ``-t`` because
``iptables-legacy-save -t TABLE`` would create that table in the kernel.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import functools
import re

from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import (
    CHAIN_PREFIX, TOOL_PREFIXES, VARIANT_OF_BACKEND, VARIANTS, IptablesBackend,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import TABLE as NFT_TABLE, NftBackend, list_chains_argv, owned_tables

BACKEND_CHOICES = ("auto", "nft", "iptables", "iptables-legacy")
# Chains kubelet (1.17+) creates in the mangle table of the iptables front end it uses.
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
_VERSION_VARIANT = re.compile(r"\((nf_tables|legacy)\)")


# One backend auto may pick: make() builds it; owned_objects names what this collection keeps there.
_Choice = collections.namedtuple("_Choice", ["name", "installed", "owned", "make", "owned_objects"])


class BackendUnavailable(Exception):
    """No usable backend: the message says which binaries are missing."""


def _save_commands(variant, which, run_command):
    """{family: (save, restore)} paths of one iptables variant, or None when a binary is missing.

    Debian, Fedora and Alpine install suffixed names (iptables-nft-save); hosts with only one
    variant may have just the plain names, which count when ``--version`` names that variant
    (iptables before 1.8 prints no variant and is always legacy).
    """
    paths = {}
    for family, prefix in TOOL_PREFIXES.items():
        tools = []
        for tool in ("save", "restore"):
            path = which("%s-%s-%s" % (prefix, variant, tool)) or _plain_binary("%s-%s" % (prefix, tool), variant, which, run_command)
            if path is None:
                return None
            tools.append(path)
        paths[family] = tuple(tools)
    return paths


def _plain_binary(name, variant, which, run_command):
    path = which(name)
    if path is None:
        return None
    rc, out, err = run_command([path, "--version"])
    if rc != 0:
        return None
    match = _VERSION_VARIANT.search(out + err)
    found = match.group(1) if match else "legacy"
    return path if found == {"nft": "nf_tables", "legacy": "legacy"}[variant] else None


class _XtablesListing(object):
    """What ``*tables-save`` (all tables, both families) of one variant shows."""

    def __init__(self, variant, binaries, run_command):
        self.variant = variant
        self.binaries = binaries
        text = ""
        if binaries is not None:
            for save, dummy in binaries.values():
                rc, out, dummy = run_command([save])
                if rc == 0:
                    text += out
        lines = text.splitlines()
        self.rule_count = sum(1 for line in lines if line.startswith("-A "))
        self.chains = set(line[1:].split()[0] for line in lines if line.startswith(":") and len(line) > 1)
        self.owned = any(chain.startswith(CHAIN_PREFIX) for chain in self.chains)
        self.hint = sorted(self.chains.intersection(KUBELET_HINT_CHAINS))

    def backend(self, nft=None):
        return IptablesBackend(self.variant, binaries=self.binaries, nft=nft)


def _nft_owned(nft, run_command):
    """Whether nft holds the owned tables, as the nft backend reads them: tables with chains (see list_chains_argv)."""
    rc, out, dummy = run_command(list_chains_argv(nft))
    return rc == 0 and bool(owned_tables(out))


def xtables_listings(which, run_command):
    """{variant: _XtablesListing} of both iptables variants (every table, both families)."""
    return dict((variant, _XtablesListing(variant, _save_commands(variant, which, run_command), run_command))
                for variant in VARIANTS)


def mixed_backends(listings):
    """Rule counts of legacy and nft iptables in ``listings`` (xtables_listings); ``mixed`` is true when both hold rules.

    Two front ends holding rules at once is a classic cause of "the rule is there but
    does nothing": each tool lists only its own.
    """
    legacy, nft = listings["legacy"].rule_count, listings["nft"].rule_count
    return {"legacy_rules": legacy, "nft_rules": nft, "mixed": legacy > 0 and nft > 0}


def select_backend(requested, run_command, which, listings=None):
    """(NatBackend, reason) for ``requested`` (one of BACKEND_CHOICES); raises BackendUnavailable.

    ``auto`` reads both iptables variants; a caller that already has their ``listings`` passes them.
    """
    if requested not in BACKEND_CHOICES:
        raise BackendUnavailable("backend: %r is not one of %s" % (requested, ", ".join(BACKEND_CHOICES)))
    nft = which("nft")
    if requested == "nft":
        if nft is None:
            raise BackendUnavailable("backend: nft was requested but the nft binary is not installed")
        return NftBackend(), "requested"
    if requested != "auto":
        variant = VARIANT_OF_BACKEND[requested]
        binaries = _save_commands(variant, which, run_command)
        if binaries is None:
            raise BackendUnavailable("backend: %s was requested but its save/restore binaries (iptables and ip6tables) are not installed"
                                     % requested)
        return IptablesBackend(variant, binaries=binaries, nft=nft), "requested"
    return _auto(listings or xtables_listings(which, run_command), nft, run_command)


def _auto(listings, nft, run_command):
    legacy, xnft = listings["legacy"], listings["nft"]
    counts = "legacy iptables holds %d rules, iptables-nft %d" % (legacy.rule_count, xnft.rule_count)
    nft_choice = _Choice("nft", nft is not None, nft is not None and _nft_owned(nft, run_command), NftBackend,
                         "table %s" % NFT_TABLE)
    legacy_choice, xnft_choice = [_Choice(VARIANTS[listing.variant], listing.binaries is not None, listing.owned,
                                          functools.partial(listing.backend, nft), "%s* chains" % CHAIN_PREFIX)
                                  for listing in (legacy, xnft)]
    # Choices in order of preference, each with its reason.
    preferred = []
    if legacy.rule_count > xnft.rule_count:
        preferred.append((legacy_choice, counts))
    if xnft.hint:
        preferred.append((xnft_choice, "kubelet chain %s found in iptables-nft" % xnft.hint[0]))
    if legacy.hint:
        preferred.append((legacy_choice, "kubelet chain %s found in legacy iptables" % legacy.hint[0]))
    preferred.append((nft_choice, "nft is installed and neither legacy iptables rules nor kubelet chains call for iptables (%s)" % counts))
    preferred.append((xnft_choice, "nft binary missing; iptables-nft is installed"))
    preferred.append((legacy_choice, "neither nft nor iptables-nft is installed"))
    installed = [(choice, reason) for choice, reason in preferred if choice.installed]
    if not installed:
        raise BackendUnavailable("backend: auto found no usable backend: install nft (nftables) or iptables")
    for choice, dummy in installed:
        if choice.owned:
            return choice.make(), "%s already holds this collection's %s; kept it (%s)" % (choice.name, choice.owned_objects, counts)
    choice, reason = installed[0]
    return choice.make(), reason
