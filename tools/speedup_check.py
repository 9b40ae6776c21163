"""Speed-up of the default call over autograd on five workloads, for the dbpaper that Python imports.

A quick regression check between two versions: each run times ``dbpaper.penalty(...).backward()``
with the default algorithm and with ``algorithm="autograd"`` side by side in one process (one
thread, interleaved, median of 25 after 3 warm-ups) and prints the ratio. Compare the ratios of
two versions, e.g. an older tree checked out with ``git archive REV dbpaper | tar -x -C old``::

    PYTHONPATH=old python tools/speedup_check.py     # the older tree's dbpaper
    python tools/speedup_check.py                    # this checkout's
    ONLY=cnn python tools/speedup_check.py           # the workloads whose name starts with "cnn"

Not a benchmark for the book (that is ``python -m dbpaper bench``): absolute times on a shared
machine mean little, the ratio measured in one process is what to compare.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10), nn.Softmax(dim=-1))  # fmt: skip


def critic() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10), nn.Softmax(dim=-1))  # fmt: skip


def _batch_norm(cls, c: int) -> nn.Module:
    m = cls(c)
    with torch.no_grad():
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    return m.eval()


def cnn_bn() -> nn.Sequential:
    """A conv net with BatchNorm in eval mode (read by the explicit algorithms since 0.3.0; autograd before)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _batch_norm(nn.BatchNorm2d, 16), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), _batch_norm(nn.BatchNorm2d, 32), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10), nn.Softmax(dim=-1))  # fmt: skip


def mlp_bn_gelu() -> nn.Sequential:
    """A dense network with BatchNorm (eval), GELU and SiLU (read by the explicit algorithms since 0.3.0)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), _batch_norm(nn.BatchNorm1d, 256), nn.GELU(), nn.Linear(256, 256),
                         _batch_norm(nn.BatchNorm1d, 256), nn.SiLU(), nn.Linear(256, 10), nn.Softmax(dim=-1))  # fmt: skip


# name, model, per-example input shape, batch, penalty, whether it takes labels
CASES = [
    ("mlp jacobian", mlp, (784,), 128, P.JacobianFrobenius, False),
    ("mlp classical", mlp, (784,), 128, P.ClassicalDoubleBackprop, True),
    ("mlp output-node", mlp, (784,), 128, lambda: P.OutputNodeGradient(3), False),
    ("critic gradnorm", critic, (784,), 64, lambda: P.GradientNormPenalty(1.0), False),
    ("cnn jacobian", cnn, (1, 28, 28), 64, P.JacobianFrobenius, False),
    ("cnn-bn jacobian", cnn_bn, (3, 32, 32), 32, P.JacobianFrobenius, False),
    ("cnn-bn output-node", cnn_bn, (3, 32, 32), 32, lambda: P.OutputNodeGradient(1), False),
    ("mlp-bn-gelu jacobian", mlp_bn_gelu, (784,), 128, P.JacobianFrobenius, False),
    ("mlp-bn-gelu output-node", mlp_bn_gelu, (784,), 128, lambda: P.OutputNodeGradient(1), False),
]


def speedup(model, x, penalty, y, repeats: int = 25) -> tuple[float, float]:
    """Median seconds of the default call and of autograd, interleaved."""

    def step(algorithm):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        dbpaper.penalty(model, x, penalty, y, algorithm=algorithm).backward()
        return time.perf_counter() - t

    for algorithm in ("auto", "autograd") * 3:
        step(algorithm)
    times = {"auto": [], "autograd": []}
    for _ in range(repeats):
        for algorithm in times:
            times[algorithm].append(step(algorithm))
    return statistics.median(times["auto"]), statistics.median(times["autograd"])


def main() -> None:
    torch.set_num_threads(1)
    print("dbpaper", dbpaper.__version__, "from", os.path.dirname(dbpaper.__file__))
    g = torch.Generator().manual_seed(1)
    for name, make, shape, n, penalty, labels in CASES:
        if not name.startswith(os.environ.get("ONLY", "")):
            continue
        x = torch.randn(n, *shape, generator=g)
        y = torch.randint(0, 10, (n,), generator=g) if labels else None
        a, b = speedup(make(), x, penalty(), y)
        print(f"{name:24s} default {a * 1e3:7.2f} ms  autograd {b * 1e3:7.2f} ms  speed-up {b / a:5.2f}")


if __name__ == "__main__":
    main()
