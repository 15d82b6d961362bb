# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Persistence of the owned ruleset (``nat_rules`` with ``persist``): files that restore it at boot.

The WHOLE owned ruleset (every scope) is rendered as a host without owned objects needs it, and
written to owned files that ``nodenet-nat-restore`` (installed with ``nodenet-nat.service`` by the
roles, see roles/persist) loads at boot:

- nft: one file for both families. Each table with rules is ``add table`` + ``delete table`` + the
  table, so loading the file again replaces the tables with the same content. The tables carry a
  marker chain named after a digest of the rules: the first run after a boot records that stamp,
  and the runs after it take the run record instead of listing every element (backends/nft).
- iptables: one iptables-restore script per family (IPv6: the path followed by ``6``), for
  ``--noflush``. It declares the owned chains (which flushes them) and inserts one jump per
  built-in chain; loading it again as it is would add a second jump, so the loader first deletes
  the jumps to ``NODENET-*`` chains in the same transaction.

The second line of every file names what loads it (``# nodenet-nat-restore: nft``, or the restore
and save tools of the iptables variant and family in use), since the variant cannot be told from
an iptables-restore script.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState, content
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import read_text, write_file_atomic

# Where ``persist`` writes the owned ruleset when ``persist_path`` is not given.
DEFAULT_PERSIST_PATHS = {"nft": "/etc/nftables.d/nodenet-nat.nft", "iptables": "/etc/iptables/nodenet-nat.rules"}
PERSIST_HEADER = "# Managed by nodenet.nat.nat_rules (owned NAT rules only); changes here are overwritten.\n"
# The line nodenet-nat-restore reads (roles/persist/files/nodenet-nat-restore.sh).
LOADER_LINE = "# nodenet-nat-restore: %s\n"


def persist_paths(backend, persist_path=None):
    """{family: path} of the files of ``backend`` (nft: one path for both families)."""
    if backend.name == "nft":
        return dict((family, persist_path or DEFAULT_PERSIST_PATHS["nft"]) for family in FAMILIES)
    path = persist_path or DEFAULT_PERSIST_PATHS["iptables"]
    return {"ipv4": path, "ipv6": path + "6"}


def loader(backend, family):
    """What loads the file of ``family``: ``nft``, or the restore and save tools of the iptables variant in use
    (as the backend found them: suffixed or plain names). A backend with neither gets its name, which the loader
    refuses with a message."""
    if backend.name == "nft":
        return "nft"
    tools = getattr(backend, "binaries", {}).get(family)
    if tools is None:
        return backend.name
    save, restore = tools
    return "%s %s" % (restore, save)


def state_token(desired):
    """A digest of the rules, the token of the nft marker chain in the files (the same rules give the same token)."""
    text = json.dumps([content(entry) for entry in desired], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def persist_files(backend, desired, persist_path=None):
    """{path: text}: the owned ruleset ``desired`` (entries) as files that restore it on a host without it."""
    paths = persist_paths(backend, persist_path)
    files = dict((paths[family], PERSIST_HEADER + LOADER_LINE % loader(backend, family)) for family in FAMILIES)
    for transaction in backend.render(desired, HostState([], {}), state_token(desired)):
        files[paths[transaction.families[0]]] += transaction.text
    return files


def persist(backend, desired, persist_path, check_mode):
    """The paths whose content differs from ``desired``'s files; written unless ``check_mode``. Raises SysctlError."""
    changed = []
    for path, text in sorted(persist_files(backend, desired, persist_path).items()):
        if read_text(path) != text:
            changed.append(path)
            if not check_mode:
                write_file_atomic(path, text)
    return changed
