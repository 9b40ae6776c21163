"""Algorithms 1–3 of Section 4, Algorithm 4, the initial values of Appendix B and the reuse of Section 4.5.

Only the layers' bilinear operators are called; no autograd runs here. Each
algorithm registers what it runs, where it applies and what it costs
(``dbpaper.algorithms.registry``); the planner (:mod:`dbpaper.planning`)
sits above this package and chooses among them, and the entry points
(:func:`dbpaper.double_backprop`, :func:`dbpaper.penalty`) sit above the planner.
"""

from ..losses import loss_value
from ..seeds import ConstantSeed, LossGradientSeed, Seed, softmax_jacobian_apply
from . import general, jacobian, registry
from ._dispatch import compute, compute_objective
from .general import General, Minimal, Result, loss_gradients
from .jacobian import Optimized
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
from .registry import (
    REGISTRY,
    Algorithm,
    Estimate,
    FunctionAlgorithm,
    LossFold,
    Outcome,
    register,
    register_algorithm,
    unregister,
)

__all__ = [
    "REGISTRY",
    "Algorithm",
    "Estimate",
    "FunctionAlgorithm",
    "General",
    "LossFold",
    "Minimal",
    "Optimized",
    "Outcome",
    "register",
    "unregister",
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


def register_builtin() -> None:
    """The built-in algorithms, in the order ``"auto"`` breaks ties by: Algorithms 1–3, then Algorithm 4 (called once, by ``dbpaper``)."""
    general.register_builtin()  # "minimal", "general"
    jacobian.register_builtin()  # "optimized", "optimized-shortcuts", "optimized-chunked"

