# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run record's files: a record written whole, a journal beside it for small changes, and what a later run
(another RecordStore, as another module process) loads from them."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import marshal
import os
import shutil

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import RuleEntry
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import JOURNAL_SHARE, RecordStore


def _entry(index, port=80):
    given = dict(name="svc-%d" % index, type="dnat", destination_type="local", protocol="tcp",
                 destination_ports=[30000 + index], to_destination=["10.244.1.%d:%d" % (index % 250, port)])
    return RuleEntry(given["name"], "ipv4", "prerouting", ["-p tcp --dport %d -j DNAT %d" % (30000 + index, port)], given, None)


def _entries(count):
    return [_entry(index) for index in range(count)]


def _files(directory):
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def _next_run(directory):
    """A new run: a store that knows nothing but the files, and what it loads."""
    store = RecordStore(directory)
    return store, store.load("nft")


def _changed(record, indexes, port=8080):
    """The record's entries with those at ``indexes`` replaced (new objects, as a run validates changed items)."""
    return [_entry(index, port) if position in indexes else entry for position, entry in enumerate(record.entries)
            for index in [int(entry.name.split("-")[1])]]


def _journaled(directory):
    """A record of 40 entries (stamp-1), then a run that changed one of them into the journal (stamp-2)."""
    RecordStore(directory).save("nft", "stamp-1", _entries(40))
    store, record = _next_run(directory)
    store.save("nft", "stamp-2", _changed(record, [3]))
    return store


def test_a_small_change_goes_to_the_journal_and_the_next_run_loads_it(tmp_path):
    directory = str(tmp_path)
    RecordStore(directory).save("nft", "stamp-1", _entries(100))
    record_bytes = open(os.path.join(directory, "nft.record"), "rb").read()
    store, record = _next_run(directory)
    changed = _changed(record, [5])
    del changed[7]
    changed.append(_entry(100))
    store.save("nft", "stamp-2", changed)
    assert _files(directory) == ["nft.journal", "nft.record"]
    assert open(os.path.join(directory, "nft.record"), "rb").read() == record_bytes
    dummy, loaded = _next_run(directory)
    assert loaded.stamp == "stamp-2"
    assert loaded.entries == changed
    assert [entry.name for entry in loaded.entries][-2:] == ["svc-99", "svc-100"]


def test_journal_keeps_every_change_since_the_record_until_it_is_written_whole(tmp_path):
    """Run r has changed r entries since the record: journals while r is under an eighth of the record; then the
    record is written whole, and the next change goes to a journal of that record."""
    directory = str(tmp_path)
    count = 10 * JOURNAL_SHARE
    RecordStore(directory).save("nft", "stamp-0", _entries(count))
    expected = _entries(count)
    for run in range(1, count // JOURNAL_SHARE + 2):
        store, record = _next_run(directory)
        assert record == ("stamp-%d" % (run - 1), expected)
        expected = _changed(record, [run])
        store.save("nft", "stamp-%d" % run, expected)
        in_journal = run * JOURNAL_SHARE < count or run > count // JOURNAL_SHARE
        assert _files(directory) == (["nft.journal", "nft.record"] if in_journal else ["nft.record"]), run
    assert _next_run(directory)[1] == ("stamp-%d" % run, expected)


def test_journal_of_another_record_is_not_used(tmp_path):
    """A run that wrote the record whole and stopped before removing the old journal leaves that journal
    naming another record: the record alone is loaded."""
    directory = str(tmp_path)
    _journaled(directory)
    shutil.copy(os.path.join(directory, "nft.journal"), str(tmp_path / "old-journal"))
    RecordStore(directory).save("nft", "stamp-3", _entries(20))
    shutil.copy(str(tmp_path / "old-journal"), os.path.join(directory, "nft.journal"))
    dummy, loaded = _next_run(directory)
    assert (loaded.stamp, loaded.entries) == ("stamp-3", _entries(20))


@pytest.mark.parametrize("damage", ["truncated", "not a dict"])
def test_unreadable_journal_gives_the_record_and_its_own_stamp(tmp_path, damage):
    """Never a mixture: the record's stamp is older than the host's, so the run reads the host in full."""
    directory = str(tmp_path)
    _journaled(directory)
    journal = os.path.join(directory, "nft.journal")
    with open(journal, "rb") as handle:
        data = handle.read()
    with open(journal, "wb") as handle:
        handle.write(data[:len(data) // 2] if damage == "truncated" else marshal.dumps(["stamp-2"], 4))
    dummy, loaded = _next_run(directory)
    assert (loaded.stamp, loaded.entries) == ("stamp-1", _entries(40))


def test_a_run_from_a_full_read_writes_the_record_whole(tmp_path):
    """Entries that are not the loaded record's own (a full read of the host) are all new to it."""
    directory = str(tmp_path)
    RecordStore(directory).save("nft", "stamp-1", _entries(40))
    store, dummy = _next_run(directory)
    store.save("nft", "stamp-2", _entries(40))
    assert _files(directory) == ["nft.record"]
    assert _next_run(directory)[1].stamp == "stamp-2"


def test_forget_removes_record_and_journal(tmp_path):
    directory = str(tmp_path)
    _journaled(directory).forget("nft")
    assert _files(directory) == []
    assert _next_run(directory)[1] is None


def test_a_change_that_removes_most_rules_writes_the_record_whole(tmp_path):
    """A small journal over a big record would make every later run load the big record for nothing."""
    directory = str(tmp_path)
    RecordStore(directory).save("nft", "stamp-1", _entries(80))
    store, record = _next_run(directory)
    store.save("nft", "stamp-2", record.entries[:2])
    assert _files(directory) == ["nft.record"]
    assert _next_run(directory)[1] == ("stamp-2", record.entries[:2])
