# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""TorchScript (as MONAI's ``ckpt_export`` does), ``torch.export`` and ONNX export of the networks."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import unittest

import torch
from parameterized import parameterized

from medsegdiff_monai.networks.blocks import FFParser
from medsegdiff_monai.networks.nets import MedSegDiffUNet

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def _randomise_zero_init(net: torch.nn.Module) -> None:
    """Give zero-initialised layers values so the compared outputs are not trivially zero."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# preset, spatial size for a forward check (None: script only), ff-parser reference size (small: fast to build)
SCRIPT_CASES = [
    ["XS", (32, 32)],
    ["S", (16, 32)],
    ["B", (32, 32)],
    ["L", None],
    ["++", None],
]


class TestNetworkExport(unittest.TestCase):
    def setUp(self) -> None:
        self._num_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small inputs; avoids OpenMP stalls on a shared 2-core machine

    def tearDown(self) -> None:
        torch.set_num_threads(self._num_threads)

    @parameterized.expand(SCRIPT_CASES)
    def test_script_presets(self, preset, size):
        net = MedSegDiffUNet.from_preset(preset, in_channels=4, out_channels=1, ff_parser_input_size=64).eval()
        if size is None:  # big presets: scripting only
            self.assertIsInstance(torch.jit.script(net), torch.jit.ScriptModule)
            return
        _randomise_zero_init(net)
        scripted = torch.jit.script(net)
        x, image = torch.randn(2, 1, *size), torch.randn(2, 4, *size)
        with torch.no_grad():
            ref = net(x, torch.tensor([4, 400]), image)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, f"{preset}.ts")
                torch.jit.save(scripted, path)
                loaded = torch.jit.load(path)
            torch.testing.assert_close(loaded(x, torch.tensor([4, 400]), image), ref, atol=1e-5, rtol=1e-5)
            # (1,) float timesteps and concat mode in the scripted module too
            torch.testing.assert_close(
                loaded(torch.cat([x, image], 1), torch.tensor([4.0])), net(x, torch.tensor([4, 4]), image)
            )
            with self.assertRaisesRegex(Exception, "must be divisible by"):  # the scripted checks still raise
                loaded(torch.randn(2, 1, 18, 18), torch.tensor([4.0]), torch.randn(2, 4, 18, 18))
        self.assertGreater(ref.abs().max().item(), 0.0)

    @parameterized.expand([[2, (32, 32)], [3, (16, 16, 8)]])
    def test_torch_export(self, spatial_dims, size):
        net = MedSegDiffUNet.from_preset("XS", spatial_dims, in_channels=2, out_channels=1, ff_parser_input_size=16)
        net.eval()
        _randomise_zero_init(net)
        args = (torch.randn(2, 1, *size), torch.tensor([3, 700]), torch.randn(2, 2, *size))
        program = torch.export.export(net, args)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(*args), net(*args), atol=1e-5, rtol=1e-5)

    @unittest.skipUnless(HAS_ONNX, "onnx, onnxscript and onnxruntime are needed")
    def test_onnx_medsegdiff_unet(self):
        import onnxruntime as ort

        torch.manual_seed(0)
        net = MedSegDiffUNet.from_preset(
            "XS", in_channels=2, out_channels=1, ff_parser_input_size=32, attention_levels=(False, False, True)
        ).eval()
        _randomise_zero_init(net)
        # 48x32 is not the FF-Parser reference size: the exported graph includes the map resampling
        x, t, image = torch.randn(2, 1, 48, 32), torch.tensor([3, 700]), torch.randn(2, 2, 48, 32)
        with torch.no_grad():
            ref = net(x, t, image).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "net.onnx")
            program = torch.onnx.export(net, (x, t, image), input_names=["x", "timesteps", "context"])
            program.save(path)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = session.run(None, {"x": x.numpy(), "timesteps": t.numpy(), "context": image.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(out), torch.from_numpy(ref), atol=1e-4, rtol=1e-4)
        self.assertGreater(abs(ref).max(), 0.0)

    @unittest.skipUnless(HAS_ONNX, "onnx, onnxscript and onnxruntime are needed")
    def test_onnx_ff_parser(self):
        import onnxruntime as ort

        ffp = FFParser(2, 3, (16, 16)).eval()
        with torch.no_grad():
            ffp.weight.normal_()
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            ref = ffp(x)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ffp.onnx")
            torch.onnx.export(ffp, (x,), input_names=["x"]).save(path)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = session.run(None, {"x": x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-4, rtol=1e-4)


if __name__ == "__main__":
    unittest.main()
