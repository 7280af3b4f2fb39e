"""Always-on kernel assertions (the model's KASSERT).

The kernel compiles KASSERT out of production builds; the model never does,
because the whole point of the model is to show the invariants hold.
"""

from __future__ import annotations


class KernelAssertion(AssertionError):
    """An invariant of the modeled kernel was violated (a bug, never bad input)."""


def kassert(cond: object, msg: str) -> None:
    if not cond:
        raise KernelAssertion(msg)
