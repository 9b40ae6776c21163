"""Section 6 (loss landscapes of (leaky) ReLU networks): exact regions, jumps and the claims of Sections 6.1–6.3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.oracles import reference_gradients
from dbpaper.paper import landscape
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius, OutputNodeGradient

PENALTIES = {"node": OutputNodeGradient(0), "cdb": ClassicalDoubleBackprop("mse")}
X0 = torch.tensor([[1.022]], dtype=torch.float64)
Y0 = torch.sin(X0)


@pytest.fixture(scope="module")
def trained():
    return landscape.train_sine_model(steps=300, seed=0)


def _leaky_net(seed=3):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 6), nn.LeakyReLU(0.1), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)
    ).double()
    return model, dbpaper.Network.from_sequential(model, (2,))


def _hidden_preactivations(model, x):
    out, h = [], x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            out.append(h)
    return torch.cat(out[:-1], dim=1)  # hidden layers only


def _brute_force_cells(model, net, sl, ts, x0):
    """Grid cells [t_k, t_{k+1}] across which some hidden pre-activation changes sign."""
    with torch.no_grad():
        if sl.kind == "input":
            z = _hidden_preactivations(model, sl.inputs(x0, ts))
        else:
            rows = []
            for t in ts:
                with sl.at(net, t):
                    rows.append(_hidden_preactivations(model, x0)[0])
            z = torch.stack(rows)
    signs = z > 0
    return np.unique(torch.nonzero(torch.any(signs[1:] != signs[:-1], dim=1))[:, 0].numpy())


# ---------------------------------------------------------------------------------------------
def test_toy_experiment_setup_is_deterministic_and_has_67_parameters():
    x, y = landscape.sine_data(1500, seed=0)
    assert x.shape == y.shape == (1500, 1) and x.dtype == torch.float64
    assert float(x.abs().max()) <= math.pi and torch.equal(y, torch.sin(x))
    assert torch.equal(x, landscape.sine_data(1500, seed=0)[0])
    # Section 6.3 states 61 parameters; 1·8+8 + 8·5+5 + 5·1+1 = 67 (61 = the hidden layers alone)
    assert landscape.parameter_count(landscape.sine_model()) == 67
    a, b = landscape.train_sine_model(steps=30), landscape.train_sine_model(steps=30)
    assert np.array_equal(a.losses, b.losses)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert a.losses[-1] < a.losses[0]


def test_training_reaches_a_good_fit_quickly(trained):
    assert trained.losses[-1] < 0.02
    assert all(p.requires_grad for p in trained.model.parameters())


@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_regions_match_sign_changes_on_a_grid_sine_net(trained, which):
    net, model = trained.net, trained.model
    i, l = landscape.choose_slice_entry(net, X0)
    sl = {"input": landscape.Slice.input(), "weight": landscape.Slice.weight(2, i, l), "bias": landscape.Slice.bias(2, i)}[which]
    c = 0.0 if which == "input" else sl.value(net)
    lo, hi = (-math.pi, math.pi) if which == "input" else (c - 3, c + 3)
    x0 = torch.zeros(1, 1, dtype=torch.float64) if which == "input" else X0
    reg = landscape.regions(net, sl, lo, hi, x0)
    ts = np.linspace(lo, hi, 3001)
    cells = np.searchsorted(ts, reg.boundaries) - 1
    assert np.array_equal(_brute_force_cells(model, net, sl, ts, x0), np.unique(cells))
    assert len(reg.patterns) == len(reg.jacobian) == len(reg.boundaries) + 1


@pytest.mark.parametrize("which", ["input0", "input1", "weight1", "weight2", "bias2", "bias3", "weight4"])
def test_regions_of_a_deeper_leaky_network(which):
    model, net = _leaky_net()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 2, generator=g, dtype=torch.float64)
    sl = {
        "input0": landscape.Slice.input(0),
        "input1": landscape.Slice.input(1),
        "weight1": landscape.Slice.weight(1, 2, 1),
        "weight2": landscape.Slice.weight(2, 3, 4),
        "bias2": landscape.Slice.bias(2, 0),
        "bias3": landscape.Slice.bias(3, 1),
        "weight4": landscape.Slice.weight(4, 1, 2),  # the output layer: no boundary at all
    }[which]
    reg = landscape.regions(net, sl, -4, 4, x0)
    ts = np.linspace(-4, 4, 2001)
    cells = np.searchsorted(ts, reg.boundaries) - 1
    assert np.array_equal(_brute_force_cells(model, net, sl, ts, x0), np.unique(cells))
    if which == "weight4":
        assert reg.boundaries.size == 0
    # the affine pieces reproduce the network's output and its input Jacobian (autograd) inside the regions
    tq = reg.midpoints
    for t, zL, J in zip(tq, reg.output_at(tq), reg.jacobian_at(tq)):
        if sl.kind == "input":
            xt = sl.inputs(x0, [t])
            out = model(xt).detach()[0].numpy()
            jac = torch.autograd.functional.jacobian(lambda u: model(u), xt)[0, :, 0, :].numpy()
        else:
            with sl.at(net, t):
                out = model(x0).detach()[0].numpy()
                jac = torch.autograd.functional.jacobian(lambda u: model(u), x0)[0, :, 0, :].numpy()
        np.testing.assert_allclose(zL, out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(J, jac, rtol=1e-12, atol=1e-12)


def test_regions_simultaneous_crossings_and_a_start_on_a_boundary():
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1.0], [-1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, 0.5, 0.2]))
        model[2].weight.copy_(torch.tensor([[1.0, -1.0, 1.0], [0.5, 0.5, -2.0]]))
        model[2].bias.copy_(torch.tensor([0.1, -0.3]))
        model[4].weight.copy_(torch.tensor([[1.0, 2.0]]))
    net = dbpaper.Network.from_sequential(model, (1,))
    reg = landscape.regions(net, landscape.Slice.input(), -2.0, 2.0)
    assert np.all(np.diff(reg.boundaries) > 0)  # no duplicated boundary
    k = int(np.argmin(np.abs(reg.boundaries + 0.5)))
    assert reg.boundaries[k] == -0.5 and {(1, 0), (1, 1)} <= set(reg.crossings[k])
    ts = np.linspace(-2, 2, 4000)  # no grid point on the boundary at -0.5
    cells = np.searchsorted(ts, reg.boundaries) - 1
    assert np.array_equal(_brute_force_cells(model, net, landscape.Slice.input(), ts, torch.zeros(1, 1, dtype=torch.float64)), np.unique(cells))
    # starting exactly on a boundary: the pattern is the one to the right
    right = landscape.regions(net, landscape.Slice.input(), -0.5, 2.0)
    assert np.array_equal(right.boundaries, reg.boundaries[reg.boundaries > -0.5])
    assert all(np.array_equal(a, b) for a, b in zip(right.patterns[0], reg.patterns[k + 1]))


@pytest.mark.parametrize("seed", range(4))
def test_regions_random_networks_and_slices(seed):
    g = torch.Generator().manual_seed(100 + seed)
    torch.manual_seed(100 + seed)
    model = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 7), nn.LeakyReLU(0.05), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    net = dbpaper.Network.from_sequential(model, (3,))
    x0 = torch.randn(1, 3, generator=g, dtype=torch.float64)
    j = int(torch.randint(1, 4, (1,), generator=g))
    out_f, in_f = net.layers[j - 1].weight.shape
    i, l = int(torch.randint(0, out_f, (1,), generator=g)), int(torch.randint(0, in_f, (1,), generator=g))
    for sl in (landscape.Slice.input(seed % 3), landscape.Slice.weight(j, i, l), landscape.Slice.bias(j, i)):
        reg = landscape.regions(net, sl, -5, 5, x0)
        ts = np.linspace(-5, 5, 1501)
        cells = np.searchsorted(ts, reg.boundaries) - 1
        assert np.array_equal(_brute_force_cells(model, net, sl, ts, x0), np.unique(cells))


def test_s_is_locally_affine_in_w_and_locally_constant_in_b_and_x(trained):
    """Sections 6.1 and 6.2: the operator (35) is constant in x_0 and b, affine in w, on every region."""
    net = trained.net
    i, l = landscape.choose_slice_entry(net, X0)
    for sl, x0 in (
        (landscape.Slice.input(), torch.zeros(1, 1, dtype=torch.float64)),
        (landscape.Slice.weight(2, i, l), X0),
        (landscape.Slice.bias(2, i), X0),
    ):
        c = 0.0 if sl.kind == "input" else sl.value(net)
        lo, hi = (-math.pi, math.pi) if sl.kind == "input" else (c - 3, c + 3)
        reg = landscape.regions(net, sl, lo, hi, x0)
        ts = np.linspace(lo, hi, 301)
        s = landscape.sweep(net, x0, sl, ts).s[:, 0]  # Algorithm 1
        np.testing.assert_allclose(s, reg.jacobian_at(ts)[:, 0, 0], rtol=0, atol=1e-12)
        B = np.array([b[0, 0] for _, b in reg.jacobian])
        if sl.kind == "weight":
            assert np.any(np.abs(B) > 1e-6)  # genuinely affine where the neuron is active
            active = np.array([p[1][i] for p in reg.patterns])
            assert np.all(B[~active] == 0)
        else:
            assert np.all(B == 0)
        assert reg.boundaries.size >= 1
        assert np.all(np.abs(reg.jacobian_jumps()[:, 0, 0]) > 1e-6)


def test_bias_derivatives_node_is_zero_cdb_is_not(trained):
    """∂_b R_node ≡ 0 with an identity output (Appendix B.3, Section 5.3); ∂_b R_cdb is not (η_L = 2 h_L)."""
    net = trained.net
    i, _ = landscape.choose_slice_entry(net, X0)
    sl = landscape.Slice.bias(2, i)
    b0 = sl.value(net)
    x = torch.cat([X0, trained.x[:16]])
    y = torch.sin(x)
    sw = landscape.sweep(net, x, sl, np.linspace(b0 - 2, b0 + 2, 41), PENALTIES, y)
    assert np.all(sw.grads["node"] == 0)
    assert np.max(np.abs(sw.grads["cdb"][:, 0])) > 1e-4
    assert np.max(np.abs(sw.grads["cdb"][:, 1:].mean(1))) > 1e-4


def test_jumps_sit_exactly_at_the_boundaries(trained):
    net = trained.net
    i, l = landscape.choose_slice_entry(net, X0)
    for sl in (landscape.Slice.weight(2, i, l), landscape.Slice.bias(2, i)):
        c = sl.value(net)
        lo, hi = c - 3, c + 3
        reg = landscape.regions(net, sl, lo, hi, X0)

        def evaluate(ts, sl=sl):
            sw = landscape.sweep(net, X0, sl, ts, PENALTIES, Y0)
            return np.stack([sw.s[:, 0], sw.grads["node"][:, 0], sw.grads["cdb"][:, 0]], axis=1)

        lim = landscape.limits(evaluate, reg.boundaries, lo, hi)
        np.testing.assert_allclose(lim.jump[:, 0], reg.jacobian_jumps()[:, 0, 0], rtol=0, atol=1e-9)
        assert np.all(np.abs(lim.jump[:, 2]) > 1e-6)  # R_cdb jumps wherever s does
        if sl.kind == "weight":
            assert np.all(np.abs(lim.jump[:, 1]) > 1e-6)
        ts = np.linspace(lo, hi, 1001)
        f = evaluate(ts)
        for col in ((0, 1, 2) if sl.kind == "weight" else (0, 2)):
            smooth, across = landscape.grid_increments(ts, f[:, col], reg.boundaries)
            assert smooth < 0.05 * np.min(np.abs(lim.jump[:, col]))
            np.testing.assert_allclose(across, lim.jump[:, col], rtol=0, atol=3 * smooth + 1e-12)


def test_input_slice_jumps_and_classical_penalty(trained):
    """Figure 2: s jumps at every boundary along x_0; R_cdb = (2 (x_L − y) s)² with y = sin x_0 jumps there too."""
    net = trained.net
    sl = landscape.Slice.input()
    reg = landscape.regions(net, sl, -math.pi, math.pi)
    base = torch.zeros(1, 1, dtype=torch.float64)

    def evaluate(ts):
        sw = landscape.sweep(net, base, sl, ts, {"cdb": PENALTIES["cdb"]}, y=torch.sin)
        return np.stack([sw.s[:, 0], sw.values["cdb"][:, 0]], axis=1)

    lim = landscape.limits(evaluate, reg.boundaries, -math.pi, math.pi)
    np.testing.assert_allclose(lim.jump[:, 0], reg.jacobian_jumps()[:, 0, 0], rtol=0, atol=1e-10)
    ts = np.linspace(-math.pi, math.pi, 5001)
    f = evaluate(ts)
    with torch.no_grad():
        xl = trained.model(torch.tensor(ts)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(f[:, 1], (2 * (xl - np.sin(ts)) * f[:, 0]) ** 2, rtol=1e-10, atol=1e-15)
    smooth, _ = landscape.grid_increments(ts, f[:, 0], reg.boundaries)
    assert smooth < 1e-12  # piecewise constant


def test_per_example_matches_double_backprop_and_autograd(trained):
    net, model = trained.net, trained.model
    i, l = landscape.choose_slice_entry(net, X0)
    x = trained.x[:7]
    y = torch.sin(x)
    for sl in (landscape.Slice.weight(2, i, l), landscape.Slice.bias(2, i), landscape.Slice.weight(1, 3, 0), landscape.Slice.bias(3, 0)):
        pidx = 2 * (sl.layer - 1) + (0 if sl.kind == "weight" else 1)
        for pen in PENALTIES.values():
            values, grads = landscape.per_example(net, x, pen, y, sl)
            res = dbpaper.double_backprop(net, x, pen, y)
            gtot = res.gradients.weights[sl.layer - 1] if sl.kind == "weight" else res.gradients.biases[sl.layer - 1]
            assert torch.allclose(values.mean(), res.value, rtol=1e-12, atol=1e-15)
            assert torch.allclose(grads.mean(), gtot[sl.index], rtol=1e-10, atol=1e-14)
            for n in range(x.shape[0]):  # each example's own derivative against autograd
                v_ref, g_ref = reference_gradients(model, x[n : n + 1], pen, y[n : n + 1])
                assert torch.allclose(values[n], v_ref, rtol=1e-10, atol=1e-15)
                assert torch.allclose(grads[n], g_ref[pidx][sl.index], rtol=1e-10, atol=1e-14)


def test_smoothing_study_jumps_scale_with_batch_size(trained):
    net = trained.net
    i, l = landscape.choose_slice_entry(net, X0)
    sl = landscape.Slice.weight(2, i, l)
    w0 = sl.value(net)
    lo, hi = w0 - 1.5, w0 + 1.5
    x, y = landscape.sine_data(32, seed=11)
    rows, raw = landscape.smoothing_study(net, x, y, sl, lo, hi, PENALTIES, sizes=(1, 4, 16, 32), grid=101)
    for name in PENALTIES:
        r = {row.M: row for row in rows if row.penalty == name}
        J = np.abs(raw["jumps"][name])
        assert J.size > 4 and r[1].largest_jump > 0
        for M, row in r.items():
            assert row.largest_jump <= J.max() / M * (1 + 1e-12)
            # with distinct boundaries, the jumps' total share does not depend on M
            assert math.isclose(row.jump_variation, J.sum() / x.shape[0], rel_tol=1e-9)
            assert math.isclose(row.jumps, J.size / (x.shape[0] / M), rel_tol=1e-12)
        assert r[32].largest_jump < r[1].largest_jump
    # the averaged derivative of the first batch of 4, measured directly with dbpaper.double_backprop
    sel = raw["owner"] < 4

    def batch_grad(ts):
        out = []
        for t in ts:
            with sl.at(net, t):
                out.append([float(dbpaper.double_backprop(net, x[:4], p, y[:4]).gradients.weights[1][i, l]) for p in PENALTIES.values()])
        return np.array(out)

    direct = landscape.limits(batch_grad, raw["boundaries"][sel], lo, hi)
    for c, name in enumerate(PENALTIES):
        np.testing.assert_allclose(direct.jump[:, c], raw["jumps"][name][sel] / 4, rtol=1e-6, atol=1e-9)


def test_printed_classical_penalty_of_section_6_3_is_wrong(trained):
    """Erratum: R_cdb = (2 (x_L − y) ∂x_L)², not ((∂(x_L − y))²)² as printed."""
    net = trained.net
    for y in (Y0, torch.zeros_like(Y0)):
        r = dbpaper.double_backprop(net, X0, PENALTIES["cdb"], y).value
        s = landscape.input_gradients(net, X0)[0, 0]
        res = trained.model(X0).detach()[0, 0] - y[0, 0]
        assert torch.allclose(r, (2 * res * s) ** 2, rtol=1e-12)
        assert not math.isclose(float(landscape.printed_cdb_penalty(s, res)), float(r), rel_tol=0.1)


def test_slice_at_restores_and_limits_are_exact_for_piecewise_affine_functions(trained):
    net = trained.net
    sl = landscape.Slice.weight(2, 1, 1)
    before = net.layers[1].weight.detach().clone()
    with sl.at(net, 123.0):
        assert sl.value(net) == 123.0
    assert torch.equal(net.layers[1].weight.detach(), before)
    lim = landscape.limits(lambda t: np.where(t < 0.3, 2 * t, 5 - t), [0.3], -1, 1)
    assert abs(lim.jump[0] - (4.7 - 0.6)) < 1e-12


def test_validation_errors(trained):
    net = trained.net
    with pytest.raises(ValueError, match="kind"):
        landscape.Slice("output")
    with pytest.raises(ValueError, match="index of length 2"):
        landscape.Slice("weight", 2, (1,))
    with pytest.raises(ValueError, match="out of range"):
        landscape.Slice.weight(2, 9, 0).check(net)
    with pytest.raises(ValueError, match="does not exist"):
        landscape.Slice.bias(7, 0).check(net)
    with pytest.raises(ValueError, match="lo < hi"):
        landscape.regions(net, landscape.Slice.input(), 1.0, 1.0)
    with pytest.raises(ValueError, match="needs the fixed input"):
        landscape.regions(net, landscape.Slice.bias(1, 0), 0.0, 1.0)
    tanh_net = dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double(), (1,))
    with pytest.raises(ValueError, match="leaky"):
        landscape.regions(tanh_net, landscape.Slice.input(), 0.0, 1.0)
    _, leaky = _leaky_net()
    with pytest.raises(ValueError, match="several v"):
        landscape.per_example(leaky, torch.zeros(1, 2, dtype=torch.float64), JacobianFrobenius())
    with pytest.raises(ValueError, match="divide"):
        landscape.smoothing_study(net, trained.x[:10], trained.y[:10], landscape.Slice.bias(2, 0), 0, 1, sizes=(1, 4))
    with pytest.raises(ValueError, match="strictly inside"):
        landscape.limits(lambda t: t, [2.0], 0.0, 1.0)
    with pytest.raises(ValueError, match="n must be"):
        landscape.sine_data(0)
