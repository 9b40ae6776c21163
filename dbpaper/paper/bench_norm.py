"""The benchmark's normalisation workloads (group ``normalisation``): networks as they are trained.

* ``prenorm-mlp``, ``prenorm-mlp-classical``: a pre-norm residual MLP stack, as in every
  transformer's feed-forward part: a dense stem, blocks ``x + W₂ GELU(W₁ LN(x))`` (width 256, four
  blocks), a final LayerNorm and a dense softmax output; the Jacobian penalty and classical double
  backpropagation (NLL).
* ``resnet-train``, ``resnet-train-classical``: the benchmark's small ResNet
  (:func:`dbpaper.paper.bench._resnet`) in training mode: its BatchNorm layers normalise by the
  batch's statistics (the penalty of the batch function, see :mod:`dbpaper.normalisation`).
  ``vmap(jacrev)`` does not run on them: it differentiates one example at a time, which is another
  function than the batch's.

:func:`workloads` is joined to :func:`dbpaper.paper.bench.workloads`;
``python -m dbpaper bench --only normalisation`` runs these alone.
"""

from __future__ import annotations

from torch import nn

from ..nn import Residual
from .bench import ALL, Task, Workload, _resnet

__all__ = ["GROUP", "prenorm_mlp", "workloads"]

#: the ``--only`` group of these workloads
GROUP = "normalisation"


def prenorm_mlp(d_in: int, width: int, blocks: int, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """``Linear(d_in, width)``, ``blocks`` pre-norm blocks ``x + W₂ GELU(W₁ LN(x))`` (hidden ``width``), LayerNorm, a softmax output."""
    import torch

    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Linear(d_in, width)]
    for _ in range(blocks):
        mods.append(Residual(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)))
    mods += [nn.LayerNorm(width), nn.Linear(width, classes), nn.Softmax(dim=-1)]
    return nn.Sequential(*mods)


def _resnet_train(channels: tuple[int, int, int], size: int) -> nn.Sequential:
    return _resnet(channels, size).train()


def workloads(quick: bool = False) -> list[Workload]:
    """The normalisation workloads (shrunken with ``quick``), in the form of :func:`dbpaper.paper.bench.workloads`."""
    d_in, width, blocks, batch = (32, 16, 2, 8) if quick else (784, 256, 4, 128)
    res_ch, res_size, res_batch = ((2, 4, 4), 8, 4) if quick else ((16, 32, 64), 32, 32)
    out: list[Workload] = []
    for suffix, what, task in (("", "Jacobian penalty", Task("jacobian")), ("-classical", "classical double backpropagation, NLL", Task("classical-nll"))):
        out.append(
            Workload(
                f"prenorm-mlp{suffix}", GROUP,
                f"pre-norm residual MLP {d_in}-{width}, {blocks} blocks x + W2 GELU(W1 LN(x)), LayerNorm, softmax, {what}, batch {batch}",
                {"d_in": d_in, "width": width, "blocks": blocks, "batch": batch, "classes": 10, "penalty": task.penalty},
                lambda: (prenorm_mlp(d_in, width, blocks), (d_in,), batch, 10), ALL, task,
            )
        )  # fmt: skip
        out.append(
            Workload(
                f"resnet-train{suffix}", GROUP,
                f"ResNet stem conv{res_ch[0]}, residual blocks {res_ch[0]}-{res_ch[1]}-{res_ch[2]} with BatchNorm in training mode, "
                f"average pooling, linear, softmax on 3x{res_size}x{res_size}, {what}, batch {res_batch}",
                {"channels": list(res_ch), "size": res_size, "batch": res_batch, "classes": 10, "penalty": task.penalty, "train": True},
                lambda: (_resnet_train(res_ch, res_size), (3, res_size, res_size), res_batch, 10),
                tuple(m for m in ALL if m != "vmap-jacrev"), task,
            )
        )  # fmt: skip
    return out
