"""The scalar the entry points return: its gradients were computed at call time by the explicit algorithms.

:class:`Precomputed` is a ``torch.autograd.Function`` whose backward hands
back the stored gradients (times ``grad_out``; as they are when
``R.backward()`` seeds 1), with the parameters and ``x`` saved so that an in-place change
before ``backward()`` raises as autograd's version counter does;
:func:`guard_second_order` makes ``create_graph=True`` through it raise;
:func:`average_over_ranks` averages gradients over the ranks of a DDP model.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .algorithms.passes import LayerGradients
from .network import Network

__all__ = ["Precomputed", "average_over_ranks", "flat_gradients", "guard_second_order", "is_ddp"]


def flat_gradients(net: Network, grads: LayerGradients) -> list[torch.Tensor]:
    """The gradients of :meth:`Network.parameters`, in its order, from the per-layer ``∇_θ`` and ``∇_b``."""
    return [g for layer, gw, gb in zip(net.layers, grads.weights, grads.biases) for g in layer.parameter_gradients(gw, gb)]


def is_ddp(model) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def average_over_ranks(grads: list[torch.Tensor], process_group) -> list[torch.Tensor]:
    """All-reduce (mean) ``grads`` over the ranks of ``process_group`` in one collective."""
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=process_group)
    flat /= dist.get_world_size(process_group)
    out, offset = [], 0
    for g in grads:
        out.append(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return out


_SECOND_ORDER = (
    "dbpaper.penalty / dbpaper.objective are differentiable once: their gradients come from the explicit "
    "algorithms, not from a recorded graph, so create_graph=True through them (a Hessian-vector product, a "
    "gradient penalty on top) would silently drop R's curvature. Use algorithm='autograd' for higher derivatives."
)


class Precomputed(torch.autograd.Function):
    """A scalar whose gradients were computed at call time: ``grad_out *`` the stored gradients.

    ``Precomputed.apply(value, x, grad_x, n, *grads, *params)``: ``grads`` are
    the gradients of the ``n`` tensors ``params``, ``grad_x`` that of ``x``
    (``None`` where ``x`` does not require grad). Tensors only, so that
    ``torch.compile`` traces it.
    """

    @staticmethod
    def forward(ctx, value, x, grad_x, n, *tensors):
        grads, params = tensors[:n], tensors[n:]
        ctx.n = n
        ctx.has_grad_x = grad_x is not None
        # the parameters and x are saved so that an in-place change before backward() raises
        ctx.save_for_backward(*grads, x, *params, *((grad_x,) if grad_x is not None else ()))
        return value.detach().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors  # checks the version counters of x and the parameters
        n = ctx.n
        grads, x = saved[:n], saved[n]
        # `R.backward()` seeds 1: hand the stored gradients back as they are (no multiply, no copy)
        one = not torch.compiler.is_compiling() and grad_out.device.type == "cpu" and bool(grad_out == 1)
        grad_x = None
        if ctx.needs_input_grad[1]:
            gx = saved[-1] if ctx.has_grad_x else None
            grad_x = torch.zeros_like(x) if gx is None else (gx if one else grad_out * gx)
        scaled = grads if one else tuple(grad_out * g for g in grads)
        return (None, grad_x, None, None, *((None,) * n), *scaled)


def guard_second_order(t: torch.Tensor) -> torch.Tensor:
    """Make ``create_graph=True`` through ``t`` raise a clear error (the backward itself is once-differentiable)."""
    if t.requires_grad:

        def hook(grad):
            if torch.is_grad_enabled() and not torch.compiler.is_compiling():
                raise RuntimeError(_SECOND_ORDER)
            return grad

        t.register_hook(hook)
    return t
