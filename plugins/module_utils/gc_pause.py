# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pausing Python's cyclic garbage collector around work that builds many acyclic objects."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector: each automatic collection walks every live object, so work that
    builds hundreds of thousands of them (a run at 50k rules; ansible parsing every module_utils file to
    build a module, inside a worker that holds the play's variables) spends most of its time in them.
    Reference counting still frees all but reference cycles, which a later collection finds.

    When the pause ends, what the work built goes to the oldest generation (freeze, then unfreeze): left in the
    youngest, the first collection after the pause would walk all of it (0.16 s of a 1.1 s run at 50k rules) to
    free next to nothing; in the oldest it is walked only by a full collection, as any long-lived data is."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()
