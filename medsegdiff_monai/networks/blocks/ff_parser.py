# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""FF-Parser: a learnable frequency-domain filter (MedSegDiff, Wu et al. 2022, eqs. 4-6)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FFParser", "rfft_shape", "resize_spectrum_map", "signal_size_of_map"]


def rfft_shape(spatial_size: Sequence[int]) -> list[int]:
    """Shape of the one-sided spectrum that ``torch.fft.rfftn`` returns for a real signal of ``spatial_size``.

    Args:
        spatial_size: spatial size of the real signal, e.g. ``(H, W)`` or ``(H, W, D)``.

    Returns:
        ``[*spatial_size[:-1], spatial_size[-1] // 2 + 1]``.
    """
    size = [int(s) for s in spatial_size]
    return size[:-1] + [size[-1] // 2 + 1]


def _centre_full_axis(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """FFT order -> symmetric centred order along a full (two-sided) frequency axis of signal length ``n``.

    FFT order is ``[0, 1, .., -2, -1]``. The result runs from the most negative to the most positive frequency, so
    linear interpolation between neighbours is interpolation in frequency. For even ``n`` the Nyquist bin (which is
    both ``-n/2`` and ``+n/2``) is written at both ends, which puts DC exactly in the middle: length ``n + 1``.
    For odd ``n`` the result has length ``n`` and is already symmetric.
    """
    p = (n + 1) // 2  # number of non-negative frequencies (DC included)
    out = torch.cat([x.narrow(dim, p, n - p), x.narrow(dim, 0, p)], dim=dim)
    if n % 2 == 0:
        out = torch.cat([out, x.narrow(dim, p, 1)], dim=dim)
    return out


def _uncentre_full_axis(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Inverse of :func:`_centre_full_axis` for a signal length ``n`` (drops the duplicated Nyquist bin)."""
    p = (n + 1) // 2
    neg = n - p  # number of negative frequencies
    return torch.cat([x.narrow(dim, neg, p), x.narrow(dim, 0, neg)], dim=dim)


def resize_spectrum_map(weight: torch.Tensor, source_size: list[int], target_size: list[int]) -> torch.Tensor:
    """Resample a one-sided (``rfftn``-layout) spectral map to the spectrum of another signal size.

    Interpolation is linear in normalised frequency (cycles per sample): along the full axes the map is brought from
    FFT order to a centred, symmetric order (DC in the middle, Nyquist at both ends), along the last (one-sided) axis
    DC and the highest frequency are its ends; ``align_corners=True`` then maps DC to DC and the highest frequency to
    the highest frequency. Interpolation weights sum to one, so a constant map stays exactly constant (an identity
    filter stays the identity at any size).

    Args:
        weight: map of shape ``(C, *rfft_shape(source_size), 2)`` (last axis: real and imaginary part).
        source_size: spatial signal size the map was made for (not the spectrum size).
        target_size: spatial signal size of the input to be filtered.

    Returns:
        map of shape ``(C, *rfft_shape(target_size), 2)``.
    """
    nd = len(source_size)
    c = weight.shape[0]
    # (C, *freq, 2) -> (1, 2C, *freq): interpolate real and imaginary parts as separate channels.
    perm = [0, nd + 1] + [i + 1 for i in range(nd)]
    x = weight.permute(perm).reshape([1, 2 * c] + list(weight.shape[1 : nd + 1]))
    sym_target: list[int] = []
    for i in range(nd - 1):
        x = _centre_full_axis(x, i + 2, source_size[i])
        t = target_size[i]
        sym_target.append(t + 1 if t % 2 == 0 else t)
    sym_target.append(target_size[nd - 1] // 2 + 1)
    if nd == 1:
        x = F.interpolate(x, size=sym_target, mode="linear", align_corners=True)
    elif nd == 2:
        x = F.interpolate(x, size=sym_target, mode="bilinear", align_corners=True)
    else:
        x = F.interpolate(x, size=sym_target, mode="trilinear", align_corners=True)
    for i in range(nd - 1):
        x = _uncentre_full_axis(x, i + 2, target_size[i])
    # (1, 2C, *freq) -> (C, *freq, 2)
    x = x.reshape([c, 2] + list(x.shape[2:]))
    inv = [0] + [i + 2 for i in range(nd)] + [1]
    return x.permute(inv)


def signal_size_of_map(freq_shape: Sequence[int]) -> list[int]:
    """The signal size a one-sided (``rfftn``-layout) map was most likely made for, from the map's spectrum shape.

    The full axes give their size exactly; the last (one-sided) axis of length ``n`` comes from a signal of
    ``2 (n - 1)`` or ``2 (n - 1) + 1`` samples: the odd size is chosen when the first axis is odd and has the same
    one-sided length (a square odd map), else the even size (``1`` for ``n = 1``).

    Args:
        freq_shape: the spectrum's shape ``rfft_shape(signal size)``, without channel and real/imaginary axes.

    Returns:
        the signal size.
    """
    size = [int(s) for s in freq_shape]
    n = size[-1]
    last = 1 if n == 1 else 2 * (n - 1)
    if len(size) > 1 and size[0] % 2 == 1 and size[0] // 2 + 1 == n:
        last = size[0]
    return size[:-1] + [last]


class FFParser(nn.Module):
    """Learnable Fourier-space filter of MedSegDiff (paper: Wu et al., "MedSegDiff: Medical Image Segmentation with
    Diffusion Probabilistic Model", arXiv:2211.00611, Sec. II-B, eqs. 4-6).

    For a feature map ``m`` with ``C`` channels:

    - eq. 4: ``M = FFT(m)`` over the spatial axes (here ``torch.fft.rfftn`` with ``norm="ortho"``);
    - eq. 5: ``M' = A * M`` with a learnable complex map ``A``, one value per channel and frequency;
    - eq. 6: ``m' = iFFT(M')`` (``torch.fft.irfftn`` with ``s=`` the input's spatial size, so odd sizes round-trip).

    Because the spectrum of a real signal is Hermitian, only the one-sided (``rfftn``) half is stored and modulated;
    this is the same as a full map with ``A(-f) = conj(A(f))`` and keeps the output real without discarding an
    imaginary part. ``A`` is stored as a real parameter ``weight`` of shape ``(C, *rfft_shape(map_size), 2)``
    (real and imaginary part) and the complex product is written out on real tensors, so the block scripts with
    ``torch.jit.script`` and exports with ``torch.export`` and the ONNX exporter.

    Departures from the official MedSegDiff code, and why:

    - the official weights are hard-coded for 256x256 inputs (the network crashes at other sizes); here the map is
      made for ``map_size`` and, when an input has another size, resampled linearly in normalised frequency (real and
      imaginary parts, see :func:`resize_spectrum_map`) to the input's spectrum, so any input size works. Size the map
      for the training size: only the map entries the resampling reads get gradient (for a map twice the input
      size, about one in ``2 ** spatial_dims``). A state dict with a map of another size is resampled to
      ``map_size`` on loading (with a warning), which keeps the function at ``map_size`` the same;
    - the official map is initialised near zero (``randn * 0.02``), which at the start of training suppresses almost
      the whole conditioning feature; here ``A`` starts as exactly ``1 + 0j`` everywhere, so the block starts as the
      identity (up to FFT round-off) and learns which frequencies to damp. A constant map stays constant under the
      resampling, so the identity start holds at every input size.

    The FFT runs in float32 whatever the input dtype (``torch.fft`` rejects bf16/fp16 on CPU), also under
    ``torch.autocast``; the result is cast back to the input dtype.

    Args:
        spatial_dims: number of spatial dimensions of the input, 1, 2 or 3.
        channels: number of feature channels ``C``.
        map_size: spatial size of the feature map the learnable map is made for (int: same for every axis). Inputs of
            that size are filtered with the stored map as is; other sizes with a resampled copy.

    Shapes:
        input ``(B, C, *spatial)``, output the same shape and dtype.

    Example::

        ffp = FFParser(spatial_dims=2, channels=32, map_size=64)
        y = ffp(torch.randn(2, 32, 64, 64))  # == input at initialisation
    """

    def __init__(self, spatial_dims: int, channels: int, map_size: Sequence[int] | int = 64) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"FFParser: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if int(channels) < 1:
            raise ValueError(f"FFParser: channels must be a positive integer, got {channels}.")
        if isinstance(map_size, int):
            size = [int(map_size)] * spatial_dims
        else:
            size = [int(s) for s in map_size]
        if len(size) != spatial_dims:
            raise ValueError(
                f"FFParser: map_size must be an int or have spatial_dims={spatial_dims} entries, got {map_size}."
            )
        if any(s < 1 for s in size):
            raise ValueError(f"FFParser: map_size entries must be positive, got {map_size}.")
        self.spatial_dims = spatial_dims
        self.channels = int(channels)
        self.map_size = size
        self.freq_shape = rfft_shape(size)
        weight = torch.zeros([self.channels] + self.freq_shape + [2])
        weight[..., 0] = 1.0  # identity filter: 1 + 0j
        self.weight = nn.Parameter(weight)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        # a map made for another size (e.g. a checkpoint of a network whose maps were sized for 256 and that was
        # trained at 128) is resampled to this block's map size: the same resampling the forward pass applied to it
        # at the block's size, so the network computes the same function at that size
        key = prefix + "weight"
        w = state_dict.get(key)
        if (
            isinstance(w, torch.Tensor)
            and w.shape != self.weight.shape
            and w.dim() == self.weight.dim()
            and w.shape[0] == self.channels
            and w.shape[-1] == 2
        ):
            source = signal_size_of_map(w.shape[1:-1])
            warnings.warn(
                f"FFParser {prefix or '(root)'}: the checkpoint's map was made for size {source}; resampled to this "
                f"block's map size {self.map_size}.",
                stacklevel=2,
            )
            state_dict[key] = resize_spectrum_map(w.float(), source, self.map_size).to(w.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, channels={self.channels}, map_size={tuple(self.map_size)}"

    def spectral_map(self, spatial_size: list[int]) -> torch.Tensor:
        """The complex map (as real/imaginary pairs) used for an input of ``spatial_size``.

        Args:
            spatial_size: spatial size of the input.

        Returns:
            tensor of shape ``(C, *rfft_shape(spatial_size), 2)``, float32.
        """
        w = self.weight.float()
        if spatial_size != self.map_size:
            w = resize_spectrum_map(w, self.map_size, spatial_size)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map ``(B, C, *spatial)``, any floating dtype.

        Returns:
            filtered feature map, same shape and dtype as ``x``.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"FFParser: expected input with {self.spatial_dims + 2} dimensions (B, C, *spatial), got {x.dim()}."
            )
        if x.shape[1] != self.channels:
            raise ValueError(f"FFParser: expected {self.channels} channels, got {x.shape[1]}.")
        in_dtype = x.dtype
        spatial_size: list[int] = [int(s) for s in x.shape[2:]]
        dims: list[int] = [i + 2 for i in range(self.spatial_dims)]
        spec = torch.fft.rfftn(x.float(), dim=dims, norm="ortho")
        s = torch.view_as_real(spec)  # (B, C, *freq, 2)
        a = self.spectral_map(spatial_size)  # (C, *freq, 2)
        s_re, s_im = s[..., 0], s[..., 1]
        a_re, a_im = a[..., 0], a[..., 1]
        out = torch.stack([s_re * a_re - s_im * a_im, s_re * a_im + s_im * a_re], dim=-1)
        y = torch.fft.irfftn(torch.view_as_complex(out), s=spatial_size, dim=dims, norm="ortho")
        return y.to(in_dtype)
