# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run record and the host lock of nat_rules.

One run at a time per host (network namespace): a run holds an exclusive ``flock`` on
``<dir>/lock`` from reading the host to writing the record, so two runs never compute from the
same state and both apply.

The record is what the last run that changed the owned rules left behind: its entries and the
stamp it put on the host (the token of the marker chain in the owned tables, or per family on
iptables). A run whose host still carries that stamp takes the recorded entries instead of
listing and parsing every owned rule, which is what makes a no-op or a one-rule change cheap at
tens of thousands of rules. Anything else (no record, another stamp, an unreadable file, another
format) falls back to reading the host in full.

A run that changes a few entries of a recorded ruleset writes a journal beside the record instead of
the whole record again (at 50 000 rules the record is 23 MB; writing it is a tenth of a second or
two): every name in order, the entries that differ from the record, the new stamp, and the id of
the record it applies to. A journal with another id (the record written again since) is not used.
Once the entries added, changed or removed since the record come to a JOURNAL_SHARE-th of its
entries, the record is written whole.

The directory is under /run: it goes away at boot, as the kernel's rules do. It is per network
namespace, so that runs against several namespaces of one machine (tests, containers sharing
/run) never share a record or a lock. The record is written with ``marshal`` (plain data only;
several times faster than JSON at tens of thousands of entries) in a directory only root can
write; a record this Python cannot read is simply not used.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import binascii
import collections
import errno
import fcntl
import marshal
import os
import time

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import RuleEntry
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import SysctlError, write_file_atomic

RECORD_ROOT = "/run/nodenet-nat"
# Bump when a backend's compiled form or the files' layout changes: records of another version are not used.
RECORD_VERSION = 3
LOCK_TIMEOUT = 300
# While fewer than one entry in JOURNAL_SHARE of the record differs (added, changed, removed since), a run writes the journal.
JOURNAL_SHARE = 8
_LOCK_POLL = 0.1

RunRecord = collections.namedtuple("RunRecord", ["stamp", "entries"])


def new_token():
    """A random token: one names a run (nft puts it in the owned tables' marker chain), one a record written whole."""
    return binascii.hexlify(os.urandom(8)).decode("ascii")


class RecordError(Exception):
    """The lock could not be taken, or the record directory not used; the message says why."""


def namespace_directory(root=RECORD_ROOT):
    """``root``/netns-<inode of this process's network namespace>."""
    try:
        inode = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return os.path.join(root, "default")
    return os.path.join(root, "netns-%d" % inode)


class RecordStore(object):
    """The lock and the records of one network namespace, in ``directory``."""

    def __init__(self, directory=None, lock_timeout=LOCK_TIMEOUT):
        self.directory = directory or namespace_directory()
        self.lock_timeout = lock_timeout
        self._lock_file = None
        # backend name -> (id, {name: RuleEntry}) of the record this store last loaded or wrote whole.
        self._records = {}

    def _path(self, backend_name, kind="record"):
        return os.path.join(self.directory, "%s.%s" % (backend_name, kind))

    def __enter__(self):
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._lock_file = open(os.path.join(self.directory, "lock"), "a")
        except OSError as error:
            raise RecordError("cannot use %s for the nat_rules lock: %s" % (self.directory, error.strerror))
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    self._release()
                    raise RecordError("another nat_rules run held %s for %d s; try again when it ended"
                                      % (os.path.join(self.directory, "lock"), self.lock_timeout))
                time.sleep(_LOCK_POLL)

    def __exit__(self, *exc_info):
        self._release()

    def _release(self):
        if self._lock_file is not None:
            self._lock_file.close()     # closing releases the flock
            self._lock_file = None

    def _read(self, backend_name, kind):
        with open(self._path(backend_name, kind), "rb") as handle:
            data = marshal.loads(handle.read())     # marshal.load reads a file in small pieces: 5 times slower
        if data.get("version") != RECORD_VERSION:
            raise ValueError("record version %r" % data.get("version"))
        return data

    def load(self, backend_name):
        """The RunRecord of ``backend_name``, or None (missing, unreadable, another version)."""
        self._records.pop(backend_name, None)
        try:
            data = self._read(backend_name, "record")
            entries = [RuleEntry(*fields) for fields in data["entries"]]
            by_name = dict((entry.name, entry) for entry in entries)
            self._records[backend_name] = (data["id"], by_name)
        except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
            return None
        try:
            journal = self._read(backend_name, "journal")
        except (OSError, ValueError, EOFError, AttributeError):
            journal = None
        if journal is None or journal.get("record") != data["id"]:
            return RunRecord(data["stamp"], entries)
        try:
            changed = dict((fields[0], RuleEntry(*fields)) for fields in journal["entries"])
            return RunRecord(journal["stamp"], [changed.get(name) or by_name[name] for name in journal["names"]])
        except (KeyError, TypeError):
            return None

    def save(self, backend_name, stamp, entries):
        """Record ``entries`` and ``stamp`` atomically: in the journal when few entries differ from the record
        loaded (or written) last, else whole. A failure only costs the next run a full read."""
        record_id, by_name = self._records.get(backend_name, (None, {}))
        changed = [entry for entry in entries if by_name.get(entry.name) is not entry]
        # Entries new or changed since the record, and the record's entries gone since: what a journal would
        # carry, or what a load would read for nothing.
        differences = len(changed) + len(by_name) - sum(1 for entry in entries if entry.name in by_name)
        try:
            if record_id is not None and differences * JOURNAL_SHARE < len(by_name):
                journal = dict(version=RECORD_VERSION, record=record_id, stamp=stamp,
                               names=[entry.name for entry in entries], entries=[_fields(entry) for entry in changed])
                write_file_atomic(self._path(backend_name, "journal"), marshal.dumps(journal, 4), mode=0o600)
                return
            record_id = new_token()
            data = dict(version=RECORD_VERSION, id=record_id, stamp=stamp, entries=[_fields(entry) for entry in entries])
            write_file_atomic(self._path(backend_name), marshal.dumps(data, 4), mode=0o600)
            self._remove(backend_name, "journal")
            self._records[backend_name] = (record_id, dict((entry.name, entry) for entry in entries))
        except (SysctlError, ValueError):
            self.forget(backend_name)

    def forget(self, backend_name):
        self._records.pop(backend_name, None)
        self._remove(backend_name, "record")
        self._remove(backend_name, "journal")

    def _remove(self, backend_name, kind):
        try:
            os.unlink(self._path(backend_name, kind))
        except OSError:
            pass


def _fields(entry):
    """What the record keeps of an entry: one validated from a config item keeps only that item (params follow from it)."""
    return entry[:4] + (entry.given, None) if entry.given is not None else tuple(entry)
