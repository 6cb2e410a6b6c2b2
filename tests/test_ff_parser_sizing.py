# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""FF-Parser maps sized from the training size (``image_size``): every map entry is trained, old checkpoints load."""

from __future__ import annotations

import warnings

import pytest
import torch

from medsegdiff_monai.networks.blocks import FFParser
from medsegdiff_monai.networks.blocks.ff_parser import rfft_shape, signal_size_of_map
from medsegdiff_monai.networks.nets import MedSegDiffUNet

# preset B's structure (6 levels, 5 downsamplings, FF-Parser at levels 2 and 3), narrow so it runs in a second
TINY_B = {"channels": (8, 8, 8, 8, 8, 8), "num_head_channels": 8}


def _ff_parsers(net: MedSegDiffUNet) -> list[FFParser]:
    return [m for m in net.modules() if isinstance(m, FFParser)]


def _perturb(net: MedSegDiffUNet, seed: int = 0) -> None:
    """Random output convolution (zero at init, which blocks every gradient) and random FF-Parser maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.out.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for f in _ff_parsers(net):
            f.weight.add_(torch.randn(f.weight.shape, generator=g) * 0.1)


def _used_entries(f: FFParser) -> torch.Tensor:
    """The map entries that can change the output: all but the imaginary parts at the self-conjugate frequencies
    (DC and Nyquist along every even axis), whose spectrum is real, so ``irfftn`` drops what they contribute."""
    used = torch.ones(f.weight.shape, dtype=torch.bool)
    h, w = f.map_size
    for i in [0] + ([h // 2] if h % 2 == 0 else []):
        for j in [0] + ([w // 2] if w % 2 == 0 else []):
            used[:, i, j, 1] = False
    return used


def _grad_coverage(net: MedSegDiffUNet, size: int) -> list[float]:
    """Share of every FF-Parser map's usable entries with a non-zero gradient after one backward pass at ``size``."""
    torch.manual_seed(0)
    x, image = torch.randn(2, 1, size, size), torch.randn(2, 4, size, size)
    net(x=x, timesteps=torch.tensor([3, 700]), context=image).square().mean().backward()
    return [float((f.weight.grad.abs() > 0)[_used_entries(f)].float().mean()) for f in _ff_parsers(net)]


def test_maps_sized_from_image_size_get_gradient_everywhere():
    net = MedSegDiffUNet.from_preset("B", image_size=[128, 128], **TINY_B)
    assert [f.map_size for f in _ff_parsers(net)] == [[32, 32], [16, 16]]  # levels 2, 3: 128 // 4, 128 // 8
    _perturb(net)
    assert _grad_coverage(net, 128) == [1.0, 1.0]


def test_default_maps_at_half_size_get_gradient_on_a_quarter():
    """The issue: preset B's maps are made for 256; trained at 128 only about a quarter of each map learns."""
    net = MedSegDiffUNet.from_preset("B", **TINY_B)
    assert [f.map_size for f in _ff_parsers(net)] == [[64, 64], [32, 32]]
    _perturb(net)
    for share in _grad_coverage(net, 128):
        assert 0.2 < share < 0.35


def test_image_size_rules():
    assert MedSegDiffUNet.from_preset("XS").ff_parser_input_size == [64, 64]  # the preset default is kept
    assert MedSegDiffUNet.from_preset("XS", image_size=32).ff_parser_input_size == [32, 32]
    # an explicit ff_parser_input_size wins over image_size
    net = MedSegDiffUNet.from_preset("XS", image_size=32, ff_parser_input_size=16)
    assert net.ff_parser_input_size == [16, 16] and net.image_size == [32, 32]
    with pytest.raises(ValueError, match="image_size"):
        MedSegDiffUNet.from_preset("B", image_size=[100, 128], **TINY_B)  # not a multiple of 2 ** 5
    with pytest.raises(ValueError, match="image_size"):
        MedSegDiffUNet.from_preset("XS", image_size=(32, 32, 32))


@pytest.mark.parametrize("size", [[64, 64], [63, 63], [16, 30], [1, 1], [12, 10, 8]])
def test_signal_size_of_map(size):
    assert signal_size_of_map(rfft_shape(size)) == size


def test_old_checkpoint_loads_and_computes_the_same_at_the_training_size():
    old = MedSegDiffUNet.from_preset("B", **TINY_B).eval()  # maps for 256, as trained at 128 before image_size
    _perturb(old, seed=1)
    new = MedSegDiffUNet.from_preset("B", image_size=128, **TINY_B).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new.load_state_dict(old.state_dict())
    assert sum("resampled" in str(w.message) for w in caught) == 2
    torch.manual_seed(0)
    x, image = torch.randn(1, 1, 128, 128), torch.randn(1, 4, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(new(x, torch.tensor([5]), image), old(x, torch.tensor([5]), image),
                                   rtol=1e-4, atol=1e-5)
        # any size still works
        assert new(x[..., :64, :64], torch.tensor([5]), image[..., :64, :64]).shape == (1, 1, 64, 64)
