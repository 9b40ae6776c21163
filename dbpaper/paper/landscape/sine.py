"""The toy experiment of Section 6.3: the sine data, the ``1 → 8 → 5 → 1`` ReLU network, its training."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ...network import Network


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (restored afterwards).

    The networks of Section 6.3 are tiny: one thread is faster than several
    competing ones, and it keeps floating-point reductions independent of the
    number of cores, so that results are reproducible across machines.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sine_data(
    n: int = 1500, seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set of Section 6.3: ``n`` points ``x ~ U[-π, π]`` and ``y = sin x``.

    Parameters
    ----------
    n : int
        Number of points (1500 in the paper).
    seed : int
        Seed of the CPU generator the points are drawn from.
    dtype, device
        Of the returned tensors.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``x`` and ``y``, both of shape ``(n, 1)``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"sine_data: n must be a positive int, got {n!r}")
    g = torch.Generator().manual_seed(int(seed))
    x = (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1) * math.pi
    x = x.to(dtype=dtype, device=device)
    return x, torch.sin(x)


def sine_model(hidden: Sequence[int] = (8, 5), seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The multilayer perceptron of Section 6.3: ``1 → 8 → 5 → 1``, ReLU hidden layers, identity output.

    Parameters
    ----------
    hidden : sequence of int
        Widths of the hidden ReLU layers.
    seed : int
        ``torch.manual_seed`` used for the default initialisation.
    dtype : torch.dtype
        Parameter dtype (float64 for the chapter).
    """
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"sine_model: hidden must be a non-empty sequence of positive ints, got {hidden!r}")
    torch.manual_seed(int(seed))
    modules: list[nn.Module] = []
    width = 1
    for h in hidden:
        modules += [nn.Linear(width, h), nn.ReLU()]
        width = h
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules).to(dtype)


def parameter_count(model: nn.Module) -> int:
    """The number of trainable scalars of ``model`` (67 for ``1 → 8 → 5 → 1``; Section 6.3 prints 61)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"parameter_count: expected an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


@dataclasses.dataclass(eq=False)
class TrainedSine:
    """The outcome of :func:`train_sine_model`."""

    model: nn.Sequential
    x: torch.Tensor
    y: torch.Tensor
    losses: np.ndarray

    @property
    def net(self) -> Network:
        """The model read as the network of eq. (8)."""
        return Network.from_sequential(self.model, (1,))


def train_sine_model(
    n: int = 1500,
    steps: int = 2500,
    lr: float = 1e-2,
    seed: int = 0,
    hidden: Sequence[int] = (8, 5),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TrainedSine:
    """Fit :func:`sine_model` to :func:`sine_data` with full-batch Adam on the squared loss (Section 6.3).

    Deterministic: seeded data and initialisation, full batch, float64, one
    thread (:func:`single_thread`). The learning rate decays by a cosine
    schedule to a tenth of ``lr``.

    Returns
    -------
    TrainedSine
        The model, the data and the loss after every step.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_sine_model: steps must be a positive int, got {steps!r}")
    if not (lr > 0):
        raise ValueError(f"train_sine_model: lr must be positive, got {lr!r}")
    x, y = sine_data(n, seed=seed, dtype=dtype, device=device)
    model = sine_model(hidden, seed=seed, dtype=dtype).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = np.empty(steps)
    with single_thread():
        for k in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / steps)))
            opt.zero_grad()
            loss = torch.mean((model(x) - y) ** 2)
            loss.backward()
            opt.step()
            losses[k] = loss.item()
    return TrainedSine(model=model, x=x, y=y, losses=losses)


def printed_cdb_penalty(s: torch.Tensor | np.ndarray, residual: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The classical penalty as *printed* in Section 6.3, ``((∂_{x_0}(x_L − y))²)² = s⁴``.

    With a label ``y`` that does not depend on ``x_0``, ``∂_{x_0}(x_L − y) = s``.
    The correct value is ``(∂_{x_0} ℓ)² = (2 (x_L − y) s)²`` for ``ℓ = (x_L − y)²``
    (eqs. (11)–(12)); ``residual`` (``x_L − y``) is accepted only to make the
    contrast explicit: the printed formula ignores it.
    """
    del residual
    return s**4
