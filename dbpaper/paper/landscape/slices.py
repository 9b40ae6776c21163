"""One-dimensional slices through input or parameter space (Section 6)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...network import Network

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class Slice:
    """A one-dimensional slice ``t ↦ (x_0(t), Θ(t))`` through input or parameter space (Section 6).

    ``kind="input"``: coordinate ``index`` of ``x_0`` is set to ``t``.
    ``kind="weight"``: entry ``index = (i, l)`` of the weight of layer ``layer``
    (1-based, as ``j`` in eq. (8)) is set to ``t``. ``kind="bias"``: entry
    ``index = (i,)`` of the bias of layer ``layer`` is set to ``t``.
    """

    kind: str
    layer: int = 1
    index: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.kind not in ("input", "weight", "bias"):
            raise ValueError(f"Slice: kind must be 'input', 'weight' or 'bias', got {self.kind!r}")
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"Slice: layer must be an int >= 1 (eq. (8) numbering), got {self.layer!r}")
        object.__setattr__(self, "index", tuple(int(i) for i in self.index))
        need = 2 if self.kind == "weight" else 1
        if len(self.index) != need:
            raise ValueError(f"Slice: a {self.kind} slice needs an index of length {need}, got {self.index}")

    @classmethod
    def input(cls, index: int = 0) -> Slice:
        """Coordinate ``index`` of ``x_0``."""
        return cls("input", 1, (index,))

    @classmethod
    def weight(cls, layer: int, i: int, l: int) -> Slice:
        """Weight entry ``(i, l)`` of layer ``layer``: ``w`` of Section 6.3."""
        return cls("weight", layer, (i, l))

    @classmethod
    def bias(cls, layer: int, i: int) -> Slice:
        """Bias entry ``i`` of layer ``layer``: ``b`` of Section 6.3."""
        return cls("bias", layer, (i,))

    def check(self, net: Network) -> None:
        """Raise a ValueError if the slice does not fit ``net``."""
        if self.kind == "input":
            if len(net.in_shape) != 1 or not 0 <= self.index[0] < net.in_shape[0]:
                raise ValueError(f"Slice: input index {self.index[0]} does not fit inputs of shape {net.in_shape}")
            return
        if self.layer > net.depth:
            raise ValueError(f"Slice: layer {self.layer} does not exist (L = {net.depth})")
        t = self._tensor(net)
        if t is None:
            raise ValueError(f"Slice: layer {self.layer} has no {self.kind}")
        if len(self.index) != t.ndim or any(not 0 <= i < s for i, s in zip(self.index, t.shape)):
            raise ValueError(f"Slice: index {self.index} is out of range for a {self.kind} of shape {tuple(t.shape)}")

    def _tensor(self, net: Network) -> torch.Tensor | None:
        layer = net.layers[self.layer - 1]
        return layer.weight if self.kind == "weight" else layer.bias

    def value(self, net: Network, x: torch.Tensor | None = None) -> float:
        """The current value of the sliced parameter (or input coordinate of the single example ``x``)."""
        self.check(net)
        if self.kind == "input":
            if x is None or x.shape[0] != 1:
                raise ValueError("Slice.value: an input slice needs a single example x of shape (1, d)")
            return float(x[0, self.index[0]])
        return float(self._tensor(net).detach()[self.index])

    @contextlib.contextmanager
    def at(self, net: Network, t: float) -> Iterator[None]:
        """Set the sliced parameter to ``t`` inside the block (restored afterwards); parameter slices only."""
        if self.kind == "input":
            raise ValueError("Slice.at: input slices move x_0, not a parameter; use Slice.inputs")
        self.check(net)
        tensor = self._tensor(net)
        with torch.no_grad():
            old = tensor[self.index].clone()
            tensor[self.index] = float(t)
        try:
            yield
        finally:
            with torch.no_grad():
                tensor[self.index] = old

    def inputs(self, x: torch.Tensor, ts: ArrayLike) -> torch.Tensor:
        """The batch ``x_0(t)`` for all ``t`` in ``ts`` from the single example ``x`` (input slices)."""
        if self.kind != "input":
            raise ValueError("Slice.inputs: only for input slices")
        if x.ndim != 2 or x.shape[0] != 1:
            raise ValueError(f"Slice.inputs: x must be a single example of shape (1, d), got {tuple(x.shape)}")
        ts = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=x.dtype, device=x.device)
        out = x.repeat(ts.shape[0], 1)
        out[:, self.index[0]] = ts
        return out
