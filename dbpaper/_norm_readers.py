"""The readers of the normalisation modules (kind ``"normalisation"``, :class:`~dbpaper.readers.NormPart`).

BatchNorm in training mode (or without running statistics), LayerNorm,
RMSNorm and GroupNorm are a :class:`~dbpaper.normalisation.Normalisation`
followed by their affine part: per channel a
:class:`~dbpaper.operators.ChannelScale` (GroupNorm, BatchNorm), per feature a
:class:`~dbpaper.operators.FeatureScale` (LayerNorm, RMSNorm), with the
module's own ``weight`` and ``bias``. BatchNorm in eval mode with running
statistics is affine by itself (``_batch_norm_eval``), folded into the layer before it.
"""

from __future__ import annotations

import torch
from torch import nn

from . import normalisation as norm
from .operators import ChannelScale, FeatureScale
from .readers import LinearPart, NormPart, UnsupportedOption, register_reader

__all__ = ["register_builtin"]


def _batch_stats(m: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``m`` normalises by the batch's statistics (as torch decides: training mode, or no running statistics)."""
    return m.training or (m.running_mean is None and m.running_var is None)


def _batch_norm_eval(m: nn.modules.batchnorm._BatchNorm, shape) -> LinearPart:
    """BatchNorm in eval mode: ``θ = γ/√(σ² + ε)`` (per channel) and ``b = β − θ μ``, derived afresh on every call."""
    if m.training or not m.track_running_stats or m.running_mean is None:
        raise UnsupportedOption(
            "BatchNorm in training mode (or without running statistics) normalises by the batch's statistics, "
            "which mixes the examples; eq. (8) reads it in eval mode (model.eval())"
        )
    dims = (1, 2) if isinstance(m, nn.BatchNorm1d) else (3,)  # (C,) or (C, L); (C, H, W)
    if len(shape) not in dims or shape[0] != m.num_features:
        raise ValueError(f"input of per-example shape {shape} does not fit num_features={m.num_features}")

    def derive():
        scale = torch.rsqrt(m.running_var + m.eps)
        theta = m.weight * scale if m.affine else scale
        bias = (m.bias if m.affine else 0) - theta * m.running_mean
        return theta, bias

    def param_grads(grad_theta, grad_bias):
        if not m.affine:
            return []
        # b = β − θ μ: the gradient of θ in full is ∇_θ − μ ∇_b; θ = γ/√(σ² + ε)
        return [(grad_theta - grad_bias * m.running_mean) * torch.rsqrt(m.running_var + m.eps), grad_bias]

    with torch.no_grad():
        theta, bias = derive()
    params = (m.weight, m.bias) if m.affine else ()
    return LinearPart(ChannelScale(shape), theta, bias, params=params, param_grads=param_grads, derive=derive)


def _batch_norm_example(cls, channels: int = 2):
    """A BatchNorm in eval mode with running statistics and affine parameters away from the identity."""
    m = cls(channels)
    with torch.no_grad():
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.3, 0.3)
    return m.eval()


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, shape) -> NormPart:
    """Eval mode: the affine map of the running statistics. Training mode: the batch's normalisation per channel, then ``γ``, ``β``."""
    if not _batch_stats(m):
        return NormPart(None, _batch_norm_eval(m, shape))
    dims = (1, 2) if isinstance(m, nn.BatchNorm1d) else (3,)  # (C,) or (C, L); (C, H, W)
    if len(shape) not in dims or shape[0] != m.num_features:
        raise ValueError(f"input of per-example shape {shape} does not fit num_features={m.num_features}")
    affine = LinearPart(ChannelScale(shape), m.weight, m.bias) if m.affine else None
    return NormPart(norm.BatchNormalisation(m.eps, module=m), affine)


def _feature_affine(weight: torch.Tensor | None, bias: torch.Tensor | None, shape: tuple[int, ...], trailing: tuple[int, ...]) -> LinearPart | None:
    """``weight ⊙ x + bias`` over the trailing axes ``trailing`` of examples of shape ``shape`` (``None``: neither)."""
    if weight is None:
        if bias is not None:
            raise UnsupportedOption("a bias without a weight is not supported")
        return None
    op = FeatureScale(shape, trailing)
    if bias is None or tuple(shape) == tuple(trailing):
        return LinearPart(op, weight, bias)
    lead = tuple(range(len(shape) - len(trailing)))

    def derive():  # b of eq. (8) is the bias broadcast over the leading axes
        return weight, bias.expand(shape)

    def param_grads(grad_theta, grad_bias):
        return [grad_theta, grad_bias.sum(dim=lead)]

    with torch.no_grad():
        theta, b = derive()
    return LinearPart(op, theta, b, params=(weight, bias), param_grads=param_grads, derive=derive)


def _trailing(m: nn.Module, shape) -> tuple[int, ...]:
    ns = tuple(int(s) for s in m.normalized_shape)
    if len(ns) > len(shape) or tuple(shape[len(shape) - len(ns):]) != ns:
        raise ValueError(f"normalized_shape {ns} is not the trailing shape of the per-example input {tuple(shape)}")
    return ns


def _layer_norm(m: nn.LayerNorm, shape) -> NormPart:
    ns = _trailing(m, shape)
    affine = _feature_affine(m.weight, getattr(m, "bias", None), tuple(shape), ns) if m.elementwise_affine else None
    return NormPart(norm.LayerNormalisation(ns, m.eps), affine)


def _rms_norm(m: nn.Module, shape) -> NormPart:
    ns = _trailing(m, shape)
    return NormPart(norm.RMSNormalisation(ns, m.eps), _feature_affine(m.weight, None, tuple(shape), ns))


def _group_norm(m: nn.GroupNorm, shape) -> NormPart:
    if not shape or shape[0] != m.num_channels:
        raise ValueError(f"input of per-example shape {shape} does not fit num_channels={m.num_channels}")
    affine = LinearPart(ChannelScale(shape), m.weight, m.bias) if m.affine else None
    return NormPart(norm.GroupNormalisation(m.num_groups, m.eps), affine)


def _randomised(m: nn.Module) -> nn.Module:
    """``m`` with its affine parameters away from the identity (the tests' examples)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_((torch.rand(p.shape, generator=g) + 0.5) if name == "weight" else torch.rand(p.shape, generator=g) * 0.6 - 0.3)
    return m


def _batch_norm_train_example(cls, channels: int = 2) -> nn.Module:
    return _randomised(cls(channels)).train()


def register_builtin() -> None:
    """The normalisation readers, in the order of the README's table (called by :func:`dbpaper.readers.register_builtin`)."""
    register_reader(nn.BatchNorm1d, "normalisation", _batch_norm, example=lambda: _batch_norm_example(nn.BatchNorm1d),
                    description="eval mode: θ = γ/√(σ²+ε), b = β − θμ, folded into a dense layer or convolution right before it; "
                    "training mode: the batch's normalisation per channel (the examples mix: the penalty of the batch function), then γ, β")  # fmt: skip
    register_reader(nn.BatchNorm2d, "normalisation", _batch_norm, example=lambda: _batch_norm_train_example(nn.BatchNorm2d),
                    description="as BatchNorm1d, per channel over the batch and the positions")  # fmt: skip
    register_reader(nn.LayerNorm, "normalisation", _layer_norm, example=lambda: _randomised(nn.LayerNorm(4)),
                    description="(z − μ)/σ over normalized_shape, then γ, β (elementwise_affine, bias optional)")  # fmt: skip
    if hasattr(nn, "RMSNorm"):  # torch >= 2.4
        register_reader(nn.RMSNorm, "normalisation", _rms_norm, example=lambda: _randomised(nn.RMSNorm(4)),
                        description="z/√(mean(z²)+ε) over normalized_shape, then γ (optional); eps=None: finfo eps")  # fmt: skip
    register_reader(nn.GroupNorm, "normalisation", _group_norm, example=lambda: _randomised(nn.GroupNorm(2, 4)),
                    description="(z − μ)/σ over each group of channels and its positions, then γ, β per channel")  # fmt: skip

