"""The layered network model of Section 3.1, eq. (8).

    z_j = K_j(θ_j, x_{j-1}) + b_j,    x_j = g_j(z_j),    j = 1, ..., L.

:meth:`Network.from_sequential` reads an ``nn.Sequential`` and *shares* its
parameters (no copies): every layer holds the module's own ``weight`` and
``bias`` tensors. :meth:`Network.forward` runs one forward pass and records
exactly what the algorithms need: the activations ``x_0, ..., x_L`` and the
derivatives ``g'_j(z_j)`` (and ``g''_j(z_j)`` where it is not zero) for the
hidden layers.

The supported modules are those with a reader (:mod:`dbpaper.readers`,
:func:`~dbpaper.readers.supported_modules`). A bias applied to a convolution is shared by all
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
from ._record import ForwardRecord, relu_slope
from ._translate import UnsupportedModelError, read_layers
from .operators import BilinearOperator, Dense
from .readers import LinearPart, output_map_of, unwrap

__all__ = ["ForwardRecord", "Layer", "Network", "UnsupportedModelError", "output_map_of", "relu_slope", "unwrap"]


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
    #: the node ``x_{p(j)}`` the operator reads (``None``: ``j - 1``, the chain of eq. (8))
    source: int | None = None
    #: the nodes ``x_a`` added to ``z_j`` unchanged (skip connections of residual blocks)
    adds: tuple[int, ...] = ()

    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The module's own trainable tensors (``θ_j`` then ``b_j`` unless the reader derives them)."""
        if self.part is not None:
            return self.part.trainable()
        return tuple(t for t in (self.weight, self.bias) if t is not None)

    def parameter_gradients(
        self, grad_weight: torch.Tensor | None, grad_bias: torch.Tensor | None
    ) -> list[torch.Tensor]:
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


class Network:
    """An ``L``-layer network in the form of eq. (8), sharing a torch model's parameters."""

    layers: tuple[Layer, ...]
    in_shape: tuple[int, ...]
    node_shapes: list[tuple[int, ...]]
    is_chain: bool
    last_use: list[int]
    unread_after_forward: tuple[int, ...]

    def __init__(self, layers: Sequence[Layer], in_shape: Sequence[int]):
        if not layers:
            raise UnsupportedModelError(
                "Network: needs at least one layer with a bilinear operator", "model", "no layer"
            )
        self.layers = tuple(layers)
        self.in_shape = tuple(int(s) for s in in_shape)
        self._wire()
        for layer in self.layers[:-1]:
            if not isinstance(layer.activation, act.Activation):
                raise UnsupportedModelError(
                    f"Network: {layer.module_names}: only the last layer may use softmax",
                    ".".join(layer.module_names),
                    "softmax not last",
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

    def _wire(self) -> None:
        """The graph of the layers: ``sources[j] = p(j)``, ``adds[j] = A(j)``, ``consumers[i]``; checked to be topological."""
        L = len(self.layers)
        self.sources: list[int | None] = [None] * (L + 1)
        self.adds: list[tuple[int, ...]] = [()] * (L + 1)
        self.consumers: list[list[int]] = [[] for _ in range(L + 1)]
        shapes = [self.in_shape] + [layer.op.out_shape for layer in self.layers]
        #: ``node_shapes[i]``: the per-example shape of ``x_i``
        self.node_shapes = shapes
        for j, layer in enumerate(self.layers, start=1):
            p = j - 1 if layer.source is None else int(layer.source)
            adds = tuple(int(a) for a in layer.adds)
            if not 0 <= p < j or any(not 0 <= a < j for a in adds):
                raise ValueError(
                    f"Network: layer {j} reads node {p} and adds {adds}: a layer reads and adds earlier nodes only"
                )
            for a in adds:
                if math.prod(shapes[a]) != layer.op.out_numel:
                    raise ValueError(
                        f"Network: layer {j} adds node {a} of shape {shapes[a]} to z_{j} of shape {layer.op.out_shape}"
                    )
            self.sources[j], self.adds[j] = p, adds
            for i in (p, *adds):
                self.consumers[i].append(j)
        #: the nodes that no later layer reads (other than ``x_L``): dead ends of the graph
        unread = [i for i in range(L) if not self.consumers[i]]
        if unread:
            raise ValueError(f"Network: the nodes {unread} are read by no layer")
        self.is_chain = all(self.sources[j] == j - 1 and not self.adds[j] for j in range(1, L + 1))
        #: ``last_use[i]``: the last layer that reads or adds ``x_i`` (``i + 1`` in a chain; ``L`` for ``x_L``)
        self.last_use = [max(c, default=L) for c in self.consumers]
        # the nodes the algorithms never read after the forward pass: not x_0 or x_L, not the input of a layer
        # with a weight (K□), not the output of an activation whose g' is read off it (ReLU, tanh, ...);
        # dropped from the record of a network with skip connections
        kept = {0, L} | {self.sources[j] for j in range(1, L + 1) if self.layers[j - 1].weight is not None}
        kept |= {j for j in range(1, L) if getattr(self.layers[j - 1].activation, "slope_reads", None) == "x"}
        self.unread_after_forward = () if self.is_chain else tuple(i for i in range(L + 1) if i not in kept)

    def _with_layers(self, layers) -> Network:
        """This network with other layer objects of the same wiring (derived parameters, fixed selections)."""
        other = Network.__new__(Network)
        other.__dict__.update(self.__dict__)
        other.layers = tuple(layers)
        return other

    def plain_edge(self, j: int) -> bool:
        """Whether layer ``j`` is a link of a chain: it reads ``x_{j-1}``, adds nothing, and no other layer reads ``x_{j-1}``."""
        return self.sources[j] == j - 1 and not self.adds[j] and self.consumers[j - 1] == [j]

    def require_chain(self, who: str) -> None:
        """Raise a ValueError naming ``who`` unless the network is a chain (eq. (8), no residual blocks)."""
        if not self.is_chain:
            raise ValueError(f"{who} is written for the chains of eq. (8); this network has residual blocks")

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
        shape = tuple(int(s) for s in in_shape)
        layers = [Layer(**kw) for kw in read_layers(model, shape)]
        try:
            return cls(layers, shape)
        except UnsupportedModelError as err:
            types = dict(model.named_modules())
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
        return self._with_layers(layers)

    # -- forward -----------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError/TypeError naming the problem if ``x`` does not fit the network."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Network: x must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.in_shape or x.ndim != len(self.in_shape) + 1:
            raise ValueError(
                f"Network: x has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, self.in_shape))})"
            )
        for layer in self.layers:
            for t in (layer.weight, layer.bias):
                if t is not None and (t.dtype != x.dtype or t.device != x.device):
                    names = ", ".join(layer.module_names)
                    fix = []
                    if t.dtype != x.dtype:
                        fix.append(f"cast x with x.to({t.dtype}) or the model with model.to({x.dtype})")
                    if t.device != x.device:
                        fix.append(f"move x with x.to({str(t.device)!r}) or the model with model.to({str(x.device)!r})")
                    raise ValueError(
                        f"Network: the layer of module(s) {names} has parameters of dtype {t.dtype} on {t.device}, "
                        f"but x is {x.dtype} on {x.device}: {' and '.join(fix)}"
                    )

    def forward(self, x: torch.Tensor, *, check: bool = True) -> ForwardRecord:
        """One recorded forward pass (``L`` evaluations of ``K``); ``check=False`` skips :meth:`check_input`."""
        if check:
            self.check_input(x)
        L = self.depth
        xs, d2g, acts, slope_in, unit = [x], [None] * (L + 1), [None] * (L + 1), [None] * (L + 1), [False] * (L + 1)
        selections = {}
        for j, layer in enumerate(self.layers, start=1):
            if layer.op.selects:  # max-pooling: the value, and the linear map S_x it selected
                counting.record("apply")
                z, selections[j] = layer.op.select(xs[self.sources[j]])
                z = layer.add_bias(z)
            else:
                z = layer.affine(layer.theta(x), xs[self.sources[j]])
            for a in self.adds[j]:  # the skip connections: z_j += x_a
                z = z.add_(xs[a].reshape(z.shape))  # z is this layer's own fresh tensor
            g = layer.activation
            if j < L and g.coupled:  # a normalisation: its record (ẑ, 1/σ) serves g' and g'' (running statistics updated once)
                acts[j], (x_j, slope_in[j]) = g, g.record(z)
                xs.append(x_j)
                continue
            xs.append(g.f(z))
            if j < L:
                if type(g) is act.Identity:  # g' ≡ 1, g'' ≡ 0: nothing to store or multiply
                    unit[j] = True
                else:  # g' is applied by g.slope from x_j or z_j; g'' stored where it is not zero
                    acts[j] = g
                    slope_in[j] = xs[-1] if g.slope_reads == "x" else z
                    d2g[j] = g.second(z, xs[-1])
        logits = z if isinstance(self.output_map, act.Softmax) else None
        for i in self.unread_after_forward:  # x_i only fed a parameter-free operator or a skip connection
            xs[i] = None
        return ForwardRecord(
            xs=xs, d2g=d2g, acts=acts, slope_in=slope_in, unit=unit, logits=logits, selections=selections or None
        )

    def at(self, rec: ForwardRecord) -> Network:
        """This network linearised at the recorded point: every max-pooling layer's selection ``S_x`` fixed.

        ``self`` where no operator selects (every network without max-pooling).
        The algorithms run on it; the entry points call it once per call.
        """
        if not rec.selections:
            return self
        layers = list(self.layers)
        for j, op in rec.selections.items():
            layers[j - 1] = dataclasses.replace(layers[j - 1], op=op)
        return self._with_layers(layers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).output

    def __repr__(self) -> str:
        lines = [f"Network(L={self.depth}, in_shape={self.in_shape})"]
        for j, layer in enumerate(self.layers, start=1):
            wiring = "" if self.is_chain else f"x_{self.sources[j]} -> " + "".join(f"+ x_{a} " for a in self.adds[j])
            lines.append(
                f"  {j}: {wiring}{layer.op!r} + {'b' if layer.bias is not None else 'no bias'} -> {layer.activation!r}"
            )
        return "\n".join(lines)
