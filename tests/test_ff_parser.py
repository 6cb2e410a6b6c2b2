# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
from __future__ import annotations

import unittest

import pytest
import torch
from parameterized import parameterized

from medsegdiff_monai.networks.blocks import FFParser, resize_spectrum_map, rfft_shape

# (spatial_dims, channels, map_size, input spatial size)
IDENTITY_CASES = [
    [2, 3, (16, 16), (16, 16)],  # the size the map was made for
    [2, 3, (16, 16), (24, 10)],  # another, non-square size: resampled map
    [2, 2, (12, 9), (7, 13)],  # odd sizes both ways
    [3, 2, (8, 8, 8), (8, 12, 6)],  # 3-D, resampled
    [3, 2, (6, 5, 4), (6, 5, 4)],
]



@pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py
class TestFFParser(unittest.TestCase):
    @parameterized.expand(IDENTITY_CASES)
    def test_identity_at_init(self, spatial_dims, channels, map_size, size):
        ffp = FFParser(spatial_dims, channels, map_size)
        x = torch.randn(2, channels, *size)
        y = ffp(x)
        self.assertEqual(y.shape, x.shape)
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
        # the map used at this size is exactly 1 + 0j
        a = ffp.spectral_map(list(size))
        self.assertEqual(list(a.shape), [channels] + rfft_shape(size) + [2])
        torch.testing.assert_close(a[..., 0], torch.ones_like(a[..., 0]), atol=1e-7, rtol=0)
        torch.testing.assert_close(a[..., 1], torch.zeros_like(a[..., 1]), atol=1e-7, rtol=0)

    @parameterized.expand([[2, (16, 12)], [3, (6, 8, 4)]])
    def test_dc_only_map_gives_channel_mean(self, spatial_dims, size):
        ffp = FFParser(spatial_dims, 4, size)
        with torch.no_grad():
            ffp.weight.zero_()
            ffp.weight[(slice(None),) + (0,) * spatial_dims + (0,)] = 1.0  # keep only the DC component
        x = torch.randn(3, 4, *size) + torch.arange(4.0).view(1, 4, *([1] * spatial_dims))
        y = ffp(x)
        dims = tuple(range(2, 2 + spatial_dims))
        expected = x.mean(dim=dims, keepdim=True).expand_as(x)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)

    def test_matches_complex_reference(self):
        # eqs. 4-6 written with complex tensors; the module multiplies on real/imaginary pairs
        torch.manual_seed(0)
        ffp = FFParser(2, 3, (10, 14))
        with torch.no_grad():
            ffp.weight.normal_()
        x = torch.randn(2, 3, 10, 14)
        a = torch.view_as_complex(ffp.weight.detach().contiguous())
        ref = torch.fft.irfftn(torch.fft.rfftn(x, dim=(2, 3), norm="ortho") * a, s=(10, 14), dim=(2, 3), norm="ortho")
        torch.testing.assert_close(ffp(x), ref, atol=1e-5, rtol=1e-5)

    @parameterized.expand([[(16, 16), (24, 32)], [(16, 16), (8, 12)], [(12, 20), (16, 16)]])
    def test_resampling_is_linear_in_frequency(self, src, dst):
        # a map that is piecewise linear in normalised frequency, with its kinks on grid points, must be resampled
        # exactly: A(fy, fx) = 2 - 3|fy| + 1.5 fx (real) and 0.5 fx (imaginary)
        def make(size):
            fy = torch.fft.fftfreq(size[0]).abs().view(-1, 1)
            fx = torch.fft.rfftfreq(size[1]).view(1, -1)
            re = (2 - 3 * fy + 1.5 * fx).expand(size[0], size[1] // 2 + 1)
            im = (0.5 * fx).expand_as(re)
            return torch.stack([re, im], dim=-1).unsqueeze(0)

        out = resize_spectrum_map(make(src), list(src), list(dst))
        torch.testing.assert_close(out, make(dst), atol=1e-5, rtol=1e-5)

    def test_resampling_same_size_is_exact(self):
        w = torch.randn(2, 9, 5, 2)
        torch.testing.assert_close(resize_spectrum_map(w, [9, 8], [9, 8]), w, atol=1e-6, rtol=0)

    def test_dtype_and_autocast(self):
        ffp = FFParser(2, 4, 16)
        x = torch.randn(2, 4, 16, 16)
        y16 = ffp(x.to(torch.bfloat16))
        self.assertEqual(y16.dtype, torch.bfloat16)
        torch.testing.assert_close(y16.float(), x.to(torch.bfloat16).float(), atol=2e-2, rtol=2e-2)
        self.assertEqual(ffp(x.half()).dtype, torch.float16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            self.assertEqual(ffp(x).dtype, torch.float32)
            self.assertEqual(ffp(x.to(torch.bfloat16)).dtype, torch.bfloat16)

    def test_gradient_reaches_map(self):
        ffp = FFParser(2, 2, 8)
        x = torch.randn(2, 2, 12, 12)  # resampled path
        loss = (ffp(x) - torch.randn_like(x)).pow(2).mean()
        loss.backward()
        self.assertIsNotNone(ffp.weight.grad)
        self.assertGreater(ffp.weight.grad.abs().sum().item(), 0.0)
        self.assertGreater(ffp.weight.grad[..., 1].abs().sum().item(), 0.0)  # imaginary part too

    def test_script(self):
        ffp = FFParser(2, 3, (8, 8))
        with torch.no_grad():
            ffp.weight.normal_()
        scripted = torch.jit.script(ffp)
        for size in [(8, 8), (12, 6)]:
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(scripted(x), ffp(x))

    @parameterized.expand(
        [
            [{"spatial_dims": 4, "channels": 2}, "spatial_dims"],
            [{"spatial_dims": 2, "channels": 0}, "channels"],
            [{"spatial_dims": 2, "channels": 2, "map_size": (8, 8, 8)}, "map_size"],
            [{"spatial_dims": 2, "channels": 2, "map_size": 0}, "map_size"],
        ]
    )
    def test_bad_arguments(self, kwargs, name):
        with self.assertRaisesRegex(ValueError, name):
            FFParser(**kwargs)

    def test_bad_input(self):
        ffp = FFParser(2, 3, 8)
        with self.assertRaisesRegex(ValueError, "channels"):
            ffp(torch.randn(1, 4, 8, 8))
        with self.assertRaisesRegex(ValueError, "dimensions"):
            ffp(torch.randn(1, 3, 8, 8, 8))


if __name__ == "__main__":
    unittest.main()
