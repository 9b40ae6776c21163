"""Coordinate-wise activations (Definition 3.1) and the output maps of Appendix B.

A coordinate-wise activation ``g`` acts through the symmetric bilinear
operator ``M(a, v) = a ⊙ v``: ``G'(z) v = g'(z) ⊙ v`` and
``G''(z) v = g''(z) ⊙ v`` (eq. (9)). Each activation is a small final class
with ``f``, ``df`` (``g'``) and ``d2f`` (``g''``) and the flag
``locally_linear`` (``g'' = 0`` almost everywhere, Section 5.2).

Derivatives at the kinks follow torch's conventions (ReLU: ``g'(0) = 0``;
leaky ReLU: ``g'(0) = alpha``; ELU: ``g'(0) = alpha``), so the package agrees
with autograd everywhere, not only almost everywhere.

The output maps are not all coordinate-wise: :class:`Softmax` acts through
its symmetric Jacobian ``S(x) = diag(x) - x x^T`` (Appendix B.1). A
coordinate-wise activation can also be the output map (a final sigmoid,
tanh, softplus, ...): :class:`CoordinatewiseOutput`. Output maps are written
in terms of the output ``x_L`` (the recorded forward pass keeps ``x_L``, not
``z_L``), so every activation also gives ``g'`` and ``g''`` as functions of
its output (``df_from_output``, ``d2f_from_output``) — as torch's own
backward of sigmoid and tanh does.
"""

from __future__ import annotations

import abc
import math

import torch

__all__ = [
    "Activation",
    "CoordinatewiseOutput",
    "ELU",
    "GELU",
    "Hardtanh",
    "Identity",
    "LeakyReLU",
    "OutputMap",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "SiLU",
    "Mish",
    "Hardswish",
    "Softplus",
    "Tanh",
    "IdentityOutput",
]


class _Kernel:
    """One of aten's activation backward kernels, called as ``kernel(t, out, *args, **kwargs)``:
    ``op(t, *args, **kwargs)``, written into ``out`` where given.

    The overload that writes into ``out`` (``grad_input``, or ``out`` for ``hardswish_backward``, or
    none for ``mish_backward``, then a copy) is looked up once, when the kernel is made at import, so
    that a traced call (``torch.compile``) sees plain attributes. The tensor among ``args`` (``x`` or
    ``z``) may broadcast over ``t`` (classes stacked along a leading axis); the kernels broadcast it
    themselves, except oneDNN's float32 ``gelu_backward`` (``broadcasts=False``), for which it is
    expanded first.
    """

    __slots__ = ("broadcasts", "default", "into", "keyword")

    def __init__(self, op, broadcasts: bool = True) -> None:
        names = set(op.overloads())
        self.default = op.default
        self.keyword = next((k for k in ("grad_input", "out") if k in names), None)
        self.into = getattr(op, self.keyword) if self.keyword else None
        self.broadcasts = broadcasts

    def __call__(self, t: torch.Tensor, out: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        if not self.broadcasts:
            args = tuple(a.expand_as(t) if isinstance(a, torch.Tensor) and a.shape != t.shape else a for a in args)
        if out is None:
            return self.default(t, *args, **kwargs)
        if self.into is None:
            return out.copy_(self.default(t, *args, **kwargs))
        kwargs[self.keyword] = out
        return self.into(t, *args, **kwargs)


_aten = torch.ops.aten
_K = {
    name: _Kernel(getattr(_aten, name), broadcasts=name != "gelu_backward")
    for name in (
        "threshold_backward",
        "leaky_relu_backward",
        "hardtanh_backward",
        "tanh_backward",
        "sigmoid_backward",
        "softplus_backward",
        "elu_backward",
        "gelu_backward",
        "silu_backward",
        "mish_backward",
        "hardswish_backward",
    )
}


class Activation(abc.ABC):
    """A coordinate-wise, twice (almost everywhere) differentiable ``g``."""

    #: ``True`` when ``g'' = 0`` almost everywhere (Section 5.2).
    locally_linear: bool = False

    #: ``True`` for an activation that is not coordinate-wise (a normalisation,
    #: :class:`dbpaper.normalisation.Normalisation`): ``slope`` is a symmetric linear map
    #: of a group of coordinates and ``curvature`` its second derivative.
    coupled: bool = False

    #: ``True`` when the forward pass should take ``g''`` from the output ``g(z)`` (one
    #: transcendental function per layer instead of two; torch's own backward of tanh and the
    #: sigmoid uses the output too, so the values agree with autograd's).
    derivatives_from_output: bool = False

    #: What :meth:`slope` reads besides its argument: ``"x"`` (the output ``g(z)``, which the forward
    #: record keeps anyway) or ``"z"`` (the pre-activation, then kept for it).
    slope_reads: str = "z"

    #: The points where ``g`` is not twice differentiable (empty for a smooth ``g``); tests sample away from them.
    kinks: tuple[float, ...] = ()

    #: ``True`` when ``f``, ``df`` and ``d2f`` are complex-analytic torch code, so that the complex step
    #: (:func:`dbpaper.numdiff.derivative` with ``"complex"``) checks ``g'`` and ``g''`` to rounding.
    complex_analytic: bool = False

    @abc.abstractmethod
    def f(self, z: torch.Tensor) -> torch.Tensor:
        """``g(z)``."""

    @abc.abstractmethod
    def df(self, z: torch.Tensor) -> torch.Tensor:
        """``g'(z)``, so that ``G'(z) v = g'(z) ⊙ v``."""

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        """``g''(z)``, so that ``G''(z) v = g''(z) ⊙ v``; zero for locally linear ``g``."""
        return torch.zeros_like(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``M(g'(z), t) = g'(z) ⊙ t`` in one pass, ``a`` being ``x = g(z)`` or ``z`` as ``slope_reads`` says.

        ``a`` broadcasts over ``t`` (several classes stacked along the batch);
        ``out`` (which may be ``t`` itself) receives the result. The built-in
        activations call the kernel of autograd's own backward
        (``threshold_backward``, ``tanh_backward``, ...), so the product is
        autograd's to the last bit; this default forms ``g'`` first (two passes).
        """
        d = self.df_from_output(a) if self.slope_reads == "x" else self.df(a)
        return torch.mul(d, t) if out is None else torch.mul(d, t, out=out)

    def second(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """``g''(z)`` for the forward record (from ``x = g(z)`` where :attr:`derivatives_from_output`); ``None`` if locally linear."""
        if self.locally_linear:
            return None
        return self.d2f_from_output(x) if self.derivatives_from_output else self.d2f(z)

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        """``g'(z)`` written in terms of the output ``x = g(z)`` (for a final coordinate-wise map)."""
        raise NotImplementedError(f"{self!r} cannot express g' through its output")

    def d2f_from_output(self, x: torch.Tensor) -> torch.Tensor:
        """``g''(z)`` written in terms of the output ``x = g(z)``; zero for locally linear ``g``."""
        if self.locally_linear:
            return torch.zeros_like(x)
        raise NotImplementedError(f"{self!r} cannot express g'' through its output")

    def output_invertible(self) -> bool:
        """Whether ``g'`` and ``g''`` are functions of the output ``g(z)``, so that ``g`` can be the output map."""
        return True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Identity(Activation):
    """``g(z) = z``."""

    complex_analytic = True

    locally_linear = True
    slope_reads = "x"

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return t if out is None or out is t else out.copy_(t)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def df(self, z: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(z)

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


class ReLU(Activation):
    """``g(z) = max(z, 0)``, with ``g'(0) = 0`` as in torch."""

    locally_linear = True
    slope_reads = "x"
    kinks: tuple[float, ...] = (0.0,)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["threshold_backward"](t, out, a, 0)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0).to(z.dtype)

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)  # x > 0 exactly where z > 0


class LeakyReLU(Activation):
    """``g(z) = z`` for ``z > 0`` and ``alpha z`` otherwise (``nn.LeakyReLU(negative_slope=alpha)``)."""

    locally_linear = True

    kinks: tuple[float, ...] = (0.0,)

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha: float = float(alpha)

    @property
    def slope_reads(self) -> str:  # x > 0 iff z > 0 for alpha >= 0
        return "x" if self.alpha >= 0 else "z"

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(z, self.alpha)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["leaky_relu_backward"](t, out, a, self.alpha, self.slope_reads == "x")

    def df(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.alpha))

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.alpha))  # x > 0 iff z > 0 for alpha >= 0

    def output_invertible(self) -> bool:
        return self.alpha >= 0


class Hardtanh(Activation):
    """``g(z) = min(max(z, lo), hi)`` (``nn.Hardtanh``; ``nn.ReLU6`` is ``Hardtanh(0, 6)``).

    ``g'(z) = 1`` strictly inside ``(lo, hi)`` and ``0`` elsewhere, the kinks
    included, as torch's backward; locally linear.
    """

    locally_linear = True
    slope_reads = "x"  # x lies strictly inside (lo, hi) exactly where z does

    min_val: float
    max_val: float

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        if not min_val < max_val:
            raise ValueError(f"Hardtanh: min_val must be below max_val, got {min_val} and {max_val}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    @property
    def kinks(self) -> tuple[float, ...]:
        return (self.min_val, self.max_val)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["hardtanh_backward"](t, out, a, self.min_val, self.max_val)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(z, self.min_val, self.max_val)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        return ((z > self.min_val) & (z < self.max_val)).to(z.dtype)

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.df(x)  # x lies strictly inside (lo, hi) exactly where z does


class Tanh(Activation):
    """``g = tanh``, ``g' = 1 - g^2``, ``g'' = -2 g g'``."""

    complex_analytic = True

    derivatives_from_output = True
    slope_reads = "x"

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["tanh_backward"](t, out, a)  # t ⊙ (1 - x²)

    def second(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _aten.tanh_backward(x, x).mul_(-2)  # -2 x (1 - x²)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(z)
        return 1 - t * t

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x * x

    def d2f_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return -2 * x * (1 - x * x)


class Sigmoid(Activation):
    """``g = sigma``, ``g' = sigma (1 - sigma)``, ``g'' = g' (1 - 2 sigma)``."""

    complex_analytic = True

    derivatives_from_output = True
    slope_reads = "x"

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["sigmoid_backward"](t, out, a)  # t ⊙ x (1 - x)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s) * (1 - 2 * s)

    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - x)

    def d2f_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - x) * (1 - 2 * x)


class Softplus(Activation):
    """``g(z) = log(1 + exp(beta z)) / beta``, linear above ``beta z > threshold`` (``nn.Softplus``)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta: float = float(beta)
        self.threshold: float = float(threshold)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(z, beta=self.beta, threshold=self.threshold)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["softplus_backward"](t, out, a, self.beta, self.threshold)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        bz = self.beta * z
        return torch.where(bz > self.threshold, torch.ones_like(z), torch.sigmoid(bz))

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        bz = self.beta * z
        s = torch.sigmoid(bz)
        return torch.where(bz > self.threshold, torch.zeros_like(z), self.beta * s * (1 - s))

    # From the output: exp(beta x) = 1 + exp(beta z), so sigma(beta z) = 1 - exp(-beta x). Above the
    # threshold x = z. (Inside the window log(exp(t) - 1) < beta z <= t, of width ~exp(-t), the two
    # readings differ by less than exp(-t).)
    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        bx = self.beta * x
        return torch.where(bx > self.threshold, torch.ones_like(x), -torch.expm1(-bx))

    def d2f_from_output(self, x: torch.Tensor) -> torch.Tensor:
        bx = self.beta * x
        e = torch.exp(-bx)  # 1 - sigma(beta z)
        return torch.where(bx > self.threshold, torch.zeros_like(x), self.beta * (-torch.expm1(-bx)) * e)


class ELU(Activation):
    """``g(z) = z`` for ``z > 0`` and ``alpha (exp(z) - 1)`` otherwise (``nn.ELU``)."""

    kinks: tuple[float, ...] = (0.0,)

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha: float = float(alpha)

    @property
    def slope_reads(self) -> str:  # x > 0 iff z > 0, and alpha exp(z) = x + alpha for z <= 0, when alpha > 0
        return "x" if self.alpha > 0 else "z"

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.elu(z, self.alpha)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["elu_backward"](t, out, self.alpha, 1.0, 1.0, self.slope_reads == "x", a)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z > 0, torch.ones_like(z), self.alpha * torch.exp(z))

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        # torch's double backward takes g''(0) = 0 while g'(0) = alpha; we mirror both
        return torch.where(z >= 0, torch.zeros_like(z), self.alpha * torch.exp(z))

    # From the output (alpha > 0): x > 0 iff z > 0, x >= 0 iff z >= 0, and alpha exp(z) = x + alpha for z <= 0.
    def df_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.ones_like(x), x + self.alpha)

    def d2f_from_output(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.zeros_like(x), x + self.alpha)

    def output_invertible(self) -> bool:
        return self.alpha > 0


class GELU(Activation):
    """``g(z) = z Φ(z)`` (``nn.GELU()``), or with ``approximate="tanh"`` ``z (1 + tanh(u)) / 2``, ``u = √(2/π)(z + 0.044715 z³)``.

    ``g'(z) = Φ(z) + z φ(z)`` and ``g''(z) = φ(z) (2 − z²)`` (``Φ``, ``φ``: the
    standard normal distribution and density); smooth, not monotone, so it is
    no output map.
    """

    _K = 0.044715

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate: str = approximate

    def _u(self, z):
        c = math.sqrt(2.0 / math.pi)
        return c * (z + self._K * z**3), c * (1 + 3 * self._K * z * z), c * 6 * self._K * z  # u, u', u''

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(z, approximate=self.approximate)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["gelu_backward"](t, out, a, approximate=self.approximate)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        if self.approximate == "tanh":
            u, du, _ = self._u(z)
            return 0.5 * (1 + torch.tanh(u)) + 0.5 * z * _sech2(u) * du
        return _normal_cdf(z) + z * _normal_pdf(z)

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        if self.approximate == "tanh":
            u, du, d2u = self._u(z)
            s = _sech2(u)  # not 1 − tanh², which cancels where |u| is large
            return s * du + 0.5 * z * s * (d2u - 2 * torch.tanh(u) * du * du)
        return _normal_pdf(z) * (2 - z * z)

    def output_invertible(self) -> bool:
        return False


class SiLU(Activation):
    """``g(z) = z σ(z)`` (``nn.SiLU``, swish): ``g' = σ (1 + z (1 − σ))``, ``g'' = σ (1 − σ) (2 + z (1 − 2σ))``; not monotone, no output map."""

    complex_analytic = True

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["silu_backward"](t, out, a)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s) * (2 + z * (1 - 2 * s))

    def output_invertible(self) -> bool:
        return False


class Mish(Activation):
    """``g(z) = z tanh(softplus(z))`` (``nn.Mish``). With ``t = tanh(softplus(z))`` and ``s = σ(z)``:
    ``g' = t + z s (1 − t²)``, ``g'' = s (1 − t²) (2 + z (1 − s) − 2 z s t)``; smooth, not monotone, no output map.
    """

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mish(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["mish_backward"](t, out, a)

    def _parts(self, z):
        return torch.tanh(torch.nn.functional.softplus(z)), torch.sigmoid(z)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        t, s = self._parts(z)
        return t + z * s * (1 - t * t)

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        t, s = self._parts(z)
        return s * (1 - t * t) * (2 + z * (1 - s) - 2 * z * s * t)

    def output_invertible(self) -> bool:
        return False


class Hardswish(Activation):
    """``g(z) = z · min(max(z + 3, 0), 6) / 6`` (``nn.Hardswish``): ``0`` below ``−3``, ``z`` above ``3``, ``z (z + 3) / 6`` between.

    ``g' = z/3 + 1/2`` strictly inside ``(−3, 3)``, ``0`` from ``−3`` down, ``1`` from ``3`` up (torch's convention at the kinks);
    ``g'' = 1/3`` strictly inside ``(−3, 3)``, ``0`` elsewhere (as torch's double backward).
    """

    kinks: tuple[float, ...] = (-3.0, 3.0)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.hardswish(z)

    def slope(self, t: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _K["hardswish_backward"](t, out, a)

    def df(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z <= -3, torch.zeros_like(z), torch.where(z < 3, z / 3 + 0.5, torch.ones_like(z)))

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        return ((z > -3) & (z < 3)).to(z.dtype) / 3

    def output_invertible(self) -> bool:
        return False


def _sech2(u):
    return torch.cosh(u).reciprocal().square()  # 0 where cosh overflows


def _normal_cdf(z):
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def _normal_pdf(z):
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


class OutputMap(abc.ABC):
    """The last layer's map ``g_L`` (Appendix B): softmax, identity or a coordinate-wise activation."""

    name: str
    #: ``True`` when ``dx_L/dz_L`` does not depend on ``z_L`` (then ``curvature`` is zero).
    linear: bool = False

    @abc.abstractmethod
    def f(self, z: torch.Tensor) -> torch.Tensor:
        """``x_L = g_L(z_L)``."""

    @abc.abstractmethod
    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(dx_L/dz_L) u``, written in terms of the output ``x = x_L``; self-adjoint."""

    def curvature(self, x: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        """``(d/dz_L [(dx_L/dz_L)* v])* h`` for a fixed ``v``: the ``v``-independent part of ``η_L`` (eq. (28) at ``j = L``).

        ``None`` when it vanishes identically (a linear output map).
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class Softmax(OutputMap):
    """``x = softmax(z)`` over the last dimension; ``dx/dz = S(x) = diag(x) - x x^T`` (Appendix B.1)."""

    name: str = "softmax"

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z, dim=-1)

    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x * (u - torch.sum(x * u, dim=-1, keepdim=True))

    def curvature(self, x: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # Appendix B.1, corrected (erratum E5): S (v⊙h − ⟨x,v⟩ h − ⟨x,h⟩ v)
        dot = lambda a, b: torch.sum(a * b, dim=-1, keepdim=True)  # noqa: E731
        return self.jvp(x, v * h - dot(x, v) * h - dot(x, h) * v)


class IdentityOutput(OutputMap):
    """``x_L = z_L``: penalties on logits or regression outputs (Appendix B.3)."""

    name: str = "identity"
    linear: bool = True

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u


class CoordinatewiseOutput(OutputMap):
    """A coordinate-wise activation as the output map: ``x_L = g(z_L)`` (a final sigmoid, tanh, softplus, ...).

    ``dx_L/dz_L = diag(g'(z_L))`` is symmetric; eq. (28) at ``j = L`` gives,
    for a fixed ``v``, ``η_L = g''(z_L) ⊙ h_L ⊙ v``. Both derivatives are
    read from the output ``x_L`` (:meth:`dbpaper.Activation.df_from_output`), so the
    recorded forward pass needs nothing beyond ``x_L``.
    """

    def __init__(self, activation: Activation) -> None:
        if not isinstance(activation, Activation):
            raise TypeError(f"CoordinatewiseOutput needs a coordinate-wise Activation, got {activation!r}")
        if not activation.output_invertible():
            raise ValueError(f"{activation!r} cannot be an output map: its derivatives are not functions of its output")
        self.activation: Activation = activation
        self.name: str = f"coordinate-wise {type(activation).__name__.lower()}"
        self.linear: bool = isinstance(activation, Identity)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return self.activation.f(z)

    def df(self, x: torch.Tensor) -> torch.Tensor:
        """``g'(z_L)`` from ``x_L``."""
        return self.activation.df_from_output(x)

    def d2f(self, x: torch.Tensor) -> torch.Tensor:
        """``g''(z_L)`` from ``x_L``."""
        return self.activation.d2f_from_output(x)

    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.df(x) * u

    def curvature(self, x: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.linear or self.activation.locally_linear:
            return None
        return self.d2f(x) * h * v  # M(G''(z_L) h_L, v), eq. (28) at j = L

    def __repr__(self) -> str:
        return f"CoordinatewiseOutput({self.activation!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.activation == other.activation

    def __hash__(self) -> int:
        return hash(("CoordinatewiseOutput", self.activation))
