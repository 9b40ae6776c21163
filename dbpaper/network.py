"""The layered network model of Section 3.1, eq. (8).

    z_j = K_j(θ_j, x_{j-1}) + b_j,    x_j = g_j(z_j),    j = 1, ..., L.

:meth:`Network.from_sequential` reads an ``nn.Sequential`` and *shares* its
parameters (no copies): every layer holds the module's own ``weight`` and
``bias`` tensors. :meth:`Network.forward` runs one forward pass and records
exactly what the algorithms need: the activations ``x_0, ..., x_L`` and the
derivatives ``g'_j(z_j)`` (and ``g''_j(z_j)`` where it is not zero) for the
hidden layers.

Supported modules: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (zero
padding), :class:`dbpaper.nn.LocallyConnected2d`, ``nn.AvgPool2d``,
``nn.PixelUnshuffle``, ``nn.Flatten`` (a reshape), the activations
``nn.ReLU``, ``nn.LeakyReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.Softplus``,
``nn.ELU``, ``nn.Identity``, and a final ``nn.Softmax(dim=-1)`` or nothing
(identity output). A bias applied to a convolution is shared by all
positions: ``b_j`` in eq. (8) is then the broadcast of the module's bias,
and its gradient is summed over the positions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from . import activations as act
from . import counting
from . import nn as dbnn
from .operators import (
    AvgPool2d,
    BilinearOperator,
    Conv1d,
    Conv2d,
    Dense,
    InvertibleDownsampling,
)

__all__ = ["ForwardRecord", "Layer", "Network", "SUPPORTED_MODULES", "UnsupportedModelError", "unwrap"]

SUPPORTED_MODULES = (
    "Linear, Conv1d, Conv2d, dbpaper.nn.LocallyConnected2d, AvgPool2d, PixelUnshuffle, Flatten, "
    "ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, ELU, Identity, and a final Softmax(dim=-1)"
)


class UnsupportedModelError(ValueError):
    """The model is outside the framework of eq. (8): it cannot be read as a :class:`Network`.

    ``module`` names the first module (or the model itself) that is outside
    the framework; ``reason`` says why. The error is a ``ValueError``, so code
    that catches ``ValueError`` keeps working. Under ``algorithm="auto"`` the
    entry points catch it and fall back to autograd (with a
    :class:`~dbpaper.FallbackWarning`).
    """

    def __init__(self, message: str, module: str, reason: str):
        super().__init__(message)
        self.module = module
        self.reason = reason


def unwrap(model):
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


#: (torch base class, the method its ``forward`` must be) for every module the reader accepts
def _accepted_bases() -> tuple[type, ...]:
    return (
        nn.Linear, nn.Conv1d, nn.Conv2d, dbnn.LocallyConnected2d, nn.AvgPool2d, nn.PixelUnshuffle, nn.Flatten,
        nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ELU, nn.Softmax, nn.Sequential,
    )  # fmt: skip


def _hooks(m: nn.Module) -> list[str]:
    """The kinds of hooks registered on ``m`` (forward, forward-pre, backward, backward-pre)."""
    kinds = []
    for attr, kind in (
        ("_forward_hooks", "forward hook"),
        ("_forward_pre_hooks", "forward pre-hook"),
        ("_backward_hooks", "backward hook"),
        ("_backward_pre_hooks", "backward pre-hook"),
    ):
        if getattr(m, attr, None):
            kinds.append(kind)
    return kinds


def _outside(m: nn.Module) -> str | None:
    """Why ``m`` cannot be read by its type (an overridden ``forward`` or hooks), else ``None``."""
    for base in _accepted_bases():
        if isinstance(m, base):
            if type(m).forward is not base.forward:
                return f"{type(m).__name__} subclasses {base.__name__} but overrides forward"
            break
    hooks = _hooks(m)
    if hooks:
        return f"it has a {' and a '.join(hooks)}, which the explicit algorithms would not call"
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """One layer ``(K_j, θ_j, b_j, g_j)`` of eq. (8).

    ``weight`` and ``bias`` are the torch module's own tensors (``None`` when
    absent); ``weight`` is ``None`` exactly for parameter-free operators.
    ``in_shape`` is the per-example shape of ``x_{j-1}`` as the previous layer
    produced it (a ``Flatten`` in between makes it differ from
    ``op.in_shape``).
    """

    op: BilinearOperator
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    activation: act.Activation | act.OutputMap
    in_shape: tuple[int, ...]
    module_names: tuple[str, ...]

    def theta(self, like: torch.Tensor) -> torch.Tensor:
        """``θ_j``: the module weight, or the fixed scalar 1 of a parameter-free operator."""
        if self.weight is not None:
            return self.weight
        return torch.ones((), dtype=like.dtype, device=like.device)

    @property
    def _bias_view(self) -> tuple[int, ...]:
        extra = len(self.op.out_shape) - self.bias.ndim
        return tuple(self.bias.shape) + (1,) * extra

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        """``K_j(θ_j, x) + b_j`` (the bias broadcast over positions where it is shared)."""
        return y if self.bias is None else y + self.bias.reshape(self._bias_view)

    def bias_adjoint(self, eta: torch.Tensor) -> torch.Tensor | None:
        """The adjoint of ``b ↦ broadcast(b)`` applied to a batch: sums over the batch and shared positions."""
        if self.bias is None:
            return None
        dims = (0,) + tuple(range(1 + self.bias.ndim, eta.ndim))
        return eta.sum(dim=dims)

    # The algorithms call the operators through these three methods. Shapes, dtypes and devices
    # are checked once per call of the algorithms (Network.check_input); inside, every tensor has
    # the right layout by construction, so the hot path skips the operators' per-call validation
    # (the public BilinearOperator methods keep it) and only reports the evaluation for counting.
    # A parameter-free operator's θ_j is the fixed 1 (``theta`` is ignored): its linear map is applied
    # without the multiplication by 1.
    def K(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``K_j(θ_j, x)`` for ``x`` shaped like ``x_{j-1}``."""
        counting.record("apply")
        x = x.reshape(x.shape[0], *self.op.in_shape)
        return self.op._linear(x) if self.weight is None else self.op._apply(theta, x)

    def KT(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``K_jᵀ(θ_j, y)``, shaped like ``x_{j-1}``."""
        counting.record("transpose")
        out = self.op._linear_transpose(y) if self.weight is None else self.op._transpose(theta, y)
        return out.reshape(y.shape[0], *self.in_shape)

    def Kbox(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``K_j□(x, y)`` for ``x`` shaped like ``x_{j-1}``."""
        counting.record("weight_adjoint")
        return self.op._weight_adjoint(x.reshape(x.shape[0], *self.op.in_shape), y)

    def Kbox_into(self, acc: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``acc + alpha K_j□(x, y)`` in place (``alpha K_j□(x, y)`` when ``acc`` is ``None``).

        For a dense layer ``K□(x, y) = Σ_n y_n x_nᵀ`` is written straight into the
        accumulator (``addmm``): no temporary of the weight's size. Counted as one ``K□``.
        """
        if acc is not None and type(self.op) is Dense:
            counting.record("weight_adjoint")
            return torch.addmm(acc, y.reshape(y.shape[0], -1).T, x.reshape(x.shape[0], -1), alpha=alpha, out=acc)
        value = self.Kbox(x, y)
        if acc is None:
            return value if alpha == 1.0 else value.mul_(alpha)
        return acc.add_(value, alpha=alpha)

    def affine(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``z_j = K_j(θ_j, x) + b_j`` (one fused ``addmm`` for a dense layer with a bias). Counted as one ``K``."""
        if self.bias is not None and type(self.op) is Dense:
            counting.record("apply")
            return torch.addmm(self.bias, x.reshape(x.shape[0], -1), theta.T)
        return self.add_bias(self.K(theta, x))


@dataclasses.dataclass(eq=False)
class ForwardRecord:
    """What one forward pass leaves for the algorithms.

    ``xs[j]`` is ``x_j`` (``j = 0..L``); ``dg[j]`` is ``g'_j(z_j)`` and
    ``d2g[j]`` is ``g''_j(z_j)`` (``None`` where it is identically zero) for the
    hidden layers ``j = 1..L-1``; index 0 and ``L`` hold ``None``. ``z_L`` is
    kept only for the identity output (where it equals ``x_L``). ``unit[j]`` is
    ``True`` where ``g_j`` is the identity (``g'_j ≡ 1``, stored as a broadcast
    view of one ``1``): :meth:`slope` then returns its argument instead of
    multiplying by ones (pooling layers between convolutions).
    """

    xs: list[torch.Tensor]
    dg: list[torch.Tensor | None]
    d2g: list[torch.Tensor | None]
    unit: list[bool] | None = None
    #: ``z_L`` where the output map is the softmax (for a stable ``log_softmax`` in the loss), else ``None``
    logits: torch.Tensor | None = None

    def slope(self, j: int, t: torch.Tensor) -> torch.Tensor:
        """``M(g'_j(z_j), t) = g'_j(z_j) ⊙ t`` (``t`` itself where ``g_j`` is the identity)."""
        if self.unit is not None and self.unit[j]:
            return t
        return self.dg[j] * t

    @property
    def output(self) -> torch.Tensor:
        """``x_L``."""
        return self.xs[-1]


class Network:
    """An ``L``-layer network in the form of eq. (8), sharing a torch model's parameters."""

    def __init__(self, layers: Sequence[Layer], in_shape: Sequence[int]):
        if not layers:
            raise UnsupportedModelError("Network: needs at least one layer with a bilinear operator", "model", "no layer")
        self.layers = tuple(layers)
        self.in_shape = tuple(int(s) for s in in_shape)
        for layer in self.layers[:-1]:
            if not isinstance(layer.activation, act.Activation):
                raise UnsupportedModelError(
                    f"Network: {layer.module_names}: only the last layer may use softmax", ".".join(layer.module_names), "softmax not last"
                )
        last = self.layers[-1].activation
        if isinstance(last, act.Activation):  # a final coordinate-wise map (sigmoid, tanh, ...) is the output map g_L
            if isinstance(last, act.Identity):
                out_map = act.IdentityOutput()
            elif last.output_invertible():
                out_map = act.CoordinatewiseOutput(last)
            else:
                raise UnsupportedModelError(
                    f"Network: the last layer's map {last!r} cannot be an output map: its derivatives are not "
                    "functions of its output; append a linear layer or remove the final activation",
                    self.layers[-1].module_names[-1],
                    "output map",
                )
            self.layers = self.layers[:-1] + (dataclasses.replace(self.layers[-1], activation=out_map),)
            last = out_map
        if not isinstance(last, act.OutputMap):
            raise UnsupportedModelError(
                f"Network: the last layer's map must be softmax, the identity or coordinate-wise (Appendix B), got {last!r}",
                self.layers[-1].module_names[-1],
                "output map",
            )
        if isinstance(last, act.Softmax) and len(self.layers[-1].op.out_shape) != 1:
            raise UnsupportedModelError(
                f"Network: softmax output needs a flat output, got {self.layers[-1].op.out_shape}",
                self.layers[-1].module_names[-1],
                "softmax on a non-flat output",
            )

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_sequential(cls, model: nn.Module, in_shape: Sequence[int]) -> Network:
        """Read ``model`` (an ``nn.Sequential``, possibly nested) for per-example inputs of shape ``in_shape``.

        The model is read by what it computes: a module instance used at
        several positions is read at every position; a subclass that
        overrides ``forward``, a module with hooks, or any module the reader
        does not know raises :class:`UnsupportedModelError` (a ``ValueError``)
        naming it. A ``DistributedDataParallel`` wrapper is looked through.
        Global module hooks (``torch.nn.modules.module.register_module_forward_hook``),
        which tools such as ``FlopCounterMode`` install to observe modules, are
        not called by the explicit algorithms and do not change how a model is read.
        """
        model = unwrap(model)
        if not isinstance(model, nn.Module):
            raise TypeError(f"Network: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(model, nn.Sequential):
            raise UnsupportedModelError(
                f"Network: the model ({type(model).__name__}) is not an nn.Sequential; eq. (8) reads a sequence of modules",
                type(model).__name__,
                "not an nn.Sequential",
            )
        modules = list(_flatten(model))
        shape = tuple(int(s) for s in in_shape)
        layers: list[Layer] = []
        pending: dict | None = None  # the layer being assembled
        flat_shape = shape  # shape the next operator sees (changed by Flatten)
        x_shape = shape  # shape of x_{j-1} as the previous layer produced it

        def close(activation):
            nonlocal pending
            layers.append(Layer(activation=activation, **pending))
            pending = None

        for idx, (name, m) in enumerate(modules):
            where = f"module {idx} ({name}: {type(m).__name__})"
            if isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1:
                    raise UnsupportedModelError(
                        f"Network: {where}: only Flatten(start_dim=1, end_dim=-1) is supported", where, "Flatten dims"
                    )
                if pending is not None:
                    close(act.Identity())
                flat_shape = (math.prod(flat_shape),)
                continue
            if isinstance(m, nn.Identity):
                continue
            op_weight_bias = _operator(m, flat_shape, where)
            if op_weight_bias is not None:
                if pending is not None:
                    close(act.Identity())
                op, weight, bias = op_weight_bias
                pending = dict(op=op, weight=weight, bias=bias, in_shape=x_shape, module_names=(name,))
                flat_shape = x_shape = op.out_shape
                continue
            a = _activation(m, where, is_last=idx == len(modules) - 1)
            if pending is None:
                raise UnsupportedModelError(
                    f"Network: {where}: an activation must follow a linear module (eq. (8))", where, "activation without a linear module"
                )
            pending["module_names"] = pending["module_names"] + (name,)
            close(a)
        if pending is not None:
            close(act.IdentityOutput())
        if not layers:
            raise UnsupportedModelError(
                f"Network: the model has no linear module; supported modules: {SUPPORTED_MODULES}", "model", "no linear module"
            )
        last = layers[-1]
        if isinstance(last.activation, act.Identity):  # a Flatten after the last layer: still an identity output
            layers[-1] = dataclasses.replace(last, activation=act.IdentityOutput())
        try:
            return cls(layers, shape)
        except UnsupportedModelError as err:
            types = dict(modules)
            if err.module in types:  # name the module by its position and type
                err.module = f"{err.module} ({type(types[err.module]).__name__})"
            raise

    # -- properties --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """``L``."""
        return len(self.layers)

    @property
    def output_map(self) -> act.OutputMap:
        """``g_L``."""
        return self.layers[-1].activation

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Per-example shape of ``x_L``."""
        return self.layers[-1].op.out_shape

    @property
    def locally_linear(self) -> bool:
        """Whether every hidden activation is locally linear (Section 5.2)."""
        return all(layer.activation.locally_linear for layer in self.layers[:-1])

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors, weight then bias per layer (the model's own tensors)."""
        out = []
        for layer in self.layers:
            out += [t for t in (layer.weight, layer.bias) if t is not None]
        return out

    # -- forward -----------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError/TypeError naming the problem if ``x`` does not fit the network."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Network: x must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.in_shape or x.ndim != len(self.in_shape) + 1:
            raise ValueError(f"Network: x has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, self.in_shape))})")
        for layer in self.layers:
            for t in (layer.weight, layer.bias):
                if t is not None and (t.dtype != x.dtype or t.device != x.device):
                    raise ValueError(
                        f"Network: layer {layer.module_names} has parameters of dtype {t.dtype} on {t.device}, "
                        f"but x is {x.dtype} on {x.device}"
                    )

    def forward(self, x: torch.Tensor, *, check: bool = True) -> ForwardRecord:
        """One recorded forward pass (``L`` evaluations of ``K``); ``check=False`` skips :meth:`check_input`."""
        if check:
            self.check_input(x)
        L = self.depth
        xs, dg, d2g, unit = [x], [None] * (L + 1), [None] * (L + 1), [False] * (L + 1)
        for j, layer in enumerate(self.layers, start=1):
            z = layer.affine(layer.theta(x), xs[-1])
            g = layer.activation
            xs.append(g.f(z))
            if j < L:
                if type(g) is act.Identity:  # g' ≡ 1, g'' ≡ 0: nothing to store or multiply
                    dg[j] = torch.ones((), dtype=z.dtype, device=z.device).expand(z.shape)
                    unit[j] = True
                elif g.derivatives_from_output:  # tanh, sigmoid: g' and g'' from x_j, no second evaluation of g
                    dg[j] = g.df_from_output(xs[-1])
                    d2g[j] = g.d2f_from_output(xs[-1])
                else:
                    dg[j] = g.df(z)
                    d2g[j] = None if g.locally_linear else g.d2f(z)
        logits = z if isinstance(self.output_map, act.Softmax) else None
        return ForwardRecord(xs=xs, dg=dg, d2g=d2g, unit=unit, logits=logits)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).output

    def __repr__(self) -> str:
        lines = [f"Network(L={self.depth}, in_shape={self.in_shape})"]
        for j, layer in enumerate(self.layers, start=1):
            lines.append(f"  {j}: {layer.op!r} + {'b' if layer.bias is not None else 'no bias'} -> {layer.activation!r}")
        return "\n".join(lines)


class _Unsupported(ValueError):
    """Internal: a module option outside the framework (re-raised as UnsupportedModelError)."""


def _flatten(model: nn.Module, prefix: str = ""):
    """Every module in execution order: every position of a reused instance, nested Sequentials expanded.

    ``nn.Sequential.forward`` calls its ``_modules`` in order, duplicates
    included (``named_children`` would drop a reused instance), so this is
    what the model computes.
    """
    name = prefix.rstrip(".") or type(model).__name__
    why = _outside(model)
    if why is not None:
        raise UnsupportedModelError(f"Network: module {name} ({type(model).__name__}): {why}", f"{name} ({type(model).__name__})", why)
    if isinstance(model, nn.Sequential):
        for key, child in model._modules.items():
            if child is None:
                continue
            yield from _flatten(child, f"{prefix}{key}.")
    else:
        yield name, model


def _padding(m, where):
    if getattr(m, "padding_mode", "zeros") != "zeros":
        raise _Unsupported(f"only padding_mode='zeros' is bilinear-supported, got {m.padding_mode!r}")
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return 0
        raise _Unsupported(f"string padding {m.padding!r} is not supported; give the padding as ints")
    return m.padding


def _operator(m: nn.Module, shape: tuple[int, ...], where: str):
    """The bilinear operator (and weight, bias) of a linear module, or None for other modules."""
    try:
        if isinstance(m, nn.Linear):
            if len(shape) > 1 and shape[-1] == m.in_features:
                raise _Unsupported(
                    f"a Linear applied to the last dimension of per-example inputs of shape {shape} (a sequence "
                    "model); eq. (8) reads a Linear on flat examples"
                )
            if shape != (m.in_features,):
                raise ValueError(f"input of per-example shape {shape} does not match in_features={m.in_features}")
            return Dense(m.in_features, m.out_features), m.weight, m.bias
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            cls = Conv1d if isinstance(m, nn.Conv1d) else Conv2d
            if len(shape) != len(m.kernel_size) + 1 or shape[0] != m.in_channels:
                raise ValueError(f"input of per-example shape {shape} does not fit in_channels={m.in_channels}")
            op = cls(shape, m.out_channels, m.kernel_size, m.stride, _padding(m, where), m.dilation, m.groups)
            return op, m.weight, m.bias
        if isinstance(m, dbnn.LocallyConnected2d):
            if shape != m.operator.in_shape:
                raise ValueError(f"input of per-example shape {shape} does not match the layer's {m.operator.in_shape}")
            return m.operator, m.weight, m.bias
        if isinstance(m, nn.AvgPool2d):
            if m.divisor_override is not None:
                raise _Unsupported("divisor_override is not supported")
            return AvgPool2d(shape, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad), None, None
        if isinstance(m, nn.PixelUnshuffle):
            return InvertibleDownsampling(shape, m.downscale_factor), None, None
    except _Unsupported as e:
        raise UnsupportedModelError(f"Network: {where}: {e}", where, str(e)) from None
    except ValueError as e:
        raise ValueError(f"Network: {where}: {e}") from None
    return None


def _activation(m: nn.Module, where: str, is_last: bool):
    if isinstance(m, nn.Softmax):
        if not is_last:
            raise UnsupportedModelError(f"Network: {where}: softmax is only supported as the final module (Appendix B)", where, "softmax not last")
        if m.dim not in (-1, 1):
            raise UnsupportedModelError(
                f"Network: {where}: softmax must act on the last dimension (dim=-1), got dim={m.dim}", where, "softmax dim"
            )
        return act.Softmax()
    if isinstance(m, nn.ReLU):
        return act.ReLU()
    if isinstance(m, nn.LeakyReLU):
        return act.LeakyReLU(m.negative_slope)
    if isinstance(m, nn.Tanh):
        return act.Tanh()
    if isinstance(m, nn.Sigmoid):
        return act.Sigmoid()
    if isinstance(m, nn.Softplus):
        return act.Softplus(m.beta, m.threshold)
    if isinstance(m, nn.ELU):
        return act.ELU(m.alpha)
    raise UnsupportedModelError(f"Network: {where} is not supported; supported modules: {SUPPORTED_MODULES}", where, "unsupported module")
