"""Normalisation layers as activations that are not coordinate-wise: LayerNorm, RMSNorm, GroupNorm, BatchNorm (training).

Without their affine parts these layers are maps ``g`` of a whole group of
coordinates: the features of an example (LayerNorm, RMSNorm), a group of
channels of an example (GroupNorm), or one channel over the whole batch and
its positions (BatchNorm in training mode). On each group of ``n``
coordinates, with ``r = √(mean(c²) + ε)`` and ``ẑ = c / r``,

* RMSNorm is ``g(z) = z / r`` (``c = z``);
* LayerNorm, GroupNorm and BatchNorm are ``g(z) = (z − μ) / σ`` (``c = z − μ``,
  ``r = σ``): RMSNorm after the centring ``P = I − 11ᵀ/n``.

Each is the gradient of a potential (``n r(z)``), so its derivative is
symmetric and its second derivative a fully symmetric bilinear map (the
hypothesis of the book's erratum E19 on ``M``):

* ``g'(z) t = (1/r) (P t − ẑ ⟨ẑ, P t⟩/n)`` — :meth:`Normalisation.slope`;
* ``g''(z)[a, b] = −(1/r²) (s_b a' + s_a b' + ẑ (⟨a', b'⟩/n − 3 s_a s_b))`` with
  ``a' = P a``, ``b' = P b``, ``s_a = ⟨ẑ, a'⟩/n``, ``s_b = ⟨ẑ, b'⟩/n`` —
  :meth:`Normalisation.curvature`

(``P = I`` for RMSNorm). The algorithms use ``slope`` where a coordinate-wise
activation multiplies by ``g'(z)`` and ``curvature`` where it forms
``g''(z) ⊙ h ⊙ ξ`` (eq. (28)); closed forms, no autograd inside.

The affine parts ``γ ⊙ x + β`` of these modules are read as a layer of their
own after the normalisation (:class:`~dbpaper.ChannelScale` per
channel, :class:`~dbpaper.operators.FeatureScale` per feature).

BatchNorm in training mode couples the examples: the network is then one
function ``F`` of the whole batch, ``(x_1, ..., x_N) ↦ (x_{L,1}, ..., x_{L,N})``,
and the algorithms (like autograd) apply the penalty to the rows of the
vector-Jacobian product of ``F``: with the per-example seeds ``v_m``,
``ξ_{0,n} = Σ_m (∂x_{L,m}/∂x_n)ᵀ v_m`` and ``R = (1/N) Σ_n p(ξ_{0,n})``. For the
Jacobian penalty that is ``R = (1/N) Σ_i Σ_n ‖Σ_m ∂x^i_{L,m}/∂x_n‖²``, the sum
over the examples ``m`` inside the norm (not the Frobenius norm of the whole
batch Jacobian). ``model.eval()`` gives the per-example penalty.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .activations import Activation

if TYPE_CHECKING:
    from .network import Network

__all__ = [
    "BatchNormalisation",
    "GroupNormalisation",
    "LayerNormalisation",
    "NormState",
    "Normalisation",
    "RMSNormalisation",
    "batch_mixer",
    "require_coordinatewise",
]


class NormState:
    """What the forward pass of a normalisation keeps: ``ẑ``, ``1/r`` and the axes of its groups.

    ``zhat`` (``ẑ``) and ``inv`` (``1/r``, one value per group) are held in the
    grouped layout ``grouped`` (``(N, ...)``; GroupNorm splits the channels into
    groups); ``dims`` are the (negative) axes of a group in that layout;
    ``center`` says whether ``P`` centres. ``shape`` is the layout of ``z``
    itself, ``(N, ...)``: tensors of several classes stacked along the batch
    (``(k N, ...)``) are viewed as ``(k, N, ...)`` against it.
    """

    __slots__ = ("center", "dims", "grouped", "inv", "shape", "zhat")

    def __init__(self, zhat: torch.Tensor, inv: torch.Tensor, dims: tuple[int, ...], center: bool, shape: tuple[int, ...]):
        self.zhat: torch.Tensor = zhat
        self.inv: torch.Tensor = inv
        self.dims: tuple[int, ...] = dims
        self.center: bool = center
        self.grouped: tuple[int, ...] = tuple(zhat.shape)
        self.shape: tuple[int, ...] = tuple(shape)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over each group (kept as axes of size 1)."""
        return t.mean(dim=self.dims, keepdim=True)

    def grouped_view(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (``(N, ...)`` or ``k`` stacked classes) in the grouped layout, stacked classes leading."""
        return t.reshape(-1, *self.grouped)

    def centred(self, t: torch.Tensor) -> torch.Tensor:
        """``P t``."""
        return t - self.mean(t) if self.center else t


class Normalisation(Activation):
    """A normalisation ``g`` of groups of coordinates (see the module docstring): ``slope`` and ``curvature`` in closed form.

    Subclasses say which coordinates form a group (:attr:`couples` and
    ``_layout``) and whether ``g`` centres. The coordinate-wise interface
    (``df``, ``d2f``) does not exist for them and raises a ``TypeError``.
    """

    coupled = True
    slope_reads: str = "z"
    #: which coordinates one group holds (``"features"`` of an example, a ``"group"`` of channels, or the ``"batch"``)
    couples: str = "features"
    #: ``True`` for ``(z − μ)/σ``, ``False`` for ``z / rms(z)``
    center: bool = True

    def __init__(self, eps: float | None) -> None:
        self.eps: float | None = None if eps is None else float(eps)

    # -- the groups --------------------------------------------------------------------------------
    def _layout(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(grouped layout, group axes)`` for ``z`` of shape ``(N, ...)``."""
        raise NotImplementedError

    def _eps(self, z: torch.Tensor) -> float:
        """``ε``; ``None`` is torch's default of ``nn.RMSNorm``, ``torch.finfo(z.dtype).eps``."""
        return torch.finfo(z.dtype).eps if self.eps is None else self.eps

    def _normalise(self, z: torch.Tensor) -> NormState:
        grouped, dims = self._layout(tuple(z.shape))
        c = z.reshape(grouped)
        if self.center:
            c = c - c.mean(dim=dims, keepdim=True)
        inv = torch.rsqrt((c * c).mean(dim=dims, keepdim=True) + self._eps(z))
        return NormState(c * inv, inv, dims, self.center, tuple(z.shape))

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return self._normalise(z).zhat.reshape(z.shape)

    def record(self, z: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """``(x, state)``: ``x = g(z)`` and what :meth:`slope` and :meth:`curvature` read (the forward pass's record)."""
        state = self._normalise(z)
        return state.zhat.reshape(z.shape), state

    # -- the derivatives ---------------------------------------------------------------------------
    def slope(self, t: torch.Tensor, a: NormState, out: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """``g'(z) t = (1/r) (P t − ẑ ⟨ẑ, P t⟩/n)``, symmetric; ``t`` of shape ``(N, ...)`` or ``k`` classes stacked.

        ``a`` is the forward pass's :class:`NormState`; ``out`` (which may be
        ``t``) receives the result.
        """
        s = a
        g = s.centred(s.grouped_view(t))
        r = (g - s.zhat * s.mean(s.zhat * g)) * s.inv
        r = r.reshape(t.shape)
        return r if out is None else out.copy_(r)

    def curvature(self, state: NormState, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``g''(z)[a, b]``, the symmetric bilinear second derivative (the module docstring's closed form).

        ``a`` and ``b`` have the shape of ``z`` or of ``k`` classes stacked along
        the batch; the result has ``a``'s shape. It is the source term
        ``M(G''(z) h, ξ)`` of eq. (28) for ``a = h``, ``b = ξ``.
        """
        s = state
        ac, bc = s.centred(s.grouped_view(a)), s.centred(s.grouped_view(b))
        sa, sb = s.mean(s.zhat * ac), s.mean(s.zhat * bc)
        inner = s.mean(ac * bc) - 3 * sa * sb
        out = (sb * ac + sa * bc + s.zhat * inner) * (-(s.inv * s.inv))
        return out.reshape(a.shape)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"{self!r} is not coordinate-wise: its derivative g'(z) is a linear map (Normalisation.slope), not a vector"
        )

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"{self!r} is not coordinate-wise: its second derivative is a bilinear map (Normalisation.curvature), not a vector"
        )

    def second(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Not defined: a normalisation's second derivative is the bilinear :meth:`curvature`, read from its :meth:`record`."""
        raise TypeError(f"{self!r} is not coordinate-wise: the forward pass keeps its record (Normalisation.record)")

    def output_invertible(self) -> bool:
        return False


def _trailing(shape: tuple[int, ...], normalized: tuple[int, ...], who: str) -> tuple[int, ...]:
    if len(normalized) > len(shape) - 1 or tuple(shape[len(shape) - len(normalized):]) != normalized:
        raise ValueError(f"{who}: normalized_shape {normalized} is not the trailing shape of the input {tuple(shape[1:])}")
    return tuple(range(-len(normalized), 0))


class LayerNormalisation(Normalisation):
    """``(z − μ)/σ`` over the trailing ``normalized_shape`` of each example (``nn.LayerNorm`` without its affine part)."""

    couples = "features"
    center = True

    def __init__(self, normalized_shape: tuple[int, ...], eps: float = 1e-5) -> None:
        super().__init__(eps)
        self.normalized_shape: tuple[int, ...] = tuple(int(s) for s in normalized_shape)

    def _layout(self, shape):
        return shape, _trailing(shape, self.normalized_shape, "LayerNorm")


class RMSNormalisation(Normalisation):
    """``z / √(mean(z²) + ε)`` over the trailing ``normalized_shape`` (``nn.RMSNorm`` without its weight).

    ``eps=None`` is torch's default: ``torch.finfo(z.dtype).eps``.
    """

    couples = "features"
    center = False

    def __init__(self, normalized_shape: tuple[int, ...], eps: float | None = None) -> None:
        super().__init__(eps)
        self.normalized_shape: tuple[int, ...] = tuple(int(s) for s in normalized_shape)

    def _layout(self, shape):
        return shape, _trailing(shape, self.normalized_shape, "RMSNorm")


class GroupNormalisation(Normalisation):
    """``(z − μ)/σ`` over each of ``num_groups`` groups of channels and their positions (``nn.GroupNorm`` without its affine part)."""

    couples = "group"
    center = True

    def __init__(self, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__(eps)
        self.num_groups: int = int(num_groups)

    def _layout(self, shape):
        n, c = shape[0], shape[1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups")
        return (n, self.num_groups, math.prod(shape[1:]) // self.num_groups), (-1,)


class BatchNormalisation(Normalisation):
    """``(z − μ)/σ`` per channel over the batch and the positions (``nn.BatchNorm1d``/``2d`` in training mode, no affine part).

    The examples are coupled: ``g`` is a map of the whole batch. With a
    ``module`` whose running statistics are tracked, :meth:`record` (the
    forward pass of the algorithms, once per call) updates them as the
    module's own forward does; :meth:`f` does not.
    """

    couples = "batch"
    center = True

    def __init__(self, eps: float = 1e-5, module: torch.nn.Module | None = None) -> None:
        super().__init__(eps)
        self.module: torch.nn.Module | None = module

    def _layout(self, shape):
        if len(shape) < 2:
            raise ValueError(f"BatchNorm: input of shape {shape} has no channels")
        if shape[0] * math.prod(shape[2:]) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {torch.Size(shape)}")
        return shape, (-len(shape),) + tuple(range(-len(shape) + 2, 0))

    def f(self, z: torch.Tensor) -> torch.Tensor:
        self._layout(tuple(z.shape))
        return torch.native_batch_norm(z, None, None, None, None, True, 0.0, self._eps(z))[0]

    def record(self, z: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """``(x, state)`` by torch's own kernel (``native_batch_norm``), which also updates the running statistics as the module's forward does.

        The update is torch's: the momentum, or ``1/num_batches_tracked`` with
        ``momentum=None``; like the module's forward it leaves the version
        counters of the running statistics alone, so that a graph of an earlier
        forward of the model (the loss of a training step) stays valid.
        """
        grouped, dims = self._layout(tuple(z.shape))
        m, factor, running = self.module, 0.0, (None, None)
        if m is not None and m.training and getattr(m, "track_running_stats", False) and m.running_mean is not None:
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.add_(1)
            factor = (1.0 / float(m.num_batches_tracked)) if m.momentum is None else float(m.momentum)
            running = (m.running_mean, m.running_var)
        x, _, invstd = torch.native_batch_norm(z, None, None, running[0], running[1], True, factor, self._eps(z))
        inv = invstd.to(z.dtype).reshape((1, -1) + (1,) * (z.ndim - 2))
        return x, NormState(x, inv, dims, True, tuple(z.shape))

    def __repr__(self) -> str:
        return f"BatchNormalisation(eps={self.eps})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.eps == other.eps and self.module is other.module

    def __hash__(self) -> int:
        return hash(("BatchNormalisation", self.eps, id(self.module)))


def batch_mixer(net: Network) -> str | None:
    """The module of ``net``'s first layer whose normalisation couples the examples (BatchNorm in training mode), else ``None``."""
    for layer in net.layers[:-1]:
        if getattr(layer.activation, "couples", None) == "batch":
            return layer.module_names[-1]
    return None


def require_coordinatewise(net: Network, who: str) -> None:
    """Raise a ValueError naming ``who`` unless every activation of ``net`` is coordinate-wise (no normalisation).

    For the code written in terms of the vectors ``g'(z)``, ``g''(z)`` (the book's
    traced quantities, the printed Algorithm 4, the dependency graph).
    """
    bad = [".".join(layer.module_names) for layer in net.layers[:-1] if layer.activation.coupled]
    if bad:
        raise ValueError(
            f"{who} is written for coordinate-wise activations; the normalisation of {', '.join(bad)} is not "
            "coordinate-wise (its g' is a linear map): use dbpaper.penalty or dbpaper.double_backprop"
        )
