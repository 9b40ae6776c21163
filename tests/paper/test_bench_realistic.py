"""The benchmark's realistic workloads, page-fault counts and torch.compile peers (compilation itself is not run here)."""

from __future__ import annotations

import json

import pytest
import torch

import dbpaper
from dbpaper.paper import bench


def _run(**kw):
    return bench.run(quick=True, repeats=3, min_repeats=1, budget_s=0.2, progress=False, **kw)


@pytest.fixture(scope="module")
def realistic():
    return _run(only=["realistic"], compile=False)


@pytest.mark.parametrize("quick", [True, False])
def test_the_realistic_workloads_build(quick):
    ws = {w.name: w for w in bench.workloads(quick)}
    critic, cifar = ws["critic-gp"], ws["cnn-cifar"]
    assert critic.group == cifar.group == "realistic"
    model, in_shape, batch, classes = critic.make()
    assert isinstance(critic.task.make(), dbpaper.penalties.GradientNormPenalty) and critic.task.make().target == 1.0
    assert classes == 1 and not critic.task.jacobian
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in model)
    model, in_shape, batch, classes = cifar.make()
    assert in_shape[0] == 3 and classes == 10 and cifar.task.jacobian
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model) == 3
    if not quick:
        assert critic.params["widths"] == [64, 256, 256, 1] and critic.params["batch"] == 256
        assert in_shape == (3, 32, 32) and batch == 32
    for w in (critic, cifar):
        model, in_shape, batch, classes = w.make()
        net = dbpaper.Network.from_sequential(model, in_shape)
        assert net.layers[-1].op.out_numel == classes
        assert model(torch.zeros(2, *in_shape)).shape == (2, classes)


@pytest.mark.parametrize("quick", [True, False])
def test_the_resnet_workload_is_the_issue_s_model(quick):
    """A stem convolution, three residual blocks with BatchNorm in eval mode, average pooling, a linear layer; read
    by the explicit algorithms (no fallback); the Jacobian and the classical penalty."""
    ws = {w.name: w for w in bench.workloads(quick)}
    jac, classical = ws["resnet"], ws["resnet-classical"]
    assert jac.task.jacobian and classical.task.penalty == "classical-nll"
    model, in_shape, batch, classes = jac.make()
    mods = list(model)
    assert isinstance(mods[0], torch.nn.Conv2d) and sum(isinstance(m, dbpaper.nn.Residual) for m in mods) == 3
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in mods) and isinstance(mods[-2], torch.nn.Linear)
    if not quick:
        assert in_shape == (3, 32, 32) and batch == 32 and classes == 10
    net = dbpaper.Network.from_sequential(model, in_shape)
    assert not net.is_chain
    x = torch.randn(2, *in_shape)
    torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-6)


def test_only_applicable_methods_run_and_agree_with_autograd(realistic):
    by = {w["name"]: w for w in realistic["workloads"]}
    assert set(by) == {"critic-gp", "cnn-cifar", "resnet", "resnet-classical"}
    # one v (gradient penalty, classical): no per-class or Jacobian-only peers; the CNNs run every Jacobian method
    for name in ("critic-gp", "resnet-classical"):
        assert set(by[name]["results"]) == {"default", "alg1-3", "minimal", "autograd-summed"}
    for name in ("cnn-cifar", "resnet"):
        assert set(by[name]["results"]) == set(bench.ALL) - {"minimal"}
    assert by["critic-gp"]["task"]["penalty"] == "gradient-norm"
    for w in realistic["workloads"]:
        for m, r in w["results"].items():
            if realistic["methods"][m]["exact"]:
                assert r["max_rel_diff"] < 1e-4, (w["name"], m)  # float32
                assert r["value_rel_diff"] < 1e-4, (w["name"], m)
    assert by["critic-gp"]["results"]["autograd-summed"]["value"] > 0


def test_the_summed_autograd_peer_is_the_gradient_penalty():
    """autograd-summed on critic-gp computes mean_n (|grad_x D(x_n)| - 1)^2, written out here in float64."""
    w = next(w for w in bench.workloads(True) if w.name == "critic-gp")
    model, in_shape, batch, _ = w.make()
    model = model.double()
    net = dbpaper.Network.from_sequential(model, in_shape)
    params = net.parameters()
    x = torch.randn(batch, *in_shape, dtype=torch.float64)
    y = torch.zeros(batch, dtype=torch.long)
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xx).sum(), xx, create_graph=True)
    expected = ((g.norm(dim=1) - 1) ** 2).mean()
    want = torch.autograd.grad(expected, params, allow_unused=True, materialize_grads=True)
    for m in ("autograd-summed", "default", "alg1-3", "minimal"):
        value, grads = bench.METHODS[m].build(model, net, params, x, y, w.task)()
        assert float(value) == pytest.approx(float(expected.detach()), rel=1e-12), m
        for a, b in zip(grads, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_minor_faults_per_call_are_recorded_and_printed(realistic):
    for w in realistic["workloads"]:
        for m, r in w["results"].items():
            assert r["minor_faults_per_call"] >= 0, (w["name"], m)
    assert "minor_faults" in realistic["settings"]
    assert " faults" in bench.summary(realistic)
    json.dumps(realistic, default=bench._json_default)


def test_compiled_peers_only_on_full_runs_or_when_asked():
    full = {w.name: w for w in bench.workloads(False)}
    for name in ("mlp", "cnn"):
        assert set(bench.COMPILED) <= set(full[name].methods)
    assert not set(bench.COMPILED) & set(full["mlp-tanh"].methods)
    assert not any(bench.METHODS[m].compiled for m in bench._applicable(full["mlp"], compile=False))
    quick = _run(only=["mlp"])  # quick: no compiled peers unless compile=True
    assert not set(bench.COMPILED) & set(quick["workloads"][0]["results"])
    assert quick["settings"]["compile"] is False


def test_compiled_peers_agree_and_report_compile_time(monkeypatch):
    """With torch.compile replaced by the identity, the compiled peers run their (eager) steps through the harness."""
    seen = []
    import torch._dynamo.config as dynamo_config

    before = dynamo_config.trace_autograd_ops

    def fake_compile(fn, **kw):
        def wrapped(*args):
            seen.append(dynamo_config.trace_autograd_ops)
            return fn(*args)

        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = _run(only=["mlp"], compile=True)
    res = result["workloads"][0]["results"]
    for m in bench.COMPILED:
        assert res[m]["compile_s"] > 0 and res[m]["time_ms"] > 0 and "minor_faults_per_call" in res[m]
        assert res[m]["max_rel_diff"] < 1e-4 and res[m]["value_rel_diff"] < 1e-4, m
        assert res[m]["flops"] == pytest.approx(res["default" if m == "default-compiled" else "autograd-summed"]["flops"])
    assert "failed" not in result["workloads"][0]
    assert True in seen and dynamo_config.trace_autograd_ops == before  # set around the compilation only
    assert "compile" in bench.summary(result)


@pytest.mark.parametrize("when", ["wrap", "call"])
def test_compile_failures_are_recorded_not_raised(monkeypatch, when):
    def broken_compile(fn, **kw):
        if when == "wrap":
            raise RuntimeError("no C compiler here")

        def call(*args):
            raise RuntimeError("no C compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = _run(only=["mlp"], compile=True)
    w = result["workloads"][0]
    assert set(w["failed"]) == set(bench.COMPILED)
    for m in bench.COMPILED:
        assert m not in w["results"]
        assert w["failed"][m]["stage"] == "compile"
        assert "RuntimeError: no C compiler here" in w["failed"][m]["error"]
    assert {"default", "autograd-summed"} <= set(w["results"])  # the other methods are measured as usual
    assert "FAILED (compile)" in bench.summary(result)
    assert bench.default_table(result)[0]["workload"] == "mlp"


def test_a_failing_uncompiled_method_still_raises(monkeypatch):
    def broken(*args):
        def call():
            raise RuntimeError("a real bug")

        return call

    monkeypatch.setitem(bench.METHODS, "alg4", bench.dataclasses.replace(bench.METHODS["alg4"], build=broken))
    with pytest.raises(RuntimeError, match="a real bug"):
        _run(only=["mlp"], compile=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line(capsys):
    assert bench.main(["--quick", "--device", "cuda", "--no-progress", "--no-plots", "--out", "unused.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err


def test_quick_runs_on_one_thread_and_restores_the_setting(realistic):
    assert realistic["machine"]["threads"] == 1
    before = torch.get_num_threads()
    _run(only=["critic-gp"], threads=max(1, before - 1) if before > 1 else 2)
    assert torch.get_num_threads() == before


def test_every_method_has_its_floor_ops_and_allocations(realistic):
    """The floor (the call's products replayed alone) is positive and at most the call's time up to noise; aten ops
    and allocated bytes are recorded for every method."""
    for w in realistic["workloads"]:
        for m, r in w["results"].items():
            assert r["products"] > 0 and r["floor_ms"] > 0, (w["name"], m)
            assert r["aten_ops"] >= r["products"], (w["name"], m)
            assert r["efficiency"] == pytest.approx(r["floor_ms"] / r["time_ms"])
            assert r["allocated_mib_per_call"] >= 0
    assert realistic["version"] == dbpaper.__version__
    assert "load_average_at_end" in realistic["machine"]


def test_the_overhead_workloads_run_the_single_output_methods():
    result = _run(only=["overhead"], compile=False)
    by = {w["name"]: w for w in result["workloads"]}
    assert set(by) == {"overhead-b1", "overhead-b8"}
    for w in by.values():
        assert set(w["results"]) == {"default", "minimal", "alg1-3", "autograd-summed"}
        assert w["params"]["batch"] in (1, 8)
        for m, r in w["results"].items():
            assert r["max_rel_diff"] < 1e-4, (w["name"], m)
