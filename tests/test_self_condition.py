# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Self-conditioning: the network input, the training call (AutocastDiffusionInferer) and the sampler's feed."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.inferers import DiffusionInferer
from torch import nn

from medsegdiff_monai.engines import SegDiffusionPrepareBatch
from medsegdiff_monai.inferers import AutocastDiffusionInferer, DiffusionSegInferer
from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler

T = 1000


def _net(self_condition: bool = True, seed: int = 0) -> MedSegDiffUNet:
    """XS with a random (not zero) output convolution, so every input reaches the output."""
    torch.manual_seed(seed)
    net = MedSegDiffUNet.from_preset("XS", in_channels=2, out_channels=1, self_condition=self_condition)
    nn.init.normal_(net.out[-1].conv.weight, std=0.1)
    return net.eval()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, 16, 16, generator=g), torch.tensor([10, 700]), torch.randn(2, 2, 16, 16, generator=g)


def test_network_reads_the_estimate():
    net = _net()
    assert net.conv_in_mask.conv.weight.shape[1] == 2  # noisy mask + estimate
    x, t, image = _inputs()
    with torch.no_grad():
        none = net(x, t, context=image)
        zeros = net(x, t, context=image, x_self_cond=torch.zeros_like(x))
        given = net(x, t, context=image, x_self_cond=torch.sign(x))
    torch.testing.assert_close(none, zeros, rtol=0, atol=0)  # no estimate = zeros (the first sampling step)
    assert (given - zeros).abs().max() > 1e-3
    # MONAI's DiffusionInferer calls it without the estimate
    sched = RespacedDDPMScheduler(T)
    with torch.no_grad():
        stock = DiffusionInferer(sched)(x, net, noise=torch.zeros_like(x), timesteps=t, condition=image)
        direct = net(sched.add_noise(x, torch.zeros_like(x), t), t, context=image)
    torch.testing.assert_close(stock, direct)


def test_network_errors_name_the_argument():
    x, t, image = _inputs()
    with pytest.raises(ValueError, match="x_self_cond must have the shape"):
        _net()(x, t, context=image, x_self_cond=torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match="self_condition=False"):
        _net(self_condition=False)(x, t, context=image, x_self_cond=torch.zeros_like(x))


class _Recorder(nn.Module):
    """A self-conditioning "network" with a known x0 prediction per call (x0 = 2 * call index - 1.5), recording what
    it is given; ``self_condition`` as on MedSegDiffUNet."""

    out_channels = 1

    def __init__(self, self_condition: bool = True) -> None:
        super().__init__()
        self.self_condition = self_condition
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, timesteps, context=None, x_self_cond=None):
        self.calls.append((x.clone(), None if x_self_cond is None else x_self_cond.clone()))
        return torch.full_like(x, 2.0 * len(self.calls) - 3.5)  # -1.5, 0.5, 2.5, ...: clipped to -1, 0.5, 1


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_sampler_feeds_the_previous_clipped_estimate(sampler):
    net = _Recorder()
    seg = DiffusionSegmenter(net, RespacedDDPMScheduler(T, prediction_type="sample"), num_inference_steps=3,
                             sampler=sampler, num_ensemble=2)
    seg.sample(torch.randn(1, 2, 8, 8))
    fed = [sc for _, sc in net.calls]
    assert fed[0] is None  # nothing to condition on at the first step
    torch.testing.assert_close(fed[1], torch.full((2, 1, 8, 8), -1.0))  # step 0 predicted -1.5, clipped
    torch.testing.assert_close(fed[2], torch.full((2, 1, 8, 8), 0.5))


def test_sampler_leaves_other_networks_alone():
    net = _Recorder(self_condition=False)
    DiffusionSegmenter(net, RespacedDDPMScheduler(T, prediction_type="sample"), num_inference_steps=3,
                       num_ensemble=1).sample(torch.randn(1, 2, 8, 8))
    assert [sc for _, sc in net.calls] == [None, None, None]


def test_scripted_self_conditioned_segmenter_equals_eager():
    seg = DiffusionSegmenter(_net(), RespacedDDPMScheduler(T), num_inference_steps=3, sampler="ddpm", num_ensemble=2)
    scripted = torch.jit.script(seg)
    image = torch.randn(1, 2, 16, 16)
    torch.manual_seed(0)
    eager = seg(image)
    torch.manual_seed(0)
    torch.testing.assert_close(scripted(image), eager, atol=1e-5, rtol=1e-5)
    # the estimate matters: the same weights without it give another result
    plain = _net()
    plain.self_condition = False
    plain.conv_in_mask.conv.weight.data = plain.conv_in_mask.conv.weight.data[:, :1]
    torch.manual_seed(0)
    other = DiffusionSegmenter(plain, RespacedDDPMScheduler(T), num_inference_steps=3, sampler="ddpm",
                               num_ensemble=2)(image)
    assert (other - eager).abs().max() > 1e-4
    # DiffusionSegInferer samples through the segmenter, with the estimate too
    inferer = DiffusionSegInferer(RespacedDDPMScheduler(T), num_inference_steps=3, sampler="ddpm", num_ensemble=2)
    torch.manual_seed(0)
    torch.testing.assert_close(inferer(image, seg.network), eager)


class _NoiseOracle(nn.Module):
    """Returns the true noise of ``x_t`` for known clean masks (epsilon prediction), plus ``bias``."""

    out_channels = 1
    self_condition = True

    def __init__(self, x0: torch.Tensor, scheduler, bias: float = 0.0) -> None:
        super().__init__()
        self.x0, self.scheduler, self.bias = x0, scheduler, bias
        self.w = nn.Parameter(torch.ones(()))
        self.fed: list[torch.Tensor | None] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x, timesteps, context=None, x_self_cond=None):
        self.fed.append(x_self_cond)
        self.grad_enabled.append(torch.is_grad_enabled())
        a = self.scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        return self.w * ((x - a.sqrt() * self.x0) / (1 - a).sqrt() + self.bias)


def test_training_call_conditions_on_the_clipped_estimate():
    sched = RespacedDDPMScheduler(T)  # epsilon prediction
    x0 = torch.sign(torch.randn(3, 1, 8, 8))
    noise, t = torch.randn_like(x0), torch.tensor([5, 500, 990])
    image = torch.randn(3, 2, 8, 8)

    exact = _NoiseOracle(x0, sched)
    AutocastDiffusionInferer(sched, self_condition_prob=1.0)(x0, exact, noise=noise, timesteps=t, condition=image)
    assert exact.grad_enabled == [False, True]  # the estimate's call has no gradient
    assert exact.fed[0] is None
    torch.testing.assert_close(exact.fed[1], x0, atol=1e-4, rtol=0)  # exact noise -> exact x0, at every t

    # a noise bias of 0.2 moves the estimate by -0.2 sqrt(1 - a) / sqrt(a), then it is clipped to [-1, 1]
    biased = _NoiseOracle(x0, sched, bias=0.2)
    AutocastDiffusionInferer(sched, self_condition_prob=1.0)(x0, biased, noise=noise, timesteps=t, condition=image)
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = (x0 - 0.2 * (1 - a).sqrt() / a.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(biased.fed[1], expected, atol=1e-4, rtol=0)
    assert biased.fed[1][2].min() == -1  # at t = 990 the bias is large: clipping acts


def test_training_call_share_and_gradient():
    sched = RespacedDDPMScheduler(T)
    x0 = torch.sign(torch.randn(2, 1, 8, 8))
    kwargs = {"noise": torch.randn_like(x0), "timesteps": torch.tensor([3, 300]), "condition": torch.randn(2, 2, 8, 8)}
    never = _NoiseOracle(x0, sched)
    AutocastDiffusionInferer(sched, self_condition_prob=0.0)(x0, never, **kwargs)
    assert never.fed == [None]  # one call, no estimate

    half = _NoiseOracle(x0, sched)
    torch.manual_seed(0)
    for _ in range(200):
        AutocastDiffusionInferer(sched, self_condition_prob=0.5)(x0, half, **kwargs)
    conditioned = sum(f is not None for f in half.fed)
    assert len(half.fed) == 200 + conditioned
    assert 70 < conditioned < 130  # about half of the steps (binomial, sd 7)

    net = _net()
    net.train()
    out = AutocastDiffusionInferer(sched, self_condition_prob=1.0)(x0, net, **kwargs)
    out.square().mean().backward()
    assert net.conv_in_mask.conv.weight.grad[:, 1].abs().sum() > 0  # the estimate channel is trained


def test_bad_share():
    with pytest.raises(ValueError, match="self_condition_prob"):
        AutocastDiffusionInferer(RespacedDDPMScheduler(T), self_condition_prob=1.5)


def test_self_conditioned_training_steps_run_on_monai_engines():
    torch.manual_seed(0)
    net = MedSegDiffUNet.from_preset("XS", in_channels=2, out_channels=1, self_condition=True)
    sched = RespacedDDPMScheduler(T, prediction_type="sample")
    image = torch.randn(4, 2, 16, 16)
    batch = {"image": image, "label": (image[:, :1] > 0).float()}
    before = net.conv_in_mask.conv.weight.detach().clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch] * 4, epoch_length=4, network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3), loss_function=torch.nn.MSELoss(),
        inferer=AutocastDiffusionInferer(sched, self_condition_prob=0.5), prepare_batch=SegDiffusionPrepareBatch(sched),
        decollate=False,
    )
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    assert not torch.equal(before[:, 1], net.conv_in_mask.conv.weight[:, 1])
