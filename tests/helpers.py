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
    "conv2d-one-channel-flip": lambda: dbp.Conv2d((1, 9, 8), 3, 3, padding=2, dilation=2),
    "conv2d-two-channels-flip-rect": lambda: dbp.Conv2d((2, 7, 7), 4, (3, 2), padding=(0, 1)),
    "conv2d-one-channel-wide-pad": lambda: dbp.Conv2d((1, 6, 6), 2, 2, padding=2),
    "conv2d-stride3-output-padding": lambda: dbp.Conv2d((1, 11, 10), 3, 2, stride=3, padding=1),
    "conv1d-stride2-output-padding": lambda: dbp.Conv1d((1, 10), 2, 3, stride=2),
    "conv2d-depthwise": lambda: dbp.Conv2d((4, 7, 7), 8, 3, padding=1, groups=4),
    "locally-connected2d": lambda: dbp.LocallyConnected2d((3, 7, 6), 4, 3),
    "locally-connected2d-stride-pad": lambda: dbp.LocallyConnected2d((2, 9, 8), 3, (3, 2), stride=2, padding=1, dilation=(1, 2)),
    "avgpool2d": lambda: dbp.AvgPool2d((3, 8, 8), 2),
    "avgpool2d-tiles-border": lambda: dbp.AvgPool2d((2, 7, 9), 3),  # kernel = stride, windows miss the border
    "avgpool2d-tiles-rect": lambda: dbp.AvgPool2d((2, 6, 8), (3, 2)),
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


# -- random networks for the algorithm tests ---------------------------------------------------

TORCH_ACT_FACTORIES = {
    "relu": lambda: torch.nn.ReLU(),
    "leaky-relu": lambda: torch.nn.LeakyReLU(0.2),
    "tanh": lambda: torch.nn.Tanh(),
    "sigmoid": lambda: torch.nn.Sigmoid(),
    "softplus": lambda: torch.nn.Softplus(beta=1.5),
    "elu": lambda: torch.nn.ELU(0.8),
}

ARCHITECTURES = ("dense", "conv1d", "conv2d", "locally-connected", "pool-downsample")


def random_model(arch, act, softmax, *, seed=0, classes=4, dtype=torch.float64):
    """A small random ``nn.Sequential`` of the given architecture; returns (model, per-example input shape)."""
    from dbpaper.nn import LocallyConnected2d

    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    a = TORCH_ACT_FACTORIES[act]
    nn = torch.nn
    if arch == "dense":
        depth = r(1, 4)
        widths = [r(2, 6) for _ in range(depth)]
        mods, prev = [], widths[0]
        for w in widths[1:]:
            mods += [nn.Linear(prev, w, bias=bool(r(0, 3))), a()]
            prev = w
        mods.append(nn.Linear(prev, classes))
        in_shape = (widths[0],)
    elif arch == "conv1d":
        c, length = r(1, 3), r(8, 12)
        conv2 = nn.Conv1d(4, 4, 3, stride=2, padding=1, groups=2)
        mods = [nn.Conv1d(c, 4, 3, padding=r(0, 1), dilation=r(1, 2)), a(), conv2, a(), nn.Flatten()]
        in_shape = (c, length)
    elif arch == "conv2d":
        c = r(1, 2)
        mods = [nn.Conv2d(c, 4, 3, stride=r(1, 2), padding=1), a(), nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(4, 4, 2, groups=2, bias=False), a(), nn.Flatten()]
        in_shape = (c, r(7, 9), r(7, 9))
    elif arch == "locally-connected":
        in_shape = (2, r(5, 6), r(5, 6))
        mods = [LocallyConnected2d(in_shape, 3, 3, stride=r(1, 2), padding=1, dtype=torch.float32), a(), nn.Flatten()]
    elif arch == "pool-downsample":
        in_shape = (1, 8, 8)
        mods = [nn.PixelUnshuffle(2), nn.Conv2d(4, 3, 3, padding=1), a(), nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.Flatten()]
    else:
        raise ValueError(arch)
    if arch != "dense":
        with torch.no_grad():
            flat = torch.nn.Sequential(*mods)(torch.zeros(1, *in_shape)).shape[1]
        mods += [nn.Linear(flat, 5), a(), nn.Linear(5, classes)]
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    torch.manual_seed(seed)
    model = nn.Sequential(*mods)
    for name, p in model.named_parameters():  # re-draw, scaled to keep pre-activations O(1) (no saturated softmax)
        fan_in = max(1, p[0].numel() if "weight" in name else 1)
        if isinstance(model[int(name.split(".")[0])], LocallyConnected2d) and "weight" in name:
            fan_in = p[0, 0, 0].numel()
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5 if "weight" in name else 0.5))
    return model.to(dtype), in_shape


def random_input(in_shape, batch=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn((batch, *in_shape), generator=g, dtype=dtype)


def assert_close(model, x, ours, ref, with_x=True, rtol=1e-10):
    """``ours`` and ``ref`` (scalars with graphs) agree in value and in their gradients (parameters and ``x``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    targets = params + ([x] if with_x else [])
    g1 = torch.autograd.grad(ours, targets, allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(ref, targets, allow_unused=True, materialize_grads=True, retain_graph=True)
    assert abs(float(ours.detach()) - float(ref.detach())) <= rtol * abs(float(ref.detach())) + 1e-14
    scale = max(float(b.norm()) for b in g2)
    for a, b in zip(g1, g2):
        assert float((a - b).norm()) <= rtol * scale + 1e-14
