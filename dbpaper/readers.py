"""The layer readers: the one place that maps a torch module to its part of eq. (8).

A *reader* says what a module contributes to a layer ``z_j = K_j(θ_j, x_{j-1}) + b_j``,
``x_j = g_j(z_j)``:

* ``"linear"`` — a bilinear operator with its ``θ_j`` and ``b_j``
  (:class:`LinearPart`; ``θ_j`` and ``b_j`` are the module's own tensors, or
  functions of them with the adjoint map that sends their gradients back to the
  module's parameters);
* ``"activation"`` — a coordinate-wise ``g_j`` (:class:`~dbpaper.activations.Activation`);
  at the end of a model it is the output map ``g_L``;
* ``"output"`` — an output map that is not coordinate-wise (the softmax);
* ``"normalisation"`` — a normalisation layer (:class:`NormPart`): an activation
  that is not coordinate-wise (:mod:`dbpaper.normalisation`) and its affine part,
  a linear layer after it; or, for BatchNorm in eval mode, a linear part alone;
* ``"reshape"`` — a change of the per-example shape that is no layer (``Flatten``);
* ``"skip"`` — nothing (``Identity``).

Everything that lists the supported modules is derived from :data:`READERS`:
:func:`supported_modules` (error messages), :func:`output_map_of` (how the
autograd fallback reads a model's output), the README's table
(``tools/readme_modules.py``) and the tests' random models (each reader's
``example``). Adding a layer type is an operator or activation (if new) and
one :func:`register_reader` call here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import activations as act
from . import nn as dbnn
from .operators import (
    AvgPool2d,
    BilinearOperator,
    ChannelScale,
    Conv1d,
    Conv2d,
    Dense,
    InvertibleDownsampling,
    MaxPool1d,
    MaxPool2d,
)

__all__ = [
    "READERS",
    "LinearPart",
    "NormPart",
    "Reader",
    "UnsupportedOption",
    "fold_channel_scale",
    "output_map_of",
    "reader_for",
    "register_reader",
    "supported_modules",
    "unwrap",
]

KINDS = ("linear", "activation", "output", "reshape", "skip", "normalisation")


class UnsupportedOption(ValueError):
    """A module option outside the framework of eq. (8) (the reading raises ``UnsupportedModelError`` naming the module)."""


@dataclasses.dataclass(frozen=True, eq=False)
class LinearPart:
    """What a linear module contributes: ``K(θ, x) + b`` with ``θ`` and ``b`` as the algorithms use them.

    ``weight`` is ``None`` exactly for parameter-free operators (``θ`` is the
    fixed ``1``). ``params`` are the module's own trainable tensors whose
    gradients the algorithms deliver; by default ``(weight, bias)``, which then
    *are* ``θ`` and ``b``. A reader whose ``θ`` or ``b`` is a function of the
    module's parameters (a derived parameter) gives

    * ``derive() -> (θ, b)``, evaluated afresh on every call of the entry points
      (the parameters change between calls; the reading is cached), and
    * ``params`` and ``param_grads(∇_θ, ∇_b) -> gradients of params``, the
      adjoint of that function, which sends the algorithms' gradients back to the
      module's own tensors.

    ``weight`` and ``bias`` are then the values at reading time (shapes and dtypes).
    """

    op: BilinearOperator
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    params: tuple[torch.Tensor, ...] | None = None
    param_grads: Callable[..., tuple[torch.Tensor | None, ...]] | None = None
    derive: Callable[[], tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def __post_init__(self) -> None:
        if (self.derive is None) != (self.param_grads is None) or (self.param_grads is not None and self.params is None):
            raise ValueError("LinearPart: a derived θ or b needs derive, params and param_grads together")

    def trainable(self) -> tuple[torch.Tensor, ...]:
        """The module's own tensors the gradients are for."""
        if self.params is not None:
            return self.params
        return tuple(t for t in (self.weight, self.bias) if t is not None)


@dataclasses.dataclass(frozen=True, eq=False)
class NormPart:
    """What a normalisation module contributes: ``activation``, then its affine part ``affine`` as a layer of its own.

    ``activation`` is a :class:`~dbpaper.normalisation.Normalisation` (``None``
    where the module is affine by itself, BatchNorm in eval mode: then
    ``affine`` is read like a linear module's part, folded into the layer
    before it where it can be). ``affine`` is ``None`` without weight and bias.
    Where no linear module precedes the normalisation, the reading inserts a
    parameter-free identity layer for it to act on.
    """

    activation: act.Activation | None
    affine: LinearPart | None


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one torch module type is read (see the module docstring)."""

    module: type
    kind: str
    read: Callable[..., Any]
    example: Callable[[], nn.Module] | None = None
    description: str = ""


#: module type -> reader, in registration order
#:
#: :meta hide-value:
READERS: dict[type, Reader] = {}


def register_reader(module: type, kind: str, read: Callable[..., Any], *, example: Callable[[], nn.Module] | None = None, description: str = "") -> Reader:
    """Register how modules of type ``module`` (and subclasses that keep its ``forward``) are read.

    ``read(m, shape)`` gets the module and the per-example shape of its input
    and returns, by ``kind``: a :class:`LinearPart` (``"linear"``), an
    :class:`~dbpaper.activations.Activation` (``"activation"``), an
    :class:`~dbpaper.activations.OutputMap` (``"output"``), a :class:`NormPart`
    (``"normalisation"``), the new per-example shape (``"reshape"``), or ``None`` (``"skip"``). It raises
    :class:`UnsupportedOption` for an option outside the framework and
    ``ValueError`` for a shape that does not fit. ``example()`` builds a
    representative module (the tests draw random models from these).
    """
    if kind not in KINDS:
        raise ValueError(f"register_reader: kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(module, type) and issubclass(module, nn.Module)):
        raise TypeError(f"register_reader: module must be a torch.nn.Module subclass, got {module!r}")
    reader = Reader(module, kind, read, example, description)
    READERS[module] = reader
    return reader


def reader_for(m: nn.Module) -> Reader | None:
    """The reader of ``m``: its own type's, else the nearest registered base class's (``None`` if none)."""
    for cls in type(m).__mro__:
        reader = READERS.get(cls)
        if reader is not None:
            return reader
    return None


def supported_modules() -> str:
    """The supported modules, for messages (derived from :data:`READERS`)."""
    names = [f"dbpaper.nn.{r.module.__name__}" if r.module.__module__.startswith("dbpaper") else r.module.__name__ for r in READERS.values()]
    return ", ".join(names)


def output_map_of(model: nn.Module) -> act.OutputMap:
    """The output map ``g_L`` a model ends with, read by its last module (looking into nested ``nn.Sequential``).

    A final output module (``Softmax(dim=-1)``) gives its map, a final
    coordinate-wise activation a :class:`~dbpaper.activations.CoordinatewiseOutput`
    (for the losses it acts like the identity: ``x_L`` is read as logits),
    anything else the identity. The autograd fallback reads models outside
    eq. (8) this way, so a module it cannot read gives the identity.
    """
    m = unwrap(model)
    while isinstance(m, nn.Sequential) and len(m) > 0:
        m = m[-1]
    reader = reader_for(m) if isinstance(m, nn.Module) else None
    if reader is None or reader.kind not in ("activation", "output"):
        return act.IdentityOutput()
    try:
        read = reader.read(m, ())
    except ValueError:
        return act.IdentityOutput()
    if reader.kind == "output":
        return read
    # a final GELU or SiLU (not invertible) is read like the identity: x_L as logits for the losses
    return act.CoordinatewiseOutput(read) if read.output_invertible() else act.IdentityOutput()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``, ``DataParallel`` or ``torch.compile`` wrapper, else ``model``.

    A compiled module (``torch.compile(model)``) shares its parameters with the
    original one, which the explicit algorithms read; their own first-order
    graphs compile (and a compiled training step traces them).
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel | DataParallel):
            model = model.module
        elif isinstance(model, nn.Module) and type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch._dynamo.eval_frame.OptimizedModule
        else:
            return model


# -- the readers ------------------------------------------------------------------------------------


def _padding(m):
    if getattr(m, "padding_mode", "zeros") != "zeros":
        raise UnsupportedOption(f"only padding_mode='zeros' is bilinear-supported, got {m.padding_mode!r}")
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return 0
        raise UnsupportedOption(f"string padding {m.padding!r} is not supported; give the padding as ints")
    return m.padding


def _linear(m: nn.Linear, shape):
    if len(shape) > 1 and shape[-1] == m.in_features:
        raise UnsupportedOption(
            f"a Linear applied to the last dimension of per-example inputs of shape {shape} (a sequence "
            "model); eq. (8) reads a Linear on flat examples"
        )
    if shape != (m.in_features,):
        raise ValueError(f"input of per-example shape {shape} does not match in_features={m.in_features}")
    return LinearPart(Dense(m.in_features, m.out_features), m.weight, m.bias)


def _conv(m, shape):
    cls = Conv1d if isinstance(m, nn.Conv1d) else Conv2d
    if len(shape) != len(m.kernel_size) + 1 or shape[0] != m.in_channels:
        raise ValueError(f"input of per-example shape {shape} does not fit in_channels={m.in_channels}")
    op = cls(shape, m.out_channels, m.kernel_size, m.stride, _padding(m), m.dilation, m.groups)
    return LinearPart(op, m.weight, m.bias)


def _locally_connected(m, shape):
    if shape != m.operator.in_shape:
        raise ValueError(f"input of per-example shape {shape} does not match the layer's {m.operator.in_shape}")
    return LinearPart(m.operator, m.weight, m.bias)


def _avg_pool(m, shape):
    if m.divisor_override is not None:
        raise UnsupportedOption("divisor_override is not supported")
    return LinearPart(AvgPool2d(shape, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad), None, None)


def _adaptive_avg_pool(m, shape):
    """``AdaptiveAvgPool2d`` whose output size divides the input's: average pooling with ``kernel = stride = in / out``."""
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    if len(shape) != 3:
        raise ValueError(f"AdaptiveAvgPool2d needs inputs of shape (C, H, W), got {tuple(shape)}")
    out = tuple(size if o is None else int(o) for o, size in zip(out, shape[1:]))
    if any(o < 1 or size % o for o, size in zip(out, shape[1:])):
        raise UnsupportedOption(f"output_size {out} must divide the input size {tuple(shape[1:])} (windows of one size)")
    kernel = tuple(size // o for o, size in zip(out, shape[1:]))
    return LinearPart(AvgPool2d(shape, kernel, kernel), None, None)


def _max_pool(m, shape):
    """Max-pooling: a selection the forward pass fixes (:mod:`dbpaper.operators.max_pool`)."""
    if m.return_indices:
        raise UnsupportedOption("return_indices=True returns a tuple, not a tensor")
    cls = MaxPool1d if isinstance(m, nn.MaxPool1d) else MaxPool2d
    return LinearPart(cls(shape, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), None, None)


def fold_channel_scale(first: LinearPart, second: LinearPart) -> LinearPart | None:
    """A dense layer or convolution followed by a per-channel affine map (BatchNorm in eval mode) as one layer.

    With ``second`` giving ``s ⊙ y + t`` per output channel:
    ``s ⊙ (K(W, x) + b) + t = K(s ⊙ W, x) + (s ⊙ b + t)``, so the pair is the
    operator of ``first`` with the derived ``θ = s ⊙ W`` (``s`` along the output
    channels) and ``b = s ⊙ b + t``. The adjoint of that map sends the
    gradients back: ``∇_W = s ⊙ ∇_θ``, ``∇_b = s ⊙ ∇_{b'}``,
    ``∇_s = Σ ∇_θ ⊙ W + ∇_{b'} ⊙ b``, ``∇_t = ∇_{b'}``, and ``second``'s own adjoint
    takes ``(∇_s, ∇_t)`` to its module's parameters. One operator evaluation and
    one stored activation fewer per pair. ``None`` where the pair does not fold
    (``first`` derived or without a weight, ``second`` not a derived channel scale,
    or the shapes differ).
    """
    if (
        type(first.op) not in (Dense, Conv1d, Conv2d) or first.weight is None or first.derive is not None
        or type(second.op) is not ChannelScale or second.derive is None or second.op.in_shape != first.op.out_shape
    ):  # fmt: skip
        return None
    W, b = first.weight, first.bias

    def along_out(t: torch.Tensor) -> torch.Tensor:
        return t.reshape((-1,) + (1,) * (W.ndim - 1))

    def derive():
        s, t = second.derive()
        return W * along_out(s), (t if b is None else torch.addcmul(t, s, b))

    def param_grads(grad_theta, grad_bias):
        with torch.no_grad():  # a context, not a decorator: torch.compile traces it
            s = second.derive()[0]
            grad_s = (grad_theta * W).sum(dim=tuple(range(1, W.ndim)))
            if b is not None:
                grad_s = grad_s + grad_bias * b
            own = [grad_theta * along_out(s)] + ([grad_bias * s] if b is not None else [])
            return own + list(second.param_grads(grad_s, grad_bias))

    with torch.no_grad():
        theta, bias = derive()
    return LinearPart(first.op, theta, bias, params=first.trainable() + second.trainable(), param_grads=param_grads, derive=derive)


def _flatten(m, shape):
    if m.start_dim != 1 or m.end_dim != -1:
        raise UnsupportedOption("only Flatten(start_dim=1, end_dim=-1) is supported")
    return (math.prod(shape),)


def _softmax(m, shape):
    if m.dim not in (-1, 1):
        raise UnsupportedOption(f"softmax must act on the last dimension (dim=-1), got dim={m.dim}")
    return act.Softmax()


def register_builtin() -> None:
    """The readers of the torch modules the package supports, in the order of the README's table (called once, by ``dbpaper``)."""
    from . import _norm_readers

    register_reader(nn.Linear, "linear", _linear, example=lambda: nn.Linear(5, 4), description="dense layer")
    register_reader(nn.Conv1d, "linear", _conv, example=lambda: nn.Conv1d(2, 3, 3, padding=1), description="zero padding; any stride, dilation, groups")
    register_reader(nn.Conv2d, "linear", _conv, example=lambda: nn.Conv2d(2, 3, 3, padding=1), description="zero padding; any stride, dilation, groups")
    register_reader(dbnn.LocallyConnected2d, "linear", _locally_connected, description="unshared weights per position")
    _norm_readers.register_builtin()  # BatchNorm (eval and training mode), LayerNorm, RMSNorm, GroupNorm
    register_reader(nn.AvgPool2d, "linear", _avg_pool, example=lambda: nn.AvgPool2d(2), description="parameter-free; no divisor_override")
    register_reader(nn.AdaptiveAvgPool2d, "linear", _adaptive_avg_pool, example=lambda: nn.AdaptiveAvgPool2d(1),
                    description="parameter-free; output size dividing the input size")  # fmt: skip
    register_reader(nn.MaxPool1d, "linear", _max_pool, example=lambda: nn.MaxPool1d(2), description="locally linear: the forward pass selects")
    register_reader(nn.MaxPool2d, "linear", _max_pool, example=lambda: nn.MaxPool2d(2), description="locally linear: the forward pass selects; any stride, padding, dilation")
    register_reader(nn.PixelUnshuffle, "linear", lambda m, shape: LinearPart(InvertibleDownsampling(shape, m.downscale_factor), None, None),
                    example=lambda: nn.PixelUnshuffle(2), description="invertible downsampling, parameter-free")  # fmt: skip
    register_reader(nn.Flatten, "reshape", _flatten, example=lambda: nn.Flatten(), description="start_dim=1, end_dim=-1: a reshape")
    register_reader(nn.Identity, "skip", lambda m, shape: None, example=lambda: nn.Identity(), description="nothing")
    register_reader(nn.ReLU, "activation", lambda m, shape: act.ReLU(), example=lambda: nn.ReLU(), description="locally linear")
    register_reader(nn.LeakyReLU, "activation", lambda m, shape: act.LeakyReLU(m.negative_slope), example=lambda: nn.LeakyReLU(0.2),
                    description="locally linear")  # fmt: skip
    register_reader(nn.Tanh, "activation", lambda m, shape: act.Tanh(), example=lambda: nn.Tanh(), description="smooth")
    register_reader(nn.Sigmoid, "activation", lambda m, shape: act.Sigmoid(), example=lambda: nn.Sigmoid(), description="smooth")
    register_reader(nn.Softplus, "activation", lambda m, shape: act.Softplus(m.beta, m.threshold), example=lambda: nn.Softplus(beta=1.5),
                    description="smooth")  # fmt: skip
    register_reader(nn.ELU, "activation", lambda m, shape: act.ELU(m.alpha), example=lambda: nn.ELU(0.8), description="smooth except at 0")
    register_reader(nn.Hardtanh, "activation", lambda m, shape: act.Hardtanh(m.min_val, m.max_val), example=lambda: nn.Hardtanh(-0.5, 0.8),
                    description="locally linear; nn.ReLU6 too")  # fmt: skip
    register_reader(nn.GELU, "activation", lambda m, shape: act.GELU(m.approximate), example=lambda: nn.GELU(), description="smooth; exact or tanh approximation")
    register_reader(nn.SiLU, "activation", lambda m, shape: act.SiLU(), example=lambda: nn.SiLU(), description="smooth (swish)")
    register_reader(nn.Mish, "activation", lambda m, shape: act.Mish(), example=lambda: nn.Mish(), description="smooth")
    register_reader(nn.Hardswish, "activation", lambda m, shape: act.Hardswish(), example=lambda: nn.Hardswish(), description="kinks at ±3")
    register_reader(nn.Softmax, "output", _softmax, example=lambda: nn.Softmax(dim=-1), description="final module only, dim=-1")

