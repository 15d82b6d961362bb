# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gc_paused: no collection during the work, and what the work built is handed to the oldest generation after it."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import gc

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils.gc_pause import gc_paused

OLDEST = 2


@pytest.fixture
def collector_enabled():
    enabled = gc.isenabled()
    gc.enable()
    yield
    if not enabled:
        gc.disable()


def _in_generation(thing, generation):
    return any(candidate is thing for candidate in gc.get_objects(generation=generation))


@pytest.mark.usefixtures("collector_enabled")
def test_built_objects_are_long_lived_after_the_pause():
    with gc_paused():
        assert not gc.isenabled()
        built = [{"name": "svc-%d" % index} for index in range(50000)]
    assert gc.isenabled()
    # The youngest generation starts empty: the next young collection does not walk what was built.
    assert gc.get_count()[0] < 100
    assert _in_generation(built, OLDEST)
    assert not _in_generation(built, 0)


@pytest.mark.usefixtures("collector_enabled")
def test_cycles_built_during_the_pause_are_still_collected():
    class Node(object):
        pass

    with gc_paused():
        node = Node()
        node.self = node
        del node
    assert gc.collect() >= 1


def test_a_paused_collector_stays_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        if enabled:
            gc.enable()
