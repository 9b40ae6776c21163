"""The autograd fallback: ``R`` of eq. (10) for *any* model by ``create_graph=True``.

What ``algorithm="auto"`` runs for a model outside the framework of eq. (8)
(with a :class:`~dbpaper.FallbackWarning`), and what ``algorithm="autograd"``
runs for every model: differentiable to any order, no speed-up. The test
oracles and the benchmark peers live in :mod:`dbpaper.oracles`.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import nn

from ._precomputed import Precomputed, average_over_ranks, guard_second_order, is_ddp
from .losses import loss_value
from .network import UnsupportedModelError, output_map_of, unwrap
from .penalties import (
    Penalty,
)
from .planning import warn_fallback, warn_mixing

__all__ = ["autograd_value", "objective_by_autograd", "penalty_by_autograd", "penalty_from_output", "run_fallback", "warn_if_mixing"]


@overload
def penalty_by_autograd(
    model: nn.Module, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None, *, return_output: Literal[False] = False
) -> torch.Tensor: ...


@overload
def penalty_by_autograd(
    model: nn.Module, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None, *, return_output: Literal[True]
) -> tuple[torch.Tensor, torch.Tensor]: ...


def penalty_by_autograd(
    model: nn.Module, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None, *, return_output: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``R`` of eq. (10) for *any* model, by autograd with ``create_graph=True`` (the fallback of ``"auto"``).

    The batch mean of the per-example penalty as everywhere; the ``C``
    terms of the Jacobian penalty are summed before any backward. The model
    is called once on ``x``; the output is read as in :func:`dbpaper.readers.output_map_of`.
    ``R`` is differentiable to any order in the parameters and, if ``x``
    requires grad, in ``x``. Modules that mix examples (BatchNorm in training
    mode) make the input gradient of one example depend on the others; the
    penalty is then what autograd computes for the batch. With
    ``return_output=True`` the model's output is returned too: ``(R, x_L)``.
    """
    with torch.enable_grad():
        xin = x if x.requires_grad else x.detach().requires_grad_(True)
        out = model(xin)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"dbpaper: the model returned a {type(out).__name__}, not a tensor (an nn.LSTM, for one, returns "
                "(output, (h, c))); a penalty needs the model's output as one tensor of shape (N, ...): wrap the "
                "model in a module that returns the tensor to penalise"
            )
        value = penalty_from_output(model, xin, out, penalty, y)
    return (value, out) if return_output else value


def penalty_from_output(
    model: nn.Module, xin: torch.Tensor, out: torch.Tensor, penalty: Penalty, y: torch.Tensor | None
) -> torch.Tensor:
    """``R`` from the penalty's own autograd terms (``create_graph=True``), summed before any backward."""
    penalty.check_outputs(out[0].numel())
    terms = penalty.autograd_terms(model, xin, out, y)
    return sum(terms[1:], terms[0])


def objective_by_autograd(
    model: nn.Module, x: torch.Tensor, pen: Penalty, y: torch.Tensor | None, lam: float | None, loss: str | None
) -> torch.Tensor:
    """``R`` (``lam`` is ``None``) or ``ℓ + λR`` by autograd, the model's output read as :func:`dbpaper.readers.output_map_of` does."""
    if lam is None:
        return penalty_by_autograd(model, x, pen, y)
    value, out = penalty_by_autograd(model, x, pen, y, return_output=True)
    return loss_value(output_map_of(model), out, y, loss) + lam * value


def autograd_value(
    model: nn.Module, x: torch.Tensor, pen: Penalty, y: torch.Tensor | None, lam: float | None, loss: str | None
) -> torch.Tensor:
    """The autograd implementation of the same quantity (graph kept: differentiable to any order)."""
    inner = unwrap(model)
    value = objective_by_autograd(inner, x, pen, y, lam, loss)
    if is_ddp(model):  # no graph through DDP's reducer: average the gradients now, as the explicit path does
        params = [p for p in inner.parameters() if p.requires_grad]
        wants_x = x.requires_grad
        grads = torch.autograd.grad(value, params + ([x] if wants_x else []), allow_unused=True, materialize_grads=True)
        gx = grads[-1] if wants_x else None
        grads = average_over_ranks(list(grads[: len(params)]), model.process_group)
        value = Precomputed.apply(value.detach(), x, gx, len(grads), *grads, *params)
        return guard_second_order(value)
    return value


def _mixes_examples(model: nn.Module) -> str | None:
    """The first module that mixes the examples of a batch (BatchNorm in training mode), or ``None``."""
    if not isinstance(model, nn.Module):
        return None
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return name or type(m).__name__
    return None


def run_fallback(
    model: nn.Module,
    x: torch.Tensor,
    pen: Penalty,
    y: torch.Tensor | None,
    lam: float | None,
    loss: str | None,
    err: UnsupportedModelError | None,
) -> torch.Tensor:
    inner = unwrap(model)
    if err is not None:
        warn_fallback(inner, err)
    warn_if_mixing(inner)
    return autograd_value(model, x, pen, y, lam, loss)


def warn_if_mixing(inner: nn.Module) -> None:
    """A :class:`~dbpaper.BatchMixingWarning` if ``inner`` mixes the examples of a batch (BatchNorm in training mode)."""
    mixer = _mixes_examples(inner)
    if mixer is not None:
        warn_mixing(mixer)

