"""dbpaper: the executable companion to "A Closer Look at Double Backpropagation" (Etmann, 2019).

The public API is listed in ``__all__``; everything else is private. The code
that exists for the companion book (figures, tables, benchmarks, the loss
landscapes of Section 6) lives in :mod:`dbpaper.paper`, which imports this
library and is never imported by it.
"""

from . import (
    activations,
    algorithms,
    counting,
    fallback,
    nn,
    normalisation,
    numdiff,
    operators,
    oracles,
    penalties,
    planning,
    readers,
)
from ._reduction import REDUCTIONS, Reduction
from .activations import (
    ELU,
    Activation,
    CoordinatewiseOutput,
    Identity,
    IdentityOutput,
    LeakyReLU,
    OutputMap,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from .api import count_operations, double_backprop, objective, penalty
from .diagnostics import AdjointErrors, adjoint_errors, dtype_tolerance, theorem_2_3_errors
from .network import Network, UnsupportedModelError
from .operators import (
    AvgPool2d,
    BilinearOperator,
    ChannelScale,
    Conv1d,
    Conv2d,
    Dense,
    Hadamard,
    IdentityMap,
    InvertibleDownsampling,
    LocallyConnected2d,
    MaxPool1d,
    MaxPool2d,
)
from .planning import ALGORITHM_NAMES, AlgorithmName, BatchMixingWarning, ExecutionPlan, FallbackWarning, plan

# the one place the package registers its built-in layer readers and algorithms (importing a module registers nothing)
readers.register_builtin()
algorithms.register_builtin()

__version__ = "0.5.0"

__all__ = [
    "ALGORITHM_NAMES",
    "AlgorithmName",
    "REDUCTIONS",
    "Reduction",
    "ExecutionPlan",
    "BatchMixingWarning",
    "FallbackWarning",
    "Network",
    "UnsupportedModelError",
    "plan",
    "planning",
    "algorithms",
    "count_operations",
    "double_backprop",
    "numdiff",
    "objective",
    "penalties",
    "penalty",
    "oracles",
    "fallback",
    "counting",
    "readers",
    "nn",
    "ELU",
    "Activation",
    "CoordinatewiseOutput",
    "AdjointErrors",
    "AvgPool2d",
    "BilinearOperator",
    "ChannelScale",
    "Conv1d",
    "Conv2d",
    "Dense",
    "Hadamard",
    "Identity",
    "IdentityOutput",
    "IdentityMap",
    "InvertibleDownsampling",
    "LeakyReLU",
    "LocallyConnected2d",
    "MaxPool1d",
    "MaxPool2d",
    "OutputMap",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
    "activations",
    "adjoint_errors",
    "dtype_tolerance",
    "normalisation",
    "operators",
    "theorem_2_3_errors",
]
