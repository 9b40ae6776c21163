"""What a PyTorch user runs into first: the README's loop, warnings at their line, errors that say what to do, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import dbpaper
from dbpaper import penalties as P
from dbpaper.planning import FallbackWarning

from .helpers import unsupported_activation

ROOT = Path(__file__).resolve().parent.parent


def _readme_training_loop() -> str:
    """The README's first python block (the training loop), with its 784-256³-10 model."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)[1]
    assert "dbpaper.objective(" in block and "for x, y in loader:" in block
    return block


class _ForwardCounter(TorchDispatchMode):
    """Counts the products of the first layer's weight with the batch itself: one per forward pass of the model.

    (The backward passes multiply the weight with ``ζ``'s and the batch with ``ζ``'s, never the two together.)
    """

    def __init__(self):
        super().__init__()
        self.weight = self.batch = None
        self.count = 0
        self.on = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on and self.weight is not None:
            ptrs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            if {self.weight, self.batch} <= ptrs:
                self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_readme_loop_runs_one_forward_per_step_and_matches_autograd():
    torch.manual_seed(0)
    loader = [(torch.randn(8, 784, dtype=torch.float64), torch.randint(0, 10, (8,))) for _ in range(2)]
    counter = _ForwardCounter()
    counts = []

    def check(model, x, y):  # one forward in the step; its gradients are autograd's of ce + 0.01 R
        counter.on = False
        counts.append(counter.count)
        grads = [p.grad.clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = None
        ce = nn.functional.cross_entropy(model(x), y)
        r = dbpaper.penalty(model, x, P.JacobianFrobenius(), algorithm="autograd")
        (ce + 0.01 * r).backward()
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-13)
        counter.count, counter.on = 0, True

    def watch(model, x):
        counter.weight, counter.batch = model[0].weight.untyped_storage().data_ptr(), x.untyped_storage().data_ptr()

    code = _readme_training_loop()
    code = code.replace("    opt.zero_grad()\n", "    opt.zero_grad(); watch(model, x)\n", 1).replace(
        "opt.step()", "check(model, x, y); opt.step()"
    )
    assert "watch(model, x)" in code and "check(model, x, y)" in code
    torch.set_default_dtype(torch.float64)
    try:
        with counter, warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)  # the README's model takes the explicit algorithms
            exec(compile(code, "README.md", "exec"), {"loader": loader, "check": check, "watch": watch})
    finally:
        torch.set_default_dtype(torch.float32)
    assert counts == [1] * len(loader), counts


def _unsupported_model():
    return nn.Sequential(nn.Linear(3, 4), unsupported_activation(), nn.Linear(4, 2))


def test_the_fallback_warning_names_the_users_line():
    model, x = _unsupported_model(), torch.randn(5, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        dbpaper.penalty(model, x, P.JacobianFrobenius())
    (w,) = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert (Path(w.filename).resolve(), w.lineno) == (Path(__file__).resolve(), line)


def test_the_fallback_warning_of_objective_and_of_a_penalty_term_names_the_users_line():
    for call in (
        lambda m, x, y: dbpaper.objective(m, x, P.JacobianFrobenius(), y, 0.1),
        lambda m, x, y: dbpaper.nn.PenaltyTerm(P.JacobianFrobenius(), 0.5)(m, x),
    ):
        model, x, y = _unsupported_model(), torch.randn(5, 3), torch.randint(0, 2, (5,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(model, x, y)
        (w,) = [w for w in caught if issubclass(w.category, FallbackWarning)]
        assert Path(w.filename).resolve() == Path(__file__).resolve()


def test_the_batch_mixing_warning_names_the_users_line():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dbpaper.penalty(model, torch.randn(6, 3), P.JacobianFrobenius())
    mixing = [w for w in caught if issubclass(w.category, dbpaper.BatchMixingWarning)]
    assert mixing and all(Path(w.filename).resolve() == Path(__file__).resolve() for w in mixing)


@pytest.mark.parametrize("module", ["lstm", "gru", "tuple"])
def test_a_module_that_returns_no_tensor_is_a_one_line_error(module):
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = {"lstm": nn.LSTM(3, 4, batch_first=True), "gru": nn.GRU(3, 4, batch_first=True), "tuple": Pair()}[module]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        with pytest.raises(TypeError, match="returned a tuple, not a tensor.*wrap the model"):
            dbpaper.penalty(nn.Sequential(model), torch.randn(2, 5, 3), P.JacobianFrobenius())


def test_the_dtype_error_says_what_to_cast():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with pytest.raises(
        ValueError,
        match=r"module\(s\) 0, 1 .*float64.*x\.to\(torch\.float64\) or the model with model\.to\(torch\.float32\)",
    ):
        dbpaper.penalty(model, torch.randn(4, 3), P.JacobianFrobenius())


def test_penalty_term_is_the_weighted_penalty_with_its_gradients():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    term = dbpaper.nn.PenaltyTerm(P.JacobianFrobenius(), weight=0.25)
    assert list(term.parameters()) == [] and "weight=0.25" in repr(term)
    params = list(model.parameters())  # the last bias does not enter the Jacobian: zero gradients
    got = torch.autograd.grad(term(model, x), params, materialize_grads=True)
    want = torch.autograd.grad(
        0.25 * dbpaper.penalty(model, x, P.JacobianFrobenius(), algorithm="autograd"), params, materialize_grads=True
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)
    with pytest.raises(TypeError, match="Penalty"):
        dbpaper.nn.PenaltyTerm("jacobian")
    with pytest.raises(TypeError, match="finite real"):
        dbpaper.nn.PenaltyTerm(P.JacobianFrobenius(), weight=float("nan"))


def test_the_algorithm_literal_is_the_list_of_names():
    assert typing.get_args(dbpaper.AlgorithmName) == dbpaper.ALGORITHM_NAMES
    assert set(dbpaper.algorithms.REGISTRY) <= set(dbpaper.ALGORITHM_NAMES)
    hints = typing.get_type_hints(dbpaper.penalty)
    assert hints["algorithm"] == dbpaper.AlgorithmName


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dbpaper", *args], capture_output=True, text=True, check=True).stdout


def test_the_cli_has_a_version_and_plain_help():
    assert _cli("--version").strip() == f"dbpaper {dbpaper.__version__}"
    assert _cli("bench", "--version").strip() == f"dbpaper {dbpaper.__version__}"
    for text in (_cli("--help"), _cli("bench", "--help")):
        assert "`" not in text and not re.search(r"\*\w", text), text
