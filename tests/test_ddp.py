"""dbpaper.penalty under DistributedDataParallel: gloo, two processes on 127.0.0.1, bounded in time.

Each rank holds half of a batch. Its parameter gradients must equal the
single-process gradients of the same objective on the whole batch, whether the
penalty is backpropagated together with a loss of a DDP forward or alone.
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dbpaper
from dbpaper import penalties as P

WORLD = 2
TIMEOUT_S = 120


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return x, y


def _step(model, x, y, case):
    """The gradients of one training step; ``model`` may be a DDP wrapper."""
    model.zero_grad()
    if case == "with-loss":
        loss = nn.functional.cross_entropy(model(x), y) + 0.5 * dbpaper.penalty(model, x, P.JacobianFrobenius())
    elif case == "alone":
        loss = dbpaper.penalty(model, x, P.JacobianFrobenius())
    elif case == "objective":
        loss = dbpaper.objective(model, x, P.ClassicalDoubleBackprop(), y, 0.5)
    elif case == "general":
        loss = dbpaper.penalty(model, x, P.OutputNodeGradient(1), algorithm="general")
    loss.backward()
    inner = model.module if hasattr(model, "module") else model
    return [p.grad.clone() for p in inner.parameters()]


CASES = ("with-loss", "alone", "objective", "general")


def _worker(rank, port, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=__import__("datetime").timedelta(seconds=60))
    try:
        x, y = _data()
        half = x.shape[0] // WORLD
        xs, ys = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        ddp = nn.parallel.DistributedDataParallel(_model())
        grads = {case: _step(ddp, xs, ys, case) for case in CASES}
        torch.save(grads, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
def test_ddp_gradients_equal_single_process_gradients_on_the_whole_batch():
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_worker, args=(_free_port(), outdir), nprocs=WORLD, join=False, start_method="spawn")
        import time

        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"the DDP workers did not finish within {TIMEOUT_S} s")
        ranks = [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(WORLD)]
    x, y = _data()
    for case in CASES:
        single = _step(_model(), x, y, case)
        for r in range(WORLD):
            for got, want in zip(ranks[r][case], single):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"{case}, rank {r}")
