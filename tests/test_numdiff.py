"""dbpaper.numdiff: every scheme against analytic derivatives, its error order, and its use as an autograd-free oracle."""

from __future__ import annotations

import math

import pytest
import torch

import dbpaper as dbp
from dbpaper import numdiff as nd

from .helpers import ACTIVATIONS

F64 = torch.float64
EPS64 = torch.finfo(F64).eps


# ----------------------------------------------------------------------------- analytic test functions


def _poly(x):
    return torch.sum(x**3) - 2 * x[0] * x[1] + 0.5 * x[2] ** 2


def _poly_grad(x):
    g = 3 * x**2
    g[0] = g[0] - 2 * x[1]
    g[1] = g[1] - 2 * x[0]
    g[2] = g[2] + x[2]
    return g


def _expsin(x):
    return torch.exp(x[0]) * torch.sin(x[1]) + torch.sum(torch.sin(x))


def _expsin_grad(x):
    g = torch.cos(x)
    g[0] = g[0] + torch.exp(x[0]) * torch.sin(x[1])
    g[1] = g[1] + torch.exp(x[0]) * torch.cos(x[1])
    return g


FUNCTIONS = {"poly": (_poly, _poly_grad), "expsin": (_expsin, _expsin_grad)}
POINT = [0.3, -1.2, 2.0, 0.7]

# error order p of each finite-difference scheme: at its default step its error is ~ eps^(p/(p+1))
ORDER = {"forward": 1, "backward": 1, "central": 2}


def _rel_err(est, ref):
    return float(torch.max(torch.abs(est - ref)) / max(1.0, float(torch.max(torch.abs(ref)))))


# ----------------------------------------------------------------------------- deterministic schemes


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("method", ["forward", "backward", "central"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_differences_match_analytic_gradient_at_default_step(name, method, dtype):
    f, grad = FUNCTIONS[name]
    x = torch.tensor(POINT, dtype=dtype)
    ref = grad(x.to(F64))
    est = nd.gradient(f, x, method)
    assert est.dtype == dtype and est.shape == x.shape
    eps = torch.finfo(dtype).eps
    p = ORDER[method]
    # the optimal error is ~ eps^(p/(p+1)) for a p-th order scheme (derivatives here are of order 1-10)
    assert _rel_err(est.to(F64), ref) < 5 * eps ** (p / (p + 1))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_individual_functions_agree_with_dispatcher(name):
    f, _ = FUNCTIONS[name]
    x = torch.tensor(POINT, dtype=F64)
    for method, fn in [
        ("forward", nd.forward_difference),
        ("backward", nd.backward_difference),
        ("central", nd.central_difference),
        ("complex", nd.complex_step),
    ]:
        torch.testing.assert_close(fn(f, x), nd.gradient(f, x, method), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_complex_step_is_exact_to_machine_precision_even_with_tiny_h(name):
    f, grad = FUNCTIONS[name]
    x = torch.tensor(POINT, dtype=F64)
    ref = grad(x)
    for h in (1e-20, 1e-100, 1e-8):
        assert _rel_err(nd.complex_step(f, x, h), ref) < 1e-14
    # the same tiny step destroys every finite difference: f(x + h) == f(x) in float64
    fwd = nd.forward_difference(f, x, 1e-20)
    assert torch.all(fwd == 0)
    assert _rel_err(fwd, ref) > 0.5


def test_complex_step_float32_default():
    f, grad = FUNCTIONS["expsin"]
    x = torch.tensor(POINT, dtype=torch.float32)
    est = nd.complex_step(f, x)
    assert est.dtype == torch.float32
    assert _rel_err(est.to(F64), grad(x.to(F64))) < 20 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize(
    "method, order, hs",
    [
        ("forward", 1, [1e-2, 5e-3, 2.5e-3, 1.25e-3]),
        ("backward", 1, [1e-2, 5e-3, 2.5e-3, 1.25e-3]),
        ("central", 2, [1e-2, 5e-3, 2.5e-3, 1.25e-3]),
        ("complex", 2, [2e-1, 1e-1, 5e-2, 2.5e-2]),
    ],
)
def test_convergence_order(method, order, hs):
    """Halving h divides the truncation error by 2**order (in the regime where rounding is negligible)."""
    f, grad = FUNCTIONS["expsin"]
    x = torch.tensor(POINT, dtype=F64)
    ref = grad(x)
    errs = [float(torch.linalg.vector_norm(nd.gradient(f, x, method, h) - ref)) for h in hs]
    observed = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(o - order) < 0.15 for o in observed), observed


def test_vector_valued_jacobian_shape_and_values():
    A = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=F64)

    def f(x):  # R^{3x1} -> R^2
        return torch.tanh(A.to(x.dtype) @ x[:, 0]) + x[0, 0] ** 2

    x = torch.tensor([[0.2], [-0.4], [0.9]], dtype=F64)
    z = A @ x[:, 0]
    ref = (1 - torch.tanh(z) ** 2)[:, None] * A
    ref[:, 0] = ref[:, 0] + 2 * x[0, 0]
    ref = ref.reshape(2, 3, 1)
    for method, tol in [("central", 1e-9), ("complex", 1e-15), ("forward", 1e-6)]:
        jac = nd.jacobian(f, x, method)
        assert jac.shape == (2, 3, 1)
        assert float(torch.max(torch.abs(jac - ref))) < tol


@pytest.mark.parametrize("method", nd.METHODS)
def test_batched_evaluation_matches_one_call_per_point(method):
    w = torch.tensor([0.5, -1.0, 2.0], dtype=F64)

    def f_single(x):
        return torch.sum(torch.sin(x) * w) + torch.sum(x**2)

    def f_batched(xs):
        return torch.sum(torch.sin(xs) * w, dim=-1) + torch.sum(xs**2, dim=-1)

    x = torch.tensor([0.1, 0.2, -0.3], dtype=F64)
    torch.testing.assert_close(
        nd.gradient(f_batched, x, method, batched=True), nd.gradient(f_single, x, method), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("method, tol", [("forward", 1e-6), ("backward", 1e-6), ("central", 1e-9), ("complex", 1e-14)])
def test_directional_derivative_is_gradient_dot_direction(method, tol):
    f, grad = FUNCTIONS["expsin"]
    x = torch.tensor(POINT, dtype=F64)
    s = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=F64)
    ref = float(grad(x) @ s)
    assert abs(float(nd.directional_derivative(f, x, s, method)) - ref) < tol * max(1.0, abs(ref))


def test_default_steps():
    assert nd.default_step(F64, "forward") == math.sqrt(EPS64)
    assert nd.default_step(F64, "backward") == math.sqrt(EPS64)
    assert nd.default_step(F64, "central") == pytest.approx(EPS64 ** (1 / 3))
    assert nd.default_step(F64, "complex") == 1e-20
    assert nd.default_step(torch.float32, "central") > nd.default_step(F64, "central")


def test_default_step_scales_with_x():
    """Far from the origin the step grows with |x|, so cancellation does not take over."""
    x = torch.tensor([1e6], dtype=F64)
    est = nd.gradient(lambda x: torch.sum(x**2), x, "central")
    assert abs(float(est[0]) - 2e6) / 2e6 < 1e-9


# ----------------------------------------------------------------------------- randomised schemes


def _quadratic(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=F64)
    H = M @ M.T / n
    b = torch.randn(n, generator=g, dtype=F64)

    def f(x):  # batched over leading dims
        return 0.5 * torch.einsum("...i,ij,...j->...", x, H, x) + x @ b

    return f, (lambda x: H @ x + b)


@pytest.mark.parametrize("distribution, excess", [("rademacher", -1), ("gaussian", 1)])
def test_spsa_variance_matches_theory(distribution, excess):
    """E||g_k - g||^2 = (n + excess) ||g||^2 / k: -1 for Rademacher, +1 for Gaussian directions."""
    n, k, reps = 6, 8, 300
    f, grad = _quadratic(n)
    x = torch.linspace(-1, 1, n, dtype=F64)
    g = grad(x)
    gen = torch.Generator().manual_seed(1)
    sq = [
        float(torch.sum((nd.spsa_gradient(f, x, k, distribution=distribution, generator=gen, batched=True) - g) ** 2))
        for _ in range(reps)
    ]
    ratio = (sum(sq) / reps) / ((n + excess) * float(g @ g) / k)
    assert 0.75 < ratio < 1.3, ratio


def test_spsa_converges_as_samples_grow():
    n = 6
    f, grad = _quadratic(n)
    x = torch.linspace(-1, 1, n, dtype=F64)
    g = grad(x)
    errs = []
    for k in (16, 256, 4096, 65536):
        est = nd.spsa_gradient(f, x, k, generator=torch.Generator().manual_seed(0), batched=True)
        errs.append(float(torch.linalg.vector_norm(est - g) / torch.linalg.vector_norm(g)))
    assert errs == sorted(errs, reverse=True), errs
    assert errs[-1] < 0.03


def test_spsa_is_reproducible_with_a_generator_and_batching_does_not_change_it():
    f, _ = FUNCTIONS["expsin"]
    x = torch.tensor(POINT, dtype=F64)

    def fb(xs):
        return torch.stack([f(p) for p in xs])

    a = nd.spsa_gradient(f, x, 5, generator=torch.Generator().manual_seed(3))
    b = nd.spsa_gradient(fb, x, 5, generator=torch.Generator().manual_seed(3), batched=True)
    c = nd.spsa_gradient(f, x, 5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_regression_gradient_is_exact_for_linear_functions():
    n = 7
    w = torch.linspace(-2, 3, n, dtype=F64)
    x = torch.linspace(0, 1, n, dtype=F64)
    est = nd.regression_gradient(lambda x: x @ w + 4.0, x, n, generator=torch.Generator().manual_seed(0))
    assert _rel_err(est, w) < 1e-6


def test_regression_gradient_with_few_samples_projects_the_gradient():
    """With m < n random perturbations the min-norm fit keeps a fraction m/n of |g|^2 on average."""
    n, reps = 12, 200
    w = torch.linspace(-2, 3, n, dtype=F64)
    x = torch.zeros(n, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    for m in (3, 6, 9):
        sq = [
            float(torch.sum((nd.regression_gradient(lambda x: x @ w, x, m, generator=gen) - w) ** 2))
            for _ in range(reps)
        ]
        assert abs(sum(sq) / reps / float(w @ w) - (1 - m / n)) < 0.06, m


def test_regression_gradient_converges_on_a_noisy_objective():
    n, sigma = 5, 1e-3
    f, grad = _quadratic(n, seed=2)
    x = torch.linspace(-1, 1, n, dtype=F64)
    g = grad(x)
    noise = torch.Generator().manual_seed(11)

    def noisy(xs):
        return f(xs) + sigma * torch.randn(xs.shape[0], generator=noise, dtype=F64)

    errs = []
    for m in (2 * n, 20 * n, 200 * n, 2000 * n):
        runs = [
            nd.regression_gradient(noisy, x, m, 0.05, generator=torch.Generator().manual_seed(s), batched=True)
            for s in range(4)
        ]
        errs.append(sum(float(torch.linalg.vector_norm(r - g)) for r in runs) / len(runs) / float(g.norm()))
    assert errs == sorted(errs, reverse=True), errs
    assert errs[-1] < errs[0] / 10
    assert errs[-1] < 5e-3


# ----------------------------------------------------------------------------- activations: autograd-free oracle


def _activation_points(act=None):
    """Points away from the activation's declared kinks (:attr:`dbpaper.Activation.kinks`)."""
    z = torch.linspace(-8, 8, 321, dtype=F64)  # Softplus(beta=2) switches to linear at z = 10
    for k in act.kinks:
        z = z[(z - k).abs() > 1e-2]
    return z


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_first_derivative_by_finite_differences(name):
    act = ACTIVATIONS[name]
    z = _activation_points(act)
    torch.testing.assert_close(nd.derivative(act.f, z, "central"), act.df(z), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nd.derivative(act.f, z, "forward"), act.df(z), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(nd.derivative(act.f, z, "backward"), act.df(z), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_second_derivative_by_finite_differences(name):
    act = ACTIVATIONS[name]
    z = _activation_points(act)
    # g'' as the derivative of g' ...
    torch.testing.assert_close(nd.derivative(act.df, z, "central"), act.d2f(z), rtol=1e-9, atol=1e-9)
    # ... and independently from g alone, by the second central difference
    torch.testing.assert_close(nd.second_derivative(act.f, z), act.d2f(z), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_by_complex_step(name):
    act = ACTIVATIONS[name]
    z = _activation_points(act)
    if act.complex_analytic:  # declared by the activation
        torch.testing.assert_close(nd.derivative(act.f, z, "complex"), act.df(z), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(nd.derivative(act.df, z, "complex"), act.d2f(z), rtol=1e-14, atol=1e-14)
    else:  # kinks or real-only kernels: where torch refuses complex input, the complex step says so clearly
        try:
            nd.derivative(act.f, z, "complex")
        except TypeError as err:
            assert "complex" in str(err)


@pytest.mark.parametrize("name", ["relu", "leaky-relu", "hardtanh", "softplus", "elu", "gelu"])
def test_the_complex_step_refuses_real_only_kernels_with_a_clear_message(name):
    with pytest.raises(TypeError, match="complex"):
        nd.derivative(ACTIVATIONS[name].f, _activation_points(ACTIVATIONS[name]), "complex")


# ----------------------------------------------------------------------------- a second derivative without double backprop


def _mlp_parts(theta, shapes):
    parts, i = [], 0
    for shape in shapes:
        k = math.prod(shape)
        parts.append(theta[i : i + k].reshape(shape))
        i += k
    return parts


SHAPES = [(5, 3), (5,), (5,)]  # W1, b1, w2: f(x) = w2 . tanh(W1 x + b1)


def _gradient_penalty(theta, x, create_graph=False):
    """R(theta) = sum_b ||grad_x f(x_b; theta)||^2, with first-order autograd only unless create_graph."""
    W1, b1, w2 = _mlp_parts(theta, SHAPES)
    x = x.detach().requires_grad_(True)
    out = torch.tanh(x @ W1.T + b1) @ w2
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph)
    return torch.sum(gx**2)


def _gradient_penalty_directional_by_hand(theta, x, v):
    """d/dt R(theta + t v) at t = 0, written out with g' and g'' of dbpaper.Tanh (no autograd)."""
    act = dbp.Tanh()
    W1, b1, w2 = _mlp_parts(theta, SHAPES)
    dW1, db1, dw2 = _mlp_parts(v, SHAPES)
    z = x @ W1.T + b1  # (B, 5)
    u = w2 * act.df(z)  # grad_x f(x_b) = W1^T u_b
    du = dw2 * act.df(z) + w2 * act.d2f(z) * (x @ dW1.T + db1)
    gx = u @ W1
    dgx = u @ dW1 + du @ W1
    return 2 * torch.sum(gx * dgx)


def test_input_gradient_penalty_parameter_derivative_by_central_differences():
    gen = torch.Generator().manual_seed(0)
    n = sum(math.prod(s) for s in SHAPES)
    theta = torch.randn(n, generator=gen, dtype=F64)
    x = torch.randn(4, 3, generator=gen, dtype=F64)
    v = torch.randn(n, generator=gen, dtype=F64)

    fd = float(nd.directional_derivative(lambda t: _gradient_penalty(t, x), theta, v, "central"))
    by_hand = float(_gradient_penalty_directional_by_hand(theta, x, v))
    theta_ = theta.clone().requires_grad_(True)
    (dtheta,) = torch.autograd.grad(_gradient_penalty(theta_, x, create_graph=True), theta_)
    double_backprop = float(dtheta @ v)

    assert abs(fd - by_hand) < 1e-8 * max(1.0, abs(by_hand))
    assert abs(fd - double_backprop) < 1e-8 * max(1.0, abs(by_hand))
    # the difference quotient converges at second order towards the same value
    errs = [
        abs(float(nd.directional_derivative(lambda t: _gradient_penalty(t, x), theta, v, "central", h)) - by_hand)
        for h in (4e-3, 2e-3)
    ]
    assert 3.2 < errs[0] / errs[1] < 4.8, errs


# ----------------------------------------------------------------------------- errors


def _f(x):
    return torch.sum(x**2)


X = torch.tensor([1.0, 2.0], dtype=F64)


@pytest.mark.parametrize("h", [0.0, -1e-3, float("nan"), float("inf")])
@pytest.mark.parametrize("method", nd.METHODS)
def test_non_positive_step_is_rejected(h, method):
    with pytest.raises(ValueError, match="h must be positive"):
        nd.gradient(_f, X, method, h)
    with pytest.raises(ValueError, match="h must be positive"):
        nd.directional_derivative(_f, X, torch.ones_like(X), method, h)


def test_bad_arguments_have_clear_messages():
    with pytest.raises(ValueError, match="method"):
        nd.gradient(_f, X, "midpoint")
    with pytest.raises(TypeError, match="h must be"):
        nd.gradient(_f, X, "central", "small")
    with pytest.raises(ValueError, match="h must be positive"):
        nd.gradient(_f, X, "central", torch.tensor([1e-3, 0.0], dtype=F64))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        nd.gradient(_f, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        nd.gradient(_f, [1.0, 2.0])
    with pytest.raises(TypeError, match="x must be real"):
        nd.gradient(_f, X.to(torch.complex128))
    with pytest.raises(TypeError, match="f must be callable"):
        nd.gradient(3.0, X)
    with pytest.raises(ValueError, match="f must return a scalar"):
        nd.gradient(lambda x: 2 * x, X)
    with pytest.raises(ValueError, match="s must have the shape of x"):
        nd.directional_derivative(_f, X, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="non-zero"):
        nd.directional_derivative(_f, X, torch.zeros_like(X))
    with pytest.raises(ValueError, match="samples must be at least 1"):
        nd.spsa_gradient(_f, X, 0)
    with pytest.raises(ValueError, match="samples must be at least 1"):
        nd.regression_gradient(_f, X, 0)
    with pytest.raises(ValueError, match="distribution"):
        nd.spsa_gradient(_f, X, 2, distribution="uniform")
    with pytest.raises(TypeError, match="generator"):
        nd.spsa_gradient(_f, X, 2, generator=0)
    with pytest.raises(ValueError, match="coordinate-wise"):
        nd.derivative(lambda x: x.sum(), X)
    with pytest.raises(ValueError, match="leading dimension"):
        nd.gradient(lambda xs: xs.sum(), X, batched=True)
    with pytest.raises(TypeError, match="dtype"):
        nd.default_step(torch.int64)


def test_complex_step_refuses_non_analytic_functions_clearly():
    with pytest.raises(TypeError, match="f failed on complex input"):
        nd.gradient(lambda x: torch.relu(x).sum(), X, "complex")
    with pytest.raises(TypeError, match="returned a real tensor"):
        nd.gradient(lambda x: torch.abs(x).sum(), X, "complex")
    with pytest.raises(TypeError, match="float32 or float64"):
        nd.gradient(_f, X.to(torch.float16), "complex")
