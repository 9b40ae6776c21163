"""Read → plan → run once per call, with the reading and the plan cached per model (dbpaper._pipeline).

The cache must never serve a stale reading: every structural change of the model is seen on the
next call (a swapped module, a hook, a replaced parameter object, a changed hyperparameter,
requires_grad, train/eval), while optimizer steps (new parameter values) reuse it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import _pipeline as pipeline
from dbpaper.fallback import penalty_by_autograd
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius

from .helpers import assert_matches, gradients_by_backward


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()


def _assert_matches_fallback(model, x, pen, y=None):
    """The explicit path's value and gradients are the autograd fallback's; a parameter that does not
    require grad gets none (autograd leaves a gradient that is identically zero as None: zeros)."""
    params = list(model.parameters())
    got = gradients_by_backward(params, dbpaper.penalty(model, x, pen, y), missing=None)
    assert [g is None for g in got[1]] == [not p.requires_grad for p in params]
    want = gradients_by_backward(params, penalty_by_autograd(model, x, pen, y))
    keep = [k for k, p in enumerate(params) if p.requires_grad]
    assert_matches((got[0], [got[1][k] for k in keep]), (want[0], [want[1][k] for k in keep]), rtol=1e-10, atol=1e-12, compare="entries")


@pytest.fixture(autouse=True)
def _fresh_cache():
    pipeline.clear_cache()
    yield
    pipeline.clear_cache()


def _reads(monkeypatch):
    calls = []
    original = dbpaper.Network.from_sequential.__func__

    def counting(cls, model, in_shape):
        calls.append(tuple(in_shape))
        return original(cls, model, in_shape)

    monkeypatch.setattr(dbpaper.Network, "from_sequential", classmethod(counting))
    return calls


def test_read_and_plan_once_per_structure(monkeypatch):
    calls = _reads(monkeypatch)
    resolved = []
    original = pipeline.resolve
    monkeypatch.setattr(pipeline, "resolve", lambda *a, **k: resolved.append(a[2]) or original(*a, **k))
    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):  # optimizer steps change values and versions, not the structure
        opt.zero_grad()
        dbpaper.penalty(model, x, JacobianFrobenius()).backward()
        opt.step()
    assert calls == [(5,)] and len(resolved) == 1
    dbpaper.penalty(model, torch.randn(3, 5, dtype=torch.float64), JacobianFrobenius())  # another batch size
    assert calls == [(5,)] and len(resolved) == 2  # the reading is shared, the plan is per batch size
    _assert_matches_fallback(model, x, JacobianFrobenius())


def _swap_module(model):
    torch.manual_seed(5)
    model[2] = nn.Linear(7, 4).double()


def _replace_parameter(model):
    model[0].weight = nn.Parameter(torch.randn(7, 5, dtype=torch.float64))


def _freeze(model):
    model[0].weight.requires_grad_(False)


@pytest.mark.parametrize(
    "change",
    [_swap_module, _replace_parameter, _freeze],
    ids=["swap-module", "replace-parameter", "requires-grad"],
)
def test_structural_changes_are_seen(change):
    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    _assert_matches_fallback(model, x, JacobianFrobenius())
    change(model)
    _assert_matches_fallback(model, x, JacobianFrobenius())


def test_a_changed_hyperparameter_is_seen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(0.1), nn.Linear(7, 4)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    _assert_matches_fallback(model, x, JacobianFrobenius())
    model[1].negative_slope = 0.5  # changed in place on the same module object
    _assert_matches_fallback(model, x, JacobianFrobenius())


def test_a_hook_sends_the_model_to_the_fallback_and_its_removal_back():
    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    _assert_matches_fallback(model, x, JacobianFrobenius())
    handle = model[1].register_forward_hook(lambda m, i, o: o * 2)
    with pytest.warns(dbpaper.FallbackWarning):
        r = dbpaper.penalty(model, x, JacobianFrobenius())
    torch.testing.assert_close(r, penalty_by_autograd(model, x, JacobianFrobenius()))
    with pytest.raises(dbpaper.UnsupportedModelError):
        dbpaper.penalty(model, x, JacobianFrobenius(), algorithm="optimized")  # the cached refusal still raises
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)
        _assert_matches_fallback(model, x, JacobianFrobenius())


def test_train_eval_and_input_shape_are_part_of_the_key(monkeypatch):
    calls = _reads(monkeypatch)
    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    sig = pipeline.model_signature(model)[0]
    dbpaper.penalty(model, x, JacobianFrobenius())
    model.eval()
    assert pipeline.model_signature(model)[0] != sig
    dbpaper.penalty(model, x, JacobianFrobenius())
    assert calls == [(5,), (5,)]  # read again after eval()
    dbpaper.penalty(model, x, JacobianFrobenius())
    assert calls == [(5,), (5,)]
    with pytest.raises(ValueError, match="shape"):
        dbpaper.penalty(model, torch.randn(6, 4, dtype=torch.float64), JacobianFrobenius())


def test_labels_and_penalties_are_not_cached_by_value():
    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    model = nn.Sequential(*model, nn.Softmax(dim=-1))
    for seed in range(2):
        y = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(seed))
        _assert_matches_fallback(model, x, ClassicalDoubleBackprop("nll"), y)


def test_the_cache_does_not_keep_a_model_alive():
    import gc
    import weakref

    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    dbpaper.penalty(model, x, JacobianFrobenius()).backward()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_backward_hands_back_the_stored_gradients_when_seeded_with_one():
    model, x = _mlp(), torch.randn(6, 5, dtype=torch.float64)
    r = dbpaper.penalty(model, x, JacobianFrobenius())
    r.backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    (3.0 * dbpaper.penalty(model, x, JacobianFrobenius())).backward()  # grad_out = 3: scaled
    for a, p in zip(g1, model.parameters()):
        torch.testing.assert_close(3.0 * a, p.grad)


def _leaky_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(0.1), nn.Linear(7, 4)).double()


_IN_PLACE_CHANGES = {
    "requires-grad": lambda m: m[0].weight.requires_grad_(False),
    "dtype-in-place": lambda m: setattr(m[2].weight, "data", m[2].weight.data.float()),
    "shape-in-place": lambda m: setattr(m[2].bias, "data", torch.zeros(5, dtype=torch.float64)),
    "forward-hook": lambda m: m[1].register_forward_hook(lambda *a: None),
    "forward-pre-hook-on-root": lambda m: m.register_forward_pre_hook(lambda *a: None),
    "new-attribute": lambda m: setattr(m[1], "inplace_extra", 3),
    "replaced-child": lambda m: m.__setitem__(1, nn.LeakyReLU(0.1)),
    "new-buffer": lambda m: m[0].register_buffer("scale", torch.ones(())),
    "hyperparameter": lambda m: setattr(m[1], "negative_slope", 0.2),
    "eval-of-a-submodule": lambda m: m[1].eval(),
    "class-swapped": lambda m: setattr(m[1], "__class__", nn.ELU),
    "parameter-deleted": lambda m: setattr(m[2], "bias", None),
}


@pytest.mark.parametrize("change", list(_IN_PLACE_CHANGES), ids=list(_IN_PLACE_CHANGES))
def test_the_fast_check_sees_every_change_of_the_signature(change):
    """The snapshot that spares an unchanged model its full signature is never current after a change the
    signature sees (a stale fast check would serve a stale reading)."""
    model = _leaky_mlp()
    entry = pipeline._reading(model)
    assert entry.snapshot is not None and entry.snapshot.current(model)
    _IN_PLACE_CHANGES[change](model)
    assert pipeline.model_signature(model)[0] != entry.signature  # a structural change by the signature's rules
    assert not entry.snapshot.current(model)
    assert pipeline._reading(model) is not entry


def test_an_equal_value_assigned_anew_keeps_the_reading(monkeypatch):
    """A value replaced by an equal one fails the fast check (identity) but not the signature: no re-read."""
    calls = _reads(monkeypatch)
    model, x = _leaky_mlp(), torch.randn(6, 5, dtype=torch.float64)
    dbpaper.penalty(model, x, JacobianFrobenius())
    entry = pipeline._reading(model)
    model[1].negative_slope = float("0." + "1")  # equal, another float object
    assert not entry.snapshot.current(model)
    assert pipeline._reading(model) is entry and entry.snapshot.current(model)
    dbpaper.penalty(model, x, JacobianFrobenius())
    assert calls == [(5,)]
