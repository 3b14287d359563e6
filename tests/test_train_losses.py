"""The paper's losses: gradient density (Sobel magnitude L1), perceptual relu5_1 MSE, WGAN-GP."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from extracter.losses.gradient_density_loss import GradientDensityLoss
from extracter.losses.perceptual_loss import PerceptualRelu51Loss
from extracter.losses.wgan_gp_loss import WGANGPLoss


def _sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Reference: per-channel Sobel with explicit shifts (independent of the conv-based implementation)."""
    p = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]

    def s(dy, dx):
        return p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    gv = (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1)) - (s(1, -1) + 2 * s(1, 0) + s(1, 1))
    gh = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    return torch.sqrt(gv ** 2 + gh ** 2 + 1e-6)


def test_gradient_density_loss_matches_reference_and_weight():
    sr, gt = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 12, 10)
    expected = (_sobel_magnitude(sr) - _sobel_magnitude(gt)).abs().mean()
    assert torch.allclose(GradientDensityLoss(loss_weight=1.0)(sr, gt), expected, atol=1e-6)
    assert torch.allclose(GradientDensityLoss(loss_weight=1e-3)(sr, gt), 1e-3 * expected, atol=1e-9)
    assert GradientDensityLoss()(gt, gt).item() == 0.0


def test_perceptual_loss_random_vgg_is_mse_of_relu51_and_frozen():
    loss = PerceptualRelu51Loss(loss_weight=0.5, init='random')
    sr = torch.rand(1, 3, 32, 32, requires_grad=True)
    gt = torch.rand(1, 3, 32, 32)
    value = loss(sr, gt)
    feats = loss.features(loss.input_norm(sr))
    assert feats.shape == (1, 512, 2, 2)  # relu5_1 is at 1/16 resolution
    assert torch.allclose(value, 0.5 * F.mse_loss(feats, loss.features(loss.input_norm(gt))))
    value.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    loss.train()
    assert not loss.training  # stays in eval mode inside a model's .train()
    assert loss(gt, gt).item() == 0.0


def test_perceptual_loss_loads_local_vgg19_file(vgg19_canonical):
    loss = PerceptualRelu51Loss(vgg19_path=str(vgg19_canonical))
    state = torch.load(vgg19_canonical, weights_only=True)
    assert torch.equal(loss.features[28].weight, state['features.28.weight'])  # conv5_1
    assert torch.equal(loss.input_norm.bias, state['input_norm.bias'])


def test_perceptual_loss_missing_file_names_it(tmp_path):
    missing = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        PerceptualRelu51Loss(vgg19_path=str(missing))


class _LinearCritic(nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere, so GP = (||w|| - 1)^2 exactly."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_wgan_gp_losses_on_linear_critic():
    w = torch.randn(3, 4, 4)
    critic = _LinearCritic(w.clone())
    real, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    loss = WGANGPLoss(loss_weight=1e-3, gp_weight=10.0)
    l_d, wdist, gp, d_real = loss.discriminator_loss(critic, real, fake)
    expected_gp = (w.norm() - 1) ** 2
    expected_wdist = critic(fake).mean() - critic(real).mean()
    assert torch.allclose(gp, expected_gp, rtol=1e-5)
    assert torch.allclose(wdist, expected_wdist, rtol=1e-5, atol=1e-6)
    assert torch.allclose(l_d, expected_wdist + 10 * expected_gp, rtol=1e-5)
    assert torch.allclose(d_real, critic(real).mean())
    l_d.backward()  # the penalty is differentiable w.r.t. the critic's weights (create_graph)
    grad_expected = (fake - real).mean(0) + 10 * 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(critic.w.grad, grad_expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(loss(torch.tensor([[2.0], [4.0]])), torch.tensor(-3e-3))
