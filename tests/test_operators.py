"""Section 2.1 and Theorem 2.3 for every registered operator, dtype and hyperparameter set."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dbpaper as dbp

from .helpers import DTYPES, OPERATORS, random_triple, tol

OPS = sorted(OPERATORS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dot_test(op, dtype):
    """<K(θ,x), y> = <x, Kᵀ(θ,y)> = <θ, K□(x,y)>, normalised as in ODL."""
    errs = dbp.adjoint_errors(op, *random_triple(op, dtype))
    bound = 1e-12 if dtype == torch.float64 else tol(dtype)
    assert errs.transpose <= bound and errs.weight_adjoint <= bound, errs


def test_float64_errors_are_at_most_1e12():
    worst = max(dbp.adjoint_errors(f(), *random_triple(f(), torch.float64, seed=s)).max for f in OPERATORS.values() for s in range(3))
    assert worst <= 1e-12


def _vjp(fn, primal, cotangent):
    primal = primal.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(primal), primal, cotangent)
    return g


# name -> (op, θ, x, y) -> (a torch VJP, the operator method it must equal)
ADJOINTS = {
    # Kᵀ and K□ are the VJPs of K in x and in θ
    "transpose-is-vjp-in-x": lambda op, t, x, y: (_vjp(lambda u: op.apply(t, u), x, y), op.transpose(t, y)),
    "weight-adjoint-is-vjp-in-theta": lambda op, t, x, y: (_vjp(lambda s: op.apply(s, x), t, y), op.weight_adjoint(x, y)),
    # Theorem 2.3: θ ↦ Kᵀ(θ, y) has the adjoint x ↦ K□(x, y), and x ↦ K□(x, y) the adjoint θ ↦ Kᵀ(θ, y)
    "theorem-2.3-transpose-in-theta": lambda op, t, x, y: (_vjp(lambda s: op.transpose(s, y), t, x), op.weight_adjoint(x, y)),
    "theorem-2.3-weight-adjoint-in-x": lambda op, t, x, y: (_vjp(lambda u: op.weight_adjoint(u, y), x, t), op.transpose(t, y)),
    # Remark 2.1: K is the adjoint of Kᵀ in y
    "remark-2.1-apply-in-y": lambda op, t, x, y: (_vjp(lambda w: op.transpose(t, w), y, x), op.apply(t, x)),
}


@pytest.mark.parametrize("identity", list(ADJOINTS))
def test_adjoint_identities_against_torch_vjps(op, identity):
    vjp, method = ADJOINTS[identity](op, *random_triple(op, torch.float64))
    torch.testing.assert_close(vjp, method, rtol=1e-12, atol=1e-12)


def test_bilinearity(op):
    t1, x1, _ = random_triple(op, torch.float64, seed=1)
    t2, x2, _ = random_triple(op, torch.float64, seed=2)
    a, b = 0.7, -1.3
    torch.testing.assert_close(op.apply(a * t1 + b * t2, x1), a * op.apply(t1, x1) + b * op.apply(t2, x1))
    torch.testing.assert_close(op.apply(t1, a * x1 + b * x2), a * op.apply(t1, x1) + b * op.apply(t1, x2))


@pytest.mark.parametrize("name", [n for n in OPS if n != "hadamard"])
def test_operator_matches_torch_module(name):
    """θ has the layout of the matching torch module's weight."""
    op = OPERATORS[name]()
    theta, x, _ = random_triple(op, torch.float64)
    if isinstance(op, dbp.Dense):
        ref = torch.nn.functional.linear(x, theta)
    elif isinstance(op, dbp.Conv1d):
        ref = torch.nn.functional.conv1d(x, theta, stride=op.stride, padding=op.padding, dilation=op.dilation, groups=op.groups)
    elif isinstance(op, dbp.Conv2d):
        ref = torch.nn.functional.conv2d(x, theta, stride=op.stride, padding=op.padding, dilation=op.dilation, groups=op.groups)
    elif isinstance(op, dbp.LocallyConnected2d):
        ref = _locally_connected_loops(op, theta, x)
    elif isinstance(op, dbp.AvgPool2d):
        ref = theta * torch.nn.AvgPool2d(**op._kw())(x)
    elif isinstance(op, dbp.InvertibleDownsampling):
        ref = theta * torch.nn.PixelUnshuffle(op.factor)(x)
    elif isinstance(op, dbp.ChannelScale):  # BatchNorm in eval mode with zero mean and unit variance: θ is γ
        c = op.in_shape[0]
        ref = torch.nn.functional.batch_norm(x, x.new_zeros(c), x.new_ones(c), weight=theta, training=False, eps=0.0)
    else:  # pragma: no cover
        raise AssertionError(name)
    torch.testing.assert_close(op.apply(theta, x), ref)


def _locally_connected_loops(op, theta, x):
    """Independent, loop-based definition of the locally connected layer."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = op.kernel_size, op.stride, op.padding, op.dilation
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    c_out, h_out, w_out = op.out_shape
    y = x.new_zeros((x.shape[0], c_out, h_out, w_out))
    for i in range(h_out):
        for j in range(w_out):
            patch = xp[:, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
            y[:, :, i, j] = torch.einsum("ncab,ocab->no", patch, theta[:, i, j])
    return y


def test_parameter_free_operators_have_unit_parameter():
    op = dbp.AvgPool2d((1, 4, 4), 2)
    assert not op.trainable and op.param_shape == ()
    assert op.unit_parameter(torch.float32).item() == 1.0
    with pytest.raises(TypeError, match="no unit parameter"):
        dbp.Dense(2, 3).unit_parameter()


# -- Lemma 3.1 and Corollary 3.1.1 for M = Hadamard ----------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_lemma_3_1_M_equals_its_adjoints(dtype):
    m = dbp.Hadamard((3, 4))
    a, b, _ = random_triple(m, dtype)
    assert torch.equal(m.apply(a, b), m.transpose(a, b))
    assert torch.equal(m.apply(a, b), m.weight_adjoint(a, b))
    # and they are the adjoints (numerically, not by construction)
    errs = dbp.adjoint_errors(m, *random_triple(m, dtype, seed=3))
    assert errs.max <= tol(dtype)


def test_corollary_3_1_1_M_a_is_self_adjoint():
    m = dbp.Hadamard((6,))
    a, u, w = random_triple(m, torch.float64)
    lhs = torch.sum(m.apply(a, u) * w)
    rhs = torch.sum(u * m.apply(a, w))
    assert abs(float(lhs - rhs)) <= 1e-12 * float(u.norm() * w.norm() * a.abs().max())
    # as a matrix: diag(a) is symmetric
    jac = torch.autograd.functional.jacobian(lambda v: m.apply(a, v), u)
    mat = jac.reshape(u.numel(), u.numel())
    torch.testing.assert_close(mat, mat.T)


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_names_operator_and_shapes():
    op = dbp.Conv2d((3, 8, 8), 4, 3)
    theta = torch.randn(op.param_shape)
    with pytest.raises(ValueError, match=r"Conv2d.*x has shape \(2, 3, 7, 8\).*expected \(N, 3, 8, 8\)"):
        op.apply(theta, torch.randn(2, 3, 7, 8))
    with pytest.raises(ValueError, match=r"theta has shape \(4, 3, 3\).*layout \(4, 3, 3, 3\)"):
        op.apply(torch.randn(4, 3, 3), torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="dtypes differ"):
        op.apply(theta, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="different batch sizes"):
        op.weight_adjoint(torch.randn(2, 3, 8, 8), torch.randn(3, *op.out_shape))
    with pytest.raises(TypeError, match="floating point"):
        op.apply(theta, torch.ones(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="groups=2 must divide"):
        dbp.Conv2d((3, 8, 8), 4, 3, groups=2)
    with pytest.raises(ValueError, match="too small"):
        dbp.Conv1d((1, 2), 1, 5)
    with pytest.raises(ValueError, match="divisible"):
        dbp.InvertibleDownsampling((1, 5, 4), 2)
    with pytest.raises(TypeError, match="BilinearOperator"):
        dbp.adjoint_errors("dense", theta, theta, theta)


def test_device_mismatch_is_reported():
    op = dbp.Dense(2, 2)
    meta = torch.randn(2, 2, device="meta")
    with pytest.raises(ValueError, match="devices differ"):
        op.apply(meta, torch.randn(1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", OPS)
def test_cuda_matches_cpu(name):
    op = OPERATORS[name]()
    theta, x, y = random_triple(op, torch.float64)
    for method, args in (("apply", (theta, x)), ("transpose", (theta, y)), ("weight_adjoint", (x, y))):
        cpu = getattr(op, method)(*args)
        gpu = getattr(op, method)(*(a.cuda() for a in args))
        torch.testing.assert_close(gpu.cpu(), cpu)


# -- property-based: shapes drawn by hypothesis ---------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    c_in=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    c_out_per_group=st.integers(1, 3),
    h=st.integers(3, 10),
    w=st.integers(3, 10),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    batch=st.integers(1, 3),
)
def test_conv2d_property(c_in, groups, c_out_per_group, h, w, k, stride, padding, dilation, batch):
    c_in *= groups
    if h + 2 * padding < dilation * (k - 1) + 1 or w + 2 * padding < dilation * (k - 1) + 1:
        return
    op = dbp.Conv2d((c_in, h, w), c_out_per_group * groups, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    errs = dbp.adjoint_errors(op, *random_triple(op, torch.float64, batch=batch), norm_iterations=10)
    assert errs.max <= 1e-12


@settings(max_examples=30, deadline=None)
@given(
    c_in=st.integers(1, 3), c_out=st.integers(1, 3), h=st.integers(2, 8), w=st.integers(2, 8),
    k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1),
)
def test_locally_connected_property(c_in, c_out, h, w, k, stride, padding):
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    op = dbp.LocallyConnected2d((c_in, h, w), c_out, k, stride=stride, padding=padding)
    theta, x, y = random_triple(op, torch.float64)
    assert dbp.adjoint_errors(op, theta, x, y, norm_iterations=10).max <= 1e-12
    torch.testing.assert_close(op.apply(theta, x), _locally_connected_loops(op, theta, x))


@settings(max_examples=30, deadline=None)
@given(n_in=st.integers(1, 40), n_out=st.integers(1, 40), batch=st.integers(1, 5))
def test_dense_property(n_in, n_out, batch):
    op = dbp.Dense(n_in, n_out)
    assert dbp.adjoint_errors(op, *random_triple(op, torch.float64, batch=batch), norm_iterations=10).max <= 1e-12


@pytest.mark.parametrize("name", [n for n in OPERATORS if n != "hadamard"])
def test_macs_match_the_flop_counter(name):
    """``op.macs`` (the cost model's per-example multiply-adds) equals what FlopCounterMode counts for ``K``."""
    from torch.utils.flop_counter import FlopCounterMode

    op = OPERATORS[name]()
    if not op.trainable or isinstance(op, dbp.ChannelScale):  # pooling, down-sampling, channel scaling: no matrix
        # product for the flop counter; one multiply-add per output
        assert op.macs == op.out_numel
        return
    theta, x, _ = random_triple(op, torch.float64, batch=1)
    with FlopCounterMode(display=False) as counter:
        op.apply(theta, x)
    assert op.macs == counter.get_total_flops() // 2


def test_avgpool_output_size_matches_torch_without_a_probe():
    """AvgPool2d computes its output shape arithmetically (as ATen does); torch's pooling is the oracle."""
    import itertools

    import torch.nn.functional as F

    for h, k, s, p, ceil in itertools.product(range(1, 10), range(1, 5), range(1, 4), range(0, 3), (False, True)):
        try:
            ref = tuple(F.avg_pool2d(torch.zeros(1, 1, h, h + 2), k, s, p, ceil).shape[2:])
            ref = None if 0 in ref else ref
        except RuntimeError:
            ref = None
        try:
            got = dbp.AvgPool2d((1, h, h + 2), k, s, p, ceil).out_shape[1:]
        except ValueError:
            got = None
        assert got == ref, (h, k, s, p, ceil)
