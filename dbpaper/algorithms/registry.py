"""The registry of explicit algorithms: one :class:`Algorithm` per name, what it runs, where it applies, what it costs.

An explicit algorithm is a subclass of :class:`Algorithm` with

* :meth:`~Algorithm.run` ``(net, rec, penalty, y, fold=None) -> Outcome`` — the
  algorithm on a recorded forward pass. With :attr:`~Algorithm.folds_loss`
  it also takes a :class:`LossFold` (``scale = λ`` and ``∇_{z_L} ℓ``) and
  returns the gradients of ``ℓ + λR`` from the same pass (Section 4.5);
  without, ``fold`` is always ``None`` and the entry points add the loss's
  own backpropagation;
* :meth:`~Algorithm.why_not` ``(net, penalty) -> str | None`` — why it does
  not apply (``None``: it applies);
* :meth:`~Algorithm.cost` ``(net, penalty, batch) -> Estimate`` — the
  prediction the planner (:func:`dbpaper.plan`) ranks the candidates of
  ``algorithm="auto"`` by;
* :meth:`~Algorithm.settings` ``(net, penalty, batch) -> dict`` — the
  settings it would run with (chunk size, shortcuts), shown by :func:`dbpaper.plan`.

:func:`register` adds one under its :attr:`~Algorithm.name`,
:func:`unregister` removes it; ``REGISTRY`` is the one table the planner
reads (nothing here reads the planner). Every registered algorithm, a user's
included, is a candidate of ``"auto"``, is shown by :func:`dbpaper.plan`,
runs when named and is counted by :func:`dbpaper.count_operations`.
:func:`register_algorithm` wraps plain functions for the same table.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from ..network import ForwardRecord, Network
    from ..penalties import Penalty
    from .passes import BackwardPass, LayerGradients

__all__ = [
    "CALL_OVERHEAD_S",
    "FLOP_RATE",
    "REGISTRY",
    "Algorithm",
    "Estimate",
    "FunctionAlgorithm",
    "LossFold",
    "Outcome",
    "register",
    "register_algorithm",
    "unregister",
]

#: Sustained floating-point operations per second of operator evaluations (float32, one CPU core).
FLOP_RATE = 5e10

#: Seconds of dispatch overhead per tensor operation (Python, the dispatcher, a small kernel).
CALL_OVERHEAD_S = 1e-5


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Predicted cost of one evaluation of ``R`` and its parameter gradients: FLOPs of the products and tensor operations."""

    flops: int
    calls: int

    @property
    def seconds(self) -> float:
        """``flops / FLOP_RATE + calls * CALL_OVERHEAD_S``."""
        return self.flops / FLOP_RATE + self.calls * CALL_OVERHEAD_S


@dataclasses.dataclass(frozen=True)
class LossFold:
    """A loss folded into an algorithm's forward-backward pass (Section 4.5): gradients of ``ℓ + scale · R``.

    The forward-backward pass is linear in ``(q, η_L)``: ``q_0`` is scaled by
    ``scale`` (no intermediate is divided by ``λ``) and ``eta_L = ∇_{z_L} ℓ`` is
    added to ``η_L`` before it; ``η_1`` then also gives ``∇_{x_0}(ℓ + scale · R)``.
    """

    scale: float
    eta_L: torch.Tensor


class Outcome(NamedTuple):
    """What :meth:`Algorithm.run` returns: ``R`` (unscaled), the gradients and the backward passes it kept.

    ``passes`` holds the backward pass of a single-seed penalty where the
    algorithm keeps it (``"general"``), for the reuse of Section 4.5; else ``()``.
    """

    value: torch.Tensor
    gradients: LayerGradients
    passes: tuple[BackwardPass, ...] = ()


class Algorithm(abc.ABC):
    """An explicit algorithm (see the module docstring). Subclasses set :attr:`name` and implement :meth:`run` and :meth:`cost`."""

    #: the name ``algorithm=`` selects it by
    name: str = ""
    #: whether :meth:`run` folds a loss in (takes a :class:`LossFold`)
    folds_loss: bool = False

    @abc.abstractmethod
    def run(
        self, net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None, fold: LossFold | None = None
    ) -> Outcome:
        """``R`` and the gradients of ``R`` (with ``fold``: of ``ℓ + fold.scale · R``) on a recorded forward pass."""

    @abc.abstractmethod
    def cost(self, net: Network, penalty: Penalty, batch: int) -> Estimate:
        """The cost model's prediction for a batch of ``batch`` examples."""

    def why_not(self, net: Network, penalty: Penalty) -> str | None:
        """Why the algorithm does not apply to ``penalty`` on ``net`` (``None``: it applies; the default: everywhere)."""
        return None

    def applies(self, net: Network, penalty: Penalty) -> bool:
        """Whether :meth:`why_not` is ``None``."""
        return self.why_not(net, penalty) is None

    def settings(self, net: Network, penalty: Penalty, batch: int) -> dict[str, Any]:
        """The settings it would run with (for :func:`dbpaper.plan`); ``{}`` by default."""
        return {}

    def __repr__(self) -> str:
        return f"<algorithm {self.name!r} ({type(self).__name__})>"


class FunctionAlgorithm(Algorithm):
    """An :class:`Algorithm` made of plain functions (:func:`register_algorithm`)."""

    def __init__(self, name: str, fn: Callable[..., Any], cost: Callable[..., Estimate],
                 why_not: Callable[..., str | None] | None = None, describe: Callable[..., Any] | None = None,
                 folds_loss: bool = False):  # fmt: skip
        self.name: str = name
        self.fn: Callable[..., Any] = fn
        self._cost, self._why_not, self._describe = cost, why_not, describe
        self.folds_loss: bool = bool(folds_loss)

    def run(
        self, net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None, fold: LossFold | None = None
    ) -> Outcome:
        if fold is None:
            out = self.fn(net, rec, penalty, y)
        else:
            out = self.fn(net, rec, penalty, y, scale=fold.scale, extra_eta_L=fold.eta_L)
        return Outcome(*out) if not isinstance(out, Outcome) else out

    def cost(self, net: Network, penalty: Penalty, batch: int) -> Estimate:
        return self._cost(net, penalty, batch)

    def why_not(self, net: Network, penalty: Penalty) -> str | None:
        return None if self._why_not is None else self._why_not(net, penalty)

    def settings(self, net: Network, penalty: Penalty, batch: int) -> dict[str, Any]:
        return {} if self._describe is None else dict(self._describe(net, penalty, batch))


#: name -> :class:`Algorithm`, in registration order (``"auto"`` breaks ties by this order)
#:
#: :meta hide-value:
REGISTRY: dict[str, Algorithm] = {}

_RESERVED = ("auto", "autograd")


def register(algorithm: Algorithm, *, replace: bool = False) -> Algorithm:
    """Add ``algorithm`` to ``REGISTRY`` under its :attr:`~Algorithm.name` (a name taken raises unless ``replace``)."""
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"register takes a dbpaper.algorithms.Algorithm, got {type(algorithm).__name__}")
    name = algorithm.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"an algorithm's name must be a non-empty string, got {name!r}")
    if name in _RESERVED:
        raise ValueError(f"{name!r} is reserved by the entry points")
    if name in REGISTRY and not replace and REGISTRY[name] is not algorithm:
        raise ValueError(f"an algorithm named {name!r} is registered already; unregister it first or pass replace=True")
    REGISTRY[name] = algorithm
    return algorithm


def unregister(name: str) -> Algorithm:
    """Remove the algorithm ``name`` from ``REGISTRY`` and return it (a ``KeyError`` naming the registered ones if absent)."""
    try:
        return REGISTRY.pop(name)
    except KeyError:
        raise KeyError(f"no algorithm named {name!r} is registered; registered: {sorted(REGISTRY)}") from None


def register_algorithm(
    name: str,
    fn: Callable[..., Any],
    *,
    cost: Callable[..., Estimate],
    why_not: Callable[..., str | None] | None = None,
    applies: Callable[..., bool] | None = None,
    describe: Callable[..., Any] | None = None,
    folds_loss: bool = False,
    replace: bool = True,
) -> Algorithm:
    """Register plain functions as an :class:`Algorithm` named ``name`` (a :class:`FunctionAlgorithm`).

    Parameters
    ----------
    name : str
        The name ``algorithm=`` selects it by.
    fn : callable
        ``fn(net, rec, penalty, y) -> (R, gradients, backward passes)``; with
        ``folds_loss`` also ``fn(..., scale=λ, extra_eta_L=∇_{z_L} ℓ)``.
    cost : callable
        ``cost(net, penalty, batch) -> Estimate`` (required: every registered algorithm is a candidate).
    why_not, applies : callable, optional
        ``why_not(net, penalty) -> str | None``, or ``applies(net, penalty) -> bool``. Default: it applies everywhere.
    describe : callable, optional
        ``describe(net, penalty, batch) -> dict`` of the settings it runs with.
    folds_loss : bool
        ``fn`` also takes ``scale`` and ``extra_eta_L``.
    replace : bool
        Replace an algorithm of the same name (default ``True``, as earlier versions did).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an algorithm's name must be a non-empty string, got {name!r}")
    for what, f in (("algorithm", fn), ("cost", cost)):
        if not callable(f):
            raise TypeError(f"the {what} of {name!r} must be callable, got {type(f).__name__}")
    if why_not is None and applies is not None:
        why_not = _why_not_from(name, applies)
    return register(FunctionAlgorithm(name, fn, cost, why_not, describe, folds_loss), replace=replace)


def _why_not_from(name: str, applies: Callable[..., bool]) -> Callable[..., str | None]:
    def why_not(net: Network, penalty: Penalty) -> str | None:
        return None if applies(net, penalty) else f"{name!r} does not apply to {penalty!r} on this network"

    return why_not
