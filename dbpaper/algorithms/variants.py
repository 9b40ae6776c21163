"""The variants of Algorithm 4: classes per stacked pass and the shortcuts, resolved for a network and a batch.

``chunk_size="auto"`` counts bytes (:data:`TARGET_CHUNK_BYTES`);
``gram="auto"`` and ``onehot="auto"`` consult the shortcuts' cost model
(:func:`dbpaper.algorithms.shortcuts.shortcut_costs`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..network import Network
from .algorithm4 import check_chunk_size
from .shortcuts import shortcut_costs

if TYPE_CHECKING:
    from ..penalties import Penalty

__all__ = ["TARGET_CHUNK_BYTES", "Variant", "auto_chunk_size", "check_choice", "choose_variant"]

#: ``chunk_size="auto"`` stacks as many classes as keep the largest stacked tensor within this many
#: bytes: enough rows for efficient matrix products, small enough for the per-pass tensors to stay
#: in cache instead of being allocated and faulted in afresh (a conv net's feature maps are large
#: per example, an MLP's small; counting bytes, not rows, serves both).
TARGET_CHUNK_BYTES = 4 * 2**20

_AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Variant:
    """The resolved variant of Algorithm 4: classes per stacked pass and which shortcuts are used.

    ``gram_if_stable``: the Gram shortcut was chosen by ``gram="auto"``, so it is used only if
    ``W_1 W_1ᵀ`` is well enough conditioned when the algorithm runs (:func:`gram_is_stable`).
    """

    chunk_size: int
    gram: bool
    onehot: bool
    gram_if_stable: bool = dataclasses.field(default=False, compare=False)


def check_choice(value: bool | str, name: str) -> None:
    if not (value is True or value is False or value == _AUTO):
        raise ValueError(f"{name} must be True, False or 'auto', got {value!r}")


def auto_chunk_size(net: Network, batch: int) -> int:
    """Classes per stacked pass for ``chunk_size="auto"``: the largest stacked tensor within :data:`TARGET_CHUNK_BYTES`.

    The largest per-class tensor of a pass is the widest layer input or output,
    ``batch × max_j max(d_{j-1}, d_j)`` elements of the parameters' size.
    """
    widest = max(max(layer.op.in_numel, layer.op.out_numel) for layer in net.layers)
    params = net.parameters()
    itemsize = params[0].element_size() if params else 4
    return max(1, TARGET_CHUNK_BYTES // (batch * widest * itemsize))


def choose_variant(net: Network, penalty: Penalty, batch: int, *, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False) -> Variant:
    """Resolve ``chunk_size`` and the ``"auto"`` shortcuts (with :func:`shortcut_costs`).

    ``chunk_size``: a positive int, ``None`` (all classes at once) or
    ``"auto"`` (by bytes: :func:`auto_chunk_size`). Raises a
    ValueError when a shortcut is requested explicitly (``True``) but cannot
    be used on ``net``.
    """
    check_chunk_size(chunk_size)
    if chunk_size == _AUTO:
        chunk_size = auto_chunk_size(net, batch)
    check_choice(gram, "gram")
    check_choice(onehot, "onehot")
    c = net.layers[-1].op.out_numel
    costs = shortcut_costs(net, batch)
    quadratic = getattr(penalty, "squared_norm_scale", None) is not None  # p = c ‖·‖²
    if gram is True and ("gram" not in costs or not quadratic):
        raise ValueError(
            "gram=True needs a dense first layer (nn.Linear) and the squared norm p = ‖·‖²; "
            f"the first layer is {net.layers[0].op!r}"
        )
    if onehot is True and "onehot" not in costs:
        raise ValueError(f"onehot=True needs L ≥ 2 and a dense output layer; the network has L={net.depth}, last layer {net.layers[-1].op!r}")

    def decide(choice, key, extra_ok=True):
        if choice == _AUTO:
            return key in costs and extra_ok and costs[key]["with"] < costs[key]["without"]
        return bool(choice)

    use_gram = decide(gram, "gram", quadratic)
    return Variant(
        chunk_size=c if chunk_size is None else min(chunk_size, c),
        gram=use_gram,
        onehot=decide(onehot, "onehot"),
        gram_if_stable=use_gram and gram == _AUTO,
    )
