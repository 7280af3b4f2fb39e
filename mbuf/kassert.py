"""Always-on kernel assertions (the model's KASSERT).

Theory of operation. `kassert` checks an invariant and `kpanic` stops at a
broken one, both with a message formatted as the kernel's; either raises
`KernelAssertion`.

Deliberate differences: the kernel compiles KASSERT out of production builds;
the model never does, because the whole point of the model is to show the
invariants hold.
"""

from __future__ import annotations

from typing import NoReturn

from mypy_extensions import mypyc_attr


# mypyc compiles no native subclass of AssertionError: an ordinary Python class.
@mypyc_attr(native_class=False)
class KernelAssertion(AssertionError):
    """An invariant of the modeled kernel was violated (a bug, never bad input)."""


def kassert(cond: object, fmt: str, *args: object) -> None:
    """KASSERT(cond, (fmt, args...)): the message is formatted only on failure,
    so an assertion on the hot path costs one test and a call."""
    if not cond:
        raise KernelAssertion(fmt % args if args else fmt)


def kpanic(fmt: str, *args: object) -> NoReturn:
    """panic(9) for a broken invariant, for hot paths that test the condition
    inline (`if bad: kpanic(...)`) so that nothing is called when it holds."""
    raise KernelAssertion(fmt % args if args else fmt)
