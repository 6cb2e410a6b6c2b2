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
"""Attentive fusion of MedSegDiff's dynamic conditional encoding (Wu et al. 2022, eq. 3)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentiveFusion"]


class AttentiveFusion(nn.Module):
    """Attentive-like fusion of the image (condition) features with the noisy-mask features, MedSegDiff eq. 3
    (Wu et al., arXiv:2211.00611, Sec. II-A)::

        A(m_I, m_x) = (LN(m_I) * LN(m_x)) * m_I        (all products element-wise)

    The two layer-normalised maps multiply into an affinity map, which then re-weights the image features.

    Normalisation axes: each ``LN`` is ``nn.GroupNorm(1, C)``, i.e. for every sample the statistics are taken over
    the channels *and* all spatial positions together ("LayerNorm over C, H, W" in the paper's convention), followed
    by a learnable per-channel scale and shift. A ``torch.nn.LayerNorm`` over the spatial axes would have to be built
    for one input size (its ``normalized_shape`` and affine parameters would be ``(C, H, W)``), so the block would
    only work at that size; GroupNorm(1, C) computes the same statistics at any spatial size and dimensionality.
    The two norms are separate modules with their own learnable affine parameters.

    Unlike the official MedSegDiff code's first version, the norms are present and all parameters are created in the
    constructor (the official V1 fusion has no layer norm and builds a 1x1 convolution inside ``forward`` on each
    call, so that convolution is never trained).

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3 (only checked against the input).
        channels: number of channels ``C`` of both feature maps.
        eps: epsilon of the normalisations.

    Shapes:
        ``m_image`` and ``m_mask``: ``(B, C, *spatial)``, same shape; output: ``(B, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"AttentiveFusion: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if int(channels) < 1:
            raise ValueError(f"AttentiveFusion: channels must be a positive integer, got {channels}.")
        self.spatial_dims = spatial_dims
        self.channels = int(channels)
        self.norm_image = nn.GroupNorm(1, self.channels, eps=eps, affine=True)
        self.norm_mask = nn.GroupNorm(1, self.channels, eps=eps, affine=True)

    def forward(self, m_image: torch.Tensor, m_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            m_image: image (condition) encoder features ``m_I``, ``(B, C, *spatial)``.
            m_mask: noisy-mask encoder features ``m_x`` (after the FF-Parser in MedSegDiff), same shape.

        Returns:
            the fused image features ``(B, C, *spatial)``.
        """
        if m_image.shape != m_mask.shape:
            raise ValueError(
                f"AttentiveFusion: m_image and m_mask must have the same shape, got {list(m_image.shape)} "
                f"and {list(m_mask.shape)}."
            )
        if m_image.dim() != self.spatial_dims + 2 or m_image.shape[1] != self.channels:
            raise ValueError(
                f"AttentiveFusion: expected (B, {self.channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {list(m_image.shape)}."
            )
        affinity = self.norm_image(m_image) * self.norm_mask(m_mask)
        return affinity * m_image
