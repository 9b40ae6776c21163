"""The registry of explicit algorithms: what each one runs, where it applies and what it costs.

Every explicit algorithm registers itself here with :func:`register_algorithm`,
and declares

* ``run(net, rec, penalty, y) -> (R, gradients, backward passes)`` — the
  algorithm on a recorded forward pass (with ``folds_loss``, it also takes
  ``scale=λ`` and ``extra_eta_L=∇_{z_L} ℓ`` and returns the gradients of
  ``ℓ + λR`` from the same pass, Section 4.5);
* ``why_not(net, penalty) -> str | None`` — why it does not apply (``None``: it applies);
* ``cost(net, penalty, batch) -> Estimate`` — the prediction the planner
  (:mod:`dbpaper.planning`) ranks the candidates of ``algorithm="auto"`` by;
* optionally ``describe(net, penalty, batch) -> dict`` — the settings it would
  run with (chunk size, shortcuts), which :func:`dbpaper.plan` shows.

The planner reads this registry; nothing here reads the planner. Every
registered algorithm, a user's included, is a candidate of ``"auto"``, is
shown by :func:`dbpaper.plan` and runs when named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["ALGORITHMS", "CALL_OVERHEAD_S", "FLOP_RATE", "REGISTRY", "AlgorithmSpec", "Estimate", "applies_everywhere", "register_algorithm"]

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
    why_not: Callable
    cost: Callable
    describe: Callable | None = None
    folds_loss: bool = False

    def applies_to(self, net, penalty) -> bool:
        """Whether the algorithm can compute ``penalty`` on ``net``."""
        return self.why_not(net, penalty) is None

    def reason(self, net, penalty) -> str:
        """Why it does not apply (for the error message)."""
        return self.why_not(net, penalty) or ""

    def settings(self, net, penalty, batch: int) -> dict:
        """The settings it would run with (``describe``), or ``{}``."""
        return {} if self.describe is None else dict(self.describe(net, penalty, batch))


#: name -> specification, in registration order (``"auto"`` breaks ties by this order)
#:
#: :meta hide-value:
REGISTRY: dict[str, AlgorithmSpec] = {}

#: name -> implementation ``(net, rec, penalty, y) -> (R, gradients, backward passes)``
#:
#: :meta hide-value:
ALGORITHMS: dict[str, Callable] = {}


def applies_everywhere(net, penalty) -> None:
    """The ``why_not`` of an algorithm that applies to every penalty on every network of eq. (8)."""
    return None


def register_algorithm(
    name: str,
    fn: Callable,
    *,
    cost: Callable,
    why_not: Callable | None = None,
    applies: Callable | None = None,
    describe: Callable | None = None,
    folds_loss: bool = False,
) -> AlgorithmSpec:
    """Register an explicit algorithm under ``name``.

    Parameters
    ----------
    name : str
        The name ``algorithm=`` selects it by.
    fn : callable
        ``fn(net, rec, penalty, y) -> (R, gradients, backward passes)``.
    cost : callable
        ``cost(net, penalty, batch) -> Estimate``: ``"auto"`` and
        :func:`dbpaper.plan` rank it by this prediction (required: every
        registered algorithm is a candidate).
    why_not : callable, optional
        ``why_not(net, penalty) -> str | None``: the reason it does not apply,
        ``None`` where it does. Default: it applies everywhere (or as ``applies`` says).
    applies : callable, optional
        ``applies(net, penalty) -> bool``, for an algorithm without a ``why_not``.
    describe : callable, optional
        ``describe(net, penalty, batch) -> dict`` of the settings it runs with.
    folds_loss : bool
        ``fn`` also takes ``scale`` and ``extra_eta_L`` (see the module docstring).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an algorithm's name must be a non-empty string, got {name!r}")
    if name in ("auto", "autograd"):
        raise ValueError(f"{name!r} is reserved by the entry points")
    for what, f in (("algorithm", fn), ("cost", cost)):
        if not callable(f):
            raise TypeError(f"the {what} of {name!r} must be callable, got {type(f).__name__}")
    if why_not is None:
        why_not = applies_everywhere if applies is None else _why_not_from(name, applies)
    spec = AlgorithmSpec(name, fn, why_not, cost, describe, bool(folds_loss))
    REGISTRY[name] = spec
    ALGORITHMS[name] = fn
    return spec


def _why_not_from(name: str, applies: Callable) -> Callable:
    def why_not(net, penalty):
        return None if applies(net, penalty) else f"{name!r} does not apply to {penalty!r} on this network"

    return why_not
