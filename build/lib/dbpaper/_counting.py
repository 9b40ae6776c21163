"""Instrumentation behind :func:`dbpaper.count_operations` (Section 5).

The operators call :func:`record` on every public evaluation; outside a
:func:`count` context this is a single attribute lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["count", "record"]

_active: list[dict[str, int]] = []


def record(kind: str) -> None:
    """Add one evaluation of ``kind`` to every active counter."""
    for counter in _active:
        counter[kind] += 1


@contextlib.contextmanager
def count() -> Iterator[dict[str, int]]:
    """Count operator evaluations inside the block.

    Yields a dict with the keys ``apply`` (K), ``transpose`` (K^T) and
    ``weight_adjoint`` (K^box); nested contexts all count.
    """
    counter = {"apply": 0, "transpose": 0, "weight_adjoint": 0}
    _active.append(counter)
    try:
        yield counter
    finally:
        for i, c in enumerate(_active):  # by identity: equal dicts are distinct counters
            if c is counter:
                del _active[i]
                break
