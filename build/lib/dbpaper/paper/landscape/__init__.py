"""Loss landscapes of (leaky) ReLU networks: Section 6 and Figures 2–7.

A (leaky) ReLU network with an identity output is piecewise affine in its
input, and along a one-dimensional *slice* — the input ``x_0`` moving along
one coordinate, or a single weight ``w`` or bias ``b`` moving while
everything else stays fixed — every pre-activation ``z_j`` is a piecewise
affine function of the slice parameter ``t``. The operator (35),
``dz_L/dx_0``, is therefore piecewise constant in ``x_0`` (Section 6.1),
piecewise affine in a single weight and piecewise constant in a single bias
(Section 6.2), and it jumps where a hidden pre-activation changes sign.

This subpackage makes these statements exact:

* :func:`regions` walks a slice segment by segment, propagating each
  pre-activation as an affine function of ``t`` with the current activation
  pattern and stopping at the first zero crossing. It returns the region
  boundaries, the crossing neurons, the activation pattern of every region and
  the affine pieces of ``z_L`` and of ``dz_L/dx_0`` (independently of the
  double-backpropagation algorithms, for cross-checks);
* :func:`per_example` and :func:`sweep` evaluate ``s = ∂_{x_0} z_L``, penalties
  ``R`` and their derivatives along a slice *with the package's algorithms*
  (Algorithms 1–3 of Section 4 with the initial values of Appendix B),
  example by example;
* :func:`limits` measures one-sided limits and jumps at given boundaries;
  :func:`grid_increments` checks on a grid that nothing jumps elsewhere;
* :func:`smoothing_study` quantifies how averaging over a batch of ``M``
  examples (Section 6.2, Figures 6 and 7) shrinks the jumps;
* :func:`sine_data`, :func:`sine_model` and :func:`train_sine_model` set up the
  toy experiment of Section 6.3.

Only networks of ``nn.Linear`` layers with ReLU or leaky-ReLU hidden
activations and an identity output are supported by the exact region walk;
the algorithms themselves accept any network of the package.
"""

from __future__ import annotations

from .evaluate import SweepResult, input_gradients, per_example, sweep
from .jumps import Limits, choose_slice_entry, grid_increments, limits
from .regions import Regions, regions
from .sine import (
    TrainedSine,
    parameter_count,
    printed_cdb_penalty,
    sine_data,
    sine_model,
    single_thread,
    train_sine_model,
)
from .slices import Slice
from .smoothing import SmoothingRow, example_jumps, smoothing_study

__all__ = [
    "Limits",
    "Regions",
    "Slice",
    "SmoothingRow",
    "SweepResult",
    "TrainedSine",
    "choose_slice_entry",
    "example_jumps",
    "grid_increments",
    "input_gradients",
    "limits",
    "parameter_count",
    "per_example",
    "printed_cdb_penalty",
    "regions",
    "sine_data",
    "sine_model",
    "single_thread",
    "smoothing_study",
    "sweep",
    "train_sine_model",
]
