"""Algorithms 1–3 (and Appendix B) against autograd on randomly generated networks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dbpaper
from dbpaper import penalties as P
from dbpaper.algorithms import REGISTRY
from dbpaper.fallback import penalty_by_autograd

from .helpers import (
    ARCHITECTURES,
    CLASSES,
    NETWORKS,
    PENALTIES,
    TORCH_ACT_FACTORIES,
    applicable_algorithms,
    assert_matches,
    assert_matches_oracle,
    check_grid_case,
    flat_gradients,
    gradients_by_backward,
    grid_cases,
    grid_network,
    penalty_targets,
    random_input,
    random_model,
    random_network,
    temporary_algorithms,
)

PAPER_PENALTIES = ("cdb-mse", "cdb-nll", "jacobian", "node", "opnorm")  # the penalties of Section 4.1

pytestmark = pytest.mark.usefixtures("one_thread")


def test_float64_against_autograd(grid_case):
    """Every registered algorithm that applies, on every random network of the grid, for every penalty."""
    check_grid_case(*grid_case)


def test_every_registered_algorithm_is_tested_by_the_grid(algorithm_name):
    """No registered algorithm escapes the grid: each applies to some (network, penalty) of it."""
    assert any(case.values[0][2] == algorithm_name for case in grid_cases())


def test_every_penalty_class_is_in_the_grid():
    classes = {cls for name in P.__all__ if isinstance(cls := getattr(P, name), type) and issubclass(cls, P.Penalty) and cls is not P.Penalty}
    assert classes == {type(make()) for make, _ in PENALTIES.values()}


def test_every_grid_network_runs_the_explicit_algorithms(network):
    """The grid's networks are read by dbpaper.Network (no autograd fallback), with every layer."""
    model, x, net = grid_network(network)
    linear = [name for name, m in model.named_children() if getattr(dbpaper.readers.reader_for(m), "kind", None) == "linear"]
    held = [name for layer in net.layers for name in layer.module_names if name in linear]
    assert sorted(held) == sorted(linear)  # every linear module in exactly one layer
    folded = [layer.module_names for layer in net.layers if len([n for n in layer.module_names if n in linear]) == 2]
    assert all(isinstance(model[int(names[1])], torch.nn.modules.batchnorm._BatchNorm) for names in folded)  # a BatchNorm folded into its module
    assert net.depth == len(linear) - len(folded)
    assert dbpaper.plan(model, x, P.JacobianFrobenius()).algorithm in REGISTRY


def test_every_penalty_by_default_and_by_the_fallback(penalty_name):
    """``dbpaper.penalty`` with the default and the autograd fallback agree with the oracle for every penalty."""
    model, x, net = grid_network(("conv1d", "softplus", True, 1))
    y = penalty_targets(penalty_name, x, 1)
    for run in (dbpaper.penalty, penalty_by_autograd):
        got = gradients_by_backward(net.parameters(), run(model, x, PENALTIES[penalty_name][0](), y))
        assert_matches_oracle(got, model, x, PENALTIES[penalty_name][0](), y, what=run.__name__)



@pytest.mark.parametrize("case", grid_cases([(arch, "tanh", True, 0) for arch in ARCHITECTURES], PAPER_PENALTIES, torch.float32))
def test_float32_against_float64_autograd(case):
    """float32 runs of every applicable algorithm agree with the float64 oracle within a float32 tolerance."""
    check_grid_case(*case, dtype=torch.float32)


@settings(max_examples=40, deadline=None)
@given(
    arch=st.sampled_from(ARCHITECTURES),
    act=st.sampled_from(sorted(TORCH_ACT_FACTORIES)),
    softmax=st.booleans(),
    pen=st.sampled_from(sorted(PENALTIES)),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_random_networks_hypothesis(arch, act, softmax, pen, seed, data):
    """A random network, penalty and seed, and one applicable algorithm drawn explicitly."""
    network = (arch, act, softmax, seed)
    algorithm = data.draw(st.sampled_from(applicable_algorithms(grid_network(network)[2], PENALTIES[pen][0]())))
    check_grid_case(network, pen, algorithm)


def _wrap_general(calls):
    """A user's algorithm: "general" with a call counter, for single-v penalties only."""
    general = REGISTRY["general"]

    def run(net, rec, penalty, y):
        calls.append(penalty)
        return general.run(net, rec, penalty, y)

    def why_not(net, penalty):
        return None if penalty.num_seeds(net) == 1 else "general-wrapped: one v only"

    return dict(fn=run, applies=lambda net, penalty: why_not(net, penalty) is None, why_not=why_not, cost=general.cost)


def test_a_registered_algorithm_joins_the_grid_and_the_plan(register_algorithm):
    """An algorithm the user registers is among the applicable algorithms of the grid (and runs and
    passes its comparison), is planned when named, and gives its reason where it does not apply."""
    calls = []
    register_algorithm("general-wrapped", **_wrap_general(calls))
    network = NETWORKS[0]
    model, x, net = grid_network(network)
    cases = [case.values[0] for case in grid_cases([network])]
    single = [name for name, (make, _) in PENALTIES.items() if make().num_seeds(net) == 1]
    assert [pen for _, pen, alg in cases if alg == "general-wrapped"] == single and len(single) == len(PENALTIES) - 1
    for case in cases:
        if case[2] == "general-wrapped":
            check_grid_case(*case)
    assert len(calls) == len(single)
    plan = dbpaper.plan(model, x, P.OutputNodeGradient(1), algorithm="general-wrapped")
    assert plan.algorithm == "general-wrapped"
    assert dbpaper.plan(model, x, P.OutputNodeGradient(1)).algorithm != "general-wrapped"  # ties go to the earlier "general"
    with pytest.raises(ValueError, match="one v only"):
        dbpaper.double_backprop(net, x, P.JacobianFrobenius(), algorithm="general-wrapped")


@pytest.mark.parametrize("where", ["value", "weight", "bias"])
def test_the_grid_fails_on_a_slightly_wrong_algorithm(register_algorithm, where):
    """The grid's comparison is not vacuous: "general" with R or one gradient entry off by a relative
    1e-8 (a hundred times the tolerance) fails it."""
    general = REGISTRY["general"]

    def perturbed(net, rec, penalty, y):
        value, grads, passes = general.run(net, rec, penalty, y)
        if where == "value":
            return value * (1 + 1e-8), grads, passes
        block = next(g for g in (grads.weights if where == "weight" else grads.biases) if g is not None)
        block.view(-1)[0] += 1e-8 * float(block.norm())
        return value, grads, passes

    register_algorithm("general-perturbed", perturbed, cost=general.cost)
    network = ("dense", "tanh", True, 1)
    check_grid_case(network, "jacobian", "general")
    with pytest.raises(AssertionError, match=where if where == "value" else "gradient"):
        check_grid_case(network, "jacobian", "general-perturbed")


def test_temporary_algorithms_leave_the_registry_as_they_found_it():
    before = list(REGISTRY)
    with temporary_algorithms() as register:
        register("general-wrapped", **_wrap_general([]))
        assert "general-wrapped" in REGISTRY
    assert list(REGISTRY) == before


def test_per_class_and_summed_references_agree_with_algorithm():
    model, x, net = random_network("dense", "elu", True, seed=3, classes=CLASSES)
    res = dbpaper.double_backprop(net, x, P.JacobianFrobenius())
    for mode in ("summed", "per_class", "func"):
        got = (res.value, flat_gradients(net, res.gradients))
        assert_matches_oracle(got, model, x, P.JacobianFrobenius(), mode=mode, rtol=1e-10, value_rtol=1e-12, compare="block", what=mode)


def test_loss_gradients_section_4_5():
    """with_loss returns the ordinary loss gradient, reused from the backward pass for classical double backprop."""
    for pen in (P.ClassicalDoubleBackprop("nll"), P.JacobianFrobenius()):
        model, in_shape = random_model("dense", "tanh", True, seed=5, classes=CLASSES)
        x = random_input(in_shape, seed=5)
        y = torch.tensor([0, 3, 1])
        net = dbpaper.Network.from_sequential(model, in_shape)
        res = dbpaper.double_backprop(net, x, pen, y, with_loss=True)
        out = model(x)
        ref_loss = torch.nn.functional.nll_loss(torch.log(out), y)
        ref = torch.autograd.grad(ref_loss, net.parameters())
        got = (res.loss, flat_gradients(net, res.loss_gradients))
        assert_matches(got, (ref_loss, ref), rtol=1e-10, value_rtol=0.0, value_atol=1e-12, compare="block", what=pen)


def test_input_gradient_of_penalty():
    model, in_shape = random_model("conv2d", "softplus", True, seed=2, classes=CLASSES)
    x = random_input(in_shape, seed=2).requires_grad_(True)
    r = dbpaper.penalty(model, x, P.OutputNodeGradient(2))
    (gx,) = torch.autograd.grad(r, x)
    x2 = x.detach().requires_grad_(True)
    out = model(x2)
    v = torch.zeros_like(out)
    v[:, 2] = 1
    (xi,) = torch.autograd.grad(out, x2, v, create_graph=True)
    ref = torch.sum(xi * xi) / x2.shape[0]
    assert_matches((r, [gx]), (ref, torch.autograd.grad(ref, x2)), rtol=1e-10, compare="block")


def test_identity_output_node_penalty_has_zero_bias_gradient_for_relu():
    """Section 5.3: identity output + locally linear activations ⇒ η_j = 0, ∇_b R = 0."""
    model, x, net = random_network("dense", "relu", False, seed=4, classes=CLASSES)
    res = dbpaper.double_backprop(net, x, P.OutputNodeGradient(0))
    assert res.gradients.eta_1 is None
    assert all(g is None or torch.count_nonzero(g) == 0 for g in res.gradients.biases)


def test_algorithms_run_without_autograd():
    """The algorithm path builds no autograd graph (it runs under no_grad and calls only K, Kᵀ, K□)."""
    model, x, net = random_network("dense", "tanh", True, seed=1, classes=CLASSES)
    res = dbpaper.double_backprop(net, x, P.JacobianFrobenius())
    assert not res.value.requires_grad
    assert all(not g.requires_grad for g in flat_gradients(net, res.gradients))


def test_gradcheck_custom_function_against_finite_differences():
    """An autograd-free check: torch.autograd.gradcheck compares our backward with finite differences of R."""
    model, in_shape = random_model("dense", "tanh", True, seed=6, classes=3)
    x = random_input(in_shape, batch=2, seed=6)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return dbpaper.penalty(self.model, x, P.JacobianFrobenius())

    wrap = Wrap()

    def fn(*ps):
        return torch.func.functional_call(wrap, {f"model.{n}": p for n, p in zip(names, ps)}, (x,))

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradgradcheck_reference_double_backward():
    """The oracle's double backward itself passes torch's gradgradcheck on a small float64 network."""
    model, in_shape = random_model("dense", "sigmoid", True, seed=8, classes=3)
    x = random_input(in_shape, batch=2, seed=8).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: model(t), (x,), eps=1e-6, atol=1e-6)


def test_a_user_algorithm_on_the_typed_interface_joins_every_entry_point_and_unregisters_cleanly():
    """An ``Algorithm`` subclass (here: Algorithms 1–3 with a predicted cost of zero) is a candidate of ``"auto"``,
    is shown by ``plan``, runs inside ``objective`` (the loss added by the entry point, since it does not fold it),
    is counted by ``count_operations``; after ``unregister`` none of them knows it."""
    from dbpaper.algorithms import REGISTRY, Algorithm, Estimate, Outcome, register, unregister

    class Cheap(Algorithm):
        name = "user-cheap"

        def __init__(self):
            self.runs = 0

        def run(self, net, rec, penalty, y, fold=None):
            assert fold is None  # folds_loss is False: the entry points never pass a loss
            self.runs += 1
            return Outcome(*REGISTRY["general"].run(net, rec, penalty, y))

        def cost(self, net, penalty, batch):
            return Estimate(flops=0, calls=0)

        def why_not(self, net, penalty):
            return None if penalty.num_seeds(net) == 1 else "single-v penalties only"

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3), torch.nn.Softmax(dim=-1)).double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
    pen = P.ClassicalDoubleBackprop("nll")
    alg = register(Cheap())
    try:
        with pytest.raises(ValueError, match="registered already"):
            register(Cheap())
        assert dbpaper.plan(model, x, pen, y).algorithm == "user-cheap"
        assert "user-cheap" in str(dbpaper.plan(model, x, pen, y))
        assert dbpaper.plan(model, x, P.JacobianFrobenius()).algorithm != "user-cheap"  # why_not is asked
        ref = dbpaper.objective(model, x, pen, y, 0.3, algorithm="autograd")
        got = dbpaper.objective(model, x, pen, y, 0.3)
        assert alg.runs == 1
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
        gr = torch.autograd.grad(ref, list(model.parameters()))
        gg = torch.autograd.grad(dbpaper.objective(model, x, pen, y, 0.3), list(model.parameters()))
        for a, b in zip(gg, gr):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)
        assert dbpaper.count_operations(model, x, pen, y, algorithm="user-cheap") == dbpaper.count_operations(model, x, pen, y, algorithm="general")
    finally:
        assert unregister("user-cheap") is alg
    assert "user-cheap" not in REGISTRY
    assert dbpaper.plan(model, x, pen, y).algorithm != "user-cheap"
    with pytest.raises(ValueError, match="user-cheap"):
        dbpaper.penalty(model, x, pen, y, algorithm="user-cheap")
    with pytest.raises(KeyError, match="user-cheap"):
        unregister("user-cheap")
