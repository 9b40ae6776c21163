"""Algorithms 1–3 of Section 4, the initial values of Appendix B and the reuse of Section 4.5.

Only the layers' bilinear operators are called; no autograd runs here.
"""

from . import jacobian
from .driver import ALGORITHMS, Result, double_backprop, loss_kind, register_algorithm
from .initial_values import ConstantSeed, LossGradientSeed, Seed, loss_value, softmax_jacobian_apply
from .passes import (
    BackwardBackwardPass,
    BackwardPass,
    LayerGradients,
    backward_backward_pass,
    backward_pass,
    forward_backward_pass,
    linearized_forward,
    standard_backprop,
)

__all__ = [
    "ALGORITHMS",
    "BackwardBackwardPass",
    "BackwardPass",
    "ConstantSeed",
    "LayerGradients",
    "LossGradientSeed",
    "Result",
    "Seed",
    "backward_backward_pass",
    "backward_pass",
    "double_backprop",
    "forward_backward_pass",
    "jacobian",
    "linearized_forward",
    "loss_kind",
    "loss_value",
    "register_algorithm",
    "softmax_jacobian_apply",
    "standard_backprop",
]
