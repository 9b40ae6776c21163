"""WGAN-GP on 2-D data: a critic trained with the gradient penalty of Gulrajani et al. (2017).

    python examples/wgan_gp.py --steps 2000

The data are eight Gaussians on a circle, generated on the fly (no download). The critic's
penalty ``λ · mean (‖∇_x̂ D(x̂)‖ − 1)²`` on interpolates ``x̂`` between real and generated
points is ``λ · dbpaper.penalty(critic, x_hat, GradientNormPenalty())``: the explicit
algorithms, one first-order backward, no ``create_graph=True``. ``--check`` compares the first
critic step's gradients with the autograd idiom.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import dbpaper
from dbpaper.penalties import GradientNormPenalty


def eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points from eight Gaussians (std 0.05) on the circle of radius 2."""
    k = torch.randint(0, 8, (n,), generator=generator)
    centres = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1) * 2
    return centres + 0.05 * torch.randn(n, 2, generator=generator)


def mlp(d_in: int, d_out: int, width: int = 128) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, d_out)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps (default 2000)")
    parser.add_argument("--critic-steps", type=int, default=5, help="critic steps per generator step (default 5)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--lam", type=float, default=10.0, help="weight λ of the gradient penalty (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="check the first critic step against the autograd idiom")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    G, D = mlp(2, 2), mlp(2, 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.9))
    gp = GradientNormPenalty()
    for step in range(args.steps):
        for k in range(args.critic_steps):
            real = eight_gaussians(args.batch, gen)
            with torch.no_grad():
                fake = G(torch.randn(args.batch, 2, generator=gen))
            alpha = torch.rand(args.batch, 1, generator=gen)
            x_hat = alpha * real + (1 - alpha) * fake
            opt_d.zero_grad()
            loss_d = D(fake).mean() - D(real).mean() + args.lam * dbpaper.penalty(D, x_hat, gp)
            loss_d.backward()
            if args.check and step == 0 and k == 0:
                ours = [p.grad.clone() for p in D.parameters()]
                opt_d.zero_grad()
                xi = x_hat.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(D(xi).sum(), xi, create_graph=True)
                (D(fake).mean() - D(real).mean() + args.lam * ((g.norm(2, dim=1) - 1) ** 2).mean()).backward()
                for a, p in zip(ours, D.parameters()):
                    torch.testing.assert_close(
                        a, torch.zeros_like(a) if p.grad is None else p.grad, rtol=1e-4, atol=1e-6
                    )
                print("check: the first critic step's gradients equal the autograd idiom's")
            opt_d.step()
        opt_g.zero_grad()
        loss_g = -D(G(torch.randn(args.batch, 2, generator=gen))).mean()
        loss_g.backward()
        opt_g.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:5d}  critic loss {loss_d.item():+.4f}  generator loss {loss_g.item():+.4f}")
    with torch.no_grad():
        sample = G(torch.randn(2048, 2, generator=gen))
    radius = sample.norm(dim=1).mean().item()
    print(f"mean radius of generated points: {radius:.3f} (the data: 2.0)")
    return {"critic_loss": loss_d.item(), "generator_loss": loss_g.item(), "radius": radius}


if __name__ == "__main__":
    main()
