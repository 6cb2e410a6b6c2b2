# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MedSegDiffUNet in place of MONAI's DiffusionModelUNet, driven by MONAI's stock inferer and schedulers."""

from __future__ import annotations

import unittest

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from parameterized import parameterized

from medsegdiff_monai.networks.nets import MedSegDiffUNet

CASES = [
    ["crossattn", "ddpm"],
    ["concat", "ddpm"],
    ["crossattn", "ddim"],
    ["concat", "ddim"],
]


def _scheduler(kind: str):
    if kind == "ddpm":
        return DDPMScheduler(num_train_timesteps=1000)
    return DDIMScheduler(num_train_timesteps=1000)


class TestMonaiDropIn(unittest.TestCase):
    def setUp(self) -> None:
        self._num_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors; avoids OpenMP stalls on a shared 2-core machine

    def tearDown(self) -> None:
        torch.set_num_threads(self._num_threads)

    @parameterized.expand(CASES)
    def test_train_step_and_sample(self, mode, kind):
        torch.manual_seed(0)
        net = MedSegDiffUNet.from_preset("XS", spatial_dims=2, in_channels=2, out_channels=1)
        scheduler = _scheduler(kind)
        inferer = DiffusionInferer(scheduler)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        image = torch.randn(2, 2, 32, 32)
        mask = (torch.rand(2, 1, 32, 32) > 0.5).float() * 2 - 1
        noise = torch.randn_like(mask)
        timesteps = torch.randint(0, 1000, (2,), dtype=torch.long)  # (B,) long

        # one training step through DiffusionInferer.__call__
        before = [p.detach().clone() for p in net.parameters()]
        pred = inferer(inputs=mask, diffusion_model=net, noise=noise, timesteps=timesteps, condition=image, mode=mode)
        self.assertEqual(pred.shape, mask.shape)
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        changed = sum(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
        self.assertGreater(changed, 0)

        # sampling: DiffusionInferer.sample passes timesteps as a float tensor of shape (1,)
        seen = []
        net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["timesteps"]), with_kwargs=True)
        scheduler.set_timesteps(num_inference_steps=5)
        net.eval()
        out = inferer.sample(
            input_noise=torch.randn_like(mask), diffusion_model=net, scheduler=scheduler, conditioning=image,
            mode=mode, verbose=False,
        )
        self.assertEqual(out.shape, mask.shape)
        self.assertTrue(torch.isfinite(out).all())
        self.assertEqual(len(seen), 5)
        self.assertEqual((seen[0].shape, seen[0].dtype), (torch.Size([1]), torch.float32))

    def test_concat_and_crossattn_agree(self):
        # the same network gives the same prediction whichever mode DiffusionInferer uses
        torch.manual_seed(0)
        net = MedSegDiffUNet.from_preset("XS", in_channels=1, out_channels=1).eval()
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(std=0.05)
        inferer = DiffusionInferer(DDPMScheduler(num_train_timesteps=1000))
        image, mask, noise = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
        t = torch.tensor([10, 800])
        with torch.no_grad():
            a = inferer(inputs=mask, diffusion_model=net, noise=noise, timesteps=t, condition=image, mode="crossattn")
            b = inferer(inputs=mask, diffusion_model=net, noise=noise, timesteps=t, condition=image, mode="concat")
        torch.testing.assert_close(a, b)
        self.assertGreater(a.abs().max().item(), 0.0)


if __name__ == "__main__":
    unittest.main()
