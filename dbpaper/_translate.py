"""Reading a torch model as the layers of eq. (8), residual blocks included.

A model is an ``nn.Sequential`` (nested as deep as it likes) of modules with a
reader (:mod:`dbpaper.readers`) and of residual blocks
(:class:`dbpaper.nn.Residual`, ``x ↦ s(x) + F(x)``). The reading produces the
layers ``z_j = K_j(θ_j, x_{p(j)}) + b_j + Σ_{a ∈ A(j)} x_a``, ``x_j = g_j(z_j)``:
each layer reads one earlier node ``x_{p(j)}`` through its operator (``p(j) =
j - 1`` in a chain) and adds the nodes ``A(j)`` unchanged (the skip
connections). A block whose input is the node ``x_a`` is read as

* its shortcut ``s`` (if it has a linear module) as layers reading ``x_a``, ending in
  the node ``x_s`` (``s = a`` for the identity shortcut);
* its branch ``F`` as layers whose first reads ``x_a``;
* the sum: ``F``'s last layer adds ``x_s`` to its ``z`` — and where ``F`` ends
  with an activation (the sum comes after it), a parameter-free identity layer
  ``z = x + x_s`` is appended. An activation that follows the block acts on the sum.

A normalisation module (LayerNorm, RMSNorm, GroupNorm, BatchNorm in training
mode; :class:`~dbpaper.readers.NormPart`) closes the layer being read with its
normalisation as the activation, and its affine part opens the next layer.
Where no linear module precedes it (at the input, after an activation, at
the start of a block) a parameter-free identity layer is inserted for it to
act on; so is one after a normalisation without affine part that an
activation follows or that ends the model.

A BatchNorm in eval mode right after a dense layer or a convolution is folded
into it (:func:`~dbpaper.readers.fold_channel_scale`): one layer with the
derived ``θ = s ⊙ W``, ``b = s ⊙ b + t``, whose gradients go back to both modules.

The layers are numbered in a topological order: every node a layer reads or
adds has a smaller number.
"""

from __future__ import annotations

import math

from torch import nn

from . import activations as act
from . import nn as dbnn
from .operators import IdentityMap
from .readers import LinearPart, NormPart, UnsupportedOption, fold_channel_scale, reader_for, supported_modules

__all__ = ["UnsupportedModelError", "read_layers"]


class UnsupportedModelError(ValueError):
    """The model is outside the framework of eq. (8): it cannot be read as a :class:`~dbpaper.Network`.

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


def _container(m: nn.Module) -> type | None:
    """``nn.Sequential`` or :class:`dbpaper.nn.Residual` where ``m`` is one (the containers the reading opens)."""
    for base in (dbnn.Residual, nn.Sequential):
        if isinstance(m, base):
            return base
    return None


def _outside(m: nn.Module) -> str | None:
    """Why ``m`` cannot be read by its type (an overridden ``forward`` or hooks), else ``None``."""
    base = _container(m) or getattr(reader_for(m), "module", None)
    if base is not None and type(m).forward is not base.forward:
        return f"{type(m).__name__} subclasses {base.__name__} but overrides forward"
    hooks = _hooks(m)
    if hooks:
        return f"it has a {' and a '.join(hooks)}, which the explicit algorithms would not call"
    return None


def _modules(model: nn.Module, prefix: str = ""):
    """Every module of a sequence in execution order, nested ``Sequential`` expanded, a ``Residual`` kept whole.

    ``nn.Sequential.forward`` calls its ``_modules`` in order, duplicates
    included (``named_children`` would drop a reused instance), so this is
    what the model computes.
    """
    name = prefix.rstrip(".") or type(model).__name__
    why = _outside(model)
    if why is not None:
        raise UnsupportedModelError(f"Network: module {name} ({type(model).__name__}): {why}", f"{name} ({type(model).__name__})", why)
    if _container(model) is nn.Sequential:
        for key, child in model._modules.items():
            if child is None:
                continue
            yield from _modules(child, f"{prefix}{key}.")
    else:
        yield name, model


#: what a reader of each kind returns
_READ_TYPES = {
    "linear": (LinearPart,),
    "activation": (act.Activation,),
    "output": (act.OutputMap,),
    "reshape": (tuple,),
    "skip": (type(None),),
    "normalisation": (NormPart,),
}


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
    if reader.kind == "normalisation" and part.activation is not None and not getattr(part.activation, "coupled", False):
        raise TypeError(f"Network: {where}: the reader of {reader.module.__name__} must give a normalisation (coupled activation)")
    if reader.kind == "linear" and part.op.in_shape != tuple(shape) and math.prod(part.op.in_shape) != math.prod(shape):
        raise TypeError(f"Network: {where}: the reader's operator takes inputs of shape {part.op.in_shape}, not {tuple(shape)}")
    return part


class _Reading:
    """The layers read so far (as keyword dicts for :class:`~dbpaper.network.Layer`) and where the next one reads.

    ``node``: the node ``x_{p}`` the next linear module reads; ``shape``: the
    per-example shape that module sees (changed by ``Flatten``); ``node_shapes[i]``:
    the shape of ``x_i`` as its layer produced it.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.layers: list[dict] = []
        self.pending: dict | None = None  # the layer being assembled (its activation not yet known)
        self.node, self.shape, self.node_shapes = 0, shape, [shape]
        self.index = 0  # modules read so far (for messages)

    def close(self, activation) -> None:
        """Finish the pending layer with ``activation``: it becomes the node ``x_j`` the next module reads."""
        self.layers.append(dict(activation=activation, **self.pending))
        self.pending = None
        self.node = len(self.layers)
        self.node_shapes.append(self.layers[-1]["op"].out_shape)
        self.shape = self.node_shapes[-1]

    def settle(self) -> None:
        """Close a pending layer with the identity (the next module needs its output as a node)."""
        if self.pending is not None:
            self.close(act.Identity())

    def open(self, part: LinearPart, names: tuple[str, ...]) -> None:
        self.pending = dict(
            op=part.op, weight=part.weight, bias=part.bias, in_shape=self.node_shapes[self.node],
            module_names=names, part=part, source=self.node, adds=(),
        )  # fmt: skip
        self.shape = part.op.out_shape

    def fold(self, part: LinearPart) -> LinearPart | None:
        """The pending layer and ``part`` as one layer (:func:`~dbpaper.readers.fold_channel_scale`), else ``None``.

        Only a pending layer without a skip connection folds: a sum ``z + x_a``
        before a per-channel map would scale ``x_a`` too.
        """
        if self.pending is None or self.pending["adds"] or self.shape != self.pending["op"].out_shape:
            return None
        return fold_channel_scale(self.pending["part"], part)

    def after_normalisation(self) -> bool:
        """Whether nothing is pending and the node read next is a normalisation's output (no affine part after it)."""
        return self.pending is None and self.node > 0 and getattr(self.layers[self.node - 1]["activation"], "coupled", False)

    def identity_layer(self, name: str) -> None:
        """Open a parameter-free identity layer ``z = x`` on the current node (for an activation to act on)."""
        self.open(LinearPart(IdentityMap(self.shape), None, None), (name,))

    def normalisation(self, name: str, part: NormPart) -> None:
        """A normalisation closes the pending layer (or an identity layer); its affine part opens the next."""
        if self.pending is None:
            self.identity_layer(name)
        else:
            self.pending["module_names"] += (name,)
        self.close(part.activation)
        if part.affine is not None:
            self.open(part.affine, (name,))

    def sequence(self, modules, last: bool) -> None:
        """Read ``modules`` (``(name, module)`` pairs) in order; ``last``: they end the model."""
        modules = list(modules)
        for k, (name, m) in enumerate(modules):
            self.index += 1
            if _container(m) is dbnn.Residual:
                self.residual(name, m)
            else:
                self.module(name, m, last and k == len(modules) - 1)

    def module(self, name: str, m: nn.Module, last: bool) -> None:
        where = f"module {self.index - 1} ({name}: {type(m).__name__})"
        reader = reader_for(m)
        if reader is None:
            raise UnsupportedModelError(f"Network: {where} is not supported; supported modules: {supported_modules()}", where, "unsupported module")
        part = _read(reader, m, self.shape, where)
        if reader.kind == "skip":
            return
        if reader.kind == "reshape":
            self.settle()
            self.shape = part
            return
        if reader.kind == "normalisation":
            if part.activation is not None:
                self.normalisation(name, part)
                return
            part = part.affine  # BatchNorm in eval mode: a linear part, folded where it can be
        if reader.kind in ("linear", "normalisation"):
            folded = self.fold(part)
            if folded is not None:  # BatchNorm (eval) after a dense layer or convolution: one layer
                self.pending.update(weight=folded.weight, bias=folded.bias, part=folded)
                self.pending["module_names"] += (name,)
                return
            self.settle()
            self.open(part, (name,))
            return
        if reader.kind == "output" and not last:
            raise UnsupportedModelError(f"Network: {where}: {type(m).__name__} is only supported as the final module (Appendix B)", where, "softmax not last")
        if self.after_normalisation():
            self.identity_layer(name)
        if self.pending is None:
            raise UnsupportedModelError(f"Network: {where}: an activation must follow a linear module (eq. (8))", where, "activation without a linear module")
        self.pending["module_names"] += (name,)
        self.close(part)

    def residual(self, name: str, block: dbnn.Residual) -> None:
        """``x ↦ s(x) + F(x)``: the shortcut's layers, the branch's layers, and the sum on the last of them."""
        self.settle()
        a, shape = self.node, self.shape
        s = a
        if block.shortcut is not None:
            self.sequence(_modules(block.shortcut, f"{name}.shortcut."), last=False)
            self.settle()
            s = self.node
            s_shape = self.node_shapes[s]
            self.node, self.shape = a, shape
        else:
            s_shape = shape
        self.sequence(_modules(block.body, f"{name}.body."), last=False)
        if self.pending is None:  # F ends with an activation (or is empty): the sum is a layer of its own
            op = IdentityMap(self.shape)
            self.open(LinearPart(op, None, None), (f"{name}.sum",))
        out = self.pending["op"].out_shape
        if tuple(s_shape) != tuple(out):  # torch would broadcast or fail; eq. (8) adds like shapes only
            raise ValueError(
                f"Network: module {name} (Residual): the shortcut gives shape {tuple(s_shape)} but the branch {tuple(out)}; "
                "they must agree to be added"
            )
        self.pending["adds"] += (s,)


def read_layers(model: nn.Module, shape: tuple[int, ...]) -> list[dict]:
    """The layers of ``model`` (an ``nn.Sequential``) for per-example inputs of shape ``shape``, as keyword dicts.

    The last layer's map is the identity where the model ends with a linear
    module or a residual block; :class:`~dbpaper.network.Network` turns it into
    the output map ``g_L``.
    """
    modules = list(_modules(model))
    reading = _Reading(shape)
    reading.sequence(modules, last=True)
    if reading.after_normalisation():  # a model that ends with a normalisation: an identity output layer after it
        reading.identity_layer(reading.layers[-1]["module_names"][-1])
    if reading.pending is not None:
        reading.close(act.IdentityOutput())
    if not reading.layers:
        raise UnsupportedModelError(f"Network: the model has no linear module; supported modules: {supported_modules()}", "model", "no linear module")
    last = reading.layers[-1]
    if isinstance(last["activation"], act.Identity):  # a Flatten after the last layer: still an identity output
        last["activation"] = act.IdentityOutput()
    return reading.layers
