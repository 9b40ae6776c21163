"""Read → plan → run, once per call: the path every entry point takes to the explicit algorithms.

A call of :func:`dbpaper.penalty`, :func:`dbpaper.objective` or
:func:`double_backprop` is validated once (:func:`dbpaper.planning.validate_call`),
then

1. **read** — the model as the network of eq. (8)
   (:meth:`dbpaper.Network.from_sequential`), or the reason it is outside the
   framework; cached per model and per-example input shape;
2. **plan** — the registered algorithm that runs (``"auto"``: the cheapest by
   the cost model of :mod:`dbpaper.planning`); cached per reading, penalty,
   batch size and algorithm name;
3. **run** — one recorded forward pass and the algorithm
   (:func:`dbpaper.algorithms.compute`).

The cache is keyed by the model object (weakly: it does not keep a model
alive) and checked on every call against a *structural signature* of the
model: the identity, type, training flag, hooks and plain attributes (sizes,
strides, slopes, ...) of every submodule, and the identity, shape, dtype,
device and ``requires_grad`` of every parameter and buffer. Swapping a
module, adding a hook, replacing a parameter object, changing a
hyperparameter or ``requires_grad`` makes it read and plan afresh. Parameter
*values* and versions are not part of it: every optimizer step changes them,
and the algorithms read the parameters' current values on every call. The
cache holds the submodules and parameters it has seen, so that their ``id``
cannot be reused by a new object while an entry refers to it.

The signature is recomputed only where a fast check fails (:class:`_Snapshot`):
the same submodule, attribute, child, parameter and buffer objects as when
it was taken, hook registries of the same sizes, tensors of the same shape,
dtype, device and ``requires_grad``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import weakref
from itertools import chain

import torch
from torch import nn

from ._precomputed import Precomputed, average_over_ranks, flat_gradients, guard_second_order, is_ddp
from .algorithms import jacobian as J
from .algorithms._dispatch import compute, compute_objective
from .algorithms.passes import input_gradient
from .algorithms.registry import REGISTRY
from .network import ForwardRecord, Network, UnsupportedModelError, unwrap
from .normalisation import batch_mixer
from .penalties import Penalty
from .planning import penalty_key, resolve, warn_mixing

__all__ = ["clear_cache", "model_signature", "read_cached", "read_with_plans", "record", "resolve_cached", "resolve_in", "compute_input", "run_explicit"]

_PLAIN = (int, float, bool, str, type(None))
_MAX_SHAPES = 8  # input shapes cached per model
_MAX_PLANS = 64  # plans cached per reading


def _attribute_signature(m: nn.Module) -> tuple:
    out = []
    for k, v in vars(m).items():
        if k in ("_parameters", "_buffers", "_modules"):
            continue
        if isinstance(v, dict):  # hooks and other registries: their size
            out.append((k, len(v)))
        elif isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(e, _PLAIN) for e in v)):
            out.append((k, v))
        else:  # a tensor attribute, a callable set on the instance (e.g. forward), ...: its identity
            out.append((k, id(v)))
    return tuple(out)


def _tensor_signature(t: torch.Tensor | None):
    if t is None:
        return None
    return (id(t), tuple(t.shape), t.dtype, t.device, t.requires_grad)


def model_signature(model: nn.Module) -> tuple[tuple, list]:
    """The structural signature of ``model`` (see the module docstring) and the objects it names.

    The root module itself is not in the list (the cache is keyed by it, weakly).
    """
    sig, objects = [], []
    for m in model.modules():
        if m is not model:
            objects.append(m)
        params = tuple((k, _tensor_signature(p)) for k, p in m._parameters.items())
        buffers = tuple((k, _tensor_signature(b)) for k, b in m._buffers.items())
        objects += [t for t in m._parameters.values() if t is not None]
        objects += [t for t in m._buffers.values() if t is not None]
        sig.append((id(m), type(m), _attribute_signature(m), params, buffers))
    return tuple(sig), objects


class _Snapshot:
    """What the structural signature of a model was computed from, held so that an unchanged model is recognised fast.

    :meth:`current` is true only where every submodule has the same type and
    the same attribute objects (``is``, not ``==``), every registry of hooks the
    same size, every child, parameter and buffer the same object with the same
    shape, dtype, device and ``requires_grad``. The signature of such a model
    equals the one it was taken with (plain values are immutable, the snapshot
    keeps every object alive so that no ``id`` is reused). Any difference, even
    an equal value assigned anew, sends the call to the full signature.
    """

    __slots__ = ("modules", "types", "dicts", "dict_lens", "keys", "values", "registries", "lens", "regs", "reg_keys", "reg_values", "tensors", "meta")

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.modules())
        self.modules = modules[1:]  # the root is the cache's weak key: not held here
        self.types = [type(m) for m in modules]
        self.dicts = [vars(m) for m in modules]
        self.dict_lens = list(map(len, self.dicts))
        self.keys = list(chain.from_iterable(self.dicts))
        self.values = list(chain.from_iterable(map(dict.values, self.dicts)))
        # the registries held in dicts (hooks, _parameters, _buffers, _modules): their sizes
        self.registries = [v for v in self.values if isinstance(v, dict)]
        self.lens = list(map(len, self.registries))
        # the children, parameters and buffers: the same objects under the same names
        self.regs = [reg for m in modules for reg in (m._parameters, m._buffers, m._modules)]
        self.reg_keys = list(chain.from_iterable(self.regs))
        self.reg_values = list(chain.from_iterable(map(dict.values, self.regs)))
        self.tensors = [t for t in self.reg_values if isinstance(t, torch.Tensor)]
        self.meta = _tensor_meta(self.tensors)

    def current(self, model: nn.Module) -> bool:
        """Whether ``model`` still consists of the objects of the snapshot (C-level comparisons, no Python loop per attribute)."""
        modules = [model, *self.modules]
        if not all(map(operator.is_, map(type, modules), self.types)):
            return False
        dicts = list(map(vars, modules))
        return (
            all(map(operator.is_, dicts, self.dicts))
            and list(map(len, dicts)) == self.dict_lens
            and list(chain.from_iterable(dicts)) == self.keys
            and all(map(operator.is_, chain.from_iterable(map(dict.values, dicts)), self.values))
            and list(map(len, self.registries)) == self.lens
            and list(chain.from_iterable(self.regs)) == self.reg_keys
            and all(map(operator.is_, chain.from_iterable(map(dict.values, self.regs)), self.reg_values))
            and _tensor_meta(self.tensors) == self.meta
        )


def _tensor_meta(objects: list) -> list:
    return [(t.shape, t.dtype, t.device, t.requires_grad) for t in objects if isinstance(t, torch.Tensor)]


@dataclasses.dataclass(eq=False)
class _Reading:
    signature: tuple
    keepalive: list
    networks: dict  # per-example input shape -> Network | UnsupportedModelError
    plans: dict  # (input shape, penalty key, batch, algorithm, settings) -> registered name
    snapshot: _Snapshot | None = None


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NETWORK_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plans of Network objects passed directly


def clear_cache() -> None:
    """Forget every cached reading and plan (they are rebuilt on the next call)."""
    _CACHE.clear()
    _NETWORK_PLANS.clear()


def _reading(model: nn.Module) -> _Reading:
    entry = _CACHE.get(model)
    # the fast check is an eager-mode saving: a traced call keeps the plain signature (dynamo guards on it)
    eager = not torch.compiler.is_compiling()
    if eager and entry is not None and entry.snapshot is not None and entry.snapshot.current(model):
        return entry  # the same objects as when the signature was taken: the same signature
    signature, objects = model_signature(model)
    if entry is None or entry.signature != signature:
        entry = _Reading(signature, objects, {}, {})
        _CACHE[model] = entry
    if eager:
        entry.snapshot = _Snapshot(model)
    return entry


def read_cached(model, x: torch.Tensor) -> Network:
    """``model`` read as the network of eq. (8) for inputs shaped like ``x``, from the cache when it is current.

    Raises :class:`~dbpaper.UnsupportedModelError` (also cached) for a model outside the framework.
    """
    return read_with_plans(model, x)[0]


def read_with_plans(model, x: torch.Tensor) -> tuple[Network, dict]:
    """:func:`read_cached` and the plan cache of that reading (for :func:`resolve_in`): one signature per call."""
    if isinstance(model, Network):
        return model.refreshed(), _NETWORK_PLANS.setdefault(model, {})
    inner = unwrap(model)
    if not isinstance(inner, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a dbpaper.Network, got {type(inner).__name__}")
    entry = _reading(inner)
    shape = tuple(x.shape[1:])
    hit = entry.networks.get(shape)
    if hit is None:
        try:
            hit = Network.from_sequential(inner, shape)
        except UnsupportedModelError as err:
            hit = err
        if len(entry.networks) >= _MAX_SHAPES:
            entry.networks.clear()
            entry.plans.clear()
        entry.networks[shape] = hit
    if isinstance(hit, UnsupportedModelError):
        raise UnsupportedModelError(str(hit), hit.module, hit.reason)
    return hit.refreshed(), entry.plans


def resolve_cached(model, net: Network, penalty: Penalty, algorithm: str, batch: int) -> str:
    """The registered algorithm to run (``"auto"`` by the cost model), cached with the reading of ``model``."""
    if isinstance(model, Network):
        plans = _NETWORK_PLANS.setdefault(model, {})
    else:
        plans = _reading(unwrap(model)).plans
    return resolve_in(plans, net, penalty, algorithm, batch)


def resolve_in(plans: dict, net: Network, penalty: Penalty, algorithm: str, batch: int) -> str:
    """The registered algorithm to run, memoised in ``plans`` (from :func:`read_with_plans`)."""
    key = (
        net.in_shape, penalty_key(penalty), batch, algorithm,
        J.DEFAULT_CHUNK_SIZE, J.TARGET_CHUNK_BYTES, tuple((k, id(v)) for k, v in REGISTRY.items()),
    )  # fmt: skip
    name = plans.get(key)
    if name is None:
        name = resolve(net, penalty, algorithm, batch=batch)
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        plans[key] = name
    return name


def record(net: Network, x: torch.Tensor) -> ForwardRecord:
    """One recorded forward pass without an autograd graph (``x`` already checked against ``net``).

    A network with BatchNorm in training mode gives its :class:`~dbpaper.BatchMixingWarning`
    (information: the penalty is that of the batch function) and updates the running statistics, once.
    """
    mixer = None if torch.compiler.is_compiling() else batch_mixer(net)  # (a traced warning would break the graph)
    if mixer is not None:
        warn_mixing(mixer)
    with torch.no_grad():
        return net.forward(x.detach(), check=False)


def autocast_active(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if x.device.type == "cpu" else torch.is_autocast_enabled()


def compute_input(net: Network, x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """The input the explicit algorithms compute with, and the context they run in.

    Under ``torch.autocast`` they compute in the parameters' dtype with autocast
    switched off: every operator evaluation and every accumulation in full
    precision, so their error is that of the parameters' dtype (never worse
    than autograd's under the same autocast, which runs the matrix products in
    the low precision). Elsewhere: ``x`` as it is.
    """
    if not autocast_active(x):
        return x, contextlib.nullcontext()
    params = net.parameters()
    dtype = params[0].dtype if params else x.dtype
    return x.to(dtype), torch.autocast(x.device.type, enabled=False)


def run_explicit(model, net: Network, x, xc, precision, pen, y, name: str, lam: float | None, loss: str | None) -> torch.Tensor:
    """Run ``name`` on ``xc`` (``x`` as the algorithms compute with it) in ``precision`` (see :func:`compute_input`)."""
    with precision:
        return run_recorded(model, net, x, xc, pen, y, name, lam, loss)


def run_recorded(model, net: Network, x, xc, pen, y, name: str, lam: float | None, loss: str | None) -> torch.Tensor:
    rec = record(net, xc)
    if lam is None:
        res = compute(net, rec, pen, y, name=name)
    else:
        res = compute_objective(net, rec, pen, y, lam, loss=loss, name=name)
    with torch.no_grad():  # a reader's adjoint of derived parameters computes with the module's own tensors
        grads = flat_gradients(net, res.gradients)
    if is_ddp(model):
        grads = average_over_ranks(grads, model.process_group)
    grad_x = input_gradient(net.at(rec), res.gradients) if x.requires_grad else None  # ∇_{x_0} = K_1ᵀ(θ_1, η_1) + ...
    if grad_x is not None:
        grad_x = grad_x.reshape(x.shape).to(x.dtype)
    params = net.parameters()
    return guard_second_order(Precomputed.apply(res.value, x, grad_x, len(grads), *grads, *params))
