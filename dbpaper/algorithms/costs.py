"""The pieces of the cost model that several algorithms share (the planner's module docstring has the formulas).

With ``m_j`` the multiply-adds of one evaluation of layer ``j``'s operator on
one example, ``F = Σ_j m_j``, ``F□ = Σ_{j: θ_j trained} m_j`` and
``F' = Σ_{j ≥ 2} m_j``.
"""

from __future__ import annotations

from ..activations import IdentityOutput
from ..network import Network
from ..penalties import Penalty
from .registry import Estimate

__all__ = ["autograd_cost", "eta_vanishes", "layer_sums", "power_iteration_flops"]


def layer_sums(net: Network) -> tuple[int, int, int]:
    """``(F, F□, F')`` of the module docstring."""
    ms = [layer.op.macs for layer in net.layers]
    trained = sum(m for m, layer in zip(ms, net.layers) if layer.weight is not None)
    return sum(ms), trained, sum(ms[1:])


def eta_vanishes(net: Network, penalty: Penalty) -> bool:
    """Section 5.3: an identity output, locally linear activations and a network-independent ``v``."""
    return isinstance(net.output_map, IdentityOutput) and net.locally_linear and penalty.constant_v


def power_iteration_flops(net: Network, penalty: Penalty, batch: int) -> int:
    """The linearised passes a penalty spends on choosing ``v`` (power iterations): ``2N · 2F`` each."""
    return 2 * batch * 2 * layer_sums(net)[0] * penalty.extra_passes


def autograd_cost(net: Network, penalty: Penalty, batch: int) -> Estimate:
    """``create_graph=True`` with the ``S`` penalties summed before one backward (the peer of the estimates)."""
    L, n = net.depth, batch
    F, Fbox, Fprime = layer_sums(net)
    S = penalty.num_seeds(net)
    flops = 2 * n * (F + S * (2 * F + Fbox) + Fprime + Fbox) + power_iteration_flops(net, penalty, n)
    return Estimate(flops, 6 * L + S * (12 * L + 5))
