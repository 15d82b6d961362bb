"""Make the collection importable as ansible_collections.nodenet.nat for plain pytest runs."""
import os
import sys

_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
_ROOT = os.path.join(_REPO, ".collections")
_LINK = os.path.join(_ROOT, "ansible_collections", "nodenet", "nat")

if not os.path.lexists(_LINK):
    os.makedirs(os.path.dirname(_LINK), exist_ok=True)
    os.symlink(_REPO, _LINK)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
