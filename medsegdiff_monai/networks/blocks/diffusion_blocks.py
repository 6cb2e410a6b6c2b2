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
"""Timestep-conditioned residual block, spatial self-attention and upsampling used by :class:`MedSegDiffUNet`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.networks.nets.diffusion_model_unet import zero_module
from torch import nn

__all__ = ["TimestepResBlock", "SpatialSelfAttention", "UpsampleConv"]


class TimestepResBlock(nn.Module):
    """Residual block with timestep conditioning, as described in MedSegDiff Sec. II-C.

    Two convolutional blocks, each GroupNorm -> SiLU -> 3x3 convolution; the timestep embedding goes through
    SiLU -> Linear and is added to the output of the first block; dropout sits before the second convolution, which is
    zero-initialised so that the block starts as its skip path. The skip path is the identity, or a 1x1 convolution
    when the channel count changes.

    It is MONAI's ``DiffusionUNetResnetBlock`` (``monai.networks.nets.diffusion_model_unet``) with the same parameter
    names and layout, plus ``dropout`` (MONAI's block has none) and without its built-in up/down sampling.

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        temb_channels: size of the timestep embedding.
        norm_num_groups: number of groups of the group normalisations.
        norm_eps: epsilon of the group normalisations.
        dropout: dropout probability before the second convolution.

    Shapes:
        ``x``: ``(B, in_channels, *spatial)``; ``emb``: ``(B, temb_channels)``; output ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.norm1 = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=norm_eps, affine=True)
        self.nonlinearity = nn.SiLU()
        self.conv1 = Convolution(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, kernel_size=3, conv_only=True
        )
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(num_groups=norm_num_groups, num_channels=out_channels, eps=norm_eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(
            Convolution(
                spatial_dims=spatial_dims,
                in_channels=out_channels,
                out_channels=out_channels,
                kernel_size=3,
                conv_only=True,
            )
        )
        self.skip_connection: nn.Module
        if in_channels == out_channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = Convolution(
                spatial_dims=spatial_dims,
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=1,
                padding=0,
                conv_only=True,
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: features ``(B, in_channels, *spatial)``.
            emb: timestep embedding ``(B, temb_channels)``.

        Returns:
            ``(B, out_channels, *spatial)``.
        """
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        temb = self.time_emb_proj(self.nonlinearity(emb))
        for _ in range(self.spatial_dims):
            temb = temb.unsqueeze(-1)
        h = h + temb
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        return self.skip_connection(x) + h


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    GroupNorm, then every position is a token of ``C`` features; queries, keys and values come from one linear map,
    ``torch.nn.functional.scaled_dot_product_attention`` mixes them and a zero-initialised output projection returns
    to ``C`` channels, so the block starts as the identity.

    Functionally the same as ``monai.networks.blocks.SpatialAttentionBlock`` (which the MONAI diffusion UNet uses);
    that block needs the optional ``einops`` package at construction, which this project does not require, and its
    output projection is not zero-initialised.

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        num_channels: number of channels ``C``; must be divisible by ``num_head_channels``.
        num_head_channels: channels per attention head.
        norm_num_groups: number of groups of the group normalisation.
        norm_eps: epsilon of the group normalisation.

    Shapes:
        input and output ``(B, C, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_channels: int,
        num_head_channels: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_head_channels < 1 or num_channels % num_head_channels != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_head_channels ({num_head_channels})."
            )
        self.spatial_dims = spatial_dims
        self.num_heads = num_channels // num_head_channels
        self.head_channels = num_head_channels
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=num_channels, eps=norm_eps, affine=True)
        self.qkv = nn.Linear(num_channels, 3 * num_channels)
        self.proj = zero_module(nn.Linear(num_channels, num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, *spatial)``.

        Returns:
            ``(B, C, *spatial)``.
        """
        b, c = x.shape[0], x.shape[1]
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        n = tokens.shape[1]
        qkv = self.qkv(tokens).reshape(b, n, 3, self.num_heads, self.head_channels).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_channels)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return x + out.transpose(1, 2).reshape(x.shape)


class UpsampleConv(nn.Module):
    """Learned upsampling by 2: a transposed convolution with kernel 2 and stride 2 (every output voxel gets exactly
    one kernel tap, so there is no checkerboard overlap), changing the channel count so that the decoder narrows as
    resolution grows.

    MONAI's diffusion UNet upsamples with nearest-neighbour interpolation followed by a 3x3 convolution at the output
    resolution; at the full-resolution level of a 256x256 network that convolution alone costs more than the whole
    bottleneck, while this layer costs ``9x`` less (``H*W*C_in*C_out`` multiply-adds at the output resolution).

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.

    Shapes:
        input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *(2 * spatial))``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, out_channels, *(2 * spatial))``.
        """
        return self.conv(x)
