"""Numerical differentiation: an autograd-free oracle for first and second derivatives.

Every scheme here estimates derivatives from function values alone, so it can
check what automatic differentiation (and the double-backpropagation rules of
this package) compute without sharing any of their code paths. The schemes
follow chapter 2 of Kochenderfer & Wheeler, *Algorithms for Optimization*
(``kochenderfer2019algorithms``):

* finite differences -- :func:`forward_difference` (error ``O(h)``),
  :func:`backward_difference` (``O(h)``) and :func:`central_difference`
  (``O(h^2)``), all limited by subtractive cancellation for small ``h``;
* the complex-step derivative :func:`complex_step`
  ``f'(x) ~ Im f(x + i h) / h`` of Squire & Trapp (1998, ``squire1998using``),
  which has no subtraction and is accurate to machine precision for tiny
  ``h`` when ``f`` is real-analytic and accepts complex input;
* the regression gradient :func:`regression_gradient` (least squares over
  random perturbations, useful for noisy objectives);
* SPSA, :func:`spsa_gradient`, the simultaneous-perturbation estimate of
  Spall (1992, ``spall1992multivariate``), averaged over samples;
* directional derivatives :func:`directional_derivative`, elementwise
  derivatives :func:`derivative` and :func:`second_derivative`, and the
  dispatchers :func:`gradient` and :func:`jacobian`.

Conventions
-----------
``f`` maps a tensor shaped like ``x`` to a tensor (a scalar for
:func:`gradient`). Jacobians are returned with shape
``(*f(x).shape, *x.shape)``, as :func:`torch.autograd.functional.jacobian`
does, so a scalar ``f`` gives a gradient shaped like ``x``. ``x`` must be a
real floating-point tensor; all arithmetic stays in its dtype.

Coordinate-wise schemes evaluate ``f`` once per perturbation. With
``batched=True`` the perturbed points are stacked along a new leading
dimension and ``f`` is called once on the whole stack (so ``f`` must then map
``(m, *x.shape)`` to ``(m, *out_shape)``).

When ``h`` is ``None`` the step is ``c * max(1, |x|)`` with ``c`` from
:func:`default_step`: ``sqrt(eps)`` for one-sided differences, ``cbrt(eps)``
for central differences (these balance truncation against cancellation) and
a tiny constant for the complex step, which has no cancellation to balance.

The functions do not switch off autograd: ``f`` may itself call
:func:`torch.autograd.grad` (to difference a gradient, i.e. to check a second
derivative), and results are returned detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "METHODS",
    "backward_difference",
    "central_difference",
    "complex_step",
    "default_step",
    "derivative",
    "directional_derivative",
    "forward_difference",
    "gradient",
    "jacobian",
    "regression_gradient",
    "second_derivative",
    "spsa_gradient",
]

#: The deterministic schemes accepted by ``method=`` arguments.
METHODS = ("forward", "backward", "central", "complex")

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_COMPLEX_STEP = {torch.float32: 1e-10, torch.float64: 1e-20}
_DISTRIBUTIONS = ("rademacher", "gaussian")

Function = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- validation


def _check_f(f, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"{name} must be callable, got {type(f).__name__}")


def _check_x(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real; complex inputs are not supported (got dtype {x.dtype})")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    return x.detach()


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _check_samples(samples, name: str = "samples") -> int:
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"{name} must be an int, got {type(samples).__name__}")
    if samples < 1:
        raise ValueError(f"{name} must be at least 1, got {samples}")
    return samples


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_h(h, x: torch.Tensor, name: str = "h") -> torch.Tensor | float:
    """Validate a user step: a positive finite number or a positive tensor broadcastable to ``x``."""
    if isinstance(h, torch.Tensor):
        if h.is_complex() or not h.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {h.dtype}")
        if not bool(torch.all(torch.isfinite(h) & (h > 0))):
            raise ValueError(f"{name} must be positive and finite everywhere")
        try:
            torch.broadcast_shapes(h.shape, x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"{name} of shape {tuple(h.shape)} does not broadcast to x of shape {tuple(x.shape)}"
            ) from err
        return h.detach().to(dtype=x.dtype, device=x.device)
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"{name} must be a positive float or tensor, got {type(h).__name__}")
    if not math.isfinite(h) or h <= 0:
        raise ValueError(f"{name} must be positive and finite, got {h!r}")
    return float(h)


def _check_scalar_h(h, name: str = "h") -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(h).__name__}")
    if not math.isfinite(h) or h <= 0:
        raise ValueError(f"{name} must be positive and finite, got {h!r}")
    return float(h)


def _as_output(y, where: str) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y.detach()
    if isinstance(y, (int, float)) and not isinstance(y, bool):
        return torch.tensor(float(y), dtype=torch.float64)
    raise TypeError(f"f must return a torch.Tensor ({where}), got {type(y).__name__}")


# ----------------------------------------------------------------------------- steps


def default_step(dtype: torch.dtype, method: str = "central") -> float:
    """The unscaled default step ``c`` for ``method`` in ``dtype``.

    Parameters
    ----------
    dtype : torch.dtype
        A real floating-point dtype.
    method : str
        ``"forward"`` or ``"backward"`` (``sqrt(eps)``), ``"central"``
        (``cbrt(eps)``) or ``"complex"`` (``1e-20`` in float64, ``1e-10`` in
        float32).

    Returns
    -------
    float
        The step; the schemes multiply it by ``max(1, |x|)``.

    Raises
    ------
    TypeError
        If ``dtype`` is not a real floating-point dtype, or has no complex
        counterpart for the complex step.
    ValueError
        If ``method`` is unknown.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating-point torch.dtype, got {dtype!r}")
    _check_method(method)
    eps = torch.finfo(dtype).eps
    if method == "central":
        return eps ** (1.0 / 3.0)
    if method == "complex":
        if dtype not in _COMPLEX_STEP:
            raise TypeError(f"the complex step needs x in float32 or float64, got dtype {dtype}")
        return _COMPLEX_STEP[dtype]
    return math.sqrt(eps)


def _scaled_step(x: torch.Tensor, method: str) -> torch.Tensor:
    """Per-coordinate default steps ``c * max(1, |x_i|)``."""
    c = default_step(x.dtype, method)
    if method == "complex":  # no cancellation: the step need not grow with |x|
        return torch.full_like(x, c)
    return c * torch.clamp(x.abs(), min=1.0)


# ----------------------------------------------------------------------------- evaluation


def _evaluate(f: Function, points: torch.Tensor, batched: bool) -> torch.Tensor:
    """``f`` at each of ``points[k]``; returns a tensor of shape ``(m, *out_shape)``."""
    if batched:
        out = _as_output(f(points), "batched call")
        if out.ndim == 0 or out.shape[0] != points.shape[0]:
            raise ValueError(
                f"with batched=True, f must return a leading dimension of size {points.shape[0]}, got shape {tuple(out.shape)}"
            )
        return out
    outs = [_as_output(f(p), "single call") for p in points]
    shapes = {tuple(o.shape) for o in outs}
    if len(shapes) != 1:
        raise ValueError(f"f returned outputs of different shapes: {sorted(shapes)}")
    return torch.stack(outs)


def _complex_evaluate(f: Function, points: torch.Tensor, batched: bool) -> torch.Tensor:
    try:
        out = _evaluate(f, points, batched)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        raise TypeError(
            "complex_step: f failed on complex input; the complex step needs f to accept complex tensors and to be "
            "real-analytic (no abs, max, comparisons, .real or casts to real). Use method='central' instead. "
            f"Original error: {err}"
        ) from err
    if not out.is_complex():
        raise TypeError(
            f"complex_step: f returned a real tensor (dtype {out.dtype}) for complex input, so its imaginary part is "
            "lost; the complex step needs f to propagate complex values. Use method='central' instead."
        )
    return out


def _basis_steps(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``diag(h)`` reshaped to ``(n, *x.shape)``: row ``i`` is ``h_i e_i``."""
    n = x.numel()
    return torch.diag(torch.broadcast_to(h, x.shape).reshape(n)).reshape(n, *x.shape)


def _to_jacobian(columns: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rearrange ``(n, *out)`` columns ``J e_i`` into the Jacobian ``(*out, *x.shape)``."""
    n = x.numel()
    out_shape = columns.shape[1:]
    flat = columns.reshape(n, -1).transpose(0, 1)
    return flat.reshape(*out_shape, *x.shape)


def _finite_difference_jacobian(f: Function, x, h, method: str, batched: bool) -> torch.Tensor:
    _check_f(f)
    x = _check_x(x)
    _check_method(method)
    if method == "complex" and x.dtype not in _COMPLEX_OF:
        raise TypeError(f"complex_step: x must be float32 or float64, got dtype {x.dtype}")
    hs = _scaled_step(x, method) if h is None else _check_h(h, x)
    hs = torch.broadcast_to(torch.as_tensor(hs, dtype=x.dtype, device=x.device), x.shape)
    steps = _basis_steps(x, hs)  # (n, *x.shape)
    hcol = hs.reshape(-1)  # (n,)
    if method == "complex":
        xc = x.to(_COMPLEX_OF[x.dtype])  # the dtype was checked by default_step or below
        vals = _complex_evaluate(f, xc + 1j * steps.to(xc.dtype), batched)
        cols = vals.imag / hcol.reshape(-1, *([1] * (vals.ndim - 1))).to(vals.imag.dtype)
        return _to_jacobian(cols.to(x.dtype), x)
    if method == "forward":
        hi = _evaluate(f, x + steps, batched)
        lo = _evaluate(f, x.unsqueeze(0), batched).expand_as(hi)
        denom = hcol
    elif method == "backward":
        lo = _evaluate(f, x - steps, batched)
        hi = _evaluate(f, x.unsqueeze(0), batched).expand_as(lo)
        denom = hcol
    else:  # central
        both = _evaluate(f, torch.cat([x + steps, x - steps]), batched)
        hi, lo = both[: x.numel()], both[x.numel() :]
        denom = 2 * hcol
    cols = (hi - lo) / denom.reshape(-1, *([1] * (hi.ndim - 1))).to(hi.dtype)
    return _to_jacobian(cols, x)


def forward_difference(f: Function, x: torch.Tensor, h: float | torch.Tensor | None = None, *, batched: bool = False) -> torch.Tensor:
    """Jacobian (gradient for scalar ``f``) by forward differences, ``(f(x + h e_i) - f(x)) / h``.

    The truncation error is ``O(h)`` (``h |f''| / 2``); rounding contributes
    ``O(eps |f| / h)``, so the best step is ``~ sqrt(eps)``
    (Kochenderfer & Wheeler 2019, ch. 2).

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point, any real floating dtype and shape.
    h : float or torch.Tensor, optional
        Positive step(s), broadcastable to ``x``; defaults to
        ``sqrt(eps) * max(1, |x_i|)`` per coordinate.
    batched : bool
        Call ``f`` once on all ``x.numel() + 1`` points stacked along a new
        leading dimension.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``, dtype of the outputs of ``f``.

    Raises
    ------
    TypeError
        If ``f`` is not callable or ``x`` is not a real floating tensor.
    ValueError
        If ``h`` is not positive and finite.
    """
    return _finite_difference_jacobian(f, x, h, "forward", batched)


def backward_difference(f: Function, x: torch.Tensor, h: float | torch.Tensor | None = None, *, batched: bool = False) -> torch.Tensor:
    """Jacobian (gradient for scalar ``f``) by backward differences, ``(f(x) - f(x - h e_i)) / h``.

    Same error orders as :func:`forward_difference` (``O(h)`` truncation,
    ``O(eps / h)`` rounding).

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point.
    h : float or torch.Tensor, optional
        Positive step(s); defaults to ``sqrt(eps) * max(1, |x_i|)``.
    batched : bool
        Call ``f`` once on all points stacked along a new leading dimension.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``.
    """
    return _finite_difference_jacobian(f, x, h, "backward", batched)


def central_difference(f: Function, x: torch.Tensor, h: float | torch.Tensor | None = None, *, batched: bool = False) -> torch.Tensor:
    """Jacobian (gradient for scalar ``f``) by central differences, ``(f(x + h e_i) - f(x - h e_i)) / (2h)``.

    The truncation error is ``O(h^2)`` (``h^2 |f'''| / 6``); with rounding
    ``O(eps / h)`` the best step is ``~ cbrt(eps)``
    (Kochenderfer & Wheeler 2019, ch. 2).

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point.
    h : float or torch.Tensor, optional
        Positive step(s); defaults to ``cbrt(eps) * max(1, |x_i|)``.
    batched : bool
        Call ``f`` once on all ``2 x.numel()`` points.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``.
    """
    return _finite_difference_jacobian(f, x, h, "central", batched)


def complex_step(f: Function, x: torch.Tensor, h: float | torch.Tensor | None = None, *, batched: bool = False) -> torch.Tensor:
    """Jacobian (gradient for scalar ``f``) by the complex step, ``Im f(x + i h e_i) / h``.

    For real-analytic ``f`` the Taylor series gives
    ``f(x + ih) = f(x) + ih f'(x) - h^2 f''(x)/2 - i h^3 f'''(x)/6 + ...``, so
    the imaginary part divided by ``h`` is ``f'(x) + O(h^2)`` and involves no
    difference of nearly equal numbers: ``h = 1e-20`` is fine and the result
    is accurate to machine precision (Squire & Trapp 1998).

    Parameters
    ----------
    f : callable
        Must accept complex tensors and be real-analytic (built from
        ``+ - * /``, ``exp``, ``sin``, ``tanh``, ...; not ``abs``, ``max``,
        comparisons or anything that discards the imaginary part).
    x : torch.Tensor
        The real point, float32 or float64 (evaluated in complex64 /
        complex128).
    h : float or torch.Tensor, optional
        Positive step(s); defaults to ``1e-20`` (float64) or ``1e-10``
        (float32), not scaled with ``|x|``.
    batched : bool
        Call ``f`` once on all ``x.numel()`` points.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``, dtype ``x.dtype``.

    Raises
    ------
    TypeError
        If ``x`` is not float32/float64, or ``f`` fails on complex input or
        returns a real tensor for it (the message says so).
    ValueError
        If ``h`` is not positive and finite.
    """
    return _finite_difference_jacobian(f, x, h, "complex", batched)


_SCHEMES = {
    "forward": forward_difference,
    "backward": backward_difference,
    "central": central_difference,
    "complex": complex_step,
}


def jacobian(f: Function, x: torch.Tensor, method: str = "central", h: float | torch.Tensor | None = None, *, batched: bool = False) -> torch.Tensor:
    """Jacobian of ``f`` at ``x`` by one of the deterministic schemes.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point.
    method : str
        One of :data:`METHODS`: ``"forward"``, ``"backward"``, ``"central"``
        or ``"complex"``.
    h : float or torch.Tensor, optional
        Step(s); see :func:`default_step` for the defaults.
    batched : bool
        Call ``f`` once on all perturbed points stacked along a new leading
        dimension.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``.
    """
    return _SCHEMES[_check_method(method)](f, x, h, batched=batched)


def gradient(f: Function, x: torch.Tensor, method: str = "central", h: float | torch.Tensor | None = None, *, batched: bool = False) -> torch.Tensor:
    """Gradient of a scalar ``f: R^n -> R`` at ``x`` by one of the deterministic schemes.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a scalar (0-d or one-element) tensor.
    x : torch.Tensor
        The point.
    method : str
        ``"forward"``, ``"backward"``, ``"central"`` or ``"complex"``.
    h : float or torch.Tensor, optional
        Step(s); see :func:`default_step` for the defaults.
    batched : bool
        Call ``f`` once on all perturbed points (``f`` then returns shape ``(m,)``).

    Returns
    -------
    torch.Tensor
        Shape ``x.shape``.

    Raises
    ------
    ValueError
        If ``f`` is not scalar-valued (use :func:`jacobian`), or ``method``
        or ``h`` is invalid.
    """
    jac = jacobian(f, x, method, h, batched=batched)
    x = _check_x(x)
    out_shape = jac.shape[: jac.ndim - x.ndim]
    if math.prod(out_shape) != 1:
        raise ValueError(f"gradient: f must return a scalar, got output shape {tuple(out_shape)}; use jacobian()")
    return jac.reshape(x.shape)


# ----------------------------------------------------------------------------- directional and elementwise


def directional_derivative(
    f: Function, x: torch.Tensor, s: torch.Tensor, method: str = "central", h: float | None = None
) -> torch.Tensor:
    """The derivative of ``f`` at ``x`` along ``s``, ``lim (f(x + h s) - f(x)) / h = J_f(x) s``.

    Two (central) or one (one-sided, complex) extra evaluations, whatever
    the dimension of ``x``: this is the building block of SPSA.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point.
    s : torch.Tensor
        The direction, same shape as ``x`` (not normalised).
    method : str
        ``"forward"``, ``"backward"``, ``"central"`` or ``"complex"``.
    h : float, optional
        Positive step along ``s``; defaults to
        ``default_step * max(1, max|x|) / max|s|``, so that the largest
        coordinate moves by the default amount (complex step: ``c / max|s|``).

    Returns
    -------
    torch.Tensor
        ``J_f(x) s``, shaped like ``f(x)``.

    Raises
    ------
    ValueError
        If ``s`` has the wrong shape or is zero, or ``h`` or ``method`` is
        invalid.
    TypeError
        For non-tensor or non-floating ``x`` / ``s``, or a complex step on an
        ``f`` that does not support complex input.
    """
    _check_f(f)
    x = _check_x(x)
    s = _check_x(s, "s")
    _check_method(method)
    if s.shape != x.shape:
        raise ValueError(f"s must have the shape of x {tuple(x.shape)}, got {tuple(s.shape)}")
    s = s.to(x.dtype)
    smax = float(s.abs().max()) if s.numel() else 0.0
    if smax == 0.0:
        raise ValueError("s must be a non-zero direction")
    if h is None:
        c = default_step(x.dtype, method)
        xmax = float(x.abs().max()) if x.numel() else 0.0
        h = c / smax if method == "complex" else c * max(1.0, xmax) / smax
    else:
        h = _check_scalar_h(h)
    if method == "complex":
        if x.dtype not in _COMPLEX_OF:
            raise TypeError(f"complex_step: x must be float32 or float64, got dtype {x.dtype}")
        cdt = _COMPLEX_OF[x.dtype]
        val = _complex_evaluate(f, (x.to(cdt) + 1j * h * s.to(cdt)).unsqueeze(0), False)[0]
        return val.imag / h
    if method == "forward":
        vals = _evaluate(f, torch.stack([x + h * s, x]), False)
        return (vals[0] - vals[1]) / h
    if method == "backward":
        vals = _evaluate(f, torch.stack([x, x - h * s]), False)
        return (vals[0] - vals[1]) / h
    vals = _evaluate(f, torch.stack([x + h * s, x - h * s]), False)
    return (vals[0] - vals[1]) / (2 * h)


def derivative(f: Function, x: torch.Tensor, method: str = "central", h: float | torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise derivative ``g'(x)`` of a coordinate-wise function ``f = g(.)``.

    For a coordinate-wise ``f`` the Jacobian is diagonal, so one perturbation
    of all coordinates at once (each by its own step) yields every ``g'(x_i)``:
    e.g. the central scheme returns ``(g(x + h) - g(x - h)) / (2h)``. Use it
    for activations; for anything that couples coordinates use
    :func:`jacobian`.

    Parameters
    ----------
    f : callable
        Coordinate-wise: ``f(x)[i]`` depends on ``x[i]`` only, same shape as ``x``.
    x : torch.Tensor
        Points, any shape.
    method : str
        ``"forward"``, ``"backward"``, ``"central"`` or ``"complex"``.
    h : float or torch.Tensor, optional
        Positive step(s) broadcastable to ``x``; defaults to
        ``default_step * max(1, |x_i|)``.

    Returns
    -------
    torch.Tensor
        ``g'(x)``, shaped like ``x``.

    Raises
    ------
    ValueError
        If ``f(x)`` does not have the shape of ``x``, or ``h`` or ``method`` is invalid.
    TypeError
        For a complex step on an ``f`` without complex support.
    """
    _check_f(f)
    x = _check_x(x)
    _check_method(method)
    hs = _scaled_step(x, method) if h is None else _check_h(h, x)
    hs = torch.broadcast_to(torch.as_tensor(hs, dtype=x.dtype, device=x.device), x.shape)
    if method == "complex":
        if x.dtype not in _COMPLEX_OF:
            raise TypeError(f"complex_step: x must be float32 or float64, got dtype {x.dtype}")
        cdt = _COMPLEX_OF[x.dtype]
        vals = _complex_evaluate(f, (x.to(cdt) + 1j * hs.to(cdt)).unsqueeze(0), False)[0]
        if vals.shape != x.shape:
            raise ValueError(
                f"derivative: f must be coordinate-wise (output shape {tuple(x.shape)}), got {tuple(vals.shape)}"
            )
        return (vals.imag / hs).to(x.dtype)
    if method == "forward":
        pts = torch.stack([x + hs, x])
    elif method == "backward":
        pts = torch.stack([x, x - hs])
    else:
        pts = torch.stack([x + hs, x - hs])
    vals = _evaluate(f, pts, False)
    if vals.shape[1:] != x.shape:
        raise ValueError(
            f"derivative: f must be coordinate-wise (output shape {tuple(x.shape)}), got {tuple(vals.shape[1:])}"
        )
    denom = 2 * hs if method == "central" else hs
    return (vals[0] - vals[1]) / denom


def second_derivative(f: Function, x: torch.Tensor, h: float | torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise second derivative ``g''(x)`` of a coordinate-wise ``f`` by the second central difference.

    ``(g(x + h) - 2 g(x) + g(x - h)) / h^2`` has truncation error
    ``h^2 |g''''| / 12`` and rounding error ``~ 4 eps |g| / h^2``; the
    default ``h = eps^(1/4) * max(1, |x|)`` balances the two.

    Parameters
    ----------
    f : callable
        Coordinate-wise, output shaped like ``x``.
    x : torch.Tensor
        Points, any shape.
    h : float or torch.Tensor, optional
        Positive step(s) broadcastable to ``x``.

    Returns
    -------
    torch.Tensor
        ``g''(x)``, shaped like ``x``.
    """
    _check_f(f)
    x = _check_x(x)
    if h is None:
        hs = torch.finfo(x.dtype).eps ** 0.25 * torch.clamp(x.abs(), min=1.0)
    else:
        hs = torch.broadcast_to(torch.as_tensor(_check_h(h, x), dtype=x.dtype, device=x.device), x.shape)
    vals = _evaluate(f, torch.stack([x + hs, x, x - hs]), False)
    if vals.shape[1:] != x.shape:
        raise ValueError(
            f"second_derivative: f must be coordinate-wise (output shape {tuple(x.shape)}), got {tuple(vals.shape[1:])}"
        )
    return (vals[0] - 2 * vals[1] + vals[2]) / (hs * hs)


# ----------------------------------------------------------------------------- randomised gradients


def _random_directions(
    samples: int, x: torch.Tensor, distribution: str, generator: torch.Generator | None
) -> torch.Tensor:
    shape = (samples, *x.shape)
    if distribution == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
    else:
        z = 2.0 * torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(torch.float64) - 1.0
    return z.to(dtype=x.dtype, device=x.device)


def spsa_gradient(
    f: Function,
    x: torch.Tensor,
    samples: int = 1,
    h: float | None = None,
    *,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
    batched: bool = False,
) -> torch.Tensor:
    """SPSA estimate of the gradient (Jacobian) of ``f``, averaged over ``samples`` random directions.

    For each direction ``z_k`` the central directional derivative
    ``d_k = (f(x + h z_k) - f(x - h z_k)) / (2h)`` costs two evaluations,
    whatever the dimension of ``x``, and ``d_k z_k`` is an estimate of the
    gradient: ``E[z z^T] = I`` makes it unbiased up to ``O(h^2)``
    (Spall 1992; Kochenderfer & Wheeler 2019, ch. 2). Averaging ``samples``
    of them reduces the variance like ``1 / samples``; the relative error is
    about ``sqrt(n / samples)`` for ``n = x.numel()``.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point.
    samples : int
        Number of random directions (``2 * samples`` evaluations of ``f``).
    h : float, optional
        Positive perturbation size; defaults to ``cbrt(eps) * max(1, max|x|)``.
    distribution : str
        ``"rademacher"`` (entries ``+-1``, Spall's choice) or ``"gaussian"``
        (``N(0, I)``, as in Kochenderfer & Wheeler).
    generator : torch.Generator, optional
        Source of the random directions (drawn on the CPU).
    batched : bool
        Call ``f`` once on all ``2 * samples`` points.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``.

    Raises
    ------
    ValueError
        If ``samples < 1``, ``h <= 0`` or ``distribution`` is unknown.
    TypeError
        If ``generator`` is not a :class:`torch.Generator`.
    """
    _check_f(f)
    x = _check_x(x)
    samples = _check_samples(samples)
    _check_generator(generator)
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}")
    if h is None:
        xmax = float(x.abs().max()) if x.numel() else 0.0
        h = default_step(x.dtype, "central") * max(1.0, xmax)
    else:
        h = _check_scalar_h(h)
    z = _random_directions(samples, x, distribution, generator)  # (m, *x.shape)
    vals = _evaluate(f, torch.cat([x + h * z, x - h * z]), batched)
    d = (vals[:samples] - vals[samples:]) / (2 * h)  # (m, *out)
    zf = z.reshape(samples, -1).to(d.dtype)  # (m, n)
    est = d.reshape(samples, -1).transpose(0, 1) @ zf / samples  # (p, n)
    return est.reshape(*d.shape[1:], *x.shape)


def regression_gradient(
    f: Function,
    x: torch.Tensor,
    samples: int | None = None,
    h: float | None = None,
    *,
    generator: torch.Generator | None = None,
    batched: bool = False,
) -> torch.Tensor:
    """Regression estimate of the gradient (Jacobian): least squares over random perturbations.

    With perturbations ``dx_k = h z_k``, ``z_k ~ N(0, I)``, and differences
    ``df_k = f(x + dx_k) - f(x)``, the first-order model
    ``df_k ~ g^T dx_k`` is fitted by least squares, ``g = pinv(dX) df``
    (Kochenderfer & Wheeler 2019, ch. 2). Fitting many samples averages out
    noise in ``f``; with fewer samples than dimensions the result is the
    minimum-norm fit, i.e. the projection of the gradient onto the span of
    the perturbations.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``x`` to a tensor.
    x : torch.Tensor
        The point.
    samples : int, optional
        Number of perturbations (``samples + 1`` evaluations); defaults to
        ``2 * x.numel()``.
    h : float, optional
        Positive perturbation scale; defaults to ``sqrt(eps) * max(1, max|x|)``.
        For noisy ``f`` choose it well above the noise level.
    generator : torch.Generator, optional
        Source of the perturbations (drawn on the CPU).
    batched : bool
        Call ``f`` once on all ``samples + 1`` points.

    Returns
    -------
    torch.Tensor
        Shape ``(*f(x).shape, *x.shape)``.

    Raises
    ------
    ValueError
        If ``samples < 1`` or ``h <= 0``.
    TypeError
        If ``generator`` is not a :class:`torch.Generator`.
    """
    _check_f(f)
    x = _check_x(x)
    samples = 2 * max(1, x.numel()) if samples is None else _check_samples(samples)
    _check_generator(generator)
    if h is None:
        xmax = float(x.abs().max()) if x.numel() else 0.0
        h = default_step(x.dtype, "forward") * max(1.0, xmax)
    else:
        h = _check_scalar_h(h)
    dx = h * _random_directions(samples, x, "gaussian", generator)  # (m, *x.shape)
    vals = _evaluate(f, torch.cat([x.unsqueeze(0), x + dx]), batched)
    df = (vals[1:] - vals[:1]).reshape(samples, -1)  # (m, p)
    dX = dx.reshape(samples, -1).to(df.dtype)  # (m, n)
    g = torch.linalg.pinv(dX) @ df  # (n, p)
    return g.transpose(0, 1).reshape(*vals.shape[1:], *x.shape)
