"""Train a digits classifier with the Jacobian penalty on several processes (PyTorch DDP).

Run on CPU with two processes (gloo):

    torchrun --nproc_per_node=2 examples/train_ddp.py --epochs 10

The data are scikit-learn's bundled 8x8 digits (no download): the example needs
scikit-learn besides dbpaper (``pip install scikit-learn``, or the ``book`` extra). Every rank
trains on its shard of each batch; ``dbpaper.penalty`` averages the
penalty's parameter gradients over the ranks, so the update is the one of a
single process on the whole batch. The loss goes through the DDP forward as
usual; ``(ce + lam * R).backward()`` is one first-order backward.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import dbpaper
from dbpaper.penalties import JacobianFrobenius


def load_digits(seed: int = 0):
    """Digits scaled to [0, 1], split 80/20 with a fixed permutation."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ModuleNotFoundError:
        raise SystemExit("examples/train_ddp.py needs scikit-learn for its data: pip install scikit-learn") from None

    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="global batch size (split over the ranks)")
    parser.add_argument("--lam", type=float, default=0.01, help="weight of the Jacobian penalty")
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the number of processes {world}")
    torch.manual_seed(0)  # the same initial model on every rank
    torch.set_num_threads(1)

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    ddp = nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    (xtr, ytr), (xte, yte) = load_digits()
    if rank == 0:
        print(dbpaper.plan(ddp, xtr[: args.batch // world], JacobianFrobenius()))
        print(f"{world} process(es), {len(ytr)} training and {len(yte)} test digits")

    local = args.batch // world
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(epoch))  # same on every rank
        total = penalty_sum = 0.0
        steps = len(ytr) // args.batch
        for s in range(steps):
            idx = perm[s * args.batch + rank * local : s * args.batch + (rank + 1) * local]  # this rank's shard
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad()
            ce = nn.functional.cross_entropy(ddp(x), y)
            r = dbpaper.penalty(ddp, x, JacobianFrobenius())
            (ce + args.lam * r).backward()
            opt.step()
            total += float(ce.detach())
            penalty_sum += float(r.detach())
        with torch.no_grad():
            acc = float((model(xte).argmax(1) == yte).float().mean())
        if rank == 0:
            print(
                f"epoch {epoch:3d}  loss {total / steps:.4f}  mean ‖J‖_F² {penalty_sum / steps:.4f}  test accuracy {acc:.3f}"
            )

    if distributed:  # every rank must hold the same parameters
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
            print(f"largest parameter difference between ranks: {spread:.2e}")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
