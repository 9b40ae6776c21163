"""Choosing how to compute a penalty: the cost model behind ``algorithm="auto"`` and :func:`dbpaper.plan`.

The algorithm names, a small documented set:

=========================  ==============================================================  ==========================
name                       what runs                                                       applies to
=========================  ==============================================================  ==========================
``"auto"`` (default)       the cheapest of the names below by the cost model; autograd     everything
                           (with a :class:`FallbackWarning`) for a model outside eq. (8)
``"general"``              Algorithms 1–3 once per ``v`` (class by class): the paper's     models of eq. (8)
                           naive path, kept for the book
``"minimal"``              Algorithms 1–3 without unused work: no ``h_L`` where ``η_L``    models of eq. (8)
                           vanishes; :func:`dbpaper.objective` folds the loss into
                           Algorithm 3 (``4L - 1`` instead of ``5L - 2``)
``"optimized"``            Algorithm 4 as printed (corrected), one class at a time         Jacobian penalty
``"optimized-shortcuts"``  Algorithm 4, one class at a time, Gram / one-hot shortcuts      Jacobian penalty
``"optimized-chunked"``    Algorithm 4, classes stacked in chunks, with the shortcuts      Jacobian penalty
``"autograd"``             ``create_graph=True`` double backward (first-order and higher   every model
                           derivatives, no speed-up)
=========================  ==============================================================  ==========================

The cost model
--------------
Every explicit algorithm is a sequence of operator evaluations (``K``, ``Kᵀ``,
``K□``, Section 5) and cheap elementwise passes. With ``m_j`` the
multiply-adds of one evaluation of layer ``j``'s operator on one example
(:attr:`dbpaper.BilinearOperator.macs`, measured once on the ``meta``
device), ``F = Σ_j m_j``, ``F□ = Σ_{j: θ_j trained} m_j`` and
``F' = Σ_{j ≥ 2} m_j``, a batch of ``N`` examples and a penalty with ``S``
vectors ``v`` (``S = C`` for the Jacobian penalty):

* ``"general"``: ``2N [F + S (2F + F□) + S (F' + F□)]`` FLOPs — forward pass,
  then per ``v`` Algorithms 1 and 2 (``Kᵀ``, ``K``), the ``K□(q, ζ)`` terms and
  Algorithm 3 (``Kᵀ`` for ``γ`` and ``K□(x, η)``); the last bracket is dropped
  where ``η`` vanishes identically (Section 5.3); ``"minimal"`` then also
  drops ``h_L``, ``2N S m_L``;
* Algorithm 4: ``2N [F + C (2F + F□) + F' + F□]`` minus what the Gram and
  one-hot shortcuts save (``dbpaper.algorithms.jacobian.shortcut_costs``);
* autograd with the ``C`` penalties summed before one backward (the peer the
  estimate is compared with): the same as Algorithm 4 without shortcuts.

Operator power iterations of :class:`~dbpaper.penalties.OperatorNorm` add
``2N · 2F`` per extra iteration. Each tensor operation also costs a fixed
dispatch overhead, so the predicted time of a candidate is

    ``flops / FLOP_RATE + calls * CALL_OVERHEAD_S``

with ``calls`` the number of operator evaluations and elementwise passes
(per ``v`` about ``8L + 5``; Algorithm 4 with chunks of ``k`` classes makes
``ceil(C / k)`` stacked passes instead of ``C``). ``"auto"`` takes the
candidate with the smallest predicted time, so it never takes a path the
model predicts to be slower than ``"general"``. The constants only rank
candidates; the benchmark (``python -m dbpaper bench``) checks the ranking on
real hardware.

Each algorithm registers its own cost model and applicability
(:func:`dbpaper.algorithms.register_algorithm`); this module reads the
registry and never runs an algorithm. An algorithm registered by a user with
a ``cost`` is a candidate of ``"auto"`` and of :func:`dbpaper.plan` like the built-in
ones; without one it runs only when named.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
import warnings
import weakref
from typing import Any, Literal

import torch
from torch import nn

from .algorithms import jacobian as J
from .algorithms.costs import autograd_cost
from .algorithms.registry import CALL_OVERHEAD_S, FLOP_RATE, REGISTRY, Estimate
from .network import Network, UnsupportedModelError, unwrap
from .penalties import Penalty

__all__ = [
    "ALGORITHM_NAMES",
    "AlgorithmName",
    "CALL_OVERHEAD_S",
    "FLOP_RATE",
    "Estimate",
    "ExecutionPlan",
    "BatchMixingWarning",
    "FallbackWarning",
    "choose",
    "estimate",
    "plan",
]

#: The documented algorithm names (``"auto"`` is the default of every entry point).
#: The algorithm names of the entry points, for type checkers: ``"fastest"`` is an error in mypy and pyright.
#: (A user algorithm registered with :func:`dbpaper.algorithms.register` is accepted at run time too;
#: pass its name through ``typing.cast(AlgorithmName, name)``.)
AlgorithmName = Literal[
    "auto", "general", "minimal", "optimized", "optimized-shortcuts", "optimized-chunked", "autograd"
]
ALGORITHM_NAMES: tuple[str, ...] = typing.get_args(AlgorithmName)


class FallbackWarning(UserWarning):
    """A model outside the framework of eq. (8) is evaluated by autograd (``create_graph=True``)."""


class BatchMixingWarning(UserWarning):
    """The model mixes the examples of a batch (BatchNorm in training mode): the penalty is that of the batch function.

    Information, not a fallback: the explicit algorithms compute that penalty (:mod:`dbpaper.normalisation`).
    """


def estimate(net: Network, penalty: Penalty, batch: int, algorithm: str) -> Estimate:
    """The cost model's prediction for ``algorithm`` (a registered name with a cost, or ``"autograd"``)."""
    if algorithm == "autograd":
        return autograd_cost(net, penalty, batch)
    alg = REGISTRY.get(algorithm)
    if alg is None:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {sorted(set(REGISTRY) | set(ALGORITHM_NAMES))}")
    return alg.cost(net, penalty, batch)


def _applicable(net: Network, penalty: Penalty) -> list[str]:
    return [name for name, alg in REGISTRY.items() if alg.applies(net, penalty)]


_CHOICES: dict[tuple, tuple[str, dict[str, Estimate]]] = {}


def penalty_key(penalty: Penalty) -> tuple:
    """What a plan depends on in a penalty: its class and settings (``repr``) and the declared properties of its ``p``.

    ``repr`` alone does not name ``p`` for every penalty (``R1(gamma=10)``), and a
    penalty whose ``p`` is replaced (``reduction="none"`` weights it per example)
    must not reuse a plan made for a plain squared norm.
    """
    return (type(penalty), repr(penalty), type(penalty.p), penalty.squared_norm_scale, penalty.sums_unit_outputs)


def _signature(net: Network, penalty: Penalty, batch: int) -> tuple:
    """Everything the cost model reads: layer shapes and kinds, the batch, the penalty and the chunking settings."""

    layers = tuple(
        (type(lay.op), lay.op.in_shape, lay.op.out_shape, lay.op.param_shape, None if lay.weight is None else lay.weight.dtype, lay.bias is None, type(lay.activation),
         getattr(lay.activation, "locally_linear", None))
        for lay in net.layers
    )  # fmt: skip
    return (
        layers,
        batch,
        penalty_key(penalty),
        J.DEFAULT_CHUNK_SIZE,
        J.TARGET_CHUNK_BYTES,
        tuple((k, id(v)) for k, v in REGISTRY.items()),
    )


def choose(net: Network, penalty: Penalty, batch: int) -> tuple[str, dict[str, Estimate]]:
    """The explicit algorithm ``"auto"`` runs on ``net`` (and every candidate's estimate); memoised per signature."""
    key = _signature(net, penalty, batch)
    hit = _CHOICES.get(key)
    if hit is not None:
        return hit
    candidates = {name: estimate(net, penalty, batch, name) for name in _applicable(net, penalty)}
    best = None  # the smallest predicted time; ties: the first registered, i.e. "minimal"
    for name, est in candidates.items():
        if best is None or est.seconds < candidates[best].seconds:
            best = name
    if len(_CHOICES) > 512:
        _CHOICES.clear()
    _CHOICES[key] = (best, candidates)
    return best, candidates


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """What :func:`dbpaper.penalty` will run for a model, a batch and a penalty (``print`` it)."""

    algorithm: str
    reason: str
    batch: int
    classes: int | None
    #: the settings the algorithm runs with, as its registration describes them (for Algorithm 4 ``chunk_size``, ``gram`` and ``onehot``)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    predicted_flops: int | None = None
    autograd_flops: int | None = None
    candidates: dict[str, float] = dataclasses.field(default_factory=dict)
    outside_module: str | None = None

    @property
    def chunk_size(self) -> int | None:
        """Classes per stacked pass of Algorithm 4 (``None`` for other algorithms)."""
        return self.settings.get("chunk_size")

    @property
    def gram(self) -> bool:
        """Whether Algorithm 4's Gram shortcut is used."""
        return bool(self.settings.get("gram", False))

    @property
    def onehot(self) -> bool:
        """Whether Algorithm 4's one-hot output shortcut is used."""
        return bool(self.settings.get("onehot", False))

    def __str__(self) -> str:
        lines = [f"algorithm     {self.algorithm}", f"why           {self.reason}"]
        if "chunk_size" in self.settings:
            lines.append(f"chunk size    {self.chunk_size} classes per stacked pass")
        if "gram" in self.settings or "onehot" in self.settings:
            lines.append(f"shortcuts     gram={self.gram}, onehot={self.onehot}")
        rest = {k: v for k, v in self.settings.items() if k not in ("chunk_size", "gram", "onehot")}
        if rest:
            lines.append("settings      " + ", ".join(f"{k}={v}" for k, v in rest.items()))
        if self.predicted_flops is not None and self.autograd_flops:
            lines.append(
                f"FLOPs         {self.predicted_flops / 1e9:.4g} G predicted; autograd (summed): {self.autograd_flops / 1e9:.4g} G"
            )
            lines.append(f"              {_flop_comparison(self.predicted_flops, self.autograd_flops)}")
        if self.candidates:
            parts = ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(self.candidates.items(), key=lambda kv: kv[1]))
            lines.append(f"candidates    {parts} (predicted)")
        return "\n".join(lines)


def _flop_comparison(predicted: int, autograd: int) -> str:
    """``"predicted 1.66× fewer FLOPs than autograd"`` (or ``more``, or ``as many``), the direction spelled out."""
    if predicted == autograd:
        return "predicted as many FLOPs as autograd"
    if predicted < autograd:
        return f"predicted {autograd / max(predicted, 1):.2f}× fewer FLOPs than autograd"
    return f"predicted {predicted / autograd:.2f}× more FLOPs than autograd"


def read(model: nn.Module | Network, x: torch.Tensor) -> Network:
    """``model`` read as the network of eq. (8) for inputs shaped like ``x`` (raises :class:`UnsupportedModelError`)."""
    if isinstance(model, Network):
        return model
    return Network.from_sequential(unwrap(model), x.shape[1:])


def plan(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor | None = None,
    *,
    algorithm: AlgorithmName = "auto",
) -> ExecutionPlan:
    """What ``dbpaper.penalty(model, x, penalty, y, algorithm=algorithm)`` runs, and why.

    Returns an :class:`ExecutionPlan`; ``print(dbpaper.plan(model, x, penalty))``
    shows the algorithm, the chunk size and shortcuts of Algorithm 4, the
    predicted FLOPs against autograd's (the ``C`` penalties summed before one
    backward) and every candidate's predicted time.

    Examples
    --------
    >>> import torch, dbpaper
    >>> from torch import nn
    >>> from dbpaper.penalties import JacobianFrobenius
    >>> model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    >>> p = dbpaper.plan(model, torch.zeros(128, 784), JacobianFrobenius())
    >>> p.algorithm, p.predicted_flops < p.autograd_flops
    ('optimized-chunked', True)
    >>> dbpaper.plan(nn.Sequential(nn.Linear(4, 4), nn.SELU(), nn.Linear(4, 2)), torch.zeros(2, 4), JacobianFrobenius()).algorithm
    'autograd'
    """
    validate_call(x, penalty, y, algorithm)
    try:
        net = read(model, x)
    except UnsupportedModelError as err:
        if algorithm not in ("auto", "autograd"):
            raise
        return ExecutionPlan(
            algorithm="autograd",
            reason=f"{err.module} is outside the framework of eq. (8): {err.reason}",
            batch=x.shape[0],
            classes=None,
            outside_module=err.module,
        )
    n = x.shape[0]
    classes = penalty.num_seeds(net) if penalty.sums_unit_outputs else None
    auto_flops = estimate(net, penalty, n, "autograd").flops
    if algorithm == "autograd":
        return ExecutionPlan("autograd", "requested", n, classes, predicted_flops=auto_flops, autograd_flops=auto_flops)
    if algorithm == "auto":
        name, cands = choose(net, penalty, n)
        reason = "smallest predicted time of " + ", ".join(cands)
    else:
        name = resolve(net, penalty, algorithm)
        cands = {name: estimate(net, penalty, n, name)}
        reason = "requested"
    return ExecutionPlan(
        algorithm=name,
        reason=reason,
        batch=n,
        classes=classes,
        settings=REGISTRY[name].settings(net, penalty, n),
        predicted_flops=cands[name].flops,
        autograd_flops=auto_flops,
        candidates={k: v.seconds for k, v in cands.items()},
    )


def resolve(net: Network, penalty: Penalty, algorithm: str, batch: int | None = None) -> str:
    """The registered algorithm to run: ``"auto"`` by the cost model, else ``algorithm`` checked to apply."""
    if algorithm == "auto":
        return choose(net, penalty, batch if batch is not None else 1)[0]
    if algorithm == "autograd":
        raise ValueError(
            "algorithm='autograd' is provided by dbpaper.penalty and dbpaper.objective, not by the explicit algorithms"
        )
    alg = REGISTRY.get(algorithm)
    if alg is None:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {sorted(set(REGISTRY) | set(ALGORITHM_NAMES))}")
    reason = alg.why_not(net, penalty)
    if reason is not None:
        raise ValueError(f"algorithm {algorithm!r} does not apply: {reason}")
    return algorithm


def validate_call(x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None, algorithm: str, *, y_used_by_loss: bool = False) -> None:
    """Clear errors for misuse, at call time: types, an empty batch, a ``y`` nobody uses, an unknown algorithm."""

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch dimension, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (N = 0): the batch mean of the penalty is undefined")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if not isinstance(penalty, Penalty):
        raise TypeError(
            f"penalty must be a dbpaper.penalties.Penalty (e.g. JacobianFrobenius()), got {type(penalty).__name__}"
        )
    if not isinstance(algorithm, str) or (algorithm not in REGISTRY and algorithm not in ALGORITHM_NAMES):
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {sorted(set(REGISTRY) | set(ALGORITHM_NAMES))}")
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"y must be a torch.Tensor (labels or targets), got {type(y).__name__}; use torch.as_tensor(y)"
            )
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y has shape {tuple(y.shape)}, but x has a batch of {x.shape[0]}")
        if not penalty.needs_y and not y_used_by_loss:
            raise ValueError(f"{penalty!r} does not use y; drop the argument (did you mean objective(..., y, lam)?)")
    elif penalty.needs_y:
        raise ValueError(f"{penalty!r} needs y (labels or targets)")


_WARNED: weakref.WeakSet = weakref.WeakSet()

_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__package__], torch))


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside dbpaper and torch: the user's line.

    Called by the function that warns; ``warnings.warn(..., stacklevel=caller_stacklevel())`` from there.
    (Python 3.12's ``skip_file_prefixes`` does the same; this works from 3.10 on.)
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_fallback(model: nn.Module, err: UnsupportedModelError) -> None:
    """One :class:`FallbackWarning` per model instance, naming the first module outside the framework."""
    try:
        if model in _WARNED:
            return
        _WARNED.add(model)
    except TypeError:  # not weak-referenceable: warn every time
        pass
    warnings.warn(
        f"dbpaper: {err.module} is outside the framework of eq. (8) ({err.reason}); the penalty is computed by "
        "autograd (create_graph=True) instead of the explicit algorithms. You lose the speed-up, the DDP "
        "gradient averaging of dbpaper.penalty and torch.compile support of the first-order backward. "
        "Pass algorithm='autograd' to silence this warning.",
        FallbackWarning,
        stacklevel=caller_stacklevel(),
    )


def warn_mixing(mixer: str) -> None:
    """The :class:`~dbpaper.BatchMixingWarning` for the module ``mixer``: information, on the explicit path and the fallback alike."""
    warnings.warn(
        f"dbpaper: {mixer} is BatchNorm in training mode, which mixes the examples of the batch: the penalty "
        "is that of the batch function (an example's input gradient depends on the others). For the "
        "per-example penalty, put the model in eval mode (model.eval()) for the penalty's call.",
        BatchMixingWarning,
        stacklevel=caller_stacklevel(),
    )
