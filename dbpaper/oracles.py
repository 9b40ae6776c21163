"""Autograd implementations of the penalties: the oracles of the tests and the peers of the benchmarks.

Nothing here is used by the algorithms or by the entry points (the fallback
they take for models outside eq. (8) is :mod:`dbpaper.fallback`). Three flavours:

* :func:`autograd_penalty` builds ``R`` with ``create_graph=True`` (double
  backward), one differentiable term per ``v``;
* :func:`func_jacobian_frobenius` uses ``torch.func`` (``vmap(jacrev)``) for
  the Jacobian penalty;
* :func:`reference_gradients` returns ``R`` and its parameter gradients from
  either flavour, in the order of :meth:`dbpaper.Network.parameters`;

and :func:`traced_quantities`, the quantities of Section 4 *defined* as
gradients, recorded by autograd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .network import ForwardRecord, Network
from .penalties import (
    Penalty,
)

__all__ = ["autograd_penalty", "func_jacobian_frobenius", "reference_gradients", "traced_quantities"]


def autograd_penalty(model: nn.Module, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The summands ``mean_n p(ξ_0^{(k)})`` of ``R``, one per ``v``, each differentiable (``create_graph=True``)."""
    Network.from_sequential(model, x.shape[1:])  # the oracle of the explicit algorithms: models of eq. (8) only
    x = x.detach().requires_grad_(True)
    return penalty.autograd_terms(model, x, model(x), y)


def func_jacobian_frobenius(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mean_n ‖J(x_n)‖_F²`` with ``torch.func.vmap(jacrev)`` (differentiable in the parameters)."""

    def single(xi):
        return model(xi.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(single))(x.detach())
    return torch.sum(jac * jac) / x.shape[0]


def reference_gradients(
    model: nn.Module,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor | None = None,
    *,
    mode: str = "summed",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``R`` and ``∇R`` for the parameters (Network order) by autograd.

    ``mode``: ``"summed"`` (all ``v``'s summed, one backward), ``"per_class"``
    (one backward per ``v``, accumulated) or ``"func"`` (``torch.func``; Jacobian
    penalty only).
    """
    net = Network.from_sequential(model, x.shape[1:])
    params = net.parameters()
    if mode == "func":
        c = penalty.squared_norm_scale
        if not penalty.sums_unit_outputs or c is None:
            raise ValueError("mode='func' is implemented for c ‖J‖_F² (the Jacobian penalty, R1 of a one-output critic) only")
        value = func_jacobian_frobenius(model, x) * c
        return value.detach(), [g.detach() for g in torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)]
    terms = autograd_penalty(model, x, penalty, y)
    if mode == "summed":
        value = sum(terms[1:], terms[0])
        return value.detach(), [g.detach() for g in torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)]
    if mode == "per_class":
        grads = [torch.zeros_like(p) for p in params]
        for k, t in enumerate(terms):
            for acc, g in zip(grads, torch.autograd.grad(t, params, retain_graph=k < len(terms) - 1, allow_unused=True, materialize_grads=True)):
                acc += g
        return sum(t.detach() for t in terms), grads
    raise ValueError(f"unknown mode {mode!r}; use 'summed', 'per_class' or 'func'")




def traced_quantities(net: Network, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None) -> dict[str, Any]:
    """The quantities of Section 4 *defined* as gradients, computed by autograd.

    The forward pass and Algorithm 1 are run with autograd recording (the
    operators are differentiable torch code), ``R = mean_n p(ξ_0)`` is formed
    and differentiated once. Then, by their definitions,

    * ``q_j = ∇_{ξ_j} R`` (eq. (18)), ``h_j = ∇_{ζ_j} R``,
    * ``η_j = ∇_{z_j} R`` (Section 4.4), ``γ_j = ∇_{x_j} R`` (eq. (29)),
    * ``∇_{θ_j} R``, ``∇_{b_j} R``,

    are the ``.grad`` of the recorded tensors. Single-seed penalties only.
    Returns lists indexed by the layer number ``j`` (``None`` where undefined),
    together with the forward values ``xs``, ``zs`` and ``xis``, ``zetas``.
    """
    net.require_chain("traced_quantities")
    if penalty.num_seeds(net) != 1:
        raise ValueError("traced_quantities supports penalties with a single v")
    penalty = penalty.bind(x, y)
    L = net.depth
    # θ_j and b_j as the layers hold them (a reader may derive them from the module's parameters)
    params = list({id(t): t for layer in net.layers for t in (layer.weight, layer.bias) if t is not None}.values())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            xs = [x.detach().clone().requires_grad_(True)]
            zs: list = [None]
            dgs: list = [None]
            for j, layer in enumerate(net.layers, start=1):
                z = layer.add_bias(layer.K(layer.theta(x), xs[-1]))
                z.retain_grad()
                zs.append(z)
                xj = layer.activation.f(z)
                xj.retain_grad()
                xs.append(xj)
                dgs.append(layer.activation.df(z) if j < L else None)
            rec = ForwardRecord(xs=xs, d2g=[None] * (L + 1))
            (seed,) = list(penalty.seeds(net, rec, y))  # penalty bound to the batch above
            zetas: list = [None] * (L + 1)
            xis: list = [None] * (L + 1)
            zetas[L] = seed.zeta_L()
            if not zetas[L].requires_grad:  # a network-independent ζ_L: a leaf, so that h_L = ∇_{ζ_L} R is recorded
                zetas[L] = zetas[L].detach().requires_grad_(True)
            for j in range(L, 0, -1):
                zetas[j].retain_grad()
                layer = net.layers[j - 1]
                xis[j - 1] = layer.KT(layer.theta(x), zetas[j])
                xis[j - 1].retain_grad()
                if j > 1:
                    zetas[j - 1] = dgs[j - 1] * xis[j - 1]
            # the definitions (14): ξ_j = (dz_L/dx_j)* ζ_L and ζ_j = (dz_L/dz_j)* ζ_L, by autograd's VJPs
            zl = zetas[L].detach()
            xi_vjp = list(torch.autograd.grad(zs[L], xs[:L], zl, retain_graph=True)) + [None]
            zeta_vjp = [None] + list(torch.autograd.grad(zs[L], zs[1:], zl, retain_graph=True))
            for tensor in [*xs, *zs[1:], *xis[:L], *zetas[1:]]:
                tensor.grad = None  # retain_grad hooks also fire in the autograd.grad calls above
            value = penalty.p.value(xis[0]).sum() / x.shape[0]
            value.backward()
        out = {
            "value": value.detach(),
            "xs": [t.detach() for t in xs],
            "zs": [None] + [t.detach() for t in zs[1:]],
            "xis": [t.detach() if t is not None else None for t in xis],
            "zetas": [t.detach() if t is not None else None for t in zetas],
            "xi_vjp": xi_vjp,
            "zeta_vjp": zeta_vjp,
            "q": [t.grad if t is not None else None for t in xis],
            "h": [t.grad if t is not None else None for t in zetas],
            "eta": [None] + [t.grad for t in zs[1:]],
            "gamma": [t.grad for t in xs],
            "weight_grads": [None] + [lay.weight.grad.clone() if lay.weight is not None and lay.weight.grad is not None else None for lay in net.layers],
            "bias_grads": [None] + [lay.bias.grad.clone() if lay.bias is not None and lay.bias.grad is not None else None for lay in net.layers],
        }
    finally:
        for p, s in zip(params, saved):
            p.grad = None
            p.requires_grad_(s)
    return out
