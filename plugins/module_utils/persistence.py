# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Persistence of the owned ruleset (``nat_rules`` with ``persist``): files that restore it on a host without it."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import read_text, write_file_atomic

# Where ``persist`` writes the owned ruleset when ``persist_path`` is not given.
DEFAULT_PERSIST_PATHS = {"nft": "/etc/nftables.d/nodenet-nat.nft", "iptables": "/etc/iptables/nodenet-nat.rules"}
PERSIST_HEADER = "# Managed by nodenet.nat.nat_rules (owned NAT rules only); changes here are overwritten.\n"


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
    for transaction in backend.render(desired, HostState([], {}), None):
        files[paths[transaction.families[0]]] += transaction.text
    return files


def persist(backend, desired, persist_path, check_mode):
    """Paths whose content changed (written unless in check mode)."""
    changed = []
    for path, text in sorted(persist_files(backend, desired, persist_path).items()):
        if read_text(path) != text:
            changed.append(path)
            if not check_mode:
                write_file_atomic(path, text)
    return changed
