"""The autograd fallback: ``R`` of eq. (10) for *any* model by ``create_graph=True``.

What ``algorithm="auto"`` runs for a model outside the framework of eq. (8)
(with a :class:`~dbpaper.FallbackWarning`), and what ``algorithm="autograd"``
runs for every model: differentiable to any order, no speed-up. The test
oracles and the benchmark peers live in :mod:`dbpaper.oracles`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ._precomputed import Precomputed, average_over_ranks, guard_second_order, is_ddp
from .network import UnsupportedModelError, unwrap
from .penalties import (
    ClassicalDoubleBackprop,
    GeneralPenalty,
    JacobianFrobenius,
    OperatorNorm,
    OutputNodeGradient,
    Penalty,
)
from .planning import BatchMixingWarning, warn_fallback
from .seeds import loss_value

__all__ = ["autograd_value", "output_map_of", "penalty_by_autograd", "run_fallback"]


def output_map_of(model: nn.Module):
    """The output map ``g_L`` a model ends with: :class:`~dbpaper.Softmax` if its last module is ``nn.Softmax`` over the
    last dimension (looking into nested ``nn.Sequential``), a :class:`~dbpaper.activations.CoordinatewiseOutput` for a
    final sigmoid, tanh, softplus, ... (for the losses it acts like the identity: ``x_L`` is read as logits), else the
    identity."""
    from . import activations as act
    from .network import unwrap

    m = unwrap(model)
    while isinstance(m, nn.Sequential) and len(m) > 0:
        m = m[-1]
    if isinstance(m, nn.Softmax) and m.dim in (-1, 1):
        return act.Softmax()
    final = {nn.Sigmoid: act.Sigmoid, nn.Tanh: act.Tanh, nn.ReLU: act.ReLU}
    if type(m) in final:
        return act.CoordinatewiseOutput(final[type(m)]())
    if type(m) is nn.Softplus:
        return act.CoordinatewiseOutput(act.Softplus(m.beta, m.threshold))
    return act.IdentityOutput()


def penalty_by_autograd(model, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None, *, return_output: bool = False):
    """``R`` of eq. (10) for *any* model, by autograd with ``create_graph=True`` (the fallback of ``"auto"``).

    The batch mean of the per-example penalty as everywhere; the ``C``
    terms of the Jacobian penalty are summed before any backward. The model
    is called once on ``x``; the output is read as in :func:`output_map_of`.
    ``R`` is differentiable to any order in the parameters and, if ``x``
    requires grad, in ``x``. Modules that mix examples (BatchNorm in training
    mode) make the input gradient of one example depend on the others; the
    penalty is then what autograd computes for the batch. With
    ``return_output=True`` the model's output is returned too: ``(R, x_L)``.
    """
    with torch.enable_grad():
        xin = x if x.requires_grad else x.detach().requires_grad_(True)
        out = model(xin)
        value = _autograd_value(model, xin, out, penalty, y)
    return (value, out) if return_output else value


def _general_value(penalty: GeneralPenalty, xin: torch.Tensor, out: torch.Tensor, y) -> torch.Tensor:
    """``mean_n p((dx_L/dx_0)* v)`` for a :class:`~dbpaper.penalties.GeneralPenalty` with ``create_graph=True``.

    A ``v`` that is a function of ``x_L`` enters as ``grad_outputs`` computed
    from the recorded output, so its dependence on the network is
    differentiated too; ``p``'s per-batch targets (Sobolev) are constants.
    """
    if hasattr(penalty, "check_outputs"):
        penalty.check_outputs(out[0].numel())
    p = penalty.p_for(xin.detach(), y)
    v = penalty.v_for(out, y)
    (xi,) = torch.autograd.grad(out, xin, grad_outputs=v, create_graph=True, retain_graph=True)
    return p.value(xi).sum() / xin.shape[0]


def _autograd_value(model, xin: torch.Tensor, out: torch.Tensor, penalty: Penalty, y) -> torch.Tensor:
    n = xin.shape[0]
    if isinstance(penalty, GeneralPenalty):
        return _general_value(penalty, xin, out, y)
    if isinstance(penalty, ClassicalDoubleBackprop):
        loss = loss_value(output_map_of(model), out, y, penalty.loss) * n  # Σ_n ℓ_n: per-example input gradients
        (xi,) = torch.autograd.grad(loss, xin, create_graph=True)
        return penalty.p.value(xi).sum() / n
    if isinstance(penalty, OutputNodeGradient | JacobianFrobenius):
        flat = out.reshape(n, -1)
        idx = [penalty.index] if isinstance(penalty, OutputNodeGradient) else range(flat.shape[1])
        if isinstance(penalty, OutputNodeGradient) and penalty.index >= flat.shape[1]:
            raise ValueError(f"OutputNodeGradient: index {penalty.index} is out of range for {flat.shape[1]} outputs")
        total = out.new_zeros(())
        for i in idx:
            (xi,) = torch.autograd.grad(flat[:, i].sum(), xin, create_graph=True, retain_graph=True)
            total = total + penalty.p.value(xi).sum() / n
        return total
    if isinstance(penalty, OperatorNorm):
        v = penalty.sample_v(out.detach())
        for _ in range(penalty.iterations - 1):  # v <- J Jᵀ v / ‖J Jᵀ v‖, with J u by the double-vjp trick
            w = torch.zeros_like(out).requires_grad_(True)
            (g,) = torch.autograd.grad(out, xin, w, create_graph=True, retain_graph=True)
            (jw,) = torch.autograd.grad(g, w, torch.autograd.grad(out, xin, v, retain_graph=True)[0], retain_graph=True)
            nrm = torch.linalg.vector_norm(jw.reshape(n, -1), dim=1).reshape((-1,) + (1,) * (jw.ndim - 1))
            v = (jw / torch.where(nrm > 0, nrm, torch.ones_like(nrm))).detach()
        (xi,) = torch.autograd.grad(out, xin, v, create_graph=True)
        return penalty.p.value(xi).sum() / n
    raise TypeError(f"no autograd implementation for {penalty!r}")


def autograd_value(model, x, pen, y, lam: float | None, loss: str | None) -> torch.Tensor:
    """The autograd implementation of the same quantity (graph kept: differentiable to any order)."""
    inner = unwrap(model)
    if lam is None:
        value = penalty_by_autograd(inner, x, pen, y)
    else:
        value, out = penalty_by_autograd(inner, x, pen, y, return_output=True)
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


def run_fallback(model, x, pen, y, lam, loss, err: UnsupportedModelError | None) -> torch.Tensor:
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
    return autograd_value(model, x, pen, y, lam, loss)
