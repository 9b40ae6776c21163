"""The drop-in entry points for training loops: :func:`penalty` and :func:`objective`.

``dbpaper.penalty(model, x, penalty)`` returns ``R`` of eq. (10) as a
tensor whose backward delivers ``∇_θ R`` and ``∇_b R`` computed by the
explicit algorithms (the cheapest applicable one by default, see
:mod:`dbpaper.planning`). ``(loss + lam * R).backward()`` is then a single,
first-order backward pass: no ``create_graph=True``, no graph of the input
gradient kept alive, and it works where double backward does not (for
example under ``torch.compile``'s AOT autograd).

Guarantees (each one tested):

* **Any model.** A model outside the framework of eq. (8) (residual blocks,
  BatchNorm, max-pooling, GELU, custom modules, hooks, an overridden
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

import contextlib
import warnings

import torch
from torch import nn

from ._precomputed import Precomputed, average_over_ranks, flat_gradients, guard_second_order, is_ddp
from .algorithms.driver import compute, compute_objective, penalty_value
from .network import Network, UnsupportedModelError, unwrap
from .penalties import Penalty
from .pipeline import read_cached, read_with_plans, record, resolve_in
from .planning import BatchMixingWarning, validate_call, warn_fallback
from .reference import output_map_of, penalty_by_autograd

__all__ = ["LOSSES", "as_network", "loss_for", "objective", "penalty"]

#: The losses :func:`objective` knows: ``"nll"`` (cross-entropy: ``−log softmax(x_L)[y]`` for logits,
#: ``−log x_L[y]`` after a final softmax; as ``F.cross_entropy``) and ``"mse"`` (``‖x_L − y‖²`` summed
#: over the outputs of an example, batch mean; ``C`` times ``F.mse_loss``, which averages over outputs too).
LOSSES = ("nll", "mse")


def as_network(model: nn.Module | Network, x: torch.Tensor) -> Network:
    """``model`` read as the network of eq. (8) for inputs shaped like ``x`` (a DDP wrapper is looked through)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch dimension, got shape {tuple(x.shape)}")
    return read_cached(model, x)


def loss_for(y: torch.Tensor, loss: str | None = None) -> str:
    """The loss of :func:`objective`: ``loss`` if given, else by one rule — integer labels ``y``: ``"nll"``; float ``y``: ``"mse"``."""
    if loss is not None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} or None, got {loss!r}")
        return loss
    if y.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return "nll"
    if y.is_floating_point():
        return "mse"
    raise TypeError(f"cannot derive a loss from labels of dtype {y.dtype}; pass loss='nll' or loss='mse'")


def _autocast_active(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if x.device.type == "cpu" else torch.is_autocast_enabled()


def _compute_input(net: Network, x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """The input the explicit algorithms compute with, and the context they run in.

    Under ``torch.autocast`` they compute in the parameters' dtype with autocast
    switched off: every operator evaluation and every accumulation in full
    precision, so their error is that of the parameters' dtype (never worse
    than autograd's under the same autocast, which runs the matrix products in
    the low precision). Elsewhere: ``x`` as it is.
    """
    if not _autocast_active(x):
        return x, contextlib.nullcontext()
    params = net.parameters()
    dtype = params[0].dtype if params else x.dtype
    return x.to(dtype), torch.autocast(x.device.type, enabled=False)


def _explicit(model, net: Network, x, xc, precision, pen, y, name: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """Run ``name`` on ``xc`` (``x`` as the algorithms compute with it) in ``precision`` (see :func:`_compute_input`)."""
    with precision:
        return _explicit_run(model, net, x, xc, pen, y, name, lam, loss)


def _explicit_run(model, net: Network, x, xc, pen, y, name: str, lam: float | None, loss: str | None) -> torch.Tensor:
    rec = record(net, xc)
    if lam is None:
        res = compute(net, rec, pen, y, name=name)
    else:
        res = compute_objective(net, rec, pen, y, lam, loss=loss, name=name)
    grads = flat_gradients(net, res.gradients)
    if is_ddp(model):
        grads = average_over_ranks(grads, model.process_group)
    eta_1 = res.gradients.eta_1
    grad_x = None
    if x.requires_grad and eta_1 is not None:  # ∇_{x_0} = K_1ᵀ(θ_1, η_1)
        first = net.layers[0]
        grad_x = first.KT(first.theta(eta_1), eta_1).reshape(x.shape).to(x.dtype)
    params = net.parameters()
    return guard_second_order(Precomputed.apply(res.value, x, grad_x, len(grads), *grads, *params))


def _autograd(model, x, pen, y, lam: float | None, loss: str | None) -> torch.Tensor:
    """The autograd implementation of the same quantity (graph kept: differentiable to any order)."""
    inner = unwrap(model)
    if lam is None:
        value = penalty_by_autograd(inner, x, pen, y)
    else:
        value, out = penalty_by_autograd(inner, x, pen, y, return_output=True)
        from .seeds import loss_value

        value = loss_value(output_map_of(inner), out, y, loss) + lam * value
    if is_ddp(model):  # no graph through DDP's reducer: average the gradients now, as the explicit path does
        params = [p for p in inner.parameters() if p.requires_grad]
        wants_x = x.requires_grad
        grads = torch.autograd.grad(value, params + ([x] if wants_x else []), allow_unused=True, materialize_grads=True)
        gx = grads[-1] if wants_x else None
        grads = average_over_ranks(list(grads[: len(params)]), model.process_group)
        value = Precomputed.apply(value.detach(), x, gx, len(grads), *grads, *params)
        return guard_second_order(value)
    return value


def _mixes_examples(model) -> str | None:
    """The first module that mixes the examples of a batch (BatchNorm in training mode), or ``None``."""
    if not isinstance(model, nn.Module):
        return None
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return name or type(m).__name__
    return None


def _fallback(model, x, pen, y, lam, loss, err: UnsupportedModelError | None) -> torch.Tensor:
    inner = unwrap(model)
    if err is not None:
        warn_fallback(inner, err)
    mixer = _mixes_examples(inner)
    if mixer is not None:
        warnings.warn(
            f"dbpaper: {mixer} is BatchNorm in training mode, which mixes the examples of the batch: the penalty "
            "is that of the batch function (an example's input gradient depends on the others). For the "
            "per-example penalty, put the model in eval mode (model.eval()) for the penalty's call.",
            BatchMixingWarning,
            stacklevel=4,
        )
    return _autograd(model, x, pen, y, lam, loss)


def _run(model, x, pen, y, algorithm: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """Read (cached), plan (cached) and run; the call has been validated once by the entry point."""
    if algorithm == "autograd":
        return _fallback(model, x, pen, y, lam, loss, None)
    if not isinstance(unwrap(model), nn.Module | Network):
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module, a dbpaper.Network or a callable, got {type(model).__name__}")
        err = UnsupportedModelError("a plain callable, not an nn.Module", getattr(model, "__name__", type(model).__name__), "not an nn.Module")
        if algorithm != "auto":
            raise err
        return _fallback(model, x, pen, y, lam, loss, err)
    try:
        net, plans = read_with_plans(model, x)
    except UnsupportedModelError as err:
        if algorithm != "auto":
            raise
        return _fallback(model, x, pen, y, lam, loss, err)
    xc, precision = _compute_input(net, x)  # once: checked, then computed with
    net.check_input(xc)
    pen.check(net, y)  # before planning: a penalty that does not fit the network raises its own error
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        # NaN or Inf in the batch: autograd's result, so that they propagate exactly as autograd propagates them
        return _autograd(model, x, pen, y, lam, loss)
    name = resolve_in(plans, net, pen, algorithm, x.shape[0])
    return _explicit(model, net, x, xc, precision, pen, y, name, lam, loss)


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
        xc, precision = _compute_input(net, x)
        net.check_input(xc)
        pen.check(net, y)
        explicit = bool(torch.isfinite(x).all())
    if explicit:
        with precision:
            rec = record(net, xc)
            value = penalty_value(net, rec, pen, y)
            if lam is not None:
                from .seeds import loss_value

                value = loss_value(net.output_map, rec.output, y, loss, rec.logits) + lam * value
        return value
    with torch.inference_mode(False), torch.enable_grad():
        xin = x.clone() if x.is_inference() else x
        inner = unwrap(model)
        value = penalty_by_autograd(inner, xin, pen, y, return_output=lam is not None)
        if lam is not None:
            from .seeds import loss_value

            value, out = value
            value = loss_value(output_map_of(inner), out, y, loss) + lam * value
    return value.detach()


def penalty(model: nn.Module | Network, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None, *, algorithm: str = "auto") -> torch.Tensor:
    """``R`` of eq. (10), differentiable (once) with respect to the model's parameters and ``x``.

    Parameters
    ----------
    model : nn.Module, DistributedDataParallel or Network
        Any model. An ``nn.Sequential`` of supported modules (see
        ``dbpaper.network.SUPPORTED_MODULES``) runs the explicit algorithms;
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

        Default: derived from ``y`` by one rule (``dbpaper.autograd.loss_for``) — integer
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
