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

* **Any model.** A model outside the framework of eq. (8) (residual blocks,
  BatchNorm in training mode, max-pooling, a module no reader knows, hooks, an overridden
  ``forward``) is evaluated by autograd under ``algorithm="auto"``, with one
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

from . import counting
from ._pipeline import compute_input, read_cached, read_with_plans, record, resolve_cached, resolve_in, run_explicit
from .algorithms._dispatch import compute, compute_objective, penalty_value
from .algorithms.general import Result, loss_gradients
from .fallback import autograd_value, objective_by_autograd, run_fallback
from .losses import LOSSES, loss_for, loss_value
from .network import Network, UnsupportedModelError, unwrap
from .penalties import Penalty
from .planning import validate_call, warn_fallback

__all__ = ["LOSSES", "as_network", "count_operations", "double_backprop", "loss_for", "objective", "objective_gradients", "penalty"]

def as_network(model: nn.Module | Network, x: torch.Tensor) -> Network:
    """``model`` read as the network of eq. (8) for inputs shaped like ``x`` (a DDP wrapper is looked through)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch dimension, got shape {tuple(x.shape)}")
    return read_cached(model, x)


def _run(model, x, pen, y, algorithm: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """Read (cached), plan (cached) and run; the call has been validated once by the entry point."""
    if algorithm == "autograd":
        return run_fallback(model, x, pen, y, lam, loss, None)
    if not isinstance(unwrap(model), nn.Module | Network):
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module, a dbpaper.Network or a callable, got {type(model).__name__}")
        err = UnsupportedModelError("a plain callable, not an nn.Module", getattr(model, "__name__", type(model).__name__), "not an nn.Module")
        if algorithm != "auto":
            raise err
        return run_fallback(model, x, pen, y, lam, loss, err)
    try:
        net, plans = read_with_plans(model, x)
    except UnsupportedModelError as err:
        if algorithm != "auto":
            raise
        return run_fallback(model, x, pen, y, lam, loss, err)
    xc, precision = _checked_input(net, x, pen, y)
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        # NaN or Inf in the batch: autograd's result, so that they propagate exactly as autograd propagates them
        return autograd_value(model, x, pen, y, lam, loss)
    name = resolve_in(plans, net, pen, algorithm, x.shape[0])
    return run_explicit(model, net, x, xc, precision, pen, y, name, lam, loss)


@torch.compiler.disable  # a scalar read: always eager (a caller that dynamo runs eagerly would otherwise trace it alone)
def _all_finite(x: torch.Tensor) -> bool:
    """Whether ``x`` holds no NaN or Inf, by one reduction: the sum of a batch with a NaN or an Inf is not finite.

    A batch whose sum overflows (beyond about ``3e38``, summed in float32 at
    least) reads as not finite too and takes the exact autograd path.
    """
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    return math.isfinite(float(x.sum(dtype=acc)))


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


def penalty(model: nn.Module | Network, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None, *, algorithm: str = "auto") -> torch.Tensor:
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
        ``"general"``, ``"optimized"``, ``"optimized-shortcuts"``,
        ``"optimized-chunked"`` or ``"autograd"``.

    Returns
    -------
    torch.Tensor
        The scalar ``R`` (the batch mean of the per-example penalty).

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
      is then that of the batch function (a :class:`~dbpaper.BatchMixingWarning`
      says so); ``model.eval()`` gives the per-example penalty.
    """
    validate_call(x, penalty, y, algorithm)
    if _value_only_mode():
        return _value_only(model, x, penalty, y, algorithm, None, None)
    return _run(model, x, penalty, y, algorithm, None, None)


def objective(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor,
    lam: float,
    *,
    loss: str | None = None,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``ℓ + λR`` with both gradients from one run of the algorithms (Section 4.5).

    Parameters
    ----------
    model, x, penalty, algorithm
        As in :func:`penalty`.
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
    """
    if y is None:
        raise ValueError("objective needs y (labels or targets) for the loss ℓ")
    validate_call(x, penalty, y, algorithm, y_used_by_loss=True)
    if isinstance(lam, bool) or not isinstance(lam, int | float) and not (isinstance(lam, torch.Tensor) and lam.numel() == 1):
        raise TypeError(f"lam must be a real number, got {lam!r}")
    if _value_only_mode():
        return _value_only(model, x, penalty, y, algorithm, float(lam), loss_for(y, loss))
    return _run(model, x, penalty, y, algorithm, float(lam), loss_for(y, loss))


def double_backprop(
    net: Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor | None = None,
    *,
    algorithm: str = "auto",
    with_loss: bool = False,
) -> Result:
    """Evaluate ``R`` and its parameter gradients with the explicit algorithms (no autograd).

    Parameters
    ----------
    net : dbpaper.Network
        The network of eq. (8).
    x : torch.Tensor
        A batch of inputs ``x_0``, shape ``(N, *net.in_shape)``.
    penalty : dbpaper.penalties.Penalty
        The penalty term of Section 4.1.
    y : torch.Tensor, optional
        Labels (class indices) or targets, for classical double backpropagation
        and for ``with_loss``.
    algorithm : str
        ``"auto"`` (default: the cheapest applicable algorithm by the cost model
        of :mod:`dbpaper.planning`), ``"general"`` (Algorithms 1–3, class by
        class for several ``v``) or any registered algorithm.
    with_loss : bool
        Also return the loss and its gradients (Section 4.5), reusing the
        backward pass of classical double backpropagation when the losses coincide.

    Returns
    -------
    dbpaper.algorithms.Result
        ``value`` (``R``), ``gradients`` and the ``algorithm`` that ran.
    """
    net, rec, name = _recorded("double_backprop", net, x, penalty, y, algorithm)
    return compute(net, rec, penalty, y, name=name, with_loss=with_loss)


def objective_gradients(
    net: Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor,
    lam: float,
    *,
    loss: str,
    algorithm: str = "auto",
) -> Result:
    """``ℓ + λR`` and its gradients (Section 4.5); see :func:`dbpaper.algorithms.compute_objective`."""
    net, rec, name = _recorded("objective_gradients", net, x, penalty, y, algorithm)
    return compute_objective(net, rec, penalty, y, lam, loss=loss, name=name)


def _recorded(who: str, net: Network, x: torch.Tensor, penalty: Penalty, y, algorithm: str):
    """Check the call, plan it (cached per network) and record the forward pass: ``(net, record, algorithm name)``."""
    if not isinstance(net, Network):
        raise TypeError(f"{who} takes a dbpaper.Network (dbpaper.Network.from_sequential(model, in_shape)), got {type(net).__name__}")
    net.check_input(x)
    penalty.check(net, y)
    name = resolve_cached(net, net, penalty, algorithm, x.shape[0])
    net = net.refreshed()
    return net, record(net, x), name


def count_operations(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty | None,
    y: torch.Tensor | None = None,
    algorithm: str = "auto",
    with_loss: bool = False,
) -> dict[str, int]:
    """Count the operator evaluations of one double-backpropagation step (Section 5).

    Parameters
    ----------
    model : nn.Sequential or Network
        The network (eq. (8)).
    x : torch.Tensor
        An input batch; the counts do not depend on its values or batch size.
    penalty : dbpaper.penalties.Penalty or None
        The penalty term (Section 4.1). ``None`` counts plain backpropagation of
        the loss (Section 4.5; needs ``with_loss=True`` and ``y``): the
        ``2L - 1`` of Section 5.1.
    y : torch.Tensor, optional
        Labels or targets, for classical double backpropagation and ``with_loss``.
    algorithm : str
        ``"auto"`` (default: the algorithm :func:`dbpaper.double_backprop`
        runs by default, so the counts are those of the default path; for the
        Jacobian penalty that is a variant of Algorithm 4, whatever the
        activations), ``"general"`` (Algorithms 1–3, class by class for
        several ``v``: the paper's naive count — pass it explicitly to compare
        with the paper's closed forms), ``"optimized"`` (Algorithm 4 as
        printed, corrected, Appendix C) or any registered algorithm.
    with_loss : bool
        Also compute the gradient of the loss. With ``algorithm="general"`` as
        the paper does (Section 5.1: a separate backpropagation of the loss,
        reusing the backward pass of classical double backpropagation); with
        any other algorithm as :func:`dbpaper.objective` does (the loss folded
        into the forward-backward pass).

    Returns
    -------
    dict
        ``{"apply": #K, "transpose": #Kᵀ, "weight_adjoint": #K□}``, including the
        forward pass. The paper's counts are ``apply + transpose``.

    Raises
    ------
    ValueError
        For ``penalty=None`` without ``with_loss``, a missing ``y``, or an
        algorithm that does not apply.
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"count_operations: algorithm must be a str, got {type(algorithm).__name__}")
    net = as_network(model, x)
    if penalty is None:
        if not with_loss:
            raise ValueError("count_operations: penalty=None counts plain backpropagation of the loss; pass with_loss=True")
        if y is None:
            raise ValueError("count_operations: with_loss=True needs y (labels or targets)")
        if algorithm not in ("general", "auto"):
            raise ValueError(f"count_operations: penalty=None has no algorithm choice, got algorithm={algorithm!r}")
        with torch.no_grad(), counting.count() as counter:
            rec = net.forward(x)
            loss_gradients(net, rec, y, loss_for(y))  # Section 4.5: L - 1 evaluations of Kᵀ
        return {k: counter[k] for k in counting.KINDS}
    if not isinstance(penalty, Penalty):
        raise TypeError(f"count_operations: penalty must be a dbpaper Penalty or None, got {type(penalty).__name__}")
    with counting.count() as counter:
        if with_loss and algorithm != "general":  # the objective ℓ + λR as dbpaper.objective runs it (loss folded in)
            if y is None:
                raise ValueError("count_operations: with_loss=True needs y (labels or targets)")
            objective_gradients(net, x, penalty, y, 1.0, loss=loss_for(y), algorithm=algorithm)
        else:
            double_backprop(net, x, penalty, y, algorithm=algorithm, with_loss=with_loss)
    return {k: counter[k] for k in counting.KINDS}
