"""Algorithms 1–3 of Section 4, Algorithm 4, the initial values of Appendix B and the reuse of Section 4.5.

Only the layers' bilinear operators are called; no autograd runs here. Each
algorithm registers what it runs, where it applies and what it costs
(``dbpaper.algorithms.registry``); the planner (:mod:`dbpaper.planning`)
sits above this package and chooses among them, and the entry points
(:func:`dbpaper.double_backprop`, :func:`dbpaper.penalty`) sit above the planner.
"""

from ..losses import loss_value
from ..seeds import ConstantSeed, LossGradientSeed, Seed, softmax_jacobian_apply
from . import jacobian, registry
from .driver import Result, compute, compute_objective, loss_gradients
from .passes import (
    BackwardBackwardPass,
    BackwardPass,
    LayerGradients,
    backward_backward_pass,
    backward_pass,
    forward_backward_pass,
    forward_backward_sweep,
    linearized_forward,
    standard_backprop,
)
from .registry import ALGORITHMS, REGISTRY, AlgorithmSpec, register_algorithm

__all__ = [
    "ALGORITHMS",
    "REGISTRY",
    "AlgorithmSpec",
    "compute",
    "compute_objective",
    "registry",
    "BackwardBackwardPass",
    "BackwardPass",
    "ConstantSeed",
    "LayerGradients",
    "LossGradientSeed",
    "Result",
    "Seed",
    "backward_backward_pass",
    "backward_pass",
    "forward_backward_pass",
    "forward_backward_sweep",
    "jacobian",
    "linearized_forward",
    "loss_gradients",
    "loss_value",
    "register_algorithm",
    "softmax_jacobian_apply",
    "standard_backprop",
]

