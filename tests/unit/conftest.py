"""Make the collection importable as ansible_collections.nodenet.nat for plain pytest runs."""
import os
import sys

import pytest

_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
_ROOT = os.path.join(_REPO, ".collections")
_LINK = os.path.join(_ROOT, "ansible_collections", "nodenet", "nat")

if not os.path.lexists(_LINK):
    os.makedirs(os.path.dirname(_LINK), exist_ok=True)
    os.symlink(_REPO, _LINK)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
# The tests' own helpers (support.py) import as a top-level module.
if os.path.dirname(__file__) not in sys.path:
    sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def deny_write(monkeypatch):
    """deny_write(PATH): os.access refuses writing PATH, as /proc/sys answers for a read-only key
    (root bypasses file modes on a plain tmp dir)."""
    denied = set()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.abspath(path) in denied and mode & os.W_OK else real_access(path, mode)))
    return lambda path: denied.add(os.path.abspath(path))


@pytest.fixture
def netns():
    """A support.Netns, removed when the test ends; the test is skipped where none can be made (not root)."""
    from support import Netns, can_make_netns
    if not can_make_netns():
        pytest.skip("needs root, unshare and nsenter to create a network namespace")
    with Netns() as namespace:
        yield namespace
