"""Benchmarks of the *Runtimes* chapter: Algorithm 4 (Appendix C) against autograd peers.

``python -m dbpaper bench [--quick] [--device cpu|cuda] [--threads N] [--only NAMES] [--no-compile] [--out FILE]
[--plots DIR]``

Most workloads compute ``R = Σ_i mean_n ‖∇_{x_0} x_L^i‖²`` (the squared
Frobenius norm of the input Jacobian, Section 5.4) and its gradient with
respect to all parameters, side by side in one process, with these methods
(the others: one of the penalties of :mod:`dbpaper.penalties`, with the
methods that apply to it):

=====================  =========================================================================
``default``            what a user writes: ``dbpaper.penalty(model, x, JacobianFrobenius())``
                       (``algorithm="auto"``: the cost model of :mod:`dbpaper.planning`
                       picks), then one backward; the chosen plan is stored per workload
``alg4``               Algorithm 4 as printed (corrected), one class at a time (``"optimized"``)
``alg4-shortcuts``     Algorithm 4, one class at a time, Gram and one-hot shortcuts (``O(1)`` in C)
``alg4-chunked``       Algorithm 4, classes stacked in chunks, with the shortcuts
``alg1-3``             Algorithms 1–3 class by class (the paper's naive count)
``autograd-summed``    autograd: ``C`` input gradients with ``create_graph=True``, the ``C``
                       penalties summed, one backward
``autograd-per-class`` autograd: one double backward per class, accumulated
``vmap-jacrev``        ``torch.func.vmap(jacrev)`` Jacobian, then one backward
``hoffman-1proj``      the random-projection estimator of Hoffman et al. (2019) with one
                       projection (autograd): ``C ‖J_nᵀ v_n‖²`` with ``v_n`` uniform on the
                       unit sphere — an unbiased *estimate*, not the exact gradient
``default-compiled``   ``torch.compile`` of ``r = dbpaper.penalty(model, x, pen)`` and
                       ``torch.autograd.grad(r, params)`` in one function
``autograd-compiled``  ``torch.compile`` of the ``autograd-summed`` step (``create_graph=True``
                       input gradients, penalty, parameter backward), compiled with
                       ``torch._dynamo.config.trace_autograd_ops = True`` (set around the
                       compiling first call only, the old value restored)
=====================  =========================================================================

The compiled peers run on ``mlp`` and ``cnn`` in full runs (not with
``--quick``, never with ``--no-compile``). Their first call is the
compilation, stored as ``compile_s`` (and ``second_call_s``); ``time_ms`` is
the steady state; their ``flops`` are those of the uncompiled computation. A
peer that cannot be compiled here (no C compiler, a dynamo error) does not
stop the run: the workload's ``failed`` maps it to ``{"stage", "error"}`` and
it has no entry in ``results``.

Metrics, per workload and method:

* ``flops``: :class:`torch.utils.flop_counter.FlopCounterMode` (matrix
  products and convolutions only; elementwise work is not counted) over one call;
* ``time_ms``: the median wall time of ``repeats`` calls (at least 5) after
  a warm-up call, the methods interleaved round-robin so that drifts of a
  shared machine hit all of them alike (all samples are stored);
* ``peak_mib``: the peak memory allocated *during* one call, above what was
  allocated before it (parameters and input excluded, returned gradients
  included). On CUDA: ``torch.cuda.max_memory_allocated`` minus the
  allocation before the call. On CPU, where torch keeps no such statistic:
  the call runs once under ``torch.profiler`` with ``profile_memory=True``,
  which records every allocation and release of the CPU allocator with its
  size, and the peak is the maximum of the running sum of these events in
  time order. (Process RSS would include the allocator's caching and the
  interpreter, and ``tracemalloc`` does not see torch's allocations.)
* ``max_rel_diff``: the largest relative difference of a gradient block
  from ``autograd-summed`` (a consistency check in the workload's dtype).
* ``minor_faults_per_call``: minor page faults of the process
  (``resource.getrusage(RUSAGE_SELF).ru_minflt``, all threads) around each
  timed call, summed over the timed calls and divided by their number: how
  often the allocator hands back memory the kernel must map afresh.

Workloads: ``mlp`` (784-256-256-256-10 ReLU MLP with softmax, batch 128,
float32), ``cnn`` (a small ReLU CNN with average pooling on 1×28×28), and
sweeps over the number of classes ``C ∈ {2, 10, 100, 1000}`` (the MLP with
batch 32, so that ``C = 1000`` stays affordable for the naive peers), the
depth and the batch size. Realistic workloads (group ``realistic``):
``critic-gp``, the gradient penalty of a WGAN-GP critic (64-256-256-1 MLP with
LeakyReLU(0.2), batch 256, ``GradientNormPenalty(target=1.0)``, one output),
and ``cnn-cifar``, a CIFAR-sized ReLU CNN (3×32×32, convolutions 3→16→32→64
with average pooling between them, a linear layer to 10 classes, softmax,
batch 32) with the Jacobian penalty. ``--quick`` runs shrunken versions: a
smoke run of about 20 s on two CPU cores, not a measurement.

The result is a JSON file with the machine (torch version, CPU model,
threads, device), the settings and every measurement, plus quick-look plots
(PNG) in ``--plots``. The book chapter reads the committed JSON; it never
times anything itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..penalties import Penalty

__all__ = ["METHODS", "BenchUsageError", "Workload", "main", "measure_peak_memory", "run", "workloads"]


def default_out(tag: str, quick: bool) -> Path:
    """Where results go by default, always under the current directory.

    ``./book/data/bench-<tag>.json`` for a full run from the root of a checkout (the file the
    *Runtimes* chapter reads), ``./bench-out/bench-<tag>.json`` otherwise and for ``--quick``.
    """
    book_data = Path.cwd() / "book" / "data"
    if not quick and book_data.is_dir():
        return book_data / f"bench-{tag}.json"
    return Path.cwd() / "bench-out" / f"bench-{tag}.json"


# -- methods -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """What a workload computes: ``R`` of a penalty, or the objective ``ℓ + λR`` when ``lam`` is set."""

    penalty: str  # a key of PENALTIES
    lam: float | None = None

    def make(self) -> Penalty:
        """A fresh penalty object (OperatorNorm gets its own generator, reseeded before every call)."""
        return PENALTIES[self.penalty]()

    @property
    def jacobian(self) -> bool:
        return self.penalty == "jacobian"


def _penalties() -> dict[str, Callable[[], Penalty]]:
    from ..penalties import (
        ClassicalDoubleBackprop,
        GradientNormPenalty,
        JacobianFrobenius,
        OperatorNorm,
        OutputNodeGradient,
    )

    return {
        "jacobian": JacobianFrobenius,
        "gradient-norm": lambda: GradientNormPenalty(target=1.0),
        "classical-nll": lambda: ClassicalDoubleBackprop("nll"),
        "classical-mse": lambda: ClassicalDoubleBackprop("mse"),
        "output-node": lambda: OutputNodeGradient(3),
        "operator-norm": lambda: OperatorNorm(iterations=2, generator=torch.Generator()),
    }


PENALTIES: dict[str, Callable[[], Penalty]] = _penalties()


def _reseed(pen) -> None:
    gen = getattr(pen, "generator", None)
    if gen is not None:
        gen.manual_seed(0)  # every method draws the same v


@dataclasses.dataclass(frozen=True)
class Method:
    """A way to compute ``R`` (or ``ℓ + λR``) and its parameter gradients; ``build`` returns a zero-argument callable."""

    label: str
    exact: bool
    description: str
    build: Callable  # (model, net, params, x, y, task) -> callable returning (value, [grads])
    applies: Callable = lambda task: True  # noqa: E731
    compiled: bool = False  # a torch.compile peer: run only with compile=True, its first call is the compilation


def _flat_grads(net, grads) -> list[torch.Tensor]:
    """The gradients of the model's own parameters (derived ``θ``, ``b`` sent back to their modules)."""
    from .._precomputed import flat_gradients

    return flat_gradients(net, grads)


def _ours(algorithm: str) -> Callable:
    def build(model, net, params, x, y, task):
        import dbpaper

        pen = task.make()
        yp = y if pen.needs_y else None
        if task.lam is None:

            def call():
                _reseed(pen)
                res = dbpaper.double_backprop(net, x, pen, yp, algorithm=algorithm)
                return res.value, _flat_grads(net, res.gradients)

            return call
        from ..api import (
            loss_for,
            objective_gradients,  # ℓ + λR straight from the algorithms
        )

        def call_objective():
            _reseed(pen)
            res = objective_gradients(net, x, pen, y, task.lam, loss=loss_for(y), algorithm=algorithm)
            return res.value, _flat_grads(net, res.gradients)

        return call_objective

    return build


def _objective_call(model, params, x, y, task, pen, algorithm: str = "auto") -> Callable:
    import dbpaper

    def call():
        _reseed(pen)
        r = dbpaper.objective(model, x, pen, y, task.lam, algorithm=algorithm)
        return r.detach(), list(torch.autograd.grad(r, params, allow_unused=True, materialize_grads=True))

    return call


def _default(model, net, params, x, y, task):
    """The call a user writes: ``dbpaper.penalty`` / ``dbpaper.objective`` (``algorithm="auto"``), then one backward."""
    import dbpaper

    pen = task.make()
    yp = y if pen.needs_y else None
    if task.lam is not None:
        return _objective_call(model, params, x, y, task, pen)

    def call():
        _reseed(pen)
        r = dbpaper.penalty(model, x, pen, yp)
        return r.detach(), list(torch.autograd.grad(r, params, allow_unused=True, materialize_grads=True))

    return call


def _autograd_summed(model, net, params, x, y, task):
    """``create_graph=True``: every ``v``'s input gradient recorded, the penalties summed, one backward."""
    from ..api import loss_for
    from ..fallback import penalty_from_output
    from ..losses import loss_value
    from ..network import output_map_of

    pen = task.make()
    yp = y if pen.needs_y else None

    def call():
        _reseed(pen)
        xx = x.detach().requires_grad_(True)
        xin = xx.view_as(xx)  # a non-leaf input: FlopCounterMode's module hooks reject leaf inputs here
        out = model(xin)
        value = penalty_from_output(model, xin, out, pen, yp)
        if task.lam is not None:
            value = loss_value(output_map_of(model), out, y, loss_for(y)) + task.lam * value
        return value.detach(), list(torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True))

    return call


def _onehots(out: torch.Tensor, classes: int):
    """The ``v = e^{(i)}`` one at a time (a generator: no list of ``C`` tensors of shape ``(N, C)``)."""
    for i in range(classes):
        v = torch.zeros_like(out)
        v[:, i] = 1
        yield v


def _autograd_per_class(model, net, params, x, y, task):
    n, classes = x.shape[0], net.layers[-1].op.out_numel

    def call():
        xx = x.detach().requires_grad_(True)
        out = model(xx.view_as(xx))
        grads = [torch.zeros_like(p) for p in params]
        value = 0.0
        for v in _onehots(out, classes):
            (xi,) = torch.autograd.grad(out, xx, v, create_graph=True, retain_graph=True)
            term = xi.pow(2).sum() / n
            for acc, g in zip(grads, torch.autograd.grad(term, params, retain_graph=True)):
                acc += g
            value = value + term.detach()  # this class's graph is freed here: memory O(1) in C
        return value, grads

    return call


def _vmap_jacrev(model, net, params, x, y, task):
    n = x.shape[0]

    def single(xi):
        return model(xi.unsqueeze(0)).squeeze(0)

    def call():
        jac = torch.func.vmap(torch.func.jacrev(single))(x.detach())
        value = torch.sum(jac * jac) / n
        return value.detach(), list(torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True))

    return call


def _hoffman(model, net, params, x, y, task):
    n, classes = x.shape[0], net.layers[-1].op.out_numel
    gen = torch.Generator().manual_seed(0)

    def call():
        xx = x.detach().requires_grad_(True)
        out = model(xx.view_as(xx))
        v = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)  # uniform on the unit sphere
        (xi,) = torch.autograd.grad(out, xx, v, create_graph=True)
        value = classes * xi.pow(2).sum() / n  # E_v[C ‖Jᵀv‖²] = ‖J‖_F²
        return value.detach(), list(torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True))

    return call


def _default_compiled(model, net, params, x, y, task):
    """``torch.compile`` of the default step: ``dbpaper.penalty`` and the parameter gradients in one compiled function."""
    import dbpaper

    pen = task.make()
    yp = y if pen.needs_y else None

    def step(xb):
        r = dbpaper.penalty(model, xb, pen, yp)
        grads = torch.autograd.grad(r, params, allow_unused=True, materialize_grads=True)
        return r.detach(), grads

    compiled = torch.compile(step)

    def call():
        _reseed(pen)
        value, grads = compiled(x)
        return value, list(grads)

    call.eager = _default(model, net, params, x, y, task)  # the same computation uncompiled: counted for FLOPs
    return call


@contextlib.contextmanager
def _tracing_autograd_ops():
    """``torch._dynamo.config.trace_autograd_ops = True`` inside, the old value restored after."""
    import torch._dynamo.config as dynamo_config

    old = dynamo_config.trace_autograd_ops
    dynamo_config.trace_autograd_ops = True
    try:
        yield
    finally:
        dynamo_config.trace_autograd_ops = old


def _autograd_compiled(model, net, params, x, y, task):
    """``torch.compile`` of the autograd peer: the ``create_graph=True`` input gradients, the penalty and its backward,
    with ``torch._dynamo.config.trace_autograd_ops = True`` set only around the first call (the compilation)."""
    from ..fallback import penalty_from_output

    pen = task.make()
    yp = y if pen.needs_y else None

    def step(xb):
        xx = xb.detach().requires_grad_(True)
        out = model(xx)
        value = penalty_from_output(model, xx, out, pen, yp)
        grads = torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)
        return value.detach(), grads

    compiled = torch.compile(step)
    state = {"compiled_once": False}

    def call():
        _reseed(pen)
        if not state["compiled_once"]:  # the compilation: dynamo traces torch.autograd.grad into the graph
            with _tracing_autograd_ops():
                value, grads = compiled(x)
            state["compiled_once"] = True
        else:
            value, grads = compiled(x)
        return value, list(grads)

    call.eager = _autograd_summed(model, net, params, x, y, task)
    return call


def _jacobian(task) -> bool:
    return task.jacobian


def _jacobian_penalty_only(task) -> bool:
    return task.jacobian and task.lam is None


def _penalty_only(task) -> bool:
    return task.lam is None


METHODS: dict[str, Method] = {
    "default": Method(
        "dbpaper default", True, "the call a user writes (algorithm='auto' picks by the cost model), then one backward", _default
    ),
    "alg4": Method("Algorithm 4 (paper)", True, "Algorithm 4 as printed, corrected; one class at a time", _ours("optimized"), _jacobian),
    "alg4-shortcuts": Method(
        "Algorithm 4 + shortcuts", True, "one class at a time with the Gram and one-hot shortcuts", _ours("optimized-shortcuts"), _jacobian
    ),
    "alg4-chunked": Method(
        "Algorithm 4 chunked", True, "classes stacked in chunks (chunk_size='auto') with the shortcuts", _ours("optimized-chunked"), _jacobian
    ),
    "alg1-3": Method("Algorithms 1-3 (general)", True, "Algorithms 1-3 once per v (the paper's naive path)", _ours("general")),
    "minimal": Method(
        "Algorithms 1-3 (minimal)", True, "Algorithms 1-3 without unused work, the loss folded in", _ours("minimal"),
        lambda task: not task.jacobian,
    ),
    "autograd-summed": Method(
        "autograd, summed", True, "create_graph input gradients, the penalties summed, one backward", _autograd_summed
    ),
    "autograd-per-class": Method(
        "autograd, per class", True, "one double backward per class, accumulated", _autograd_per_class, _jacobian_penalty_only
    ),
    "vmap-jacrev": Method("vmap(jacrev)", True, "torch.func.vmap(jacrev) Jacobian, one backward", _vmap_jacrev, _jacobian_penalty_only),
    "hoffman-1proj": Method(
        "random projection (1)", False, "Hoffman et al. (2019) estimator, one projection, autograd", _hoffman, _jacobian_penalty_only
    ),
    "default-compiled": Method(
        "dbpaper default, compiled", True, "torch.compile of the default call and its backward (first call: compile_s)",
        _default_compiled, _penalty_only, compiled=True,
    ),
    "autograd-compiled": Method(
        "autograd, summed, compiled", True,
        "torch.compile of the create_graph step and its backward, trace_autograd_ops (first call: compile_s)",
        _autograd_compiled, _penalty_only, compiled=True,
    ),
}

#: The package's own exact algorithms (what ``"auto"`` chooses among), by bench key.
REGISTERED = {
    "alg4": "optimized", "alg4-shortcuts": "optimized-shortcuts", "alg4-chunked": "optimized-chunked", "alg1-3": "general",
    "minimal": "minimal",
}  # fmt: skip

#: This project's performance goals for the default call (not the paper's: the paper reports no timings).
#: ``speedup``: autograd-summed time / default time, per workload (``"*"``: every other workload);
#: ``flops``: default FLOPs / autograd-summed FLOPs at most; ``memory_growth``: working memory of the
#: default from C = 10 to C = 1000 at most; ``default_vs_fastest``: default time / fastest registered
#: algorithm's time at most.
TARGETS: dict[str, float | dict[str, float]] = {
    "speedup": {"mlp": 2.0, "mlp-tanh": 2.0, "cnn": 1.2, "*": 1.0},
    "flops": 1.0,
    "memory_growth": 1.2,
    "default_vs_fastest": 1.10,
}

# -- workloads -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, an input batch, what to compute and the methods to run on it."""

    name: str
    group: str  # "main", "realistic", "overhead", "penalties", "classes", "depth", "batch" or "normalisation"
    description: str
    params: dict[str, Any]
    make: Callable  # () -> (model, in_shape, batch, classes)
    methods: tuple[str, ...]
    task: Task = Task("jacobian")


def _mlp(widths: list[int], seed: int = 0, act: Callable = nn.ReLU, softmax: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        mods += [nn.Linear(a, b), act()]
    mods.append(nn.Linear(widths[-2], widths[-1]))
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    return nn.Sequential(*mods)


def _cnn_cifar(channels: tuple[int, int, int], size: int, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """Three 3x3 convolutions (padding 1) on ``3 x size x size`` with ReLU, average pooling between them, a linear layer."""
    torch.manual_seed(seed)
    c1, c2, c3 = channels
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(c3 * (size // 4) ** 2, classes), nn.Softmax(dim=-1),
    )  # fmt: skip


def _resnet(channels: tuple[int, int, int], size: int, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """A small ResNet on ``3 x size x size``: a stem convolution, three residual blocks (BatchNorm in eval mode; the
    second and third halve the size, with a 1x1 convolution and BatchNorm on the shortcut), average pooling, a linear layer."""
    from ..nn import Residual

    torch.manual_seed(seed)
    c1, c2, c3 = channels

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        shortcut = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        body = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]  # fmt: skip
        return [Residual(*body, shortcut=shortcut), nn.ReLU()]

    model = nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        *block(c1, c1, 1), *block(c1, c2, 2), *block(c2, c3, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, classes), nn.Softmax(dim=-1),
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # trained-looking running statistics and affine parameters, read in eval mode
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _cnn(channels: tuple[int, int], hidden: int, classes: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, classes), nn.Softmax(dim=-1),
    )  # fmt: skip


ALL = tuple(k for k, m in METHODS.items() if not m.compiled)
COMPILED = tuple(k for k, m in METHODS.items() if m.compiled)
SWEEP = ("default", "alg4", "alg4-shortcuts", "alg4-chunked", "autograd-summed", "autograd-per-class", "vmap-jacrev", "hoffman-1proj")
PEERS = ("default", "alg4", "alg4-shortcuts", "alg4-chunked", "alg1-3", "minimal", "autograd-summed", "vmap-jacrev")


def workloads(quick: bool = False) -> list[Workload]:
    """The benchmark workloads (shrunken with ``quick``)."""
    out: list[Workload] = []
    if quick:
        mlp_w, batch, cnn_ch, cnn_hidden = [64, 32, 32, 10], 16, (2, 4), 16
        class_sweep, class_batch, depths, batches = (2, 30), 8, (2, 3), (8, 32)
    else:
        mlp_w, batch, cnn_ch, cnn_hidden = [784, 256, 256, 256, 10], 128, (8, 16), 64
        class_sweep, class_batch, depths, batches = (2, 10, 100, 1000), 32, (2, 3, 4, 6, 8), (16, 64, 128, 512)
    cnn_batch = 16 if quick else 64
    arch = "-".join(map(str, mlp_w))

    out.append(
        Workload(
            "mlp", "main", f"{arch} ReLU MLP, softmax, batch {batch}",
            {"widths": mlp_w, "batch": batch, "classes": mlp_w[-1]},
            lambda: (_mlp(mlp_w), (mlp_w[0],), batch, mlp_w[-1]), ALL + COMPILED,
        )
    )  # fmt: skip
    out.append(
        Workload(
            "mlp-tanh", "main", f"{arch} tanh MLP, softmax, batch {batch}",
            {"widths": mlp_w, "batch": batch, "classes": mlp_w[-1], "activation": "tanh"},
            lambda: (_mlp(mlp_w, act=nn.Tanh), (mlp_w[0],), batch, mlp_w[-1]), ALL,
        )
    )  # fmt: skip
    out.append(
        Workload(
            "cnn", "main", f"ReLU CNN conv{cnn_ch[0]}-pool-conv{cnn_ch[1]}-pool-{cnn_hidden}-10 on 1x28x28, softmax, batch {cnn_batch}",
            {"channels": list(cnn_ch), "hidden": cnn_hidden, "batch": cnn_batch, "classes": 10},
            lambda: (_cnn(cnn_ch, cnn_hidden, 10), (1, 28, 28), cnn_batch, 10), ALL + COMPILED,
        )
    )  # fmt: skip
    # realistic workloads: a WGAN-GP critic's gradient penalty and a CIFAR-sized CNN
    critic_w = [16, 32, 32, 1] if quick else [64, 256, 256, 1]
    critic_batch = 16 if quick else 256
    out.append(
        Workload(
            "critic-gp", "realistic",
            f"WGAN-GP critic {'-'.join(map(str, critic_w))} LeakyReLU(0.2) MLP, gradient penalty (|grad| - 1)^2, batch {critic_batch}",
            {"widths": critic_w, "batch": critic_batch, "classes": 1, "activation": "leaky_relu(0.2)", "penalty": "gradient-norm",
             "target": 1.0},
            lambda: (_mlp(critic_w, act=_leaky, softmax=False), (critic_w[0],), critic_batch, 1), ALL,
            Task("gradient-norm"),
        )
    )  # fmt: skip
    # per-call overhead: a tiny critic, where the products cost next to nothing
    for b in (1, 8):
        out.append(
            Workload(
                f"overhead-b{b}", "overhead", f"16-16-1 LeakyReLU(0.2) critic, gradient penalty (|grad| - 1)^2, batch {b}: per-call overhead",
                {"widths": [16, 16, 1], "batch": b, "classes": 1, "activation": "leaky_relu(0.2)", "penalty": "gradient-norm", "target": 1.0},
                (lambda b=b: (_mlp([16, 16, 1], act=_leaky, softmax=False), (16,), b, 1)), ("default", "minimal", "alg1-3", "autograd-summed"),
                Task("gradient-norm"),
            )
        )  # fmt: skip
    cifar_ch, cifar_size, cifar_batch = ((2, 2, 4), 8, 4) if quick else ((16, 32, 64), 32, 32)
    out.append(
        Workload(
            "cnn-cifar", "realistic",
            f"ReLU CNN conv{cifar_ch[0]}-pool-conv{cifar_ch[1]}-pool-conv{cifar_ch[2]}-10 on 3x{cifar_size}x{cifar_size}, "
            f"softmax, batch {cifar_batch}",
            {"channels": list(cifar_ch), "size": cifar_size, "batch": cifar_batch, "classes": 10},
            lambda: (_cnn_cifar(cifar_ch, cifar_size), (3, cifar_size, cifar_size), cifar_batch, 10), ALL,
        )
    )  # fmt: skip
    res_ch, res_size, res_batch = ((2, 4, 4), 8, 4) if quick else ((16, 32, 64), 32, 32)
    for name, what, task in (("resnet", "Jacobian penalty", Task("jacobian")), ("resnet-classical", "classical double backpropagation, NLL", Task("classical-nll"))):
        out.append(
            Workload(
                name, "realistic",
                f"ResNet stem conv{res_ch[0]}, residual blocks {res_ch[0]}-{res_ch[1]}-{res_ch[2]} with BatchNorm (eval), average pooling, "
                f"linear, softmax on 3x{res_size}x{res_size}, {what}, batch {res_batch}",
                {"channels": list(res_ch), "size": res_size, "batch": res_batch, "classes": 10, "penalty": task.penalty},
                lambda: (_resnet(res_ch, res_size), (3, res_size, res_size), res_batch, 10), ALL, task,
            )
        )  # fmt: skip
    others = [
        ("logits", "Jacobian penalty of the logits (identity output)", Task("jacobian"), False),
        ("classical-nll", "classical double backpropagation, NLL", Task("classical-nll"), True),
        ("classical-mse", "classical double backpropagation, squared error, identity output", Task("classical-mse"), False),
        ("output-node", "output-node penalty, node 3", Task("output-node"), True),
        ("operator-norm", "operator-norm penalty, two power iterations", Task("operator-norm"), True),
        ("objective", "objective cross-entropy + 0.1 x Jacobian penalty", Task("jacobian", lam=0.1), False),
        ("objective-classical", "objective cross-entropy + 0.1 x classical double backpropagation (NLL)", Task("classical-nll", lam=0.1), True),
    ]
    for name, what, task, softmax in others:
        out.append(
            Workload(
                name, "penalties", f"{arch} ReLU MLP, {what}, batch {batch}",
                {"widths": mlp_w, "batch": batch, "classes": mlp_w[-1], "penalty": task.penalty, "lam": task.lam, "softmax": softmax},
                (lambda softmax=softmax: (_mlp(mlp_w, softmax=softmax), (mlp_w[0],), batch, mlp_w[-1])), PEERS, task,
            )
        )  # fmt: skip
    def sweep(name: str, kind: str, widths: list[int], n: int, x: int) -> Workload:
        """One point of a sweep: a ReLU MLP of ``widths``, batch ``n``, the sweep's variable ``x``."""
        desc = f"{'-'.join(map(str, widths))} MLP, batch {n}"
        return Workload(name, kind, desc, {"widths": widths, "batch": n, "classes": widths[-1], "x": x},
                        (lambda: (_mlp(widths), (widths[0],), n, widths[-1])), SWEEP)  # fmt: skip

    out += [sweep(f"classes-{c}", "classes", mlp_w[:-1] + [c], class_batch, c) for c in class_sweep]
    out += [sweep(f"depth-{L}", "depth", [mlp_w[0]] + [mlp_w[1]] * (L - 1) + [mlp_w[-1]], batch, L) for L in depths]
    out += [sweep(f"batch-{b}", "batch", mlp_w, b, b) for b in batches]
    from .bench_norm import workloads as normalisation_workloads  # (it builds on this module's helpers)

    return out + normalisation_workloads(quick)


# -- measurements ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_memory(fn: Callable, device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated during ``fn()`` above the allocation before it (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del result
        measure_peak_memory.allocated = None
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    measure_peak_memory.allocated = int(sum(e.nbytes() for e in events if e.nbytes() > 0))
    return int(peak)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's start/stop lines, which it writes to file descriptor 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _flops(fn: Callable) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


#: The products the floor replays: matrix products and convolutions (what FlopCounterMode counts).
#: One recorded product: the op, its (cloned) positional arguments and its keyword arguments.
Product = tuple[Callable[..., Any], list[Any], dict[str, Any]]

_PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "addbmm", "convolution", "convolution_backward", "_convolution", "mkldnn_convolution", "dot", "mv", "addmv")


def record_products(fn: Callable[[], object]) -> tuple[list[Product], int]:
    """The matrix products and convolutions of one call of ``fn`` (op, cloned arguments) and the number of aten ops it ran.

    Recorded with a ``TorchDispatchMode``: every op that reaches the dispatcher is counted (views included),
    and the products are kept with copies of their arguments, strides preserved, for :func:`replay_floor`.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops, self.products = 0, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            self.ops += 1
            if func.__name__.split(".")[0] in _PRODUCTS:
                keep = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
                replay = func.overloadpacket.default if "out" in kwargs else func  # an out= product replayed into a fresh output
                self.products.append((replay, [keep(a) for a in args], {k: keep(v) for k, v in kwargs.items() if k != "out"}))
            return func(*args, **kwargs)

    with Recorder() as rec:
        fn()
    return rec.products, rec.ops


def replay_floor(products: list[Product], device: torch.device, rounds: int = 15) -> float:
    """Seconds the recorded products take replayed alone, in their order, with nothing between them (median of ``rounds``).

    The *floor* of a call: what it would cost if every other operation (elementwise work, allocation, Python) were free.
    """
    if not products:
        return 0.0

    def seq():
        for func, args, kwargs in products:
            func(*args, **kwargs)

    seq()
    _sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        seq()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rel_diff(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    scale = max(float(torch.linalg.vector_norm(r.double())) for r in ref)
    return max(float(torch.linalg.vector_norm(g.double() - r.double())) for g, r in zip(grads, ref)) / max(scale, 1e-300)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Torch version, CPU model, threads, device and platform."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        fam = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("cpu family")]
        mod = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model\t")]
        if names:
            cpu = names[0] + (f" (family {fam[0]}, model {mod[0]})" if fam and mod else "")
    except OSError:
        pass
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """The machine's matrix-multiply rate in GFLOP/s at the current thread count: the roofline of the table.

    The median of repeated ``size x size`` products over about ``seconds``.
    """
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.mm(a, b)
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def _applicable(w: Workload, compile: bool) -> list[str]:
    """The methods that run on ``w``: those that apply to its task, the compiled peers only with ``compile``."""
    return [m for m in w.methods if METHODS[m].applies(w.task) and (compile or not METHODS[m].compiled)]


def _minor_faults() -> int:
    """Minor page faults of this process so far (all threads); 0 where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _error_text(exc: BaseException, limit: int = 2000) -> str:
    """``Type: message``, at most ``limit`` characters (dynamo's messages carry long traces)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def _measure_workload(w: Workload, device, dtype, repeats: int, min_repeats: int, budget_s: float, bar,
                      compile: bool = False) -> dict:  # fmt: skip
    model, in_shape, batch, classes = w.make()
    model = model.to(device=device, dtype=dtype)
    import dbpaper

    net = dbpaper.Network.from_sequential(model, in_shape)
    params = net.parameters()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *in_shape), generator=g, dtype=dtype).to(device)
    if w.task.penalty == "classical-mse":
        y = torch.randn((batch, *net.out_shape), generator=g, dtype=dtype).to(device)
    else:
        y = torch.randint(0, classes, (batch,), generator=g).to(device)
    methods = _applicable(w, compile)
    if any(METHODS[m].compiled for m in methods):
        torch._dynamo.reset()  # fresh caches: the first call of every compiled peer is its compilation
    results: dict[str, dict] = {}
    failed: dict[str, dict] = {}  # compiled peers that could not be compiled or run here: the error, not a crash

    def fail(m: str, stage: str, exc: BaseException, **extra) -> None:
        if not METHODS[m].compiled:
            raise exc
        failed[m] = {"stage": stage, "error": _error_text(exc), **extra}
        results.pop(m, None)
        calls.pop(m, None)

    calls: dict[str, Callable] = {}
    for m in methods:
        try:
            calls[m] = METHODS[m].build(model, net, params, x, y, w.task)
        except Exception as exc:  # noqa: BLE001 - a compiled peer's failure is a result
            fail(m, "compile", exc)
            bar.update(2)
    ref = None
    grads_of: dict[str, list[torch.Tensor]] = {}
    for m, fn in list(calls.items()):  # warm-up (for a compiled peer: the compilation), consistency and FLOPs
        t0 = time.perf_counter()
        try:
            value, grads = fn()
            _sync(device)
        except Exception as exc:  # noqa: BLE001
            fail(m, "compile", exc, compile_s=time.perf_counter() - t0)
            bar.update(2)
            continue
        warm = time.perf_counter() - t0
        results[m] = {"warmup_s": warm, "value": float(value)}
        grads_of[m] = [t.detach() for t in grads]
        if m == "autograd-summed":
            ref = (float(value), grads_of[m])
        if METHODS[m].compiled:
            results[m]["compile_s"] = warm  # the first call compiles; time_ms below is the steady state
            t0 = time.perf_counter()
            try:
                fn()
                _sync(device)
            except Exception as exc:  # noqa: BLE001
                fail(m, "second call", exc, compile_s=warm)
                bar.update(2)
                continue
            results[m]["second_call_s"] = time.perf_counter() - t0
            results[m]["flops_of"] = "the uncompiled peer"  # FlopCounterMode around compiled code would recompile
        results[m]["flops"] = _flops(getattr(fn, "eager", fn))
        bar.update(1)
    for m in results:
        grads = grads_of.pop(m)
        if ref is not None:
            results[m]["max_rel_diff"] = _rel_diff(grads, ref[1])
            results[m]["value_rel_diff"] = abs(results[m]["value"] - ref[0]) / max(abs(ref[0]), 1e-300)
    grad_mib = sum(p.numel() * p.element_size() for p in params) / 2**20
    for m, fn in list(calls.items()):
        try:
            results[m]["peak_mib"] = measure_peak_memory(fn, device) / 2**20
        except Exception as exc:  # noqa: BLE001
            fail(m, "memory", exc, compile_s=results[m].get("compile_s"))
            bar.update(1)
            continue
        results[m]["working_mib"] = max(0.0, results[m]["peak_mib"] - grad_mib)  # minus the returned gradients
        if measure_peak_memory.allocated is not None:
            results[m]["allocated_mib_per_call"] = measure_peak_memory.allocated / 2**20
        try:  # the floor: this call's products and convolutions replayed alone (a compiled peer: its eager computation's)
            products, ops = record_products(getattr(fn, "eager", fn))
            results[m]["floor_ms"] = replay_floor(products, device) * 1e3
            results[m]["aten_ops"] = ops
            results[m]["products"] = len(products)
            if METHODS[m].compiled:
                results[m]["floor_of"] = "the uncompiled peer"
            del products
        except Exception as exc:  # noqa: BLE001
            fail(m, "floor", exc, compile_s=results[m].get("compile_s"))
        bar.update(1)
    # timing: round-robin, as many rounds as the budget allows (at least min_repeats, at most repeats);
    # a compiled peer counts with its second call, not its compilation
    slowest = sum(r.get("second_call_s", r["warmup_s"]) for r in results.values())
    rounds = max(min_repeats, min(repeats, int(budget_s / max(slowest, 1e-9))))
    samples: dict[str, list[float]] = {m: [] for m in calls}
    faults: dict[str, int] = {m: 0 for m in calls}
    for r in range(rounds):
        for m, fn in calls.items():
            f0 = _minor_faults()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[m].append(time.perf_counter() - t0)
            faults[m] += _minor_faults() - f0
        if r < min_repeats:  # the bar counts the rounds every workload runs (its total is known up front)
            bar.update(1)
    for m, s in samples.items():
        results[m]["time_ms"] = statistics.median(s) * 1e3
        results[m]["time_ms_samples"] = [round(v * 1e3, 4) for v in s]
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        results[m]["time_ms_iqr"] = [q[0] * 1e3, q[2] * 1e3]
        results[m]["gflops_per_s"] = results[m]["flops"] / (results[m]["time_ms"] * 1e-3) / 1e9
        results[m]["minor_faults_per_call"] = faults[m] / len(s)
        if "floor_ms" in results[m]:
            results[m]["efficiency"] = results[m]["floor_ms"] / results[m]["time_ms"]  # the floor's share of the call
    pen = w.task.make()
    chosen = dbpaper.plan(model, x, pen, y if pen.needs_y else None)
    out = {
        "name": w.name,
        "group": w.group,
        "default_plan": {
            "algorithm": chosen.algorithm, "chunk_size": chosen.chunk_size, "gram": chosen.gram, "onehot": chosen.onehot,
            "predicted_flops": chosen.predicted_flops, "autograd_flops": chosen.autograd_flops,
        },  # fmt: skip
        "description": w.description,
        "task": {"penalty": w.task.penalty, "lam": w.task.lam},
        "params": w.params,
        "num_parameters": sum(p.numel() for p in params),
        "depth_L": net.depth,
        "rounds": rounds,
        "results": results,
    }
    if failed:
        out["failed"] = failed
    return out


class BenchUsageError(ValueError):
    """Settings the benchmark cannot run with (unknown workloads, no CUDA, ...): one line for the user."""


def _version() -> str:
    import dbpaper

    return dbpaper.__version__


def _commit() -> str | None:
    """The git commit of the checkout the package was imported from (``+dirty`` with uncommitted changes), else ``None``."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "dbpaper"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BenchUsageError(f"unknown device {device!r} ({exc}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchUsageError(
            f"--device cuda requested, but CUDA is not available (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'})"
        )
    if dev.type not in ("cpu", "cuda"):
        raise BenchUsageError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def run(*, quick: bool = False, device: str = "cpu", threads: int | None = None, only: list[str] | None = None,
        repeats: int = 15, min_repeats: int = 5, budget_s: float = 20.0, progress: bool = True,
        compile: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the benchmarks and return the JSON-ready result (see the module docstring).

    ``threads``: torch's CPU threads during the run (default: torch's default; one with ``quick``, a smoke run
    that the other work of a shared machine cannot stall); the previous setting is restored afterwards.
    ``compile``: run the ``torch.compile`` peers (default: on full runs, not with ``quick``).
    """
    dev = _device(device)
    if threads is None and quick and dev.type == "cpu":
        threads = 1
    if threads is not None and threads < 1:
        raise BenchUsageError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _run_all(quick=quick, dev=dev, only=only, repeats=repeats, min_repeats=min_repeats, budget_s=budget_s,
                        progress=progress, compile=compile)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _run_all(*, quick: bool, dev: torch.device, only, repeats: int, min_repeats: int, budget_s: float, progress: bool,
             compile: bool | None) -> dict:  # fmt: skip
    from tqdm import tqdm

    if min_repeats < 5 and not quick:
        raise BenchUsageError("at least 5 timed repeats are required (use --quick for a smoke run)")
    compile = not quick if compile is None else bool(compile)
    dtype = torch.float32
    chosen = workloads(quick)
    if only:
        unknown = set(only) - {w.name for w in chosen} - {w.group for w in chosen}
        if unknown:
            raise BenchUsageError(f"unknown workloads {sorted(unknown)}; choose from {[w.name for w in chosen]} or groups")
        chosen = [w for w in chosen if w.name in only or w.group in only]
    min_rounds = 3 if quick else min_repeats
    total = sum(2 * len(_applicable(w, compile)) + min_rounds for w in chosen)
    bar = tqdm(total=total, desc="bench", unit="step", disable=not progress)
    started = time.perf_counter()
    out = {
        "schema": 3,
        "version": _version(),
        "commit": _commit(),
        "targets": TARGETS,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(dev), "matmul_gflops_per_s": matmul_rate(dev, dtype, seconds=0.2 if quick else 1.0)},
        "settings": {
            "quick": quick, "dtype": str(dtype).replace("torch.", ""), "repeats_max": repeats,
            "repeats_min": min_repeats, "budget_s": budget_s, "timing": "median of round-robin repeats after one warm-up call",
            "memory": "CUDA max_memory_allocated" if dev.type == "cuda" else "torch.profiler(profile_memory=True): peak of the running sum of CPU allocator events",
            "flops": "torch.utils.flop_counter.FlopCounterMode (matrix products and convolutions)",
            "minor_faults": "resource.getrusage(RUSAGE_SELF).ru_minflt (the whole process) around each timed call, per call",
            "compile": compile,
            "compiled_peers": "torch.compile (default backend); compile_s: the first call, time_ms: the steady state; "
            "a peer that fails to compile is listed under the workload's 'failed' with its error",
        },  # fmt: skip
        "methods": {k: {"label": m.label, "exact": m.exact, "description": m.description} for k, m in METHODS.items()},
        "workloads": [],
    }
    for w in chosen:
        bar.set_postfix_str(w.name)
        out["workloads"].append(_measure_workload(w, dev, dtype, repeats, min_rounds, budget_s / (4 if quick else 1), bar, compile))
    bar.close()
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    out["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return out


# -- plots and summary ---------------------------------------------------------------------------


def default_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload: the default's choice and its time against the fastest registered algorithm, general and autograd."""
    rows = []
    for w in result["workloads"]:
        res = w["results"]
        if "default" not in res:
            continue
        regs = {k: res[k]["time_ms"] for k in REGISTERED if k in res}
        fastest = min(regs, key=regs.get)
        row = {
            "workload": w["name"],
            "default picks": w.get("default_plan", {}).get("algorithm"),
            "default ms": res["default"]["time_ms"],
            "fastest registered": REGISTERED[fastest],
            "default / fastest": res["default"]["time_ms"] / regs[fastest],
        }
        if "alg1-3" in res:
            row["general / default"] = res["alg1-3"]["time_ms"] / res["default"]["time_ms"]
        if "autograd-summed" in res:
            row["autograd / default"] = res["autograd-summed"]["time_ms"] / res["default"]["time_ms"]
        rows.append(row)
    return rows


def summary(result: dict[str, Any]) -> str:
    """A plain-text table of the measurements."""
    lines = []
    for row in default_table(result):
        extra = "".join(f"  {k} {row[k]:.2f}" for k in ("general / default", "autograd / default") if k in row)
        lines.append(
            f"default on {row['workload']:12s} -> {row['default picks']:20s} {row['default ms']:9.2f} ms; "
            f"x{row['default / fastest']:.2f} of the fastest registered ({row['fastest registered']}){extra}"
        )
    for w in result["workloads"]:
        lines.append(f"{w['name']}: {w['description']}")
        base = w["results"].get("autograd-summed")
        for m, r in w["results"].items():
            rel = ""
            if base:
                rel = f"  time x{base['time_ms'] / r['time_ms']:.2f} vs summed, flops x{r['flops'] / base['flops']:.3f}"
            faults = f"{r['minor_faults_per_call']:9.1f} faults" if "minor_faults_per_call" in r else ""
            compiled = f"  (compile {r['compile_s']:.1f} s)" if "compile_s" in r else ""
            lines.append(
                f"  {m:20s} {r['time_ms']:10.2f} ms {r['flops'] / 1e9:9.3f} GFLOP {r.get('gflops_per_s', 0):7.1f} GFLOP/s "
                f"{r['peak_mib']:9.2f} MiB {faults}{rel}{compiled}"
            )
        for m, f in w.get("failed", {}).items():
            lines.append(f"  {m:20s} FAILED ({f['stage']}): {f['error'].splitlines()[0][:160]}")
    return "\n".join(lines)


def plots(result: dict[str, Any], folder: Path) -> list[Path]:
    """Quick-look PNG plots of the sweeps (the book draws its own figures from the JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, xlabel in (("classes", "classes C"), ("depth", "depth L"), ("batch", "batch N")):
        ws = [w for w in result["workloads"] if w["group"] == group]
        if not ws:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for m in ws[0]["results"]:
            xs = [w["params"]["x"] for w in ws]
            for ax, key in zip(axes, ("time_ms", "flops", "peak_mib")):
                ax.plot(xs, [w["results"][m][key] for w in ws], marker="o", label=m)
        for ax, ylabel in zip(axes, ("median time [ms]", "FLOPs", "peak memory [MiB]")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"bench-{group}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python -m dbpaper bench``)."""
    from ..__main__ import _version, plain

    parser = argparse.ArgumentParser(prog="python -m dbpaper bench", description=plain(__doc__.split("\n")[0]))
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--quick", action="store_true", help="a smoke run on shrunken workloads (about 20 s on 2 CPU cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default; 1 with --quick)")
    parser.add_argument("--only", nargs="*", default=None, help="workload names or groups (main, realistic, penalties, classes, depth, batch, normalisation)")
    parser.add_argument("--repeats", type=int, default=15, help="most timed calls per method (default 15)")
    parser.add_argument("--min-repeats", type=int, default=5, help="fewest timed calls per method (default 5)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per workload that decide the repeats")
    parser.add_argument("--out", default=None, help="JSON output (default: ./book/data/bench-<device>.json in a checkout's root, else ./bench-out/; "
                        "./bench-out/ for --quick)")
    parser.add_argument("--plots", default=None, help="folder for quick-look PNGs (default: ./bench-out/plots-<device>)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the quick-look plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers (they run on full runs only)")
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "--":  # ``python -m dbpaper bench -- --quick``
        argv = argv[1:]
    args = parser.parse_args(argv)
    try:
        dev = _device(args.device)
        tag = dev.type + ("-quick" if args.quick else "")
        out = Path(args.out) if args.out else default_out(tag, args.quick)
        result = run(quick=args.quick, device=args.device, threads=args.threads, only=args.only, repeats=args.repeats,
                     min_repeats=args.min_repeats, budget_s=args.budget, progress=not args.no_progress,
                     compile=False if args.no_compile else None)  # fmt: skip
    except BenchUsageError as exc:
        print(f"dbpaper bench: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=False, default=_json_default) + "\n")
    print(summary(result))
    print(f"results written to {out} ({result['elapsed_s']} s)")
    if not args.no_plots:
        folder = Path(args.plots) if args.plots else Path.cwd() / "bench-out" / f"plots-{tag}"
        for p in plots(result, folder):
            print(f"plot: {p}")
    return 0


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
