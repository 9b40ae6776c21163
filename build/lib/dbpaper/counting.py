"""Operation counts of Section 5, measured by instrumenting the operators.

Section 5 measures the cost of double backpropagation by the number of
evaluations of the bilinear operators ``K_j`` and their transposes ``K_jᵀ``
(the weight-adjoints ``K_j□`` are not counted in the paper).
:func:`count_operations` *measures* these numbers: it runs the real
algorithm (:func:`dbpaper.double_backprop`) inside the counter of
:mod:`dbpaper._counting`, which every public operator evaluation reports to.
Nothing is computed by arithmetic.

:func:`paper_count` and :func:`weight_adjoint_count` are the closed forms —
the paper's for ``K`` and ``Kᵀ`` (Sections 5.1–5.4, Appendix C), ours for
``K□`` — for dense networks in which every layer has a weight;
:data:`CASES` describes each case and :func:`measure_case` measures it on a
small random multilayer perceptron, so that measured and closed forms can be
compared (the tests and the *Runtimes* chapter do so for a grid of depths
``L`` and classes ``C``).

One convention matters when comparing variants of Algorithm 4 (see
:mod:`dbpaper.algorithms.jacobian`): an evaluation on ``k`` classes stacked
along the batch dimension counts as *one* evaluation, although it does ``k``
times the work, and the Gram and one-hot shortcuts replace some operator
evaluations by other contractions. Counts of ``"optimized-chunked"`` and
``"optimized-shortcuts"`` are therefore not comparable with the paper's; use
FLOPs for those (``dbpaper.bench``). :func:`count_operations` counts what
``algorithm="auto"`` runs unless told otherwise, which may be such a variant:
pass ``algorithm="general"`` (Algorithms 1–3) or ``"optimized"`` (Algorithm 4
as printed) to compare with the paper's closed forms, as the cases of
:data:`CASES` do.

Algorithm 4 applies to every coordinate-wise activation, not only to the
locally linear ones of the paper: with ``G''_j ≠ 0`` the per-class terms
``M(G''_j(z_j) h_j, ξ_j)`` of eq. (28) are accumulated during the class loop
as source terms of the single forward-backward pass, which needs no further
operator evaluation. Its count on a softmax network is ``2CL + 2L - 1`` for
tanh as for ReLU (case ``"jacobian-optimized-smooth"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import _counting
from .algorithms.driver import loss_kind
from .algorithms.passes import standard_backprop
from .autograd import as_network
from .network import Network
from .penalties import ClassicalDoubleBackprop, JacobianFrobenius, OutputNodeGradient, Penalty
from .pipeline import double_backprop, objective_gradients
from .seeds import LossGradientSeed

__all__ = [
    "CASES",
    "Case",
    "MINIMAL",
    "count_operations",
    "count_table",
    "measure_case",
    "optimized_ratio",
    "paper_count",
    "weight_adjoint_count",
]

_KEYS = ("apply", "transpose", "weight_adjoint")


def count_operations(
    model: nn.Module | Network,
    x: torch.Tensor,
    penalty: Penalty | None,
    y: torch.Tensor | None = None,
    algorithm: str = "auto",
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
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"count_operations: algorithm must be a str, got {type(algorithm).__name__}")
    net = as_network(model, x)
    if penalty is None:
        if not with_loss:
            raise ValueError("count_operations: penalty=None counts plain backpropagation of the loss; pass with_loss=True")
        if y is None:
            raise ValueError("count_operations: with_loss=True needs y (labels or targets)")
        if algorithm not in ("general", "auto"):
            raise ValueError(f"count_operations: penalty=None has no algorithm choice, got algorithm={algorithm!r}")
        with torch.no_grad(), _counting.count() as counter:
            rec = net.forward(x)
            zeta_L = LossGradientSeed(net.output_map, rec.output, y, loss_kind(net, None)).zeta_L() / x.shape[0]
            standard_backprop(net, rec, zeta_L)  # Section 4.5: L - 1 evaluations of Kᵀ
        return {k: counter[k] for k in _KEYS}
    if not isinstance(penalty, Penalty):
        raise TypeError(f"count_operations: penalty must be a dbpaper Penalty or None, got {type(penalty).__name__}")
    with _counting.count() as counter:
        if with_loss and algorithm != "general":  # the objective ℓ + λR as dbpaper.objective runs it (loss folded in)
            if y is None:
                raise ValueError("count_operations: with_loss=True needs y (labels or targets)")
            objective_gradients(net, x, penalty, y, 1.0, loss=loss_kind(net, penalty), algorithm=algorithm)
        else:
            double_backprop(net, x, penalty, y, algorithm=algorithm, with_loss=with_loss)
    return {k: counter[k] for k in _KEYS}


# -- closed forms ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One counting scenario: the network, penalty and algorithm, and the closed forms.

    ``formula``/``count`` give ``#K + #Kᵀ`` and ``kbox_formula``/``kbox`` give
    ``#K□`` for dense networks of depth ``L`` (every layer has a weight) with
    ``C`` outputs. ``source`` says where the paper states the count (``None``
    for counts the paper does not print).
    """

    name: str
    description: str
    formula: str
    count: Callable[[int, int], int]
    kbox_formula: str
    kbox: Callable[[int, int], int]
    source: str | None
    softmax: bool
    activation: str
    penalty: str | None
    algorithm: str = "general"
    with_loss: bool = False


def _case(*args, **kw) -> Case:
    return Case(*args, **kw)


#: The scenarios of Sections 5.1–5.4 and Appendix C (``source`` set) and the variants we add.
CASES: dict[str, Case] = {
    c.name: c
    for c in [
        _case("general", "softmax output, tanh, v = e_0 (network-independent)", "4L-1", lambda L, C: 4 * L - 1,
              "2L", lambda L, C: 2 * L, "Section 5.1", True, "tanh", "node"),
        _case("general+loss", "as 'general', plus the loss gradient", "5L-2", lambda L, C: 5 * L - 2,
              "3L", lambda L, C: 3 * L, "Section 5.1", True, "tanh", "node", with_loss=True),
        _case("loss", "no penalty: the loss gradient alone", "2L-1", lambda L, C: 2 * L - 1,
              "L", lambda L, C: L, "Section 5.1", True, "tanh", None, with_loss=True),
        _case("classical+loss", "classical double backprop (NLL) plus its loss, reusing ζ_j", "4L-1",
              lambda L, C: 4 * L - 1, "3L", lambda L, C: 3 * L, "Section 5.3 (last sentence), Section 4.5", True,
              "tanh", "classical", with_loss=True),
        _case("linear-output", "identity output, ReLU, v = e_0", "3L", lambda L, C: 3 * L,
              "L", lambda L, C: L, "Section 5.3", False, "relu", "node"),
        _case("linear-output+loss", "as 'linear-output', plus the loss gradient", "4L-1", lambda L, C: 4 * L - 1,
              "2L", lambda L, C: 2 * L, "Section 5.3", False, "relu", "node", with_loss=True),
        _case("linear-output-smooth", "identity output, tanh, v = e_0 (only γ_{L-1} vanishes)", "4L-2 (L≥2; 3 for L=1)",
              lambda L, C: 4 * L - 2 if L >= 2 else 3, "2L-1", lambda L, C: 2 * L - 1, "Section 5.3 ('reduces by 1'; not printed as a count)",
              False, "tanh", "node"),
        _case("jacobian-naive", "softmax output, ReLU, ‖J‖_F² class by class (Algorithms 1-3)", "L+C(3L-1)",
              lambda L, C: L + C * (3 * L - 1), "2CL", lambda L, C: 2 * C * L, "Section 5.4", True, "relu", "jacobian"),
        _case("jacobian-naive+loss", "as 'jacobian-naive', plus the loss gradient", "2L-1+C(3L-1)",
              lambda L, C: 2 * L - 1 + C * (3 * L - 1), "2CL+L", lambda L, C: 2 * C * L + L, "Section 5.4", True, "relu",
              "jacobian", with_loss=True),
        _case("jacobian-optimized", "softmax output, ReLU, ‖J‖_F² by Algorithm 4", "2CL+2L-1",
              lambda L, C: 2 * C * L + 2 * L - 1, "CL+L", lambda L, C: C * L + L, "Section 5.4, Appendix C", True, "relu",
              "jacobian", algorithm="optimized"),
        _case("jacobian-optimized+loss", "as 'jacobian-optimized', plus the loss gradient folded into η̂_L", "2CL+2L-1",
              lambda L, C: 2 * C * L + 2 * L - 1, "CL+L", lambda L, C: C * L + L, None, True, "relu", "jacobian",
              algorithm="optimized", with_loss=True),
        _case("jacobian-optimized-smooth", "softmax output, tanh, ‖J‖_F² by Algorithm 4 (source terms G''_j h_j ξ_j accumulated)",
              "2CL+2L-1", lambda L, C: 2 * C * L + 2 * L - 1, "CL+L", lambda L, C: C * L + L, None, True, "tanh",
              "jacobian", algorithm="optimized"),
        _case("jacobian-naive-linear-output", "identity output, ReLU, ‖J‖_F² class by class (η ≡ 0)", "L+2CL",
              lambda L, C: L + 2 * C * L, "CL", lambda L, C: C * L, None, False, "relu", "jacobian"),
        _case("jacobian-optimized-linear-output", "identity output, ReLU, ‖J‖_F² by Algorithm 4 (η̂ ≡ 0, no h_L)", "L+C(2L-1)",
              lambda L, C: L + C * (2 * L - 1), "CL", lambda L, C: C * L, None, False, "relu", "jacobian",
              algorithm="optimized"),
        # -- the minimal counts reached by the default path (beyond the paper) ------------------------------
        _case("general+loss-minimal", "as 'general+loss', the loss folded into Algorithm 3", "4L-1",
              lambda L, C: 4 * L - 1, "2L", lambda L, C: 2 * L, None, True, "tanh", "node", algorithm="minimal",
              with_loss=True),
        _case("classical+loss-minimal", "as 'classical+loss', the loss folded into Algorithm 3", "4L-1",
              lambda L, C: 4 * L - 1, "2L", lambda L, C: 2 * L, None, True, "tanh", "classical", algorithm="minimal",
              with_loss=True),
        _case("linear-output-minimal", "as 'linear-output', without the unused h_L", "3L-1", lambda L, C: 3 * L - 1,
              "L", lambda L, C: L, None, False, "relu", "node", algorithm="minimal"),
        _case("linear-output+loss-minimal", "as 'linear-output+loss': no h_L, the loss folded in", "4L-2",
              lambda L, C: 4 * L - 2, "2L", lambda L, C: 2 * L, None, False, "relu", "node", algorithm="minimal",
              with_loss=True),
        _case("linear-output-smooth-minimal", "as 'linear-output-smooth', without h_L", "4L-3 (L≥2; 2 for L=1)",
              lambda L, C: 4 * L - 3 if L >= 2 else 2, "2L-1", lambda L, C: 2 * L - 1, None, False, "tanh", "node",
              algorithm="minimal"),
        _case("jacobian-optimized-linear-output+loss", "identity output, ReLU, Algorithm 4, the loss folded into η̂_L",
              "C(2L-1)+2L-1", lambda L, C: C * (2 * L - 1) + 2 * L - 1, "CL+L", lambda L, C: C * L + L, None, False,
              "relu", "jacobian", algorithm="optimized", with_loss=True),
        _case("jacobian-optimized-smooth-linear-output", "identity output, tanh, Algorithm 4 (η̂_L ≡ 0, no h_L)",
              "C(2L-1)+2L-2 (L≥2; C+1 for L=1)", lambda L, C: C * (2 * L - 1) + 2 * L - 2 if L >= 2 else C + 1,
              "CL+L-1", lambda L, C: C * L + L - 1, None, False, "tanh", "jacobian", algorithm="optimized"),
    ]
}

#: For each scenario of Section 5 (the paper's count, algorithm ``"general"``), the case with the fewest
#: evaluations this package reaches (what the default ``algorithm="auto"`` runs).
MINIMAL: dict[str, str] = {
    "general": "general",
    "general+loss": "general+loss-minimal",
    "loss": "loss",
    "classical+loss": "classical+loss-minimal",
    "linear-output": "linear-output-minimal",
    "linear-output+loss": "linear-output+loss-minimal",
    "linear-output-smooth": "linear-output-smooth-minimal",
    "jacobian-naive": "jacobian-optimized",
    "jacobian-naive+loss": "jacobian-optimized+loss",
    "jacobian-naive-linear-output": "jacobian-optimized-linear-output",
}


def _get_case(case: str) -> Case:
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    return CASES[case]


def _check_lc(L: int, C: int | None, needs_c: bool) -> int:
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise ValueError(f"L must be a positive int, got {L!r}")
    if C is None:
        if needs_c:
            raise ValueError("this case depends on the number of classes C; pass C")
        return 1
    if not isinstance(C, int) or isinstance(C, bool) or C < 1:
        raise ValueError(f"C must be a positive int, got {C!r}")
    return C


def paper_count(case: str, L: int, C: int | None = None) -> int:
    """The closed form ``#K + #Kᵀ`` of a case (Sections 5.1–5.4, Appendix C; see :data:`CASES`).

    Examples: ``paper_count("general", L) = 4L - 1``,
    ``paper_count("jacobian-naive", L, C) = L + C(3L - 1)``,
    ``paper_count("jacobian-optimized", L, C) = 2CL + 2L - 1``.
    """
    c = _get_case(case)
    return c.count(L, _check_lc(L, C, "C" in c.formula))


def weight_adjoint_count(case: str, L: int, C: int | None = None) -> int:
    """The closed form ``#K□`` of a case for dense networks (not in the paper; see :data:`CASES`)."""
    c = _get_case(case)
    return c.kbox(L, _check_lc(L, C, "C" in c.formula or "C" in c.kbox_formula))


def optimized_ratio(L: int, C: int, *, with_kbox: bool = False) -> float:
    """Operations of Algorithm 4 over those of the naive Jacobian penalty (Section 5.4).

    ``(2CL + 2L - 1) / (L + C(3L - 1))``. For many classes it tends to
    ``2L / (3L - 1)`` (4/5 for ``L = 2``, 8/11 for ``L = 4``), and to the
    paper's 2/3 ("about a third" saved) only when the network is deep as
    well. Counting ``K□`` too, ``(3CL + 3L - 1) / (L + C(5L - 1))``, which
    tends to ``3L / (5L - 1)`` and then to 3/5.
    """
    num = paper_count("jacobian-optimized", L, C)
    den = paper_count("jacobian-naive", L, C)
    if with_kbox:
        num += weight_adjoint_count("jacobian-optimized", L, C)
        den += weight_adjoint_count("jacobian-naive", L, C)
    return num / den


# -- measuring the cases on small multilayer perceptrons ---------------------------------------------

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(L: int, C: int, activation: str, softmax: bool, width: int, in_features: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    prev = in_features
    for _ in range(L - 1):
        mods += [nn.Linear(prev, width), _ACTIVATIONS[activation]()]
        prev = width
    mods.append(nn.Linear(prev, C))
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    model = nn.Sequential(*mods).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / max(1, p.shape[-1]) ** 0.5)
    return model


def measure_case(case: str, L: int, C: int = 3, *, batch: int = 2, width: int = 4, in_features: int = 3, seed: int = 0) -> dict[str, int]:
    """Measure a case of :data:`CASES` with :func:`count_operations` on a random dense network.

    The network has ``L`` layers, hidden width ``width`` and ``C`` outputs
    (``C ≥ 2``; the penalty on a single output node uses node 0).
    """
    c = _get_case(case)
    _check_lc(L, C, True)
    if C < 2:
        raise ValueError(f"measure_case needs C >= 2 outputs, got {C}")
    model = _mlp(L, C, c.activation, c.softmax, width, in_features, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((batch, in_features), generator=g, dtype=torch.float64)
    if c.softmax:
        y = torch.randint(0, C, (batch,), generator=g)
    else:
        y = torch.randn((batch, C), generator=g, dtype=torch.float64)
    penalty = {
        None: None,
        "node": OutputNodeGradient(0),
        "jacobian": JacobianFrobenius(),
        "classical": ClassicalDoubleBackprop("nll"),
    }[c.penalty]
    return count_operations(model, x, penalty, y if (c.with_loss or c.penalty == "classical") else None, c.algorithm, c.with_loss)


def count_table(cases: Iterable[str] | None = None, depths: Iterable[int] = (1, 2, 3, 4, 6), classes: Iterable[int] = (2, 10)) -> list[dict]:
    """Measured and closed-form counts for every case, depth and (where it matters) number of classes.

    Each row: ``case``, ``L``, ``C`` (``None`` where the count does not depend
    on it), ``measured`` (``#K + #Kᵀ``), ``closed`` (:func:`paper_count`),
    ``kbox_measured``, ``kbox_closed`` (:func:`weight_adjoint_count`), ``source``.
    """
    rows = []
    for name in CASES if cases is None else cases:
        c = _get_case(name)
        depends = "C" in c.formula or "C" in c.kbox_formula
        for L in depths:
            for C in classes if depends else (3,):
                m = measure_case(name, L, C)
                rows.append(
                    {
                        "case": name,
                        "L": L,
                        "C": C if depends else None,
                        "measured": m["apply"] + m["transpose"],
                        "closed": paper_count(name, L, C if depends else None),
                        "kbox_measured": m["weight_adjoint"],
                        "kbox_closed": weight_adjoint_count(name, L, C if depends else None),
                        "source": c.source,
                    }
                )
    return rows
