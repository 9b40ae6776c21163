"""The entry points: :func:`penalty` and :func:`objective` for training loops, :func:`double_backprop` and
:func:`count_operations` for the algorithms' results and their operation counts.

``dbpaper.penalty(model, x, penalty)`` returns ``R`` of eq. (10) as a
tensor whose backward delivers ``∇_θ R`` and ``∇_b R`` computed by the
explicit algorithms (the cheapest applicable one by default, see
:mod:`dbpaper.planning`). ``(loss + lam * R).backward()`` is then a single,
first-order backward pass: no ``create_graph=True``, no graph of the input
gradient kept alive, and it works where double backward does not (for
example under ``torch.compile``'s AOT autograd).

Guarantees (each one tested):

* **Any model.** A model outside the framework of eq. (8) (a module no reader
  knows, hooks, an overridden ``forward``, a plain callable) is evaluated by autograd under ``algorithm="auto"``, with one
  :class:`~dbpaper.planning.FallbackWarning` naming the first module outside
  the framework; an explicitly named explicit algorithm raises instead.
* **First order only, and loudly so.** The backward of the returned tensor
  cannot be differentiated again: ``create_graph=True`` through it (a
  Hessian-vector product, say) raises a ``RuntimeError``. Use
  ``algorithm="autograd"`` for higher derivatives.
* **No stale gradients.** The gradients are computed when ``penalty`` is
  called; changing a parameter (or ``x``) in place before ``backward()``
  makes ``backward()`` raise, as autograd's version counter does.
* **Input gradients.** If ``x`` requires grad, ``x.grad`` receives
  ``∇_{x_0} R = K_1ᵀ(θ_1, η_1)`` (for :func:`objective`: ``∇_{x_0}(ℓ + λR)``).
* **DDP.** For a ``DistributedDataParallel`` model the parameter gradients
  are averaged over the ranks when ``penalty`` is called, so they equal the
  single-process gradients on the concatenated batch (equal batch sizes per
  rank) whether ``R`` is backpropagated alone or together with a loss of a
  DDP forward (whose averaging leaves already averaged gradients unchanged).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._network_calls import as_network, count_operations, double_backprop, objective_gradients
from ._pipeline import compute_input, read_with_plans, record, resolve_in, run_explicit
from ._precomputed import flat_gradients, guard_second_order, is_ddp
from ._reduction import PerExample, Reduction, check_reduction, per_example_autograd, weighted
from .algorithms._dispatch import compute, penalty_value, per_example_values
from .algorithms.general import loss_gradients, loss_seed
from .algorithms.passes import input_gradient
from .algorithms.registry import REGISTRY
from .fallback import autograd_value, objective_by_autograd, penalty_by_autograd, run_fallback, warn_if_mixing
from .losses import LOSSES, loss_for, loss_per_example, loss_value
from .network import Network, UnsupportedModelError, output_map_of, unwrap
from .penalties import Penalty
from .planning import AlgorithmName, resolve, validate_call, warn_fallback

__all__ = [
    "LOSSES",
    "as_network",
    "count_operations",
    "double_backprop",
    "loss_for",
    "objective",
    "objective_gradients",
    "penalty",
]


def _run(model, x, pen, y, algorithm: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """Read (cached), plan (cached) and run; the call has been validated once by the entry point."""
    if algorithm == "autograd":
        return run_fallback(model, x, pen, y, lam, loss, None)
    if not isinstance(unwrap(model), nn.Module | Network):
        return run_fallback(model, x, pen, y, lam, loss, _plain_callable(model, algorithm))
    try:
        net, plans = read_with_plans(model, x)
    except UnsupportedModelError as err:
        if algorithm != "auto":
            raise
        return run_fallback(model, x, pen, y, lam, loss, err)
    xc, precision = _checked_input(net, x, pen, y)
    if not torch.compiler.is_compiling() and not _all_finite(x):
        # NaN or Inf in the batch: autograd's result, so that they propagate exactly as autograd propagates them
        return autograd_value(model, x, pen, y, lam, loss)
    name = resolve_in(plans, net, pen, algorithm, x.shape[0])
    return run_explicit(model, net, x, xc, precision, pen, y, name, lam, loss)


def _plain_callable(model, algorithm: str) -> UnsupportedModelError:
    """Why a model that is not an ``nn.Module`` takes the fallback; raised at once unless ``algorithm="auto"``."""
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module, a dbpaper.Network or a callable, got {type(model).__name__}")
    err = UnsupportedModelError(
        "a plain callable, not an nn.Module", getattr(model, "__name__", type(model).__name__), "not an nn.Module"
    )
    if algorithm != "auto":
        raise err
    return err


@torch.compiler.disable  # a scalar read: always eager (a caller that dynamo runs eagerly would otherwise trace it alone)
def _all_finite(x: torch.Tensor) -> bool:
    """Whether ``x`` holds no NaN or Inf, by one reduction: the sum of a batch with a NaN or an Inf is not finite.

    A batch whose sum overflows (beyond about ``3e38``, summed in float32 at
    least) reads as not finite too and takes the exact autograd path.
    """
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    return math.isfinite(float(x.detach().sum(dtype=acc)))


def _checked_input(net: Network, x: torch.Tensor, pen: Penalty, y):
    """The input the algorithms compute with and their precision context, checked once against the network and the penalty.

    Before planning: a penalty that does not fit the network raises its own error.
    """
    xc, precision = compute_input(net, x)
    net.check_input(xc)
    pen.check(net, y)
    return xc, precision


def _value_only_mode() -> bool:
    """``torch.no_grad()`` or ``torch.inference_mode()`` is active (never while compiling: a traced step records grads)."""
    if torch.compiler.is_compiling():
        return not torch.is_grad_enabled()
    return not torch.is_grad_enabled() or torch.is_inference_mode_enabled()


def _value_only(model, x, pen, y, algorithm: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """Under ``torch.no_grad()`` or ``torch.inference_mode()``: the value alone, no gradients, no graph."""
    explicit = algorithm != "autograd" and isinstance(unwrap(model), nn.Module | Network)
    if explicit:
        try:
            net, _ = read_with_plans(model, x)
        except UnsupportedModelError as err:
            if algorithm != "auto":
                raise
            warn_fallback(unwrap(model), err)
            explicit = False
    if explicit:
        xc, precision = _checked_input(net, x, pen, y)
        explicit = _all_finite(x)
    if explicit:
        with precision:
            rec = record(net, xc)
            value = penalty_value(net, rec, pen, y)
            if lam is not None:
                value = loss_value(net.output_map, rec.output, y, loss, rec.logits) + lam * value
        return value
    with torch.inference_mode(False), torch.enable_grad():
        value = objective_by_autograd(unwrap(model), x.clone() if x.is_inference() else x, pen, y, lam, loss)
    return value.detach()


def penalty(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor | None = None,
    *,
    algorithm: AlgorithmName = "auto",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``R`` of eq. (10), differentiable (once) with respect to the model's parameters and ``x``.

    Parameters
    ----------
    model : nn.Module, DistributedDataParallel or Network
        Any model. An ``nn.Sequential`` of supported modules (see
        ``dbpaper.readers.supported_modules()``) runs the explicit algorithms;
        anything else runs autograd with a :class:`~dbpaper.planning.FallbackWarning`.
    x : torch.Tensor
        The input batch ``(N, ...)``, ``N ≥ 1``.
    penalty : dbpaper.penalties.Penalty
        What to penalise, e.g. ``JacobianFrobenius()``.
    y : torch.Tensor, optional
        Labels or targets, only for penalties that use them (classical double
        backpropagation); passing ``y`` to a penalty that ignores it raises.
    algorithm : str
        ``"auto"`` (default: the fastest exact path by the cost model of
        :mod:`dbpaper.planning`; :func:`dbpaper.plan` shows the choice),
        ``"general"``, ``"minimal"``, ``"optimized"``, ``"optimized-shortcuts"``,
        ``"optimized-chunked"``, ``"autograd"`` (:data:`dbpaper.AlgorithmName`),
        or the name of a registered algorithm.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` (default): ``R``, the batch mean of the per-example penalty
        ``R_n``; ``"sum"``: ``Σ_n R_n``; ``"none"``: the vector ``(R_n)`` of
        shape ``(N,)``, whose backward with any weights ``w`` delivers the exact
        gradients of ``Σ_n w_n R_n`` (computed when ``backward`` runs, by the
        explicit algorithms that take a per-example weighted ``p``; see
        :data:`dbpaper.Reduction`).

    Returns
    -------
    torch.Tensor
        The scalar ``R`` (the batch mean of the per-example penalty), or as ``reduction`` says.

    Notes
    -----
    * Under ``torch.no_grad()`` or ``torch.inference_mode()`` every path returns
      the value alone: no gradient is computed and no graph is recorded.
    * A batch with NaN or Inf entries is evaluated by autograd, so that they
      propagate exactly as autograd propagates them.
    * A plain callable (not an ``nn.Module``) and a ``Linear`` applied to the
      last dimension of ``(N, ..., F)`` inputs run the autograd fallback, with
      the per-example penalty taken over the whole example.
    * BatchNorm in training mode mixes the examples of the batch: the penalty
      is then that of the batch function (:mod:`dbpaper.normalisation` says
      which), computed by the explicit algorithms; a :class:`~dbpaper.BatchMixingWarning`
      says so, as information; ``model.eval()`` gives the per-example penalty.

    Examples
    --------
    >>> import torch, dbpaper
    >>> from torch import nn
    >>> from dbpaper.penalties import JacobianFrobenius
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x = torch.randn(16, 4)
    >>> R = dbpaper.penalty(model, x, JacobianFrobenius())  # mean ‖∂ model(x)/∂x‖_F² over the batch
    >>> R.backward()                                         # its parameter gradients; no double backward
    >>> by_autograd = dbpaper.penalty(model, x, JacobianFrobenius(), algorithm="autograd")
    >>> bool(torch.allclose(R, by_autograd))
    True
    """
    reduction = check_reduction(reduction)
    validate_call(x, penalty, y, algorithm)
    if reduction == "none":
        return _per_example(model, x, penalty, y, algorithm, None, None)
    if _value_only_mode():
        value = _value_only(model, x, penalty, y, algorithm, None, None)
    else:
        value = _run(model, x, penalty, y, algorithm, None, None)
    return value if reduction == "mean" else value * x.shape[0]


def objective(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor,
    lam: float,
    *,
    loss: str | None = None,
    algorithm: AlgorithmName = "auto",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``ℓ + λR`` with both gradients from one run of the algorithms (Section 4.5).

    Parameters
    ----------
    model, x, penalty, algorithm, reduction
        As in :func:`penalty` (``reduction`` applies to ``ℓ_n + λR_n``).
    y : torch.Tensor
        Labels (integer class indices) or float targets shaped like the output.
    lam : float
        The weight ``λ`` of the penalty.
    loss : {"nll", "mse"}, optional
        ``ℓ``, the batch mean of the per-example loss.

        * ``"nll"``: cross-entropy, ``−log softmax(x_L)[y]`` of the logits, or
          ``−log x_L[y]`` after a final softmax (computed from the logits, so a
          class whose probability underflows does not give NaN); equals
          ``F.cross_entropy(logits, y)`` (mean over the batch).
        * ``"mse"``: ``‖x_L − y‖²`` summed over the outputs of an example, then the
          batch mean. **Not** ``F.mse_loss(x_L, y)``, which also averages over the
          outputs: with ``C`` outputs per example this loss is ``C`` times
          ``F.mse_loss`` (scale ``lam`` accordingly to compare).

        Default: derived from ``y`` by one rule (``dbpaper.api.loss_for``) — integer
        labels give ``"nll"``, float targets ``"mse"``.

    Returns
    -------
    torch.Tensor
        The scalar ``ℓ + λR``; ``x.grad`` (if ``x`` requires grad) receives ``∇_x(ℓ + λR)``.

    Examples
    --------
    One forward pass for the loss and the penalty (a training step):

    >>> import torch, dbpaper
    >>> from torch import nn
    >>> from dbpaper.penalties import JacobianFrobenius
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> loss = dbpaper.objective(model, x, JacobianFrobenius(), y, lam=0.01)
    >>> loss.backward()
    >>> ce = nn.functional.cross_entropy(model(x), y)
    >>> bool(torch.allclose(loss, ce + 0.01 * dbpaper.penalty(model, x, JacobianFrobenius())))
    True
    """
    if y is None:
        raise ValueError("objective needs y (labels or targets) for the loss ℓ")
    reduction = check_reduction(reduction)
    validate_call(x, penalty, y, algorithm, y_used_by_loss=True)
    if (
        isinstance(lam, bool)
        or not isinstance(lam, int | float)
        and not (isinstance(lam, torch.Tensor) and lam.numel() == 1)
    ):
        raise TypeError(f"lam must be a real number, got {lam!r}")
    if reduction == "none":
        return _per_example(model, x, penalty, y, algorithm, float(lam), loss_for(y, loss))
    if _value_only_mode():
        value = _value_only(model, x, penalty, y, algorithm, float(lam), loss_for(y, loss))
    else:
        value = _run(model, x, penalty, y, algorithm, float(lam), loss_for(y, loss))
    return value if reduction == "mean" else value * x.shape[0]


def _per_example(model, x, pen: Penalty, y, algorithm: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """``reduction="none"``: the vector ``(R_n)`` (or ``(ℓ_n + λR_n)``), gradients at backward time (see :mod:`dbpaper._reduction`)."""
    if is_ddp(model):
        raise ValueError(
            "reduction='none' is not supported for a DistributedDataParallel model (its gradients are averaged "
            "over the ranks when the call returns); use reduction='mean' or 'sum'"
        )
    inner = unwrap(model)
    net = None
    if algorithm != "autograd":
        if not isinstance(inner, nn.Module | Network):
            warn_fallback(inner, _plain_callable(model, algorithm))
        else:
            try:
                net, _ = read_with_plans(model, x)
            except UnsupportedModelError as err:
                if algorithm != "auto":
                    raise
                warn_fallback(inner, err)
                warn_if_mixing(inner)
    if net is not None:
        xc, precision = _checked_input(net, x, pen, y)
        if torch.compiler.is_compiling() or _all_finite(x):
            return _per_example_explicit(net, x, xc, precision, pen, y, algorithm, lam, loss)
    with torch.inference_mode(False), torch.enable_grad():
        xin = x.clone() if x.is_inference() else x
        values, out = penalty_by_autograd(inner, xin, per_example_autograd(pen), y, return_output=True)
        if lam is not None:
            values = loss_per_example(output_map_of(inner), out, y, loss) + lam * values
    return values.detach() if _value_only_mode() else values


def _per_example_explicit(net: Network, x, xc, precision, pen: Penalty, y, algorithm: str, lam, loss) -> torch.Tensor:
    n = x.shape[0]
    with precision:
        rec = record(net, xc)
        at = net.at(rec)
        with torch.no_grad():
            values, seeds = per_example_values(at, rec, pen, y)
            if lam is not None:
                values = loss_per_example(at.output_map, rec.output, y, loss, rec.logits) + lam * values
    if _value_only_mode():
        return values

    def backward(w: torch.Tensor):
        with precision, torch.no_grad():
            c = w.detach().to(rec.output.dtype).reshape(n) * n  # mean_n (N w_n) p = Σ_n w_n p
            wp = weighted(pen, xc, y, c, seeds)
            wanted = algorithm if algorithm != "auto" and REGISTRY[algorithm].applies(at, wp) else "auto"
            grads = compute(net, rec, wp, y, name=resolve(net, wp, wanted, batch=n)).gradients
            if lam is not None:
                grads = grads.scaled(lam)
                zeta = loss_seed(at, rec, y, loss)
                grads.add(loss_gradients(at, rec, y, loss, None, zeta_L=zeta * c.reshape((-1,) + (1,) * (zeta.ndim - 1))))
            flat = flat_gradients(net, grads)
            gx = input_gradient(at, grads) if x.requires_grad else None
        return (None if gx is None else gx.reshape(x.shape).to(x.dtype)), flat

    return guard_second_order(PerExample.apply(values, backward, x, *net.parameters()))
