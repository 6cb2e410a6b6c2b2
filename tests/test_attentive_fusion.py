# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
from __future__ import annotations

import unittest

import pytest
import torch
from parameterized import parameterized

from medsegdiff_monai.networks.blocks import AttentiveFusion


def _layer_norm_chw(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-sample normalisation over channels and all spatial positions, per-channel affine (written out)."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1).view(-1, *([1] * (x.dim() - 1)))
    var = flat.var(dim=1, unbiased=False).view(-1, *([1] * (x.dim() - 1)))
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)



@pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py
class TestAttentiveFusion(unittest.TestCase):
    @parameterized.expand([[2, 4, (8, 8)], [2, 6, (5, 11)], [3, 3, (4, 6, 5)]])
    def test_equation_3(self, spatial_dims, channels, size):
        torch.manual_seed(0)
        fusion = AttentiveFusion(spatial_dims, channels)
        with torch.no_grad():  # non-trivial affine parameters
            for p in fusion.parameters():
                p.normal_()
        m_i = torch.randn(2, channels, *size) * 3 + 1
        m_x = torch.randn(2, channels, *size) * 0.5 - 2
        out = fusion(m_i, m_x)
        ln_i = _layer_norm_chw(m_i, fusion.norm_image.weight, fusion.norm_image.bias, fusion.norm_image.eps)
        ln_x = _layer_norm_chw(m_x, fusion.norm_mask.weight, fusion.norm_mask.bias, fusion.norm_mask.eps)
        torch.testing.assert_close(out, ln_i * ln_x * m_i, atol=1e-4, rtol=1e-4)

    def test_size_agnostic_and_normalises_per_sample(self):
        fusion = AttentiveFusion(2, 4)
        for size in [(8, 8), (16, 12)]:
            m_i = torch.randn(2, 4, *size)
            m_x = torch.randn(2, 4, *size)
            self.assertEqual(fusion(m_i, m_x).shape, m_i.shape)
        # default affine (1, 0): scaling one sample's mask features does not change the result (normalised),
        # scaling the image features scales the result linearly (the trailing * m_I)
        m_i = torch.randn(2, 4, 8, 8)
        m_x = torch.randn(2, 4, 8, 8)
        ref = fusion(m_i, m_x)
        torch.testing.assert_close(fusion(m_i, m_x * 7.0 + 3.0), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fusion(m_i * 2.0, m_x), ref * 2.0, atol=1e-4, rtol=1e-4)

    def test_parameters_fixed_and_trained(self):
        fusion = AttentiveFusion(2, 3)
        before = [id(p) for p in fusion.parameters()]
        self.assertEqual(len(before), 4)  # two norms, each weight and bias
        m_i = torch.randn(2, 3, 6, 6, requires_grad=True)
        m_x = torch.randn(2, 3, 6, 6, requires_grad=True)
        fusion(m_i, m_x).pow(2).mean().backward()
        self.assertEqual([id(p) for p in fusion.parameters()], before)  # nothing created in forward
        for p in fusion.parameters():
            self.assertIsNotNone(p.grad)
            self.assertGreater(p.grad.abs().sum().item(), 0.0)
        self.assertGreater(m_x.grad.abs().sum().item(), 0.0)

    def test_script(self):
        fusion = AttentiveFusion(2, 3)
        scripted = torch.jit.script(fusion)
        m_i, m_x = torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6)
        torch.testing.assert_close(scripted(m_i, m_x), fusion(m_i, m_x))

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "spatial_dims"):
            AttentiveFusion(4, 3)
        with self.assertRaisesRegex(ValueError, "channels"):
            AttentiveFusion(2, 0)
        fusion = AttentiveFusion(2, 3)
        with self.assertRaisesRegex(ValueError, "same shape"):
            fusion(torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 8))
        with self.assertRaisesRegex(ValueError, "expected"):
            fusion(torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))


if __name__ == "__main__":
    unittest.main()
