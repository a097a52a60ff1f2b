"""What a shard its writer closed holds for good, kept per file identity: a reopened shard reads it once."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

# A reader keeps 64 shards open at most; diagnosis and the dashboard pass over 256 ranks several times, so each
# pass reopens them. Of a closed, unchanged file (its identity: inode, size, times) the facts below never change:
# that it was closed, its scalar names, and each table's step column and measured flags.
BYTES_KEPT = 32 * 2**20  # what diagnosis reads of 256 shards of 1000 rows, twice over; least recently used go first

_FACTS: OrderedDict[tuple, dict] = OrderedDict()  # identity -> {fact name: value}, most recently used last
_held = 0


def _size(value) -> int:
    if isinstance(value, tuple):
        return sum(_size(v) for v in value)
    return value.nbytes if isinstance(value, np.ndarray) else 64


def known(key: tuple, name) -> object | None:
    """A fact of the closed file with this identity, or None (never kept, or forgotten)."""
    facts = _FACTS.get(key)
    if facts is None:
        return None
    _FACTS.move_to_end(key)
    return facts.get(name)


def keep(key: tuple, name, value) -> None:
    """Keep a fact of a file its writer had closed (the caller knows it was closed at this identity)."""
    global _held
    facts = _FACTS.setdefault(key, {})
    _FACTS.move_to_end(key)
    if name in facts:
        return
    facts[name] = value
    _held += _size(value)
    while _held > BYTES_KEPT and len(_FACTS) > 1:
        _, dropped = _FACTS.popitem(last=False)
        _held -= sum(_size(v) for v in dropped.values())


def forget_all() -> None:
    global _held
    _FACTS.clear()
    _held = 0
