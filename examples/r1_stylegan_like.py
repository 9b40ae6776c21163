"""R1 on a small convolutional discriminator, as StyleGAN2 regularises its discriminator.

    python examples/r1_stylegan_like.py --steps 300

Real images are 16×16 generated patterns (oriented stripes, no download); the generator maps
noise to images through a small transposed-convolution network. The discriminator's loss is the
non-saturating logistic loss plus, every ``--r1-every`` steps (lazy regularisation), the R1
penalty ``(γ/2) mean ‖∇_x D(x)‖²`` on real images:
``dbpaper.penalty(D, real, R1(gamma))``, scaled by the interval as StyleGAN2 does. ``--check``
compares the first R1 step's gradients with the autograd idiom (``d_r1_loss``).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

import dbpaper
from dbpaper.penalties import R1


def stripes(n: int, generator: torch.Generator, size: int = 16) -> torch.Tensor:
    """``n`` single-channel images of sinusoidal stripes at a random angle and phase, in [-1, 1]."""
    angle = torch.rand(n, 1, 1, generator=generator) * math.pi
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    u = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    img = torch.sin(4 * math.pi * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    return img.unsqueeze(1)


def discriminator() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 1),
    )


def generator(latent: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(latent, 32 * 4 * 4),
        nn.LeakyReLU(0.2),
        nn.Unflatten(1, (32, 4, 4)),
        nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
        nn.Tanh(),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--gamma", type=float, default=10.0, help="R1 weight γ (default 10)")
    parser.add_argument("--r1-every", type=int, default=4, help="lazy regularisation interval (default 4)")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="check the first R1 step against the autograd idiom")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    G, D = generator(args.latent), discriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    r1 = R1(args.gamma)
    for step in range(args.steps):
        real = stripes(args.batch, gen)
        with torch.no_grad():
            fake = G(torch.randn(args.batch, args.latent, generator=gen))
        opt_d.zero_grad()
        loss_d = F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()
        loss_d.backward()
        opt_d.step()
        if step % args.r1_every == 0:
            opt_d.zero_grad()
            (args.r1_every * dbpaper.penalty(D, real, r1)).backward()
            if args.check and step == 0:
                ours = [p.grad.clone() for p in D.parameters()]
                opt_d.zero_grad()
                xi = real.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(D(xi).sum(), xi, create_graph=True)
                (args.r1_every * args.gamma / 2 * g.pow(2).reshape(g.shape[0], -1).sum(1).mean()).backward()
                for a, p in zip(ours, D.parameters()):
                    torch.testing.assert_close(
                        a, torch.zeros_like(a) if p.grad is None else p.grad, rtol=1e-4, atol=1e-6
                    )
                print("check: the first R1 step's gradients equal the autograd idiom's")
            opt_d.step()
        opt_g.zero_grad()
        loss_g = F.softplus(-D(G(torch.randn(args.batch, args.latent, generator=gen)))).mean()
        loss_g.backward()
        opt_g.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:4d}  D loss {loss_d.item():.4f}  G loss {loss_g.item():.4f}")
    return {"d_loss": loss_d.item(), "g_loss": loss_g.item()}


if __name__ == "__main__":
    main()
