"""The entry points on a :class:`~dbpaper.Network` itself: :func:`double_backprop`, :func:`objective_gradients` and
:func:`count_operations` (the algorithms' results and their operation counts; re-exported by :mod:`dbpaper.api`)."""

from __future__ import annotations

import torch
from torch import nn

from . import counting
from ._pipeline import read_cached, record, resolve_cached
from .algorithms._dispatch import compute, compute_objective
from .algorithms.general import Result, loss_gradients
from .losses import loss_for
from .network import Network
from .penalties import Penalty
from .planning import AlgorithmName

__all__ = ["as_network", "count_operations", "double_backprop", "objective_gradients"]


def as_network(model: nn.Module | Network, x: torch.Tensor) -> Network:
    """``model`` read as the network of eq. (8) for inputs shaped like ``x`` (a DDP wrapper is looked through)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch dimension, got shape {tuple(x.shape)}")
    return read_cached(model, x)


def double_backprop(
    net: Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor | None = None,
    *,
    algorithm: AlgorithmName = "auto",
    with_loss: bool = False,
) -> Result:
    """Evaluate ``R`` and its parameter gradients with the explicit algorithms (no autograd).

    Parameters
    ----------
    net : dbpaper.Network
        The network of eq. (8).
    x : torch.Tensor
        A batch of inputs ``x_0``, shape ``(N, *net.in_shape)``.
    penalty : dbpaper.penalties.Penalty
        The penalty term of Section 4.1.
    y : torch.Tensor, optional
        Labels (class indices) or targets, for classical double backpropagation
        and for ``with_loss``.
    algorithm : str
        ``"auto"`` (default: the cheapest applicable algorithm by the cost model
        of :mod:`dbpaper.planning`), ``"general"`` (Algorithms 1–3, class by
        class for several ``v``) or any registered algorithm.
    with_loss : bool
        Also return the loss and its gradients (Section 4.5), reusing the
        backward pass of classical double backpropagation when the losses coincide.

    Returns
    -------
    dbpaper.algorithms.Result
        ``value`` (``R``), ``gradients`` and the ``algorithm`` that ran.

    Examples
    --------
    >>> import torch, dbpaper
    >>> from torch import nn
    >>> from dbpaper.penalties import OutputNodeGradient
    >>> _ = torch.manual_seed(0)
    >>> net = dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), (4,))
    >>> result = dbpaper.double_backprop(net, torch.randn(16, 4), OutputNodeGradient(0), algorithm="general")
    >>> result.algorithm, len(result.gradients.weights) == net.depth
    ('general', True)
    """
    net, rec, name = _recorded("double_backprop", net, x, penalty, y, algorithm)
    return compute(net, rec, penalty, y, name=name, with_loss=with_loss)


def objective_gradients(
    net: Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor,
    lam: float,
    *,
    loss: str,
    algorithm: AlgorithmName = "auto",
) -> Result:
    """``ℓ + λR`` and its gradients (Section 4.5); see :func:`dbpaper.algorithms.compute_objective`."""
    net, rec, name = _recorded("objective_gradients", net, x, penalty, y, algorithm)
    return compute_objective(net, rec, penalty, y, lam, loss=loss, name=name)


def _recorded(who: str, net: Network, x: torch.Tensor, penalty: Penalty, y, algorithm: str):
    """Check the call, plan it (cached per network) and record the forward pass: ``(net, record, algorithm name)``."""
    if not isinstance(net, Network):
        raise TypeError(
            f"{who} takes a dbpaper.Network (dbpaper.Network.from_sequential(model, in_shape)), got {type(net).__name__}"
        )
    net.check_input(x)
    penalty.check(net, y)
    name = resolve_cached(net, net, penalty, algorithm, x.shape[0])
    net = net.refreshed()
    return net, record(net, x), name


def count_operations(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty | None,
    y: torch.Tensor | None = None,
    algorithm: AlgorithmName = "auto",
    with_loss: bool = False,
) -> dict[str, int]:
    """Count the operator evaluations of one double-backpropagation step (Section 5).

    Parameters
    ----------
    model : nn.Sequential or Network
        The network (eq. (8)).
    x : torch.Tensor
        An input batch; the counts do not depend on its values or batch size.
    penalty : dbpaper.penalties.Penalty or None
        The penalty term (Section 4.1). ``None`` counts plain backpropagation of
        the loss (Section 4.5; needs ``with_loss=True`` and ``y``): the
        ``2L - 1`` of Section 5.1.
    y : torch.Tensor, optional
        Labels or targets, for classical double backpropagation and ``with_loss``.
    algorithm : str
        ``"auto"`` (default: the algorithm :func:`dbpaper.double_backprop`
        runs by default, so the counts are those of the default path; for the
        Jacobian penalty that is a variant of Algorithm 4, whatever the
        activations), ``"general"`` (Algorithms 1–3, class by class for
        several ``v``: the paper's naive count — pass it explicitly to compare
        with the paper's closed forms), ``"optimized"`` (Algorithm 4 as
        printed, corrected, Appendix C) or any registered algorithm.
    with_loss : bool
        Also compute the gradient of the loss. With ``algorithm="general"`` as
        the paper does (Section 5.1: a separate backpropagation of the loss,
        reusing the backward pass of classical double backpropagation); with
        any other algorithm as :func:`dbpaper.objective` does (the loss folded
        into the forward-backward pass).

    Returns
    -------
    dict
        ``{"apply": #K, "transpose": #Kᵀ, "weight_adjoint": #K□}``, including the
        forward pass. The paper's counts are ``apply + transpose``.

    Raises
    ------
    ValueError
        For ``penalty=None`` without ``with_loss``, a missing ``y``, or an
        algorithm that does not apply.

    Examples
    --------
    Algorithms 1–3 for one constant ``v`` on an identity output, where ``η ≡ 0`` (Section 5.3):
    ``L + 2L`` evaluations of ``K`` and ``Kᵀ``, the first ``L`` of them the forward pass:

    >>> import torch, dbpaper
    >>> from torch import nn
    >>> from dbpaper.penalties import OutputNodeGradient
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> counts = dbpaper.count_operations(model, torch.zeros(1, 4), OutputNodeGradient(0), algorithm="general")
    >>> counts
    {'apply': 4, 'transpose': 2, 'weight_adjoint': 3}
    >>> counts["apply"] + counts["transpose"] == 3 * 2  # 3L with L = 2
    True
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"count_operations: algorithm must be a str, got {type(algorithm).__name__}")
    net = as_network(model, x)
    if penalty is None:
        return _count_loss_backprop(net, x, y, algorithm, with_loss)
    if not isinstance(penalty, Penalty):
        raise TypeError(f"count_operations: penalty must be a dbpaper Penalty or None, got {type(penalty).__name__}")
    with counting.count() as counter:
        if with_loss and algorithm != "general":  # the objective ℓ + λR as dbpaper.objective runs it (loss folded in)
            if y is None:
                raise ValueError("count_operations: with_loss=True needs y (labels or targets)")
            objective_gradients(net, x, penalty, y, 1.0, loss=loss_for(y), algorithm=algorithm)
        else:
            double_backprop(net, x, penalty, y, algorithm=algorithm, with_loss=with_loss)
    return {k: counter[k] for k in counting.KINDS}


def _count_loss_backprop(net: Network, x: torch.Tensor, y: torch.Tensor | None, algorithm: str, with_loss: bool) -> dict[str, int]:
    """:func:`count_operations` with ``penalty=None``: plain backpropagation of the loss (Section 4.5)."""
    if not with_loss:
        raise ValueError("count_operations: penalty=None counts plain backpropagation of the loss; pass with_loss=True")
    if y is None:
        raise ValueError("count_operations: with_loss=True needs y (labels or targets)")
    if algorithm not in ("general", "auto"):
        raise ValueError(f"count_operations: penalty=None has no algorithm choice, got algorithm={algorithm!r}")
    with torch.no_grad(), counting.count() as counter:
        rec = net.forward(x)
        loss_gradients(net, rec, y, loss_for(y))  # Section 4.5: L - 1 evaluations of Kᵀ
    return {k: counter[k] for k in counting.KINDS}
