"""Every rule of Section 4 and Appendix B, checked against its definition.

:func:`section_4_checks` runs the explicit algorithms and the autograd
definitions of :func:`dbpaper.oracles.traced_quantities` on one network
and returns one row per printed equation with the largest relative error
over the layers. The book's chapters display these rows; the tests assert them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..activations import IdentityOutput, Softmax
from ..algorithms.passes import backward_backward_pass, backward_pass, forward_backward_pass
from ..network import Network
from ..oracles import traced_quantities
from ..seeds import ConstantSeed
from . import printed

if TYPE_CHECKING:
    from ..penalties import Penalty

__all__ = ["Check", "section_4_checks"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One printed formula: where it is, what it says, and its largest relative error against autograd."""

    equation: str
    statement: str
    error: float


def _rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None and b is None:
        return 0.0
    a = torch.zeros_like(b) if a is None else a
    b = torch.zeros_like(a) if b is None else b
    scale = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    return diff / scale if scale > 0 else diff


def section_4_checks(net: Network, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None) -> list[Check]:
    """Check eqs. (14)–(16), (20)–(22), (28), (30), (31) and Appendix B on one network (single-``v`` penalties)."""
    net.require_chain("section_4_checks")
    gen = getattr(penalty, "generator", None)
    state = gen.get_state() if gen is not None else torch.get_rng_state()
    t = traced_quantities(net, x, penalty, y)
    gen.set_state(state) if gen is not None else torch.set_rng_state(state)  # the same random v for both
    L, n = net.depth, x.shape[0]
    with torch.no_grad():
        rec = net.forward(x)
        penalty = penalty.bind(x, y)  # the batch's p (Sobolev targets)
        (seed,) = list(penalty.seeds(net, rec, y))
        bp = backward_pass(net, rec, seed.zeta_L())
        bbp = backward_backward_pass(net, rec, penalty.p.grad(bp.xis[0]) / n)
        eta_L = seed.eta_L(bbp.hs[L])
        trace: dict = {}
        grads = forward_backward_pass(net, rec, bp, bbp, eta_L, trace=trace)
    js = range(1, L + 1)
    rows = [
        Check("(14)–(16), Alg. 1", "ξ_j = K_{j+1}ᵀ(θ, ζ_{j+1}) equals (dx_L/dx_j)* v", max(_rel(bp.xis[j], t["xi_vjp"][j]) for j in range(L))),
        Check("(15), Alg. 1", "ζ_j = G'_j(z_j) ξ_j equals (dx_L/dz_j)* v", max(_rel(bp.zetas[j], t["zeta_vjp"][j]) for j in js)),
        Check("(20), Alg. 2", "h_j = K_j(θ_j, q_{j-1}) equals ∇_{ζ_j} R", max(_rel(bbp.hs[j], t["h"][j]) for j in js)),
        Check("(21), Alg. 2", "q_j = G'_j(z_j) h_j equals ∇_{ξ_j} R", max(_rel(bbp.qs[j], t["q"][j]) for j in range(L))),
        Check("(28), Alg. 3", "η_j = M(G''h_j, ξ_j) + G'γ_j equals ∇_{z_j} R", max(_rel(trace["eta"][j], t["eta"][j]) for j in js)),
        Check("(30), Alg. 3", "γ_{j-1} = K_jᵀ(θ_j, η_j) equals ∇_{x_{j-1}} R", max(_rel(trace["gamma"][j], t["gamma"][j]) for j in range(1, L))),
        Check(
            "(31), Alg. 3",
            "∇_θj R = K□(q_{j-1}, ζ_j) + K□(x_{j-1}, η_j)",
            max(_rel(grads.weights[j - 1], t["weight_grads"][j]) for j in js if net.layers[j - 1].weight is not None),
        ),
        Check(
            "(22), (31)",
            "∇_bj R = η_j (summed over shared positions)",
            max([_rel(grads.biases[j - 1], t["bias_grads"][j]) for j in js if net.layers[j - 1].bias is not None] or [0.0]),
        ),
        Check("App. B", "η_L from Appendix B (as implemented) equals ∇_{z_L} R", _rel(eta_L, t["eta"][L])),
    ]
    if isinstance(seed, ConstantSeed) and isinstance(net.output_map, Softmax):
        with torch.no_grad():
            printed_eta = printed.eta_L_softmax_B1(rec.output, seed.v, bbp.hs[L])
        rows.append(Check("App. B.1 (printed)", "η_L as printed in Appendix B.1 equals ∇_{z_L} R", _rel(printed_eta, t["eta"][L])))
    if isinstance(seed, ConstantSeed) and isinstance(net.output_map, IdentityOutput):
        rows.append(Check("App. B.3", "η_L = 0 for the identity output", _rel(None, t["eta"][L])))
    return rows
