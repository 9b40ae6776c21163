"""Bilinear operators of Section 2.1: one per file, each with apply / transpose / weight_adjoint."""

from .base import BilinearOperator
from .channel_scale import ChannelScale
from .conv import Conv1d, Conv2d
from .dense import Dense
from .feature_scale import FeatureScale
from .hadamard import Hadamard
from .locally_connected import LocallyConnected2d
from .max_pool import MaxPool1d, MaxPool2d, Selection
from .parameter_free import AvgPool2d, IdentityMap, InvertibleDownsampling

__all__ = [
    "AvgPool2d",
    "BilinearOperator",
    "ChannelScale",
    "Conv1d",
    "Conv2d",
    "Dense",
    "FeatureScale",
    "Hadamard",
    "IdentityMap",
    "InvertibleDownsampling",
    "LocallyConnected2d",
    "MaxPool1d",
    "MaxPool2d",
    "Selection",
]
