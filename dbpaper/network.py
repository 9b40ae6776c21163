"""The layered network model of Section 3.1, eq. (8).

    z_j = K_j(θ_j, x_{j-1}) + b_j,    x_j = g_j(z_j),    j = 1, ..., L.

:meth:`Network.from_sequential` reads an ``nn.Sequential`` and *shares* its
parameters (no copies): every layer holds the module's own ``weight`` and
``bias`` tensors. :meth:`Network.forward` runs one forward pass and records
exactly what the algorithms need: the activations ``x_0, ..., x_L`` and the
derivatives ``g'_j(z_j)`` (and ``g''_j(z_j)`` where it is not zero) for the
hidden layers.

The supported modules are those with a reader (:mod:`dbpaper.readers`,
:data:`~dbpaper.readers.SUPPORTED_MODULES`). A bias applied to a convolution is shared by all
positions: ``b_j`` in eq. (8) is then the broadcast of the module's bias,
and its gradient is summed over the positions.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from . import activations as act
from . import counting
from .operators import BilinearOperator, Dense
from .readers import (
    SUPPORTED_MODULES,
    LinearPart,
    UnsupportedOption,
    output_map_of,
    reader_for,
    supported_modules,
    unwrap,
)

__all__ = ["ForwardRecord", "Layer", "Network", "SUPPORTED_MODULES", "UnsupportedModelError", "output_map_of", "unwrap"]

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
    base = nn.Sequential if isinstance(m, nn.Sequential) else getattr(reader_for(m), "module", None)
    if base is not None and type(m).forward is not base.forward:
        return f"{type(m).__name__} subclasses {base.__name__} but overrides forward"
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
    #: the reader's account of the linear module (its own parameters, and the adjoint of derived ``θ``, ``b``)
    part: LinearPart | None = dataclasses.field(default=None, repr=False)

    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The module's own trainable tensors (``θ_j`` then ``b_j`` unless the reader derives them)."""
        if self.part is not None:
            return self.part.trainable()
        return tuple(t for t in (self.weight, self.bias) if t is not None)

    def parameter_gradients(self, grad_weight: torch.Tensor | None, grad_bias: torch.Tensor | None) -> list[torch.Tensor]:
        """The gradients of :meth:`parameters` from ``∇_θ`` and ``∇_b`` (the adjoint of a derived ``θ``, ``b``)."""
        if self.part is not None and self.part.param_grads is not None:
            return list(self.part.param_grads(grad_weight, grad_bias))
        return [g for t, g in ((self.weight, grad_weight), (self.bias, grad_bias)) if t is not None]

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
            reader = reader_for(m)
            if reader is None:
                raise UnsupportedModelError(f"Network: {where} is not supported; supported modules: {supported_modules()}", where, "unsupported module")
            part = _read(reader, m, flat_shape, where)
            if reader.kind == "skip":
                continue
            if reader.kind == "reshape":
                if pending is not None:
                    close(act.Identity())
                flat_shape = part
                continue
            if reader.kind == "linear":
                if pending is not None:
                    close(act.Identity())
                pending = dict(op=part.op, weight=part.weight, bias=part.bias, in_shape=x_shape, module_names=(name,), part=part)
                flat_shape = x_shape = part.op.out_shape
                continue
            if reader.kind == "output" and idx != len(modules) - 1:
                raise UnsupportedModelError(f"Network: {where}: {type(m).__name__} is only supported as the final module (Appendix B)", where, "softmax not last")
            if pending is None:
                raise UnsupportedModelError(
                    f"Network: {where}: an activation must follow a linear module (eq. (8))", where, "activation without a linear module"
                )
            pending["module_names"] = pending["module_names"] + (name,)
            close(part)
        if pending is not None:
            close(act.IdentityOutput())
        if not layers:
            raise UnsupportedModelError(
                f"Network: the model has no linear module; supported modules: {supported_modules()}", "model", "no linear module"
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
        """The trainable tensors of the model, layer by layer (the modules' own tensors: weight then bias)."""
        return [t for layer in self.layers for t in layer.parameters()]

    def refreshed(self) -> Network:
        """This network with derived ``θ_j``, ``b_j`` (:class:`~dbpaper.readers.LinearPart` ``derive``) evaluated now.

        ``self`` where no reader derives its parameters; the entry points call it once per call.
        """
        derived = [j for j, layer in enumerate(self.layers) if layer.part is not None and layer.part.derive is not None]
        if not derived:
            return self
        layers = list(self.layers)
        with torch.no_grad():
            for j in derived:
                weight, bias = layers[j].part.derive()
                layers[j] = dataclasses.replace(layers[j], weight=weight, bias=bias)
        fresh = copy.copy(self)
        fresh.layers = tuple(layers)
        return fresh

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


def _read(reader, m: nn.Module, shape: tuple[int, ...], where: str):
    """``reader.read(m, shape)`` with its errors naming the module: an option outside the framework, or a shape."""
    try:
        part = reader.read(m, shape)
    except UnsupportedOption as e:
        raise UnsupportedModelError(f"Network: {where}: {e}", where, str(e)) from None
    except ValueError as e:
        raise ValueError(f"Network: {where}: {e}") from None
    expected = _READ_TYPES[reader.kind]
    if not isinstance(part, expected):
        raise TypeError(
            f"Network: {where}: the reader of {reader.module.__name__} (kind {reader.kind!r}) must return "
            f"{' or '.join(t.__name__ for t in expected)}, got {type(part).__name__}"
        )
    if reader.kind == "linear" and part.op.in_shape != tuple(shape) and math.prod(part.op.in_shape) != math.prod(shape):
        raise TypeError(f"Network: {where}: the reader's operator takes inputs of shape {part.op.in_shape}, not {tuple(shape)}")
    return part


#: what a reader of each kind returns
_READ_TYPES = {
    "linear": (LinearPart,),
    "activation": (act.Activation,),
    "output": (act.OutputMap,),
    "reshape": (tuple,),
    "skip": (type(None),),
}
