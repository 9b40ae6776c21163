"""The losses ``ℓ(x_L, y)`` of Section 4.5 and the one rule that chooses among them.

``"nll"`` is the cross-entropy: ``−log softmax(x_L)[y]`` of logits, ``−log x_L[y]``
after a final softmax (as ``F.cross_entropy``); ``"mse"`` is ``‖x_L − y‖²`` summed
over the outputs of an example (``C`` times ``F.mse_loss``, which averages over
the outputs too). Both are batch means.

The rule (:func:`loss_for`), used by :func:`dbpaper.objective`,
:func:`dbpaper.count_operations`, :func:`dbpaper.double_backprop` (``with_loss``)
and the autograd fallback alike: a loss named explicitly, else integer labels
``y`` give ``"nll"`` and float targets ``"mse"``.
"""

from __future__ import annotations

import torch

from .activations import OutputMap, Softmax

__all__ = ["LOSSES", "loss_for", "loss_per_example", "loss_target", "loss_value"]

#: The losses the entry points know.
LOSSES = ("nll", "mse")


def loss_for(y: torch.Tensor, loss: str | None = None) -> str:
    """The loss: ``loss`` if given, else by one rule — integer labels ``y``: ``"nll"``; float ``y``: ``"mse"``."""
    if loss is not None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} or None, got {loss!r}")
        return loss
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"the loss needs labels or targets y as a torch.Tensor, got {type(y).__name__}")
    if y.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return "nll"
    if y.is_floating_point():
        return "mse"
    raise TypeError(f"cannot derive a loss from labels of dtype {y.dtype}; pass loss='nll' or loss='mse'")


def loss_target(x_L: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The one-hot class indices (``"nll"``) or the float targets (``"mse"``) in ``x_L``'s dtype, checked against ``x_L``."""
    if loss == "nll":
        if y is None or y.dtype not in (torch.int64, torch.int32) or y.shape != x_L.shape[:1]:
            raise ValueError(
                f"nll loss needs class indices y of shape ({x_L.shape[0]},) and an integer dtype, "
                f"got {None if y is None else (tuple(y.shape), y.dtype)}"
            )
        if x_L.ndim != 2:
            raise ValueError(f"nll loss needs outputs of shape (N, C), got {tuple(x_L.shape)}")
        if not torch.compiler.is_compiling() and (y.min() < 0 or y.max() >= x_L.shape[1]):
            raise ValueError(f"class indices must lie in [0, {x_L.shape[1]}), got range [{int(y.min())}, {int(y.max())}]")
        return torch.nn.functional.one_hot(y.long(), x_L.shape[1]).to(x_L.dtype)
    if loss == "mse":
        if y is None or y.shape != x_L.shape or not y.is_floating_point():
            raise ValueError(
                f"mse loss needs float targets y shaped like the output {tuple(x_L.shape)}, "
                f"got {None if y is None else (tuple(y.shape), y.dtype)}"
            )
        return y.to(x_L.dtype)
    raise ValueError(f"unknown loss {loss!r}; use 'nll' or 'mse'")


def loss_value(
    output_map: OutputMap, x_L: torch.Tensor, y: torch.Tensor, loss: str, z_L: torch.Tensor | None = None
) -> torch.Tensor:
    """The batch mean of ``ℓ(x_L, y)`` (per-example losses summed over coordinates).

    NLL after a softmax is computed stably: from ``log_softmax(z_L)`` where the
    logits ``z_L`` are given (a recorded forward pass keeps them), else as
    ``−log x_L[y]`` of the target class alone, so that another class whose
    probability underflows to 0 does not turn a finite loss into NaN (``0 · log 0``).
    """
    target = loss_target(x_L, y, loss)
    if loss == "mse":
        return torch.sum((x_L - target) ** 2) / x_L.shape[0]
    if not isinstance(output_map, Softmax):
        return -torch.sum(target * torch.log_softmax(x_L, dim=-1)) / x_L.shape[0]
    if z_L is not None:
        return -torch.sum(target * torch.log_softmax(z_L, dim=-1)) / x_L.shape[0]
    # −log x_L[y]: the target class only (``target`` is one-hot: nll takes class indices)
    return -torch.sum(torch.log(x_L.gather(-1, y.reshape(-1, 1).long()))) / x_L.shape[0]


def loss_per_example(
    output_map: OutputMap, x_L: torch.Tensor, y: torch.Tensor, loss: str, z_L: torch.Tensor | None = None
) -> torch.Tensor:
    """``ℓ(x_{L,n}, y_n)`` per example, shape ``(N,)``: the terms whose batch mean :func:`loss_value` is."""
    target = loss_target(x_L, y, loss)
    if loss == "mse":
        return ((x_L - target) ** 2).reshape(x_L.shape[0], -1).sum(dim=1)
    if not isinstance(output_map, Softmax):
        return -(target * torch.log_softmax(x_L, dim=-1)).sum(dim=-1)
    if z_L is not None:
        return -(target * torch.log_softmax(z_L, dim=-1)).sum(dim=-1)
    return -torch.log(x_L.gather(-1, y.reshape(-1, 1).long())).reshape(-1)
