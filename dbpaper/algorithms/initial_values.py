"""The initial values of Appendix B, under the name the algorithms' package has always exported them.

They live in :mod:`dbpaper.seeds` (the penalties build on them, and the algorithms build on the
penalties); this module re-exports them so that ``dbpaper.algorithms.initial_values`` keeps working.
"""

from ..losses import loss_value
from ..seeds import ConstantSeed, FunctionSeed, LossGradientSeed, Seed, softmax_jacobian_apply

__all__ = ["ConstantSeed", "FunctionSeed", "LossGradientSeed", "Seed", "loss_value", "softmax_jacobian_apply"]
