"""Operation counts of Section 5: the counter the operators report to, and the closed forms.

Section 5 measures the cost of double backpropagation by the number of
evaluations of the bilinear operators ``K_j`` and their transposes ``K_jᵀ``
(the weight-adjoints ``K_j□`` are not counted in the paper). Every public
operator evaluation calls :func:`record`; inside a :func:`count` block the
evaluations are tallied (outside, :func:`record` is a single attribute
lookup). :func:`dbpaper.count_operations` runs the real algorithm inside such
a block: the counts are *measured*, nothing is computed by arithmetic.

:func:`paper_count` and :func:`weight_adjoint_count` are the closed forms —
the paper's for ``K`` and ``Kᵀ`` (Sections 5.1–5.4, Appendix C), ours for
``K□`` — for dense networks in which every layer has a weight; :data:`CASES`
describes each case (the book's wing measures them on small random networks,
``dbpaper.paper.counts.measure_case``).

One convention matters when comparing variants of Algorithm 4 (see
``dbpaper.algorithms.jacobian``): an evaluation on ``k`` classes stacked
along the batch dimension counts as *one* evaluation, although it does ``k``
times the work, and the Gram and one-hot shortcuts replace some operator
evaluations by other contractions. Counts of ``"optimized-chunked"`` and
``"optimized-shortcuts"`` are therefore not comparable with the paper's; use
FLOPs for those. Algorithm 4 applies to every coordinate-wise activation: its
count on a softmax network is ``2CL + 2L - 1`` for tanh as for ReLU (case
``"jacobian-optimized-smooth"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

__all__ = [
    "CASES",
    "KINDS",
    "Case",
    "MINIMAL",
    "count",
    "optimized_ratio",
    "paper_count",
    "record",
    "weight_adjoint_count",
]

#: the kinds of evaluation counted, ``K``, ``Kᵀ`` and ``K□``
KINDS = ("apply", "transpose", "weight_adjoint")

_active: list[dict[str, int]] = []


def record(kind: str) -> None:
    """Add one evaluation of ``kind`` to every active counter."""
    for counter in _active:
        counter[kind] += 1


@contextlib.contextmanager
def count() -> Iterator[dict[str, int]]:
    """Count operator evaluations inside the block.

    Yields a dict with the keys ``apply`` (K), ``transpose`` (K^T) and
    ``weight_adjoint`` (K^box); nested contexts all count.
    """
    counter = dict.fromkeys(KINDS, 0)
    _active.append(counter)
    try:
        yield counter
    finally:
        for i, c in enumerate(_active):  # by identity: equal dicts are distinct counters
            if c is counter:
                del _active[i]
                break


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
#:
#: :meta hide-value:
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
#:
#: :meta hide-value:
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
