"""The registry of explicit algorithms: what each one runs, where it applies and what it costs.

Every explicit algorithm registers itself here with :func:`register_algorithm`:

* ``run(net, rec, penalty, y) -> (R, gradients, backward passes)`` — the
  algorithm on a recorded forward pass;
* ``applies(net, penalty) -> bool`` (default: everywhere) and, optionally,
  ``why_not(net, penalty) -> str | None`` for the error message;
* ``cost(net, penalty, batch) -> Estimate`` — the prediction the planner
  (:mod:`dbpaper.planning`) ranks the candidates of ``algorithm="auto"`` by.

The planner reads this registry; nothing here reads the planner. An
algorithm registered by a user with a ``cost`` takes part in ``"auto"``;
without one it runs only when named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["ALGORITHMS", "CALL_OVERHEAD_S", "FLOP_RATE", "REGISTRY", "AlgorithmSpec", "Estimate", "register_algorithm"]

#: Sustained floating-point operations per second of operator evaluations (float32, one CPU core).
FLOP_RATE = 5e10

#: Seconds of dispatch overhead per tensor operation (Python, the dispatcher, a small kernel).
CALL_OVERHEAD_S = 1e-5


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Predicted cost of one evaluation of ``R`` and its parameter gradients."""

    flops: int
    calls: int

    @property
    def seconds(self) -> float:
        """``flops / FLOP_RATE + calls * CALL_OVERHEAD_S``."""
        return self.flops / FLOP_RATE + self.calls * CALL_OVERHEAD_S


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """One registered algorithm (see the module docstring)."""

    name: str
    run: Callable
    applies: Callable | None = None
    why_not: Callable | None = None
    cost: Callable | None = None

    def applies_to(self, net, penalty) -> bool:
        """Whether the algorithm can compute ``penalty`` on ``net``."""
        return self.applies is None or bool(self.applies(net, penalty))

    def reason(self, net, penalty) -> str:
        """Why it does not apply (for the error message)."""
        if self.why_not is not None:
            why = self.why_not(net, penalty)
            if why:
                return why
        return f"{penalty!r} on this network"


#: name -> specification, in registration order (``"auto"`` breaks ties by this order)
REGISTRY: dict[str, AlgorithmSpec] = {}

#: name -> implementation ``(net, rec, penalty, y) -> (R, gradients, backward passes)``
ALGORITHMS: dict[str, Callable] = {}


def register_algorithm(
    name: str,
    fn: Callable,
    *,
    applies: Callable | None = None,
    cost: Callable | None = None,
    why_not: Callable | None = None,
) -> None:
    """Register an explicit algorithm under ``name``.

    Parameters
    ----------
    name : str
        The name ``algorithm=`` selects it by.
    fn : callable
        ``fn(net, rec, penalty, y) -> (R, gradients, backward passes)``.
    applies : callable, optional
        ``applies(net, penalty) -> bool``; default: it applies everywhere.
    cost : callable, optional
        ``cost(net, penalty, batch) -> Estimate``; with it, ``"auto"`` and
        :func:`dbpaper.plan` consider the algorithm, without it it runs only when named.
    why_not : callable, optional
        ``why_not(net, penalty) -> str | None``: the reason it does not apply.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an algorithm's name must be a non-empty string, got {name!r}")
    if name in ("auto", "autograd"):
        raise ValueError(f"{name!r} is reserved by the entry points")
    if not callable(fn):
        raise TypeError(f"the algorithm {name!r} must be callable, got {type(fn).__name__}")
    REGISTRY[name] = AlgorithmSpec(name, fn, applies, why_not, cost)
    ALGORITHMS[name] = fn
