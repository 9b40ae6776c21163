"""Differentiable penalties for training loops: a custom ``torch.autograd.Function``.

``dbpaper.penalty(model, x, penalty)`` returns ``R`` as a tensor whose
backward delivers ``∇_θ R`` and ``∇_b R`` computed by the explicit
algorithms. The usual ``(loss + lam * R).backward()`` is then a single,
first-order backward pass: no ``create_graph=True``, no graph of the input
gradient kept alive, and it works where double backward does not (for
example under ``torch.compile``'s AOT autograd).

If ``x`` requires grad, ``∇_{x_0} R = K_1ᵀ(θ_1, η_1)`` is returned too (one
extra evaluation of ``Kᵀ``).
"""

from __future__ import annotations

import torch
from torch import nn

from .algorithms.driver import double_backprop
from .algorithms.passes import LayerGradients
from .network import Network

__all__ = ["as_network", "objective", "penalty"]


def as_network(model: nn.Module | Network, x: torch.Tensor) -> Network:
    """``model`` read as the network of eq. (8) for inputs shaped like ``x``."""
    if isinstance(model, Network):
        return model
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch dimension, got shape {tuple(x.shape)}")
    return Network.from_sequential(model, x.shape[1:])


def _flat(net: Network, grads: LayerGradients) -> list[torch.Tensor]:
    out = []
    for layer, gw, gb in zip(net.layers, grads.weights, grads.biases):
        if layer.weight is not None:
            out.append(gw)
        if layer.bias is not None:
            out.append(gb)
    return out


class _Penalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, *params):
        net, pen, y, algorithm, lam = spec
        res = double_backprop(net, x.detach(), pen, y, algorithm=algorithm, with_loss=lam is not None)
        grads = _flat(net, res.gradients)
        value = res.value
        if lam is not None:  # the objective ℓ + λR of Section 4.5
            value = res.loss + lam * value
            grads = [gl + lam * g for gl, g in zip(_flat(net, res.loss_gradients), grads)]
        eta_1 = res.gradients.eta_1
        ctx.net = net
        ctx.input_scale = lam if lam is not None else 1.0
        ctx.has_eta = eta_1 is not None
        ctx.save_for_backward(*grads, *( [eta_1] if eta_1 is not None else []))
        return value

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        grads, eta = (saved[:-1], saved[-1]) if ctx.has_eta else (saved, None)
        grad_x = None
        if ctx.needs_input_grad[1]:
            if ctx.input_scale != 1.0:
                raise NotImplementedError("the input gradient of the full objective is not provided; use penalty()")
            first = ctx.net.layers[0]
            if eta is None:
                grad_x = None
            else:
                grad_x = grad_out * first.KT(first.theta(eta), eta)
        return (None, grad_x, *(grad_out * g for g in grads))


def penalty(model: nn.Module | Network, x: torch.Tensor, penalty, y: torch.Tensor | None = None, *, algorithm: str = "general") -> torch.Tensor:
    """``R`` of eq. (10), differentiable with respect to the model's parameters (and ``x``).

    Parameters
    ----------
    model : nn.Sequential or Network
        A model of supported modules (see :data:`dbpaper.network.SUPPORTED_MODULES`).
    x : torch.Tensor
        The input batch.
    penalty : dbpaper.penalties.Penalty
        What to penalise, e.g. ``JacobianFrobenius()``.
    y : torch.Tensor, optional
        Labels or targets (classical double backpropagation).
    algorithm : str
        ``"general"`` (Algorithms 1–3) or another registered algorithm, or ``"auto"``.

    Returns
    -------
    torch.Tensor
        The scalar ``R`` (the batch mean of the per-example penalty).
    """
    net = as_network(model, x)
    return _Penalty.apply((net, penalty, y, algorithm, None), x, *net.parameters())


def objective(model: nn.Module | Network, x: torch.Tensor, penalty, y: torch.Tensor, lam: float, *, algorithm: str = "general") -> torch.Tensor:
    """``ℓ + λR`` with both gradients from the algorithms (Section 4.5; the loss as in ``with_loss``)."""
    net = as_network(model, x)
    return _Penalty.apply((net, penalty, y, algorithm, float(lam)), x, *net.parameters())
