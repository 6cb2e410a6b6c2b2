# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
from __future__ import annotations

import unittest

import pytest
import torch
from parameterized import parameterized

from medsegdiff_monai.networks.blocks import AttentiveFusion, FFParser
from medsegdiff_monai.networks.nets import MEDSEGDIFF_PRESETS, MedSegDiffUNet

# a small explicit config with attention, 2 downsamplings
SMALL = {
    "channels": (8, 16, 16),
    "num_res_blocks": 1,
    "attention_levels": (False, True, True),
    "norm_num_groups": 4,
    "num_head_channels": 8,
    "ff_parser_input_size": 16,
}


def _randomise_zero_init(net: torch.nn.Module) -> None:
    """Zero-initialised layers (last convs of residual blocks, output conv) block gradients at init; perturb them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _count(net: torch.nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in net.modules())


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# spatial_dims, in_channels, out_channels, spatial size, config
SHAPE_CASES = [
    [2, 1, 1, (32, 32), None],
    [2, 4, 1, (32, 48), None],
    [2, 4, 3, (16, 24), SMALL],
    [3, 2, 1, (16, 16, 16), {**SMALL, "ff_parser_input_size": 8}],
    [3, 4, 3, (8, 16, 12), {**SMALL, "attention_levels": (False, False, True), "ff_parser_input_size": 8}],
]



@pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py
class TestMedSegDiffUNet(unittest.TestCase):
    def _net(self, spatial_dims, in_channels, out_channels, config):
        if config is None:
            return MedSegDiffUNet.from_preset("XS", spatial_dims, in_channels, out_channels)
        return MedSegDiffUNet(spatial_dims, in_channels, out_channels, **config)

    @parameterized.expand(SHAPE_CASES)
    def test_shapes_and_concat_mode(self, spatial_dims, in_channels, out_channels, size, config):
        torch.manual_seed(0)
        net = self._net(spatial_dims, in_channels, out_channels, config).eval()
        _randomise_zero_init(net)
        x = torch.randn(2, out_channels, *size)
        image = torch.randn(2, in_channels, *size)
        t = torch.tensor([1, 900])
        with torch.no_grad():
            out = net(x=x, timesteps=t, context=image)
            self.assertEqual(out.shape, x.shape)
            self.assertTrue(torch.isfinite(out).all())
            # DiffusionInferer mode "concat": noisy mask first, then the image
            out_cat = net(x=torch.cat([x, image], dim=1), timesteps=t, context=None)
            torch.testing.assert_close(out_cat, out)
            # both inputs and the timestep matter
            self.assertGreater((net(x, t, image + 1.0) - out).abs().max().item(), 1e-4)
            self.assertGreater((net(x + 1.0, t, image) - out).abs().max().item(), 1e-4)
            self.assertGreater((net(x, torch.tensor([500, 20]), image) - out).abs().max().item(), 1e-4)

    @parameterized.expand(
        [
            [torch.tensor([7, 7, 7]), "(B,) long"],
            [torch.tensor([7.0]), "(1,) float, as DiffusionInferer.sample passes"],
            [torch.tensor(7), "0-d int"],
            [torch.tensor(7.0), "0-d float"],
        ]
    )
    def test_timesteps_forms(self, timesteps, _):
        net = MedSegDiffUNet(2, 1, 1, **SMALL).eval()
        _randomise_zero_init(net)
        x, image = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
        with torch.no_grad():
            ref = net(x, torch.full((3,), 7, dtype=torch.long), image)
            torch.testing.assert_close(net(x, timesteps, image), ref)

    def test_gradients_reach_both_encoders_and_ff_parser(self):
        torch.manual_seed(0)
        net = MedSegDiffUNet.from_preset("XS", in_channels=2, out_channels=1)
        _randomise_zero_init(net)
        x, image = torch.randn(2, 1, 32, 32), torch.randn(2, 2, 32, 32)
        loss = (net(x, torch.tensor([3, 600]), image) - torch.randn_like(x)).pow(2).mean()
        loss.backward()
        named = dict(net.named_parameters())
        for name in ["conv_in_image.conv.weight", "conv_in_mask.conv.weight", "time_embed.0.weight"]:
            self.assertGreater(named[name].grad.abs().sum().item(), 0.0, name)
        ff = [m for m in net.modules() if isinstance(m, FFParser)]
        self.assertEqual(len(ff), 2)
        for m in ff:
            self.assertGreater(m.weight.grad.abs().sum().item(), 0.0)
        for m in net.modules():
            if isinstance(m, AttentiveFusion):
                self.assertGreater(m.norm_mask.weight.grad.abs().sum().item(), 0.0)
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        self.assertEqual(missing, [])

    @parameterized.expand([["XS", (0, 1)], ["S", (1, 2)], ["B", (2, 3)], ["L", (2, 3)], ["++", (2, 3)]])
    def test_default_conditioning_levels(self, preset, levels):
        cfg = MEDSEGDIFF_PRESETS[preset]
        self.assertEqual(len(cfg["channels"]) - 1, {"XS": 2, "S": 4, "B": 5, "L": 6, "++": 6}[preset])
        if preset in ("XS", "S"):  # build only the small ones
            net = MedSegDiffUNet.from_preset(preset, ff_parser_input_size=32)
            self.assertEqual(net.conditioning_levels, levels)
            fused = [k for k, level in enumerate(net.encoder) if level.fusion is not None]
            self.assertEqual(tuple(fused), levels)

    def test_ablation_switches_remove_modules(self):
        full = MedSegDiffUNet(2, 1, 1, **SMALL)
        no_ff = MedSegDiffUNet(2, 1, 1, ff_parser=False, **SMALL)
        no_dyn = MedSegDiffUNet(2, 1, 1, dynamic_conditioning=False, **SMALL)
        self.assertEqual((_count(full, FFParser), _count(full, AttentiveFusion)), (2, 2))
        self.assertEqual((_count(no_ff, FFParser), _count(no_ff, AttentiveFusion)), (0, 2))
        self.assertEqual((_count(no_dyn, FFParser), _count(no_dyn, AttentiveFusion)), (0, 0))
        self.assertGreater(_params(full), _params(no_ff))
        self.assertGreater(_params(no_ff), _params(no_dyn))
        self.assertFalse(any("ff_parser" in k or "fusion" in k for k in no_dyn.state_dict()))
        x = torch.randn(1, 1, 16, 16)
        for net in (no_ff, no_dyn):
            self.assertEqual(net(x, torch.tensor([1]), torch.randn(1, 1, 16, 16)).shape, x.shape)

    @parameterized.expand([[2, (16, 24)], [3, (8, 8, 16)]])
    def test_channels_last_is_storage_only(self, spatial_dims, size):
        torch.manual_seed(0)
        a = MedSegDiffUNet(spatial_dims, 2, 1, channels_last=True, **SMALL).eval()
        torch.manual_seed(0)
        b = MedSegDiffUNet(spatial_dims, 2, 1, channels_last=False, **SMALL).eval()
        fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        w_a, w_b = a.conv_in_image.conv.weight, b.conv_in_image.conv.weight
        self.assertTrue(w_a.is_contiguous(memory_format=fmt) and not w_a.is_contiguous())
        self.assertTrue(w_b.is_contiguous())
        _randomise_zero_init(a)
        b.load_state_dict(a.state_dict())
        x, image = torch.randn(2, 1, *size), torch.randn(2, 2, *size)
        with torch.no_grad():
            torch.testing.assert_close(a(x, torch.tensor([3]), image), b(x, torch.tensor([3]), image))

    def test_bf16_autocast(self):
        net = MedSegDiffUNet(2, 2, 1, **SMALL)
        _randomise_zero_init(net)
        x, image = torch.randn(2, 1, 16, 16), torch.randn(2, 2, 16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, torch.tensor([5, 50]), image)
        self.assertEqual(out.shape, x.shape)
        self.assertTrue(torch.isfinite(out.float()).all())
        ref = net(x, torch.tensor([5, 50]), image)
        torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)

    def test_overfits_toy_batch(self):
        # the XS preset learns: eps-MSE on one fixed batch drops quickly
        torch.manual_seed(0)
        net = MedSegDiffUNet.from_preset("XS", in_channels=1, out_channels=1)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
        image = torch.randn(4, 1, 32, 32)
        mask = (image > 0.5).float() * 2 - 1
        noise = torch.randn_like(mask)
        t = torch.tensor([100, 300, 500, 700])
        a = torch.cos(t.float() / 1000 * torch.pi / 2).view(-1, 1, 1, 1)
        x_t = a * mask + (1 - a**2).sqrt() * noise
        losses = []
        for _ in range(40):
            loss = (net(x_t, t, image) - noise).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.assertLess(min(losses[-5:]), 0.5 * losses[0])

    @parameterized.expand(
        [
            [{"spatial_dims": 1}, "spatial_dims"],
            [{"attention_levels": (False, True)}, "attention_levels"],
            [{"num_res_blocks": (1, 1)}, "num_res_blocks"],
            [{"num_head_channels": (8, 8)}, "num_head_channels"],
            [{"num_head_channels": 3}, "num_head_channels"],
            [{"channels": (8, 16, 18)}, "norm_num_groups"],
            [{"channels": (8,), "attention_levels": (False,)}, "channels"],
            [{"conditioning_levels": (2,)}, "conditioning_levels"],
            [{"dropout": 1.5}, "dropout"],
            [{"in_channels": 0}, "in_channels"],
            [{"ff_parser_input_size": (16, 16, 16)}, "ff_parser_input_size"],
        ]
    )
    def test_bad_constructor_arguments(self, override, name):
        kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, **SMALL, **override}
        with self.assertRaisesRegex(ValueError, name):
            MedSegDiffUNet(**kwargs)

    def test_unknown_preset(self):
        with self.assertRaisesRegex(ValueError, "preset name='XL'"):
            MedSegDiffUNet.from_preset("XL")
        self.assertEqual(MedSegDiffUNet.from_preset("xs").channels, MEDSEGDIFF_PRESETS["XS"]["channels"])
        net = MedSegDiffUNet.from_preset("XS", channels=(8, 16, 32), num_res_blocks=2)
        self.assertEqual((net.channels, net.num_res_blocks), ((8, 16, 32), (2, 2, 2)))

    def test_bad_forward_inputs(self):
        net = MedSegDiffUNet(2, 2, 1, **SMALL)
        t = torch.tensor([1, 2])
        with self.assertRaisesRegex(ValueError, r"spatial size \[16, 18\] must be divisible by 4"):
            net(torch.randn(2, 1, 16, 18), t, torch.randn(2, 2, 16, 18))
        with self.assertRaisesRegex(ValueError, "out_channels=1"):
            net(torch.randn(2, 2, 16, 16), t, torch.randn(2, 2, 16, 16))
        with self.assertRaisesRegex(ValueError, "in_channels=2"):
            net(torch.randn(2, 1, 16, 16), t, torch.randn(2, 3, 16, 16))
        with self.assertRaisesRegex(ValueError, "does not match"):
            net(torch.randn(2, 1, 16, 16), t, torch.randn(2, 2, 16, 8))
        with self.assertRaisesRegex(ValueError, "does not match"):
            net(torch.randn(2, 1, 16, 16), t, torch.randn(1, 2, 16, 16))
        with self.assertRaisesRegex(ValueError, "out_channels \\+ in_channels = 3"):
            net(torch.randn(2, 1, 16, 16), t)
        with self.assertRaisesRegex(ValueError, "timesteps"):
            net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]), torch.randn(2, 2, 16, 16))
        with self.assertRaisesRegex(ValueError, "timesteps"):
            net(torch.randn(2, 1, 16, 16), torch.ones(2, 1), torch.randn(2, 2, 16, 16))
        with self.assertRaisesRegex(ValueError, "dimensions"):
            net(torch.randn(2, 1, 16, 16, 16), t, torch.randn(2, 2, 16, 16, 16))


if __name__ == "__main__":
    unittest.main()
