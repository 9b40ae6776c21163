"""Normalisation layers (LayerNorm, RMSNorm, GroupNorm, BatchNorm in training mode) in the explicit algorithms.

Each normalisation's ``g'`` (:meth:`~dbpaper.normalisation.Normalisation.slope`) and
``g''`` (:meth:`~dbpaper.normalisation.Normalisation.curvature`) against torch's own
functional by autograd, in float64; then whole penalties and their gradients on random
networks in ``train()`` (pre-norm residual MLPs, MLPs with RMSNorm and BatchNorm1d, conv nets
with GroupNorm and BatchNorm2d) against the autograd oracle, for every penalty of the grid and
every algorithm that applies, with no fallback; the running statistics of BatchNorm; and a
mutation check: a term dropped from LayerNorm's ``g''`` fails the comparison.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dbpaper
from dbpaper import normalisation as N
from dbpaper.nn import Residual
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius

from .helpers import (
    CLASSES,
    PENALTIES,
    applicable_algorithms,
    assert_matches,
    flat_gradients,
    oracle,
    penalty_targets,
    random_residual_model,
)

F64 = torch.float64
TOL = dbpaper.dtype_tolerance(F64, 1e4)  # about 2e-12: a float64 comparison with autograd through several layers


@pytest.fixture(autouse=True)
def _no_fallback():
    """No call of this file may take the autograd fallback; the batch-mixing information is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)
        warnings.simplefilter("ignore", dbpaper.BatchMixingWarning)
        yield


# -- each layer's g' and g'' against torch's functional ---------------------------------------------

LAYERS = {
    "layer-norm": (lambda: N.LayerNormalisation((5,)), lambda z: F.layer_norm(z, (5,)), (4, 5)),
    "layer-norm-2d": (lambda: N.LayerNormalisation((3, 4), eps=1e-3), lambda z: F.layer_norm(z, (3, 4), eps=1e-3), (3, 2, 3, 4)),
    "rms-norm": (lambda: N.RMSNormalisation((5,)), lambda z: F.rms_norm(z, (5,)), (4, 5)),
    "rms-norm-eps": (lambda: N.RMSNormalisation((2, 3), eps=1e-2), lambda z: F.rms_norm(z, (2, 3), eps=1e-2), (4, 2, 3)),
    "group-norm": (lambda: N.GroupNormalisation(2), lambda z: F.group_norm(z, 2), (3, 4, 3, 3)),
    "group-norm-flat": (lambda: N.GroupNormalisation(3, eps=1e-3), lambda z: F.group_norm(z, 3, eps=1e-3), (2, 6)),
    "batch-norm-1d": (lambda: N.BatchNormalisation(), lambda z: F.batch_norm(z, None, None, training=True), (5, 3)),
    "batch-norm-1d-seq": (lambda: N.BatchNormalisation(), lambda z: F.batch_norm(z, None, None, training=True), (3, 2, 4)),
    "batch-norm-2d": (lambda: N.BatchNormalisation(1e-3), lambda z: F.batch_norm(z, None, None, training=True, eps=1e-3), (2, 3, 2, 3)),
}


def _draw(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=F64) for _ in range(4)]


@pytest.mark.parametrize("name", LAYERS)
def test_slope_and_curvature_match_torchs_functional(name):
    """``g'(z) a`` against ``torch.autograd.functional.jvp``; ``g''(z)[a, b]`` against ``vhp`` of ``⟨g(z), a⟩``.

    (``vhp`` is reverse over reverse, as autograd's double backward; ``g''`` is fully symmetric, so
    ``∇²⟨g, a⟩ b = g''[a, b]``.)
    """
    make, fn, shape = LAYERS[name]
    g = make()
    z, a, b, c = _draw(shape, 0)
    x, state = g.record(z)
    torch.testing.assert_close(x, fn(z), rtol=0, atol=1e-14)
    torch.testing.assert_close(g.f(z), x, rtol=0, atol=0)
    _, jv = torch.autograd.functional.jvp(fn, z, a)
    torch.testing.assert_close(g.slope(a, state), jv, rtol=0, atol=TOL)
    _, hv = torch.autograd.functional.vhp(lambda q: (fn(q) * a).sum(), z, b)
    torch.testing.assert_close(g.curvature(state, a, b), hv, rtol=0, atol=TOL)
    # symmetry: of g' (self-adjoint), and full symmetry of g'' (E19's hypothesis)
    dot = lambda u, v: float((u * v).sum())  # noqa: E731
    assert abs(dot(b, g.slope(a, state)) - dot(g.slope(b, state), a)) <= TOL
    assert abs(dot(c, g.curvature(state, a, b)) - dot(a, g.curvature(state, c, b))) <= TOL
    assert abs(dot(c, g.curvature(state, a, b)) - dot(c, g.curvature(state, b, a))) <= TOL
    # classes stacked along the batch: each on its own
    stacked = torch.stack([a, b, c]).reshape(3 * shape[0], *shape[1:])
    out = g.slope(stacked, state, out=stacked.clone()).reshape(3, *shape)
    for k, t in enumerate((a, b, c)):
        torch.testing.assert_close(out[k], g.slope(t, state), rtol=0, atol=1e-15)
    cs = g.curvature(state, stacked, torch.cat([b, c, a])).reshape(3, *shape)
    torch.testing.assert_close(cs[1], g.curvature(state, b, c), rtol=0, atol=1e-15)


def test_normalisations_are_not_coordinatewise():
    g = N.LayerNormalisation((3,))
    assert g.coupled and not dbpaper.ReLU().coupled and not g.output_invertible()
    with pytest.raises(TypeError, match="not coordinate-wise"):
        g.df(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        N.BatchNormalisation().record(torch.zeros(1, 3, dtype=F64))


# -- random networks in train() --------------------------------------------------------------------


def _norm(kind: str, width: int, g: torch.Generator, flat: bool = True) -> nn.Module:
    coin = float(torch.rand((), generator=g))
    if kind == "ln":
        return nn.LayerNorm(width, elementwise_affine=coin > 0.2, bias=coin > 0.5)
    if kind == "rms":
        return nn.RMSNorm(width, eps=None if coin > 0.5 else 1e-4, elementwise_affine=coin > 0.25)
    if kind == "gn":
        return nn.GroupNorm(2, width, affine=coin > 0.25)
    bn = nn.BatchNorm1d if flat else nn.BatchNorm2d
    return bn(width, affine=coin > 0.25, momentum=None if coin > 0.7 else 0.1)


def _act(g: torch.Generator) -> nn.Module:
    return [nn.GELU, nn.Tanh, nn.SiLU, nn.ReLU, nn.Softplus][int(torch.randint(0, 5, (1,), generator=g))]()


def random_normalised_model(family: str, seed: int, classes: int = CLASSES):
    """``(model in train(), per-example input shape)`` of one family: ``"prenorm"`` (``x + W₂ g(W₁ LN(x))`` blocks),
    ``"mlp"`` (RMSNorm, BatchNorm1d, LayerNorm after dense layers) or ``"conv"`` (GroupNorm, BatchNorm2d, residual)."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda opts: opts[int(torch.randint(0, len(opts), (1,), generator=g))]  # noqa: E731
    softmax = seed % 2 == 0
    if family == "prenorm":
        d, w = 4, 5
        mods = [nn.Linear(d, w)]
        for _ in range(2):
            mods.append(Residual(_norm(pick(["ln", "rms"]), w, g), nn.Linear(w, 6), _act(g), nn.Linear(6, w)))
        mods += [_norm(pick(["ln", "rms"]), w, g), _act(g), nn.Linear(w, classes)]
        shape = (d,)
    elif family == "mlp":
        d = 4
        mods, width = [], d
        for _ in range(2):
            mods += [nn.Linear(width, 5), _norm(pick(["rms", "bn", "ln"]), 5, g), _act(g)]
            width = 5
        mods.append(nn.Linear(width, classes))
        shape = (d,)
    else:
        c = 4
        mods = [nn.Conv2d(2, c, 3, padding=1), _norm(pick(["gn", "bn"]), c, g, flat=False), _act(g)]
        mods.append(Residual(nn.Conv2d(c, c, 3, padding=1), _norm(pick(["gn", "bn"]), c, g, flat=False), _act(g), nn.Conv2d(c, c, 3, padding=1)))
        mods += [_act(g), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(c * 4, classes)]
        shape = (2, 4, 4)
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    model = nn.Sequential(*mods).to(F64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=g, dtype=F64) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * (0.9 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.3))
    return model.train(), shape


FAMILIES = {"prenorm": (0, 1, 2, 3), "mlp": (0, 1, 2, 3), "conv": (0, 1)}
NETWORKS = [(family, seed) for family, seeds in FAMILIES.items() for seed in seeds]


@functools.cache
def _network(family, seed):
    model, shape = random_normalised_model(family, seed)
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(seed + 77), dtype=F64)
    return model, x, dbpaper.Network.from_sequential(model, shape)


@functools.cache
def _oracle(family, seed, pen_name):
    model, x, _ = _network(family, seed)
    return oracle(model, x, PENALTIES[pen_name][0](), penalty_targets(pen_name, x, seed))


def _cases():
    cases = []
    for family, seed in NETWORKS:
        net = _network(family, seed)[2]
        for pen_name in PENALTIES:
            for alg in applicable_algorithms(net, PENALTIES[pen_name][0]()):
                cases.append(pytest.param(family, seed, pen_name, alg, id=f"{family}-{seed}-{pen_name}-{alg}"))
    return cases


def _explicit(family, seed, pen_name, algorithm):
    model, x, net = _network(family, seed)
    res = dbpaper.double_backprop(net, x, PENALTIES[pen_name][0](), penalty_targets(pen_name, x, seed), algorithm=algorithm)
    assert res.algorithm == algorithm
    return res.value, flat_gradients(net, res.gradients)


def test_every_random_network_is_read_with_its_normalisations():
    for family, seed in NETWORKS:
        net = _network(family, seed)[2]
        assert any(layer.activation.coupled for layer in net.layers[:-1]), (family, seed)
        assert dbpaper.plan(_network(family, seed)[0], _network(family, seed)[1], JacobianFrobenius()).algorithm != "autograd"


@pytest.mark.parametrize(("family", "seed", "pen_name", "algorithm"), _cases())
def test_the_penalty_grid_on_normalised_networks(family, seed, pen_name, algorithm):
    """Every penalty of the grid, every applicable algorithm, against the float64 autograd oracle (1e-10)."""
    assert_matches(_explicit(family, seed, pen_name, algorithm), _oracle(family, seed, pen_name), rtol=1e-10, atol=1e-14, what=(family, seed, pen_name, algorithm))


def _residual_batchnorm_seeds(count: int = 6) -> list[int]:
    """The first seeds of ``helpers.random_residual_model`` whose network holds a BatchNorm (residual blocks, shortcuts, pooling)."""
    seeds, seed = [], 0
    while len(seeds) < count:
        model, _ = random_residual_model(seed)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            seeds.append(seed)
        seed += 1
    return seeds


@pytest.mark.parametrize("seed", _residual_batchnorm_seeds())
def test_random_residual_networks_with_batchnorm_in_training_mode(seed):
    """The residual grid's networks (:func:`helpers.random_residual_model`) put in ``train()``: every algorithm that applies."""
    model, shape = random_residual_model(seed)
    model.train()
    x = torch.randn(5, *shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    net = dbpaper.Network.from_sequential(model, shape)
    for pen_name in ("jacobian", "cdb-nll", "opnorm"):
        pen, y = PENALTIES[pen_name][0](), penalty_targets(pen_name, x, seed)
        want = oracle(model, x, pen, y)
        for alg in applicable_algorithms(net, pen):
            res = dbpaper.double_backprop(net, x, PENALTIES[pen_name][0](), y, algorithm=alg)
            assert_matches((res.value, flat_gradients(net, res.gradients)), want, rtol=1e-10, atol=1e-14, what=(seed, pen_name, alg))


def test_the_algorithms_that_apply_include_algorithm_4_and_its_shortcuts():
    model, x, net = _network("prenorm", 0)
    names = applicable_algorithms(net, JacobianFrobenius())
    assert {"general", "minimal", "optimized", "optimized-chunked"} <= set(names)
    for gram, onehot in ((True, False), (False, True), (True, True)):
        from dbpaper.algorithms.jacobian import jacobian_penalty_gradients

        rec = net.forward(x)
        value, grads = jacobian_penalty_gradients(net, rec, JacobianFrobenius(), chunk_size=2, gram=gram, onehot=onehot)
        assert_matches((value, flat_gradients(net, grads)), _oracle("prenorm", 0, "jacobian"), rtol=1e-10, what=(gram, onehot))


@pytest.mark.parametrize(("family", "seed"), [("prenorm", 1), ("mlp", 2), ("conv", 1)])
def test_penalty_objective_and_input_gradients_match_autograd(family, seed):
    """Through the entry points, in ``train()``: ``R`` and ``ℓ + λR`` with the parameter and input gradients."""
    model, x0, _ = _network(family, seed)
    y = torch.randint(0, CLASSES, (x0.shape[0],), generator=torch.Generator().manual_seed(seed))
    params = list(model.parameters())
    for call in (
        lambda alg, x: dbpaper.penalty(model, x, JacobianFrobenius(), algorithm=alg),
        lambda alg, x: dbpaper.penalty(model, x, ClassicalDoubleBackprop("nll"), y, algorithm=alg),
        lambda alg, x: dbpaper.objective(model, x, JacobianFrobenius(), y, 0.3, algorithm=alg),
        lambda alg, x: dbpaper.penalty(model, x, JacobianFrobenius(), algorithm=alg, reduction="none") @ torch.linspace(0.5, 1.5, x.shape[0], dtype=F64),
    ):
        got, want = [], []
        for alg, out in (("auto", got), ("autograd", want)):
            x = x0.clone().requires_grad_(True)
            value = call(alg, x)
            grads = torch.autograd.grad(value, params + [x], allow_unused=True, materialize_grads=True)
            out += [value.detach(), list(grads)]
        assert_matches(got, want, rtol=1e-10)


def test_batchnorm_running_statistics_are_updated_once_as_by_a_plain_forward():
    for momentum in (0.1, None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=momentum), nn.ReLU(),
                              nn.Flatten(), nn.Linear(3 * 16, 4), nn.BatchNorm1d(4, momentum=momentum), nn.Tanh(), nn.Linear(4, 2)).double().train()  # fmt: skip
        plain = copy.deepcopy(model)
        x, y = torch.randn(5, 2, 4, 4, dtype=F64), torch.randint(0, 2, (5,))
        for call in (
            lambda m, x, y: dbpaper.penalty(m, x, JacobianFrobenius()).backward(),
            lambda m, x, y: dbpaper.objective(m, x, ClassicalDoubleBackprop("nll"), y, 0.5).backward(),
            lambda m, x, y: dbpaper.penalty(m, x, JacobianFrobenius(), reduction="none").sum().backward(),
        ):
            call(model, x, y)
            with torch.no_grad():
                plain(x)
            for a, b in zip(model.buffers(), plain.buffers()):
                torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
        assert int(model[1].num_batches_tracked) == 3


def test_batch_mixing_is_information_not_a_fallback():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().train()
    x = torch.randn(8, 4, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dbpaper.penalty(model, x, JacobianFrobenius())
    kinds = {w.category for w in caught}
    assert dbpaper.BatchMixingWarning in kinds and dbpaper.FallbackWarning not in kinds
    assert dbpaper.plan(model, x, JacobianFrobenius()).algorithm != "autograd"
    model.eval()  # the per-example penalty: no mixing, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.BatchMixingWarning)
        dbpaper.penalty(model, x, JacobianFrobenius())


def test_layer_norm_readings():
    """With and without ``elementwise_affine``, ``bias=False``, a non-flat ``normalized_shape``, at the input, after an
    activation, at the end, and before a softmax without an affine part."""
    torch.manual_seed(3)
    models = {
        "start": (nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3)), (4,)),
        "no-affine-then-tanh": (nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5, elementwise_affine=False), nn.Tanh(), nn.Linear(5, 3)), (4,)),
        "no-bias-end": (nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3), nn.LayerNorm(3, bias=False)), (4,)),
        "no-affine-end": (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.LayerNorm(3, elementwise_affine=False)), (4,)),
        "softmax": (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.LayerNorm(3, elementwise_affine=False), nn.Softmax(dim=-1)), (4,)),
        "trailing": (nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.LayerNorm(5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 3)), (2, 5)),
    }
    for name, (model, shape) in models.items():
        model = model.double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(3, *shape, dtype=F64)
        net = dbpaper.Network.from_sequential(model, shape)
        for alg in applicable_algorithms(net, JacobianFrobenius()):
            res = dbpaper.double_backprop(net, x, JacobianFrobenius(), algorithm=alg)
            assert_matches((res.value, flat_gradients(net, res.gradients)), oracle(model, x, JacobianFrobenius()), rtol=1e-10, what=(name, alg))


def test_the_book_helpers_refuse_normalisations_clearly():
    from dbpaper.oracles import traced_quantities

    model, x, net = _network("mlp", 0)
    with pytest.raises(TypeError, match="not coordinate-wise"):
        traced_quantities(net, x, ClassicalDoubleBackprop("nll"), torch.zeros(x.shape[0], dtype=torch.long))
    from dbpaper.paper.graph import dependency_graph

    with pytest.raises(ValueError, match="coordinate-wise"):
        dependency_graph(net, x, ClassicalDoubleBackprop("nll"), torch.zeros(x.shape[0], dtype=torch.long))


def test_a_layer_norm_whose_shape_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="normalized_shape"):
        dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(5)), (4,))


# -- the mutation check ----------------------------------------------------------------------------


def _without_a_term(self, state, a, b):
    """LayerNorm's ``g''[a, b]`` with the term ``ẑ (⟨a', b'⟩/n − 3 s_a s_b)`` dropped."""
    s = state
    ac, bc = s.centred(s.grouped_view(a)), s.centred(s.grouped_view(b))
    sa, sb = s.mean(s.zhat * ac), s.mean(s.zhat * bc)
    return ((sb * ac + sa * bc) * (-(s.inv * s.inv))).reshape(a.shape)


def _prenorm_block_model():
    torch.manual_seed(5)
    block = Residual(nn.LayerNorm(5), nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 5))
    model = nn.Sequential(nn.Linear(4, 5), block, nn.LayerNorm(5), nn.Linear(5, CLASSES)).double().train()
    return model, torch.randn(4, 4, dtype=F64)


def _failures(model, x) -> tuple[int, int]:
    """``(failed, compared)`` over the Jacobian and classical penalties and the algorithms that apply."""
    net = dbpaper.Network.from_sequential(model, x.shape[1:])
    failed = compared = 0
    for pen_name in ("jacobian", "cdb-nll"):
        pen, y = PENALTIES[pen_name][0](), penalty_targets(pen_name, x)
        want = oracle(model, x, pen, y)
        for alg in applicable_algorithms(net, pen):
            res = dbpaper.double_backprop(net, x, pen, y, algorithm=alg)
            compared += 1
            try:
                assert_matches((res.value, flat_gradients(net, res.gradients)), want, rtol=1e-10)
            except AssertionError:
                failed += 1
    return failed, compared


@pytest.mark.parametrize("mutant", ["drop-term", "drop-curvature"])
def test_a_mutated_layer_norm_curvature_fails_the_grid(monkeypatch, mutant):
    """Dropping a term of LayerNorm's ``g''`` (or all of it) fails every comparison; unmutated, none fails."""
    model, x = _prenorm_block_model()
    assert _failures(model, x)[0] == 0
    fake = _without_a_term if mutant == "drop-term" else (lambda self, state, a, b: torch.zeros_like(a))
    monkeypatch.setattr(N.LayerNormalisation, "curvature", fake)
    failed, compared = _failures(model, x)
    assert compared >= 5 and failed == compared


def test_a_training_step_with_batchnorm_runs_the_loss_forward_first():
    """``ℓ(model(x)) + λR``: the penalty's update of the running statistics leaves the loss's graph valid (as a second forward would)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().train()
    x, y = torch.randn(8, 4, dtype=F64), torch.randint(0, 3, (8,))
    params = list(model.parameters())
    got = torch.autograd.grad(F.cross_entropy(model(x), y) + 0.1 * dbpaper.penalty(model, x, JacobianFrobenius()), params)
    want = torch.autograd.grad(F.cross_entropy(model(x), y) + 0.1 * dbpaper.penalty(model, x, JacobianFrobenius(), algorithm="autograd"), params)
    assert_matches((torch.zeros(()), got), (torch.zeros(()), want), rtol=1e-10)
    assert int(model[1].num_batches_tracked) == 4


@pytest.mark.parametrize("kind", ["layer-norm", "batch-norm-train"])
def test_a_compiled_training_step_with_normalisations(kind):
    """``torch.compile`` of a step ``ℓ + λR`` on a pre-norm block or BatchNorm in training mode matches the eager step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    if kind == "layer-norm":
        model = nn.Sequential(nn.Linear(6, 8), Residual(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8)), nn.LayerNorm(8), nn.Linear(8, 3))
    else:
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    params = list(model.parameters())
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def step(x, y):
        return torch.autograd.grad(F.cross_entropy(model(x), y) + 0.1 * dbpaper.penalty(model, x, JacobianFrobenius()), params)

    eager = step(x, y)
    got = torch.compile(step, backend="aot_eager")(x, y)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
