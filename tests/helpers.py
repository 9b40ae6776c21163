"""Registries shared by the tests: every operator and activation gets every test for free."""

from __future__ import annotations

import torch

import dbpaper as dbp

DTYPES = [torch.float32, torch.float64]

# name -> factory; hyperparameters cover strides, padding, dilation, groups and odd sizes
OPERATORS = {
    "dense": lambda: dbp.Dense(7, 5),
    "dense-1x1": lambda: dbp.Dense(1, 1),
    "conv1d": lambda: dbp.Conv1d((3, 11), 4, 3),
    "conv1d-stride-pad-dil-groups": lambda: dbp.Conv1d((4, 13), 6, 3, stride=2, padding=2, dilation=2, groups=2),
    "conv2d": lambda: dbp.Conv2d((3, 7, 6), 4, 3),
    "conv2d-stride2-pad1": lambda: dbp.Conv2d((3, 9, 8), 5, 3, stride=2, padding=1),
    "conv2d-rect-kernel-dil": lambda: dbp.Conv2d((2, 9, 10), 3, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
    "conv2d-depthwise": lambda: dbp.Conv2d((4, 7, 7), 8, 3, padding=1, groups=4),
    "locally-connected2d": lambda: dbp.LocallyConnected2d((3, 7, 6), 4, 3),
    "locally-connected2d-stride-pad": lambda: dbp.LocallyConnected2d((2, 9, 8), 3, (3, 2), stride=2, padding=1, dilation=(1, 2)),
    "avgpool2d": lambda: dbp.AvgPool2d((3, 8, 8), 2),
    "avgpool2d-odd-ceil-nopad": lambda: dbp.AvgPool2d((2, 7, 9), 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "downsample2": lambda: dbp.InvertibleDownsampling((3, 6, 4), 2),
    "downsample3": lambda: dbp.InvertibleDownsampling((2, 9, 6), 3),
    "hadamard": lambda: dbp.Hadamard((4, 5)),
}

ACTIVATIONS = {
    "identity": dbp.Identity(),
    "relu": dbp.ReLU(),
    "leaky-relu": dbp.LeakyReLU(0.1),
    "tanh": dbp.Tanh(),
    "sigmoid": dbp.Sigmoid(),
    "softplus": dbp.Softplus(beta=2.0),
    "elu": dbp.ELU(0.7),
}

# the torch modules the activations mirror (for derivative checks against autograd)
TORCH_ACTIVATIONS = {
    "identity": torch.nn.Identity(),
    "relu": torch.nn.ReLU(),
    "leaky-relu": torch.nn.LeakyReLU(0.1),
    "tanh": torch.nn.Tanh(),
    "sigmoid": torch.nn.Sigmoid(),
    "softplus": torch.nn.Softplus(beta=2.0),
    "elu": torch.nn.ELU(0.7),
}


def random_triple(op, dtype, batch=3, seed=0):
    """Random (theta, x, y) for ``op``; Hadamard's theta is batched."""
    g = torch.Generator().manual_seed(seed)
    pshape = (batch, *op.param_shape) if isinstance(op, dbp.Hadamard) else op.param_shape
    theta = torch.randn(pshape, generator=g, dtype=dtype)
    x = torch.randn((batch, *op.in_shape), generator=g, dtype=dtype)
    y = torch.randn((batch, *op.out_shape), generator=g, dtype=dtype)
    return theta, x, y


def tol(dtype, factor=100.0):
    return dbp.dtype_tolerance(dtype, factor)
