"""The README's table of neighbours: each idiom, transcribed here as its users write it, against the dbpaper call it maps to.

* ``JacobianReg(n=-1)`` of facebookresearch/jacobian_regularizer (Hoffman et al. 2019) returns
  ``(1/2) mean_b ‖J_b‖_F²``: half of ``JacobianFrobenius()``, so ``λ_JR · R_JR`` is
  ``objective(..., lam=λ_JR / 2)``.
* The WGAN-GP ``calc_gradient_penalty`` idiom (Gulrajani et al. 2017) is
  ``λ · penalty(critic, x̂, GradientNormPenalty())`` on the same interpolates.
* StyleGAN2's ``d_r1_loss`` (``‖∇_x D(x)‖²`` summed per image, batch mean), weighted ``r1 / 2``, is
  ``penalty(D, x, R1(gamma=r1))``.

Values and every parameter gradient agree in float64.
"""

from __future__ import annotations

import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P

TOL = dict(rtol=1e-10, atol=1e-12)


def _agree(a, b, params):
    torch.testing.assert_close(a, b, **TOL)
    for ga, gb in zip(
        torch.autograd.grad(a, params, materialize_grads=True), torch.autograd.grad(b, params, materialize_grads=True)
    ):
        torch.testing.assert_close(ga, gb, **TOL)


def jacobian_reg_exact(x, y):
    """JacobianReg(n=-1).forward(x, y): the orthonormal projections, (1/2) J2."""
    B, C = y.shape
    J2 = 0
    for ii in range(C):
        v = torch.zeros(B, C, dtype=y.dtype)
        v[:, ii] = 1
        (Jv,) = torch.autograd.grad(y, x, v, retain_graph=True, create_graph=True)
        J2 += C * torch.norm(Jv) ** 2 / (C * B)
    return (1 / 2) * J2


def calc_gradient_penalty(netD, real_data, fake_data, alpha, LAMBDA):
    interpolates = (alpha * real_data + (1 - alpha) * fake_data).requires_grad_(True)
    disc_interpolates = netD(interpolates)
    (gradients,) = torch.autograd.grad(
        disc_interpolates,
        interpolates,
        grad_outputs=torch.ones_like(disc_interpolates),
        create_graph=True,
        retain_graph=True,
    )
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * LAMBDA


def d_r1_loss(real_pred, real_img):
    (grad_real,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()


def test_jacobian_reg_is_half_the_jacobian_penalty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (9,))
    lam_jr = 0.03
    params = list(model.parameters())
    theirs = nn.functional.cross_entropy(model(x), y) + lam_jr * jacobian_reg_exact(x, model(x))
    ours = dbpaper.objective(model, x.detach(), P.JacobianFrobenius(), y, lam=lam_jr / 2)
    _agree(ours, theirs, params)


def test_the_wgan_gp_idiom_is_the_gradient_norm_penalty():
    torch.manual_seed(1)
    critic = nn.Sequential(
        nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)
    ).double()
    real, fake = torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    alpha = torch.rand(32, 1, dtype=torch.float64)
    LAMBDA = 10.0
    theirs = calc_gradient_penalty(critic, real, fake, alpha, LAMBDA)
    ours = LAMBDA * dbpaper.penalty(critic, alpha * real + (1 - alpha) * fake, P.GradientNormPenalty())
    _agree(ours, theirs, list(critic.parameters()))


def test_stylegan2_r1_is_the_r1_penalty():
    torch.manual_seed(2)
    D = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 1),
    ).double()
    real_img = torch.randn(6, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    r1 = 10.0
    theirs = r1 / 2 * d_r1_loss(D(real_img), real_img)
    ours = dbpaper.penalty(D, real_img.detach(), P.R1(gamma=r1))
    _agree(ours, theirs, list(D.parameters()))
