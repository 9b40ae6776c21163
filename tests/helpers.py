"""Registries shared by the tests and the one comparison with the autograd oracle.

Every operator, activation, random network and penalty registered here gets every test for
free; ``tests/conftest.py`` turns the registries (and ``dbpaper.algorithms.REGISTRY``) into
parametrisations and fixtures.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re

import pytest
import torch

import dbpaper
import dbpaper as dbp
from dbpaper import penalties as P
from dbpaper.oracles import reference_gradients

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
    "channel-scale": lambda: dbp.ChannelScale((3, 5, 4)),
    "channel-scale-flat": lambda: dbp.ChannelScale((6,)),
}

def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "-", name).lower()  # LeakyReLU -> leaky-relu


# every coordinate-wise activation the package reads, from the layer readers (dbpaper.readers): a new
# activation with a reader and an example is in every test below without a line here
TORCH_ACT_FACTORIES = {_kebab(m.__name__): r.example for m, r in dbp.readers.READERS.items() if r.kind == "activation"}

# the torch modules the activations mirror (for derivative checks against autograd), and the package's reading
TORCH_ACTIVATIONS = {"identity": torch.nn.Identity(), "gelu-tanh": torch.nn.GELU(approximate="tanh"), **{name: make() for name, make in TORCH_ACT_FACTORIES.items()}}
ACTIVATIONS = {"identity": dbp.Identity(), **{name: dbp.readers.reader_for(m).read(m, ()) for name, m in TORCH_ACTIVATIONS.items() if name != "identity"}}


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

ARCHITECTURES = ("dense", "conv1d", "conv2d", "locally-connected", "pool-downsample", "batchnorm")


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
    elif arch == "batchnorm":  # BatchNorm in eval mode after a convolution and in the dense head
        c = r(1, 2)
        mods = [nn.Conv2d(c, 4, 3, padding=1, bias=bool(r(0, 1))), nn.BatchNorm2d(4, affine=bool(r(0, 3))), a(), nn.AvgPool2d(2), nn.Flatten()]
        in_shape = (c, r(6, 8), r(6, 8))
    else:
        raise ValueError(arch)
    if arch != "dense":
        with torch.no_grad():
            flat = torch.nn.Sequential(*mods)(torch.zeros(1, *in_shape)).shape[1]
        mods += [nn.Linear(flat, 5), *([nn.BatchNorm1d(5)] if arch == "batchnorm" else []), a(), nn.Linear(5, classes)]
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
    for m in model.modules():  # running statistics away from (0, 1), read in eval mode
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.eval()
    return model.to(dtype), in_shape


def random_input(in_shape, batch=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn((batch, *in_shape), generator=g, dtype=dtype)


# every random network of the grid: (architecture, hidden activation, softmax output, seed);
# two draws of each, three of the dense networks, which vary most (depth 1-4, widths, biases)
NETWORKS = [
    (arch, act, softmax, seed)
    for arch in ARCHITECTURES
    for act in sorted(TORCH_ACT_FACTORIES)
    for softmax in (True, False)
    for seed in ((0, 1, 2) if arch == "dense" else (0, 1))
]
CLASSES = 4


def random_network(arch, act, softmax, *, seed=0, classes=CLASSES, batch=3, dtype=torch.float64):
    """``(model, x, net)``: :func:`random_model`, a batch of :func:`random_input` and the model read as a
    :class:`dbpaper.Network`, all from one seed."""
    model, in_shape = random_model(arch, act, softmax, seed=seed, classes=classes, dtype=dtype)
    x = random_input(in_shape, batch=batch, seed=seed, dtype=dtype)
    return model, x, dbpaper.Network.from_sequential(model, in_shape)


# -- penalties ---------------------------------------------------------------------------------


def log_p(u):  # a smooth user p: log(1 + ‖u‖²) per example
    return torch.log1p(u.reshape(u.shape[0], -1).pow(2).sum(1))


def log_p_grad(u):
    n2 = u.reshape(u.shape[0], -1).pow(2).sum(1).reshape((-1,) + (1,) * (u.ndim - 1))
    return 2 * u / (1 + n2)


def v_tanh(out, y):  # a v that depends on the network output
    return torch.tanh(out) * out.sum(-1, keepdim=True)


def v_tanh_vjp(out, y, u):  # (dv/dx_L)* u for v_tanh
    s = out.sum(-1, keepdim=True)
    d = 1 - torch.tanh(out) ** 2
    return d * s * u + (torch.tanh(out) * u).sum(-1, keepdim=True)


# name -> (factory, what y it takes: "labels", "targets" or None); every penalty class of
# dbpaper.penalties, and GeneralPenalty with every kind of p and v
PENALTIES = {
    "cdb-nll": (lambda: P.ClassicalDoubleBackprop("nll"), "labels"),
    "cdb-mse": (lambda: P.ClassicalDoubleBackprop("mse"), "targets"),
    "node": (lambda: P.OutputNodeGradient(1), None),
    "jacobian": (lambda: P.JacobianFrobenius(), None),
    "opnorm": (lambda: P.OperatorNorm(2, torch.Generator().manual_seed(7)), None),
    "gradient-norm": (lambda: P.GradientNormPenalty(0.5, index=0), None),
    "gradient-norm-one-sided": (lambda: P.GradientNormPenalty(0.2, one_sided=True, index=2), None),
    "sobolev": (lambda: P.Sobolev(torch.sin, index=1), None),
    "r1-index": (lambda: P.R1(3.0, index=2), None),
    "general-callable-p": (lambda: P.GeneralPenalty(log_p, v=3), None),
    "general-constant-v": (lambda: P.GeneralPenalty(P.PFunction(log_p, log_p_grad), v=torch.linspace(-1, 1, CLASSES, dtype=torch.float64)), None),
    "general-labels": (lambda: P.GeneralPenalty(P.SquaredNorm(), v="labels"), "labels"),
    "general-v-of-output": (lambda: P.GeneralPenalty(P.Norm(), v=v_tanh), None),
    "general-v-with-vjp": (lambda: P.GeneralPenalty(log_p, v=v_tanh, v_vjp=v_tanh_vjp), None),
}


def penalty_targets(pen_name, x, seed=0, classes=CLASSES):
    """``y`` for the penalty ``pen_name`` on the batch ``x``: labels, float targets or ``None``."""
    g = torch.Generator().manual_seed(seed)
    kind = PENALTIES[pen_name][1]
    if kind == "labels":
        return torch.randint(0, classes, (x.shape[0],), generator=g)
    if kind == "targets":
        return torch.randn((x.shape[0], classes), generator=g, dtype=x.dtype)
    return None


def applicable_algorithms(net, penalty):
    """Every registered algorithm that applies to ``penalty`` on ``net``, in registration order (not only
    what ``"auto"`` would pick: a changed cost constant does not change what is tested)."""
    from dbpaper.algorithms import REGISTRY

    return [name for name, alg in REGISTRY.items() if alg.applies(net, penalty)]


@contextlib.contextmanager
def temporary_algorithms():
    """``register(name, fn, **kw)`` as :func:`dbpaper.algorithms.register_algorithm`; what it
    registered is unregistered on leaving the block."""
    from dbpaper.algorithms import REGISTRY, register_algorithm, unregister

    names = []

    def register(name, fn, **kw):
        assert name not in REGISTRY, f"{name!r} is registered already"
        names.append(name)
        register_algorithm(name, fn, **kw)

    try:
        yield register
    finally:
        for name in names:
            if name in REGISTRY:
                unregister(name)


# -- the one comparison ------------------------------------------------------------------------

RTOL = {torch.float64: 1e-10, torch.float32: 2e-4}


def rtol_for(dtype):
    """The relative tolerance of a comparison with the float64 oracle for results in ``dtype``."""
    return RTOL[dtype]


def flat_gradients(net, grads):
    """Per-layer gradients (``.weights``, ``.biases``) as one list in ``Network.parameters()`` order."""
    return [g for layer, gw, gb in zip(net.layers, grads.weights, grads.biases) for g in layer.parameter_gradients(gw, gb)]


def gradients_by_backward(params, value, *, missing="zeros"):
    """``value.backward()`` from cleared ``.grad``s: ``(value, [∂value/∂p for p in params])``.

    A parameter autograd leaves without a gradient gets zeros (``missing="zeros"``) or ``None``
    (``missing=None``)."""
    for p in params:
        p.grad = None
    value.backward()
    grads = [p.grad if p.grad is None else p.grad.clone() for p in params]
    if missing == "zeros":
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return value.detach(), grads


def vector(tensors):
    """The tensors as one float64 vector."""
    return torch.cat([t.reshape(-1).double() for t in tensors])


def assert_matches(got, want, *, rtol=None, atol=0.0, value_rtol=None, value_atol=None, compare="largest", what=()):
    """``got = (value, gradients)`` equals ``want = (value, gradients)`` — the one comparison of the tests.

    The value within ``value_rtol`` (default ``rtol``) of its size plus ``value_atol`` (default
    ``atol``). The gradient blocks, by ``compare``:

    * ``"largest"``: each within ``rtol`` of the largest block, plus ``atol`` (a block that is
      (almost) zero is compared absolutely);
    * ``"block"``: each within ``rtol`` of its own norm, plus ``atol``;
    * ``"entries"``: every entry, ``torch.testing.assert_close(rtol, atol)``, NaN equal to NaN.

    ``rtol`` defaults to the tolerance of the dtype of ``got``'s value (``RTOL``)."""
    (value, grads), (ref_value, ref) = got, want
    value, ref_value = torch.as_tensor(value).detach(), torch.as_tensor(ref_value).detach()
    rtol = rtol_for(value.dtype) if rtol is None else rtol
    value_rtol = rtol if value_rtol is None else value_rtol
    value_atol = atol if value_atol is None else value_atol
    grads, ref = [g.detach() for g in grads], [r.detach() for r in ref]
    assert len(grads) == len(ref), (what, len(grads), len(ref))
    if compare == "entries":
        for a, b in zip([value, *grads], [ref_value, *ref]):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")
        return
    err = abs(float(value) - float(ref_value))
    assert err <= value_rtol * abs(float(ref_value)) + max(value_atol, 1e-300), (what, "value", float(value), float(ref_value))
    scale = max((float(r.norm()) for r in ref), default=0.0)
    for k, (a, b) in enumerate(zip(grads, ref)):
        err, size = float((a.double() - b.double()).norm()), float(b.norm()) if compare == "block" else scale
        assert err <= rtol * max(size, 1e-300) + atol, (what, f"gradient {k}", err, size)


def assert_matches_oracle(got, model, x, penalty, y=None, *, mode="summed", **tolerances):
    """``got = (R, gradients in Network.parameters() order)`` equals the autograd oracle
    :func:`dbpaper.oracles.reference_gradients` (``mode``), run in float64 whatever the dtype of
    ``got`` (a float32 model is compared with its float64 copy), by :func:`assert_matches` with the
    dtype's tolerance unless ``tolerances`` say otherwise. Returns the oracle's ``(R, gradients)``."""
    want = oracle(model, x, penalty, y, mode=mode)
    assert_matches(got, want, **tolerances)
    return want


def oracle(model, x, penalty, y=None, *, mode="summed"):
    """``(R, gradients)`` by :func:`dbpaper.oracles.reference_gradients` in float64."""
    if x.dtype != torch.float64:
        model, x = copy.deepcopy(model).double(), x.double()
        y = y.double() if y is not None and y.is_floating_point() else y
    return reference_gradients(model, x, penalty, y, mode=mode)


# -- the random-network grid: (network, penalty, algorithm) -----------------------------------------


def network_id(network):
    arch, act, softmax, seed = network
    return f"{arch}-{act}-{'softmax' if softmax else 'identity'}-{seed}"


@functools.lru_cache(maxsize=8)
def grid_network(network, dtype=torch.float64):
    """``(model, x, net)`` of a grid network (cached: the tests of one network share them, read-only)."""
    arch, act, softmax, seed = network
    return random_network(arch, act, softmax, seed=seed, dtype=dtype)


@functools.lru_cache(maxsize=32)
def grid_oracle(network, pen_name, dtype=torch.float64):
    """The float64 autograd oracle ``(R, gradients)`` of a grid case (cached across its algorithms)."""
    model, x, _ = grid_network(network, dtype)
    return oracle(model, x, PENALTIES[pen_name][0](), penalty_targets(pen_name, x, network[3]))


def grid_cases(networks=None, penalties=tuple(PENALTIES), dtype=torch.float64):
    """``pytest.param((network, penalty name, algorithm name))`` for every applicable algorithm
    (by default on every network of ``NETWORKS``, read from the registry once per session)."""
    if networks is None:
        return _full_grid(tuple(penalties), dtype)
    cases = []
    for network in networks:
        net = grid_network(network, dtype)[2]
        for pen_name in penalties:
            for alg in applicable_algorithms(net, PENALTIES[pen_name][0]()):
                cases.append(pytest.param((network, pen_name, alg), id=f"{network_id(network)}-{pen_name}-{alg}"))
    return cases


@functools.cache
def _full_grid(penalties, dtype):
    return grid_cases(NETWORKS, penalties, dtype)


def check_grid_case(network, pen_name, algorithm, dtype=torch.float64):
    """``algorithm`` on a grid network against the float64 oracle, within the dtype's tolerance."""
    model, x, net = grid_network(network, dtype)
    y = penalty_targets(pen_name, x, network[3])
    res = dbpaper.double_backprop(net, x, PENALTIES[pen_name][0](), y, algorithm=algorithm)
    assert res.algorithm == algorithm
    assert res.value.dtype == dtype
    assert_matches((res.value, flat_gradients(net, res.gradients)), grid_oracle(network, pen_name, dtype), what=(network, pen_name, algorithm))



def assert_same_gradients(model, x, ours, ref, with_x=True, rtol=1e-10):
    """Two differentiable scalars ``ours`` and ``ref`` agree in value and in their gradients
    (parameters, and ``x`` with ``with_x``); ``ref``'s graph is kept for the next comparison."""
    targets = [p for p in model.parameters() if p.requires_grad] + ([x] if with_x else [])
    g1 = torch.autograd.grad(ours, targets, allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(ref, targets, allow_unused=True, materialize_grads=True, retain_graph=True)
    assert_matches((ours.detach(), g1), (ref.detach(), g2), rtol=rtol, atol=1e-14)


assert_close = assert_same_gradients  # the former name


# -- random residual networks ----------------------------------------------------------------------


def random_residual_model(seed, *, classes=CLASSES, dtype=torch.float64):
    """A random network with residual blocks (``dbpaper.nn.Residual``): ``(model, per-example input shape)``.

    Drawn from one seed: dense, 1-D or 2-D convolutional; 1-3 blocks whose branch ``F`` has 1-3 layers
    (a linear module, sometimes BatchNorm in eval mode, an activation of every kind the readers know),
    ending with a linear module or with an activation (the sum then needs an identity layer of its own);
    an identity shortcut or a linear one (1x1 convolution or dense, sometimes with BatchNorm), a block
    nested in a branch, a block as the very first module (``x_0`` read twice), an activation or none
    after a block, max- or average pooling between convolutional blocks, a softmax or identity output.
    """
    from dbpaper.nn import Residual

    g = torch.Generator().manual_seed(10_000 + seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    coin = lambda p: float(torch.rand((), generator=g)) < p  # noqa: E731
    acts = sorted(TORCH_ACT_FACTORIES)
    act = lambda: TORCH_ACT_FACTORIES[acts[r(0, len(acts) - 1)]]()  # noqa: E731
    nn = torch.nn
    kind = ("dense", "conv1d", "conv2d")[r(0, 2)]
    c = r(2, 4)
    if kind == "dense":
        in_shape = (c,)
        lin = lambda a, b, k=None: nn.Linear(a, b, bias=coin(0.7))  # noqa: E731
        bn = lambda b: nn.BatchNorm1d(b)  # noqa: E731
    elif kind == "conv1d":
        in_shape = (c, r(6, 9))
        lin = lambda a, b, k=3: nn.Conv1d(a, b, k, padding=k // 2, bias=coin(0.7))  # noqa: E731
        bn = lambda b: nn.BatchNorm1d(b)  # noqa: E731
    else:
        in_shape = (c, r(5, 7), r(5, 7))
        lin = lambda a, b, k=3: nn.Conv2d(a, b, k, padding=k // 2, bias=coin(0.7))  # noqa: E731
        bn = lambda b: nn.BatchNorm2d(b)  # noqa: E731

    def branch(width: int, depth: int) -> list:
        mods = []
        for i in range(depth):
            mods.append(lin(width, width))
            if coin(0.4):
                mods.append(bn(width))
            if i < depth - 1 or coin(0.4):  # the last layer of F: sometimes an activation before the sum
                mods.append(act())
        if depth >= 1 and coin(0.2):  # a block nested in the branch
            mods.append(Residual(lin(width, width), act()))
        return mods

    def block(width: int) -> list:
        shortcut = None
        if coin(0.35):
            shortcut = nn.Sequential(lin(width, width, 1), *([bn(width)] if coin(0.5) else []))
        mods = [Residual(*branch(width, r(1, 3)), shortcut=shortcut)]
        if coin(0.7):
            mods.append(act())
        return mods

    mods = []
    width = c
    if coin(0.15):  # the model starts with a block: x_0 is read by the branch and the skip connection
        mods += block(width)
    width = r(2, 4)
    mods += [lin(c, width), act()]
    for b in range(r(1, 3)):
        mods += block(width)
        if kind == "conv2d" and b == 0 and coin(0.5):
            mods.append(nn.MaxPool2d(2) if coin(0.5) else nn.AvgPool2d(2))
        if kind == "conv1d" and b == 0 and coin(0.4):
            mods.append(nn.MaxPool1d(2, stride=1))
    if kind != "dense":
        mods.append(nn.Flatten())
    with torch.no_grad():
        flat = nn.Sequential(*mods).eval()(torch.zeros(1, *in_shape)).shape[1]
    mods.append(nn.Linear(flat, classes))
    if coin(0.5):
        mods.append(nn.Softmax(dim=-1))
    model = nn.Sequential(*mods)
    for p in model.parameters():  # scaled to keep pre-activations O(1)
        fan_in = max(1, p[0].numel() if p.ndim > 1 else 1)
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * (1.2 / fan_in**0.5 if p.ndim > 1 else 0.4))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval().to(dtype), in_shape


# -- a module outside the framework ------------------------------------------------------------


class _Cube(torch.nn.Module):
    """A smooth coordinate-wise module no reader knows (the last resort of :func:`unsupported_activation`)."""

    def forward(self, x):
        return x * x * x / 3 + x


def unsupported_activation() -> torch.nn.Module:
    """A smooth coordinate-wise torch module that no layer reader knows (the tests' example of a fallback).

    The first of a few torch activations without a reader, so that adding a reader for one of them
    moves the tests on to the next instead of breaking them.
    """
    for cls in (torch.nn.Tanhshrink, torch.nn.LogSigmoid, torch.nn.SELU, torch.nn.CELU, torch.nn.Softsign):
        if cls not in dbp.readers.READERS:
            return cls()
    return _Cube()
