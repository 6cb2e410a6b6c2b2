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
"""The MedSegDiff conditional ResUNet (Wu et al., arXiv:2211.00611) as a MONAI-style network."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import DiffusionUnetDownsample, get_timestep_embedding, zero_module
from monai.utils import ensure_tuple_rep
from torch import nn

from ..blocks.attentive_fusion import AttentiveFusion
from ..blocks.diffusion_blocks import SpatialSelfAttention, TimestepResBlock, UpsampleConv
from ..blocks.ff_parser import FFParser

__all__ = ["MedSegDiffUNet", "MEDSEGDIFF_PRESETS"]


# Widths put the channels at low resolution: a 3x3 convolution costs H*W*9*C_in*C_out, so a full-resolution level of
# 16 channels at 256x256 costs as much as a 256-channel level at 16x16. The paper gives only the number of
# downsamplings of S/B/L/++ (4/5/6/6); widths, block counts and attention levels below are this project's choice,
# sized for CPU budgets (B: forward ~17 GFLOP per 256x256 image); see docs/model_card.md.
MEDSEGDIFF_PRESETS: dict[str, dict[str, Any]] = {
    # tiny: CPU demos and tests (trains a 32x32 toy task in well under a minute on 2 cores)
    "XS": {
        "channels": (16, 32, 64),
        "num_res_blocks": 1,
        "attention_levels": (False, False, False),
        "norm_num_groups": 8,
        "num_head_channels": 32,
        "ff_parser_input_size": 64,
    },
    "S": {
        "channels": (16, 24, 48, 96, 192),
        "num_res_blocks": 1,
        "attention_levels": (False, False, False, False, True),
        "norm_num_groups": 8,
        "num_head_channels": 32,
        "ff_parser_input_size": None,
    },
    "B": {
        "channels": (16, 32, 64, 128, 192, 256),
        "num_res_blocks": (1, 1, 1, 1, 2, 2),
        "attention_levels": (False, False, False, False, True, True),
        "norm_num_groups": 8,
        "num_head_channels": 32,
        "ff_parser_input_size": None,
    },
    "L": {
        "channels": (32, 32, 64, 128, 256, 384, 512),
        "num_res_blocks": (1, 1, 2, 2, 2, 2, 2),
        "attention_levels": (False, False, False, False, True, True, True),
        "norm_num_groups": 16,
        "num_head_channels": 64,
        "ff_parser_input_size": None,
    },
    "++": {
        "channels": (32, 64, 128, 192, 256, 512, 512),
        "num_res_blocks": 2,
        "attention_levels": (False, False, False, True, True, True, True),
        "norm_num_groups": 16,
        "num_head_channels": 64,
        "ff_parser_input_size": None,
    },
}


class _EncoderStage(nn.Module):
    """Residual blocks (each optionally followed by self-attention) at one resolution; returns every block output."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_res_blocks: int,
        with_attn: bool,
        num_head_channels: int,
        norm_num_groups: int,
        norm_eps: float,
        dropout: float,
    ) -> None:
        super().__init__()
        resnets: list[nn.Module] = []
        attentions: list[nn.Module] = []
        for i in range(num_res_blocks):
            resnets.append(
                TimestepResBlock(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    temb_channels,
                    norm_num_groups=norm_num_groups,
                    norm_eps=norm_eps,
                    dropout=dropout,
                )
            )
            attentions.append(
                SpatialSelfAttention(spatial_dims, out_channels, num_head_channels, norm_num_groups, norm_eps)
                if with_attn
                else nn.Identity()
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outputs: list[torch.Tensor] = []
        for resnet, attn in zip(self.resnets, self.attentions):
            h = attn(resnet(h, emb))
            outputs.append(h)
        return h, outputs


class _DualEncoderLevel(nn.Module):
    """One level of the two encoders (image I and noisy mask x_t), with the optional dynamic conditional encoding.

    At a conditioning level the mask features of the level's last block go through the FF-Parser and are fused into
    the image features with :class:`AttentiveFusion` (paper eq. 3); the fused image features continue down the image
    encoder. Skip features for the decoder are the sums ``image + mask`` of every block output and of the downsampled
    output (paper eq. 2 applied at every scale).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_res_blocks: int,
        with_attn: bool,
        num_head_channels: int,
        norm_num_groups: int,
        norm_eps: float,
        dropout: float,
        fuse: bool,
        ff_parser_map_size: list[int] | None,
    ) -> None:
        super().__init__()
        args = (spatial_dims, in_channels, out_channels, temb_channels, num_res_blocks, with_attn, num_head_channels)
        self.image_stage = _EncoderStage(*args, norm_num_groups, norm_eps, dropout)
        self.mask_stage = _EncoderStage(*args, norm_num_groups, norm_eps, dropout)
        self.ff_parser: FFParser | None = None
        self.fusion: AttentiveFusion | None = None
        self.fuses = bool(fuse)
        if fuse:
            if ff_parser_map_size is not None:
                self.ff_parser = FFParser(spatial_dims, out_channels, ff_parser_map_size)
            self.fusion = AttentiveFusion(spatial_dims, out_channels)
        self.image_downsample = DiffusionUnetDownsample(spatial_dims, out_channels, use_conv=True)
        self.mask_downsample = DiffusionUnetDownsample(spatial_dims, out_channels, use_conv=True)

    def forward(
        self,
        h_image: torch.Tensor,
        h_mask: torch.Tensor,
        emb: torch.Tensor,
        emb_image: torch.Tensor,
        repeats: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            h_image: image features, ``(B // repeats, C, *spatial)``.
            h_mask: mask features, ``(B, C, *spatial)``.
            emb: time embedding of the mask rows, ``(B, temb)``.
            emb_image: time embedding of the image rows, ``(B // repeats, temb)``.
            repeats: number of consecutive mask rows sharing one image row (1 at a fusion level: the fusion makes
                the image features depend on the mask).
        """
        h_image, out_image = self.image_stage(h_image, emb_image)
        h_mask, out_mask = self.mask_stage(h_mask, emb)
        fusion = self.fusion
        if fusion is not None:
            condition = h_mask
            ff_parser = self.ff_parser
            if ff_parser is not None:
                condition = ff_parser(condition)
            h_image = fusion(h_image, condition)
            out_image[-1] = h_image
        skips: list[torch.Tensor] = []
        for a, b in zip(out_image, out_mask):
            skips.append(_add_shared(a, b, repeats))
        h_image = self.image_downsample(h_image)
        h_mask = self.mask_downsample(h_mask)
        skips.append(_add_shared(h_image, h_mask, repeats))
        return h_image, h_mask, skips


def _repeat_rows(h: torch.Tensor, repeats: int) -> torch.Tensor:
    """``h.repeat_interleave(repeats, 0)`` in ``h``'s memory format (``repeat_interleave`` returns a contiguous
    tensor; a channels-first copy of channels-last features would make the next GroupNorm round differently)."""
    out = h.repeat_interleave(repeats, dim=0)
    if h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    elif h.dim() == 5 and h.is_contiguous(memory_format=torch.channels_last_3d):
        out = out.contiguous(memory_format=torch.channels_last_3d)
    return out


def _add_shared(image: torch.Tensor, mask: torch.Tensor, repeats: int) -> torch.Tensor:
    """``image + mask`` where image row ``i`` stands for mask rows ``i * repeats .. i * repeats + repeats - 1``.

    A broadcast add, so the result equals ``image.repeat_interleave(repeats, 0) + mask`` element for element
    without materialising the repeated image features.
    """
    if repeats == 1:
        return image + mask
    return (mask.unflatten(0, (image.shape[0], repeats)) + image.unsqueeze(1)).flatten(0, 1)


class _MidBlock(nn.Module):
    """Bottleneck: residual block, optional self-attention, residual block."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        temb_channels: int,
        with_attn: bool,
        num_head_channels: int,
        norm_num_groups: int,
        norm_eps: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.resnet_1 = TimestepResBlock(
            spatial_dims, channels, channels, temb_channels, norm_num_groups, norm_eps, dropout
        )
        self.attention: nn.Module = (
            SpatialSelfAttention(spatial_dims, channels, num_head_channels, norm_num_groups, norm_eps)
            if with_attn
            else nn.Identity()
        )
        self.resnet_2 = TimestepResBlock(
            spatial_dims, channels, channels, temb_channels, norm_num_groups, norm_eps, dropout
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.resnet_2(self.attention(self.resnet_1(h, emb)), emb)


class _DecoderLevel(nn.Module):
    """Decoder level: ``len(skip_channels)`` residual blocks, each on ``cat(h, skip)``, then optional upsampling."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: list[int],
        out_channels: int,
        temb_channels: int,
        with_attn: bool,
        num_head_channels: int,
        norm_num_groups: int,
        norm_eps: float,
        dropout: float,
        upsample_channels: int | None,
    ) -> None:
        super().__init__()
        resnets: list[nn.Module] = []
        attentions: list[nn.Module] = []
        for i, skip_ch in enumerate(skip_channels):
            resnets.append(
                TimestepResBlock(
                    spatial_dims,
                    (in_channels if i == 0 else out_channels) + skip_ch,
                    out_channels,
                    temb_channels,
                    norm_num_groups,
                    norm_eps,
                    dropout,
                )
            )
            attentions.append(
                SpatialSelfAttention(spatial_dims, out_channels, num_head_channels, norm_num_groups, norm_eps)
                if with_attn
                else nn.Identity()
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.upsampler: UpsampleConv | None = None
        if upsample_channels is not None:
            self.upsampler = UpsampleConv(spatial_dims, out_channels, upsample_channels)

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            h = attn(resnet(torch.cat([h, skips.pop()], dim=1), emb))
        upsampler = self.upsampler
        if upsampler is not None:
            h = upsampler(h)
        return h


class MedSegDiffUNet(nn.Module):
    """MedSegDiff noise-prediction network (Wu et al., "MedSegDiff: Medical Image Segmentation with Diffusion
    Probabilistic Model", arXiv:2211.00611, Sec. II): ``eps_theta(x_t, I, t) = D((E^I_t + E^x_t, t), t)`` (eq. 2).

    Architecture, with ``L = len(channels)`` levels and ``L - 1`` downsamplings:

    - timestep embedding: sinusoidal (``monai.networks.nets.diffusion_model_unet.get_timestep_embedding``) of size
      ``channels[0]`` -> Linear -> SiLU -> Linear to ``4 * channels[0]``, given to every residual block;
    - residual blocks (:class:`TimestepResBlock`): GroupNorm, SiLU, conv; the embedding is added after the first
      convolutional block (Sec. II-C); same structure as MONAI's ``DiffusionUNetResnetBlock``, plus dropout;
    - two encoders, one for the image ``I`` (``in_channels``) and one for the noisy mask ``x_t``
      (``out_channels``), each a 3x3 input convolution and levels ``0 .. L-2`` of residual blocks followed by a
      strided-convolution downsampling (MONAI's ``DiffusionUnetDownsample``);
    - dynamic conditional encoding (eq. 3) at ``conditioning_levels``: after the level's blocks, the mask features
      go through an :class:`FFParser` (eqs. 4-6) and are fused into the image features by :class:`AttentiveFusion`;
      the fused features continue down the image encoder;
    - the two encodings are added (``E^I + E^x``) and go through the last encoder stage (level ``L-1``: residual
      blocks at ``channels[-1]``) and a bottleneck (residual block, self-attention if ``attention_levels[-1]``,
      residual block);
    - a UNet decoder (levels ``L-1 .. 0``, ``num_res_blocks[k] + 1`` residual blocks each, a kernel-2 stride-2
      transposed convolution to the next level's width between levels) and GroupNorm -> SiLU -> zero-initialised
      3x3 convolution to ``out_channels`` predict the noise.

    Skip connections carry ``image features + mask features`` of each encoder block and of each downsampling (image
    features after the fusion where there is one; mask features unfiltered, since the paper places the FF-Parser on
    the fusion path only), the same sum as eq. 2 applied at every scale. This keeps the decoder as wide as a
    single-encoder UNet's and gives the decoder the noisy mask at full resolution, which predicting the noise of
    ``x_t`` needs; image-only skips would pass ``x_t`` to the high-resolution decoder levels only through the
    multiplicative fusion.

    Which levels get dynamic conditioning: the paper applies it "on the middle two stages" of its encoder. By
    default (``conditioning_levels=None``) these are the middle two of the ``L - 1`` two-encoder levels, leaning to
    the deeper one when there is no exact middle: levels ``(n-1)//2`` and ``(n-1)//2 + 1`` for ``n = L - 1``
    (XS: 0, 1; S: 1, 2; B, L, ++: 2, 3); when ``n < 2`` all levels.

    The paper's ResNet34 block counts and its widths are not used: the paper gives only the downsampling counts of
    its variants (S/B/L/++: 4/5/6/6); see :data:`MEDSEGDIFF_PRESETS` and :meth:`from_preset`.

    Reuse of MONAI's diffusion UNet (``monai.networks.nets.diffusion_model_unet``): ``get_timestep_embedding``,
    ``DiffusionUnetDownsample`` (strided 3x3 convolution), ``zero_module`` and ``Convolution`` are used as they are.
    Not reused, and why: ``DiffusionUNetResnetBlock`` has no dropout (:class:`TimestepResBlock` is the same block with
    dropout); ``SpatialAttentionBlock`` needs the optional ``einops`` package (:class:`SpatialSelfAttention` is the
    same computation on ``scaled_dot_product_attention``); MONAI's Down/Up blocks apply their residual blocks and
    sampling in one call, leaving no place for the fusion between a level's blocks and its downsampling, and its
    upsampler (nearest + 3x3 convolution at the output resolution) is the most expensive layer of a 256x256 network
    (:class:`UpsampleConv` is a kernel-2 stride-2 transposed convolution).

    Calling convention (keywords of MONAI's ``DiffusionModelUNet``, so ``monai.inferers.DiffusionInferer`` drives
    it unchanged):

    - ``mode="crossattn"``: ``x`` is the noisy mask ``(B, out_channels, *spatial)`` and ``context`` the image
      ``(B, in_channels, *spatial)``;
    - ``mode="concat"``: ``context`` is None and ``x`` is ``(B, out_channels + in_channels, *spatial)``, the noisy
      mask channels first and then the image channels (DiffusionInferer concatenates the condition after the noisy
      input); the network splits them.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of image (condition) channels, e.g. 4 for BraTS (t1, t1ce, t2, flair).
        out_channels: number of mask channels, which is also the number of predicted noise channels.
        channels: feature widths of the levels, ``len(channels) = number of downsamplings + 1`` (at least 2).
        num_res_blocks: residual blocks per encoder level (int, or one per level); the decoder has one more per level.
        attention_levels: per level, whether to add self-attention after each residual block (and in the bottleneck
            for the last level). Use it at low resolution only: its cost grows with the square of the pixel count.
        norm_num_groups: groups of every GroupNorm; every entry of ``channels`` must be divisible by it.
        norm_eps: epsilon of the GroupNorms.
        num_head_channels: channels per attention head (int, or one per level); must divide the width of every level
            with attention.
        dropout: dropout probability in the residual blocks.
        conditioning_levels: indices of the two-encoder levels (``0 .. len(channels) - 2``) with dynamic conditional
            encoding; None for the paper's middle two (see above).
        dynamic_conditioning: if False, no fusion module is built (paper Table II ablation): the encoders meet only
            through the addition before the last stage and the skip sums. The FF-Parser sits on the fusion path, so
            it is not built either and ``ff_parser`` has no effect.
        ff_parser: if False, no FF-Parser is built (the mask features are fused unfiltered).
        ff_parser_input_size: reference input spatial size (int or one per axis) the FF-Parser maps are sized for:
            the map at level ``k`` is made for features of size ``ff_parser_input_size // 2**k`` and is resampled in
            frequency for inputs of any other size. None: ``image_size``, or when that is None too, 256 for 2-D (the
            paper's input size) and 64 for 3-D.
        image_size: the spatial size the network is trained at (int or one per axis), e.g. a bundle's
            ``spatial_size``; must be divisible by ``2 ** (len(channels) - 1)``. It sizes the FF-Parser maps (when
            ``ff_parser_input_size`` is None) so that every entry of the maps is used, and so trained, at that size:
            a map made for another size is resampled to the input's spectrum, and a 256-sized map used at 128x128
            gets gradient on only about a quarter of its entries. Other input sizes still work.
        channels_last: store the convolution weights in channels-last memory format, so that the convolutions run
            channels-last (on CPU ~1.4x faster for this network, most of it at the narrow full-resolution levels,
            where channels-first 16-channel convolutions are 3x slower). Inputs may be in any memory format. Only a
            storage choice: values, state dicts and exports are the same either way.
        self_condition: self-conditioning (Chen et al., "Analog Bits", arXiv 2208.04202; not in the paper): the mask
            encoder also reads the previous step's clean-mask estimate ``x_self_cond`` (``out_channels`` more input
            channels of its first convolution), zeros when there is none (the first sampling step, and the
            training calls without it). :class:`~medsegdiff_monai.inferers.AutocastDiffusionInferer` trains it
            (a share of the steps with an estimate from a gradient-free first pass) and
            :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter` feeds the estimate while sampling.

    Example::

        net = MedSegDiffUNet.from_preset("B", spatial_dims=2, in_channels=4, out_channels=1)
        x_t, image = torch.randn(2, 1, 256, 256), torch.randn(2, 4, 256, 256)
        eps = net(x=x_t, timesteps=torch.tensor([10, 500]), context=image)  # (2, 1, 256, 256)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 192, 256),
        num_res_blocks: Sequence[int] | int = (1, 1, 1, 1, 2, 2),
        attention_levels: Sequence[bool] = (False, False, False, False, True, True),
        norm_num_groups: int = 8,
        norm_eps: float = 1e-6,
        num_head_channels: Sequence[int] | int = 32,
        dropout: float = 0.0,
        conditioning_levels: Sequence[int] | None = None,
        dynamic_conditioning: bool = True,
        ff_parser: bool = True,
        ff_parser_input_size: Sequence[int] | int | None = None,
        channels_last: bool = True,
        image_size: Sequence[int] | int | None = None,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"MedSegDiffUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"MedSegDiffUNet: in_channels (image channels) must be >= 1, got {in_channels}.")
        if out_channels < 1:
            raise ValueError(f"MedSegDiffUNet: out_channels (mask channels) must be >= 1, got {out_channels}.")
        channels = tuple(int(c) for c in channels)
        n_levels = len(channels)
        if n_levels < 2:
            raise ValueError(
                f"MedSegDiffUNet: channels needs at least 2 levels (one downsampling), got channels={channels}."
            )
        if any(c < 1 for c in channels):
            raise ValueError(f"MedSegDiffUNet: channels must be positive, got {channels}.")
        if norm_num_groups < 1 or any(c % norm_num_groups != 0 for c in channels):
            raise ValueError(
                f"MedSegDiffUNet: every entry of channels={channels} must be divisible by "
                f"norm_num_groups={norm_num_groups}."
            )
        if isinstance(num_res_blocks, int):
            num_res_blocks = ensure_tuple_rep(num_res_blocks, n_levels)
        num_res_blocks = tuple(int(n) for n in num_res_blocks)
        if len(num_res_blocks) != n_levels:
            raise ValueError(
                f"MedSegDiffUNet: num_res_blocks must be an int or have len(channels)={n_levels} entries, "
                f"got {num_res_blocks}."
            )
        if any(n < 1 for n in num_res_blocks):
            raise ValueError(f"MedSegDiffUNet: num_res_blocks entries must be >= 1, got {num_res_blocks}.")
        attention_levels = tuple(bool(a) for a in attention_levels)
        if len(attention_levels) != n_levels:
            raise ValueError(
                f"MedSegDiffUNet: attention_levels must have len(channels)={n_levels} entries, got {attention_levels}."
            )
        if isinstance(num_head_channels, int):
            num_head_channels = ensure_tuple_rep(num_head_channels, n_levels)
        num_head_channels = tuple(int(n) for n in num_head_channels)
        if len(num_head_channels) != n_levels:
            raise ValueError(
                f"MedSegDiffUNet: num_head_channels must be an int or have len(channels)={n_levels} entries, "
                f"got {num_head_channels}."
            )
        for k in range(n_levels):
            if attention_levels[k] and (num_head_channels[k] < 1 or channels[k] % num_head_channels[k] != 0):
                raise ValueError(
                    f"MedSegDiffUNet: num_head_channels={num_head_channels[k]} must divide channels[{k}]={channels[k]} "
                    "at every level with attention."
                )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MedSegDiffUNet: dropout must be in [0, 1), got {dropout}.")
        n_dual = n_levels - 1
        if conditioning_levels is None:
            if n_dual <= 2:
                conditioning_levels = tuple(range(n_dual))
            else:
                start = (n_dual - 1) // 2
                conditioning_levels = (start, start + 1)
        conditioning_levels = tuple(sorted({int(k) for k in conditioning_levels}))
        if any(k < 0 or k >= n_dual for k in conditioning_levels):
            raise ValueError(
                f"MedSegDiffUNet: conditioning_levels must be indices of the two-encoder levels 0..{n_dual - 1} "
                f"(len(channels) - 2), got {conditioning_levels}."
            )
        size_divisor = 2 ** (n_levels - 1)
        if image_size is not None:
            if isinstance(image_size, int):
                image_size = [int(image_size)] * spatial_dims
            else:
                image_size = [int(s) for s in image_size]
            if len(image_size) != spatial_dims or any(s < 1 or s % size_divisor != 0 for s in image_size):
                raise ValueError(
                    f"MedSegDiffUNet: image_size must be an int or {spatial_dims} ints, each a positive multiple of "
                    f"{size_divisor} (2 ** {n_levels - 1} downsamplings), got {image_size}."
                )
        if ff_parser_input_size is None:
            ff_parser_input_size = image_size if image_size is not None else 256 if spatial_dims == 2 else 64
        if isinstance(ff_parser_input_size, int):
            ff_size = [int(ff_parser_input_size)] * spatial_dims
        else:
            ff_size = [int(s) for s in ff_parser_input_size]
        if len(ff_size) != spatial_dims or any(s < 1 for s in ff_size):
            raise ValueError(
                f"MedSegDiffUNet: ff_parser_input_size must be a positive int or {spatial_dims} positive ints, "
                f"got {ff_parser_input_size}."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.block_out_channels = channels  # MONAI DiffusionModelUNet attribute name
        self.num_res_blocks = num_res_blocks
        self.attention_levels = attention_levels
        self.num_head_channels = num_head_channels
        self.num_downsamplings = n_levels - 1
        self.size_divisor = size_divisor
        self.image_size = image_size
        self.dynamic_conditioning = bool(dynamic_conditioning)
        self.use_ff_parser = bool(ff_parser) and self.dynamic_conditioning
        self.conditioning_levels = conditioning_levels if self.dynamic_conditioning else ()
        self.ff_parser_input_size = ff_size

        temb_channels = channels[0] * 4
        self.time_embed = nn.Sequential(
            nn.Linear(channels[0], temb_channels), nn.SiLU(), nn.Linear(temb_channels, temb_channels)
        )
        self.conv_in_image = Convolution(spatial_dims, in_channels, channels[0], kernel_size=3, conv_only=True)
        self.self_condition = bool(self_condition)
        mask_in = out_channels * (2 if self.self_condition else 1)  # noisy mask (+ previous x0 estimate)
        self.conv_in_mask = Convolution(spatial_dims, mask_in, channels[0], kernel_size=3, conv_only=True)

        common = {"norm_num_groups": norm_num_groups, "norm_eps": norm_eps, "dropout": dropout}
        skip_channels: list[int] = [channels[0]]
        encoder: list[nn.Module] = []
        for k in range(n_dual):
            fuse = k in self.conditioning_levels
            map_size = [max(s // 2**k, 1) for s in ff_size] if (fuse and self.use_ff_parser) else None
            encoder.append(
                _DualEncoderLevel(
                    spatial_dims,
                    channels[max(k - 1, 0)],
                    channels[k],
                    temb_channels,
                    num_res_blocks[k],
                    attention_levels[k],
                    num_head_channels[k],
                    fuse=fuse,
                    ff_parser_map_size=map_size,
                    **common,
                )
            )
            skip_channels += [channels[k]] * (num_res_blocks[k] + 1)
        self.encoder = nn.ModuleList(encoder)
        self.last_stage = _EncoderStage(
            spatial_dims,
            channels[-2],
            channels[-1],
            temb_channels,
            num_res_blocks[-1],
            attention_levels[-1],
            num_head_channels[-1],
            **common,
        )
        skip_channels += [channels[-1]] * num_res_blocks[-1]
        self.middle_block = _MidBlock(
            spatial_dims, channels[-1], temb_channels, attention_levels[-1], num_head_channels[-1], **common
        )
        decoder: list[nn.Module] = []
        h_ch = channels[-1]
        for k in reversed(range(n_levels)):
            level_skips = [skip_channels.pop() for _ in range(num_res_blocks[k] + 1)]
            decoder.append(
                _DecoderLevel(
                    spatial_dims,
                    h_ch,
                    level_skips,
                    channels[k],
                    temb_channels,
                    attention_levels[k],
                    num_head_channels[k],
                    upsample_channels=channels[k - 1] if k > 0 else None,
                    **common,
                )
            )
            h_ch = channels[k - 1] if k > 0 else channels[0]
        self.decoder = nn.ModuleList(decoder)
        self.out = nn.Sequential(
            nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels[0], eps=norm_eps, affine=True),
            nn.SiLU(),
            zero_module(Convolution(spatial_dims, channels[0], out_channels, kernel_size=3, conv_only=True)),
        )
        self.channels_last = bool(channels_last)
        if self.channels_last:
            fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            for m in self.modules():
                if isinstance(m, (nn.modules.conv._ConvNd)):
                    m.to(memory_format=fmt)

    # forward takes ``context_repeats`` (DiffusionSegmenter passes each image once for all ensemble members)
    supports_context_repeats = True

    @classmethod
    def from_preset(
        cls, name: str, spatial_dims: int = 2, in_channels: int = 4, out_channels: int = 1, **overrides: Any
    ) -> MedSegDiffUNet:
        """Build a named variant; see :data:`MEDSEGDIFF_PRESETS` and ``docs/model_card.md``.

        Args:
            name: "XS" (tiny CPU demo/test model, 2 downsamplings) or the paper's "S", "B", "L", "++"
                (4/5/6/6 downsamplings). Case-insensitive.
            spatial_dims: number of spatial dimensions, 2 or 3.
            in_channels: number of image (condition) channels (4 for BraTS).
            out_channels: number of mask channels.
            overrides: any other constructor argument, replacing the preset's value. ``image_size`` (the training
                size, e.g. ``"image_size": "@spatial_size"`` in a bundle's ``network_def``) also replaces the preset's
                ``ff_parser_input_size`` unless that is given too, so the FF-Parser maps fit the training size.

        Returns:
            the network.
        """
        key = str(name).upper()
        if key not in MEDSEGDIFF_PRESETS:
            raise ValueError(
                f"MedSegDiffUNet.from_preset: unknown preset name={name!r}; available: {list(MEDSEGDIFF_PRESETS)}."
            )
        config = copy.deepcopy(MEDSEGDIFF_PRESETS[key])
        if overrides.get("image_size") is not None and "ff_parser_input_size" not in overrides:
            config["ff_parser_input_size"] = None  # sized from image_size
        config.update(overrides)
        return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **config)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        context_repeats: int = 1,
        x_self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: noisy mask ``(B, out_channels, *spatial)``; or, with ``context=None``, noisy mask and image concatenated
                along channels ``(B, out_channels + in_channels, *spatial)`` (DiffusionInferer mode "concat").
                Every spatial size must be divisible by ``2 ** num_downsamplings``.
            timesteps: diffusion timesteps, shape ``(B,)``, ``(1,)`` or ``()``, integer or float; a single value is
                used for the whole batch.
            context: image (condition) ``(B, in_channels, *spatial)`` with the batch and spatial size of ``x``
                (DiffusionInferer mode "crossattn"); with ``context_repeats = r > 1``, ``(B // r, in_channels,
                *spatial)``.
            context_repeats: number ``r`` of consecutive rows of ``x`` that share one image of ``context`` (ensemble
                members: member ``m`` of image ``i`` at row ``i * r + m``) and that must share one timestep too. The
                image branch up to the first dynamic-conditioning level (the input convolution and the image
                encoder levels before it) depends only on the image and the timestep, so it then runs once per
                image instead of once per row; the result is that of ``context.repeat_interleave(r, 0)`` with
                ``r = 1``. Only with ``context`` given.
            x_self_cond: the previous clean-mask estimate in [-1, 1], shaped like the noisy mask ``(B, out_channels,
                *spatial)``; only for a network built with ``self_condition=True``, where None means zeros (no
                estimate: MONAI's ``DiffusionInferer`` calls it so).

        Returns:
            the prediction ``(B, out_channels, *spatial)`` (noise, clean mask or velocity, as trained).
        """
        repeats = int(context_repeats)
        if repeats < 1:
            raise ValueError(f"MedSegDiffUNet: context_repeats must be >= 1, got {context_repeats}.")
        if repeats > 1 and context is None:
            raise ValueError("MedSegDiffUNet: context_repeats > 1 needs the image as `context` (mode 'crossattn').")
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"MedSegDiffUNet: x must have {self.spatial_dims + 2} dimensions (B, C, *spatial), got shape "
                f"{list(x.shape)}."
            )
        if context is None:
            if x.shape[1] != self.out_channels + self.in_channels:
                raise ValueError(
                    f"MedSegDiffUNet: without context, x must hold the noisy mask and the image concatenated along "
                    f"channels (out_channels + in_channels = {self.out_channels + self.in_channels}), got "
                    f"{x.shape[1]} channels."
                )
            image = x[:, self.out_channels :]
            x = x[:, : self.out_channels]
        else:
            if x.shape[1] != self.out_channels:
                raise ValueError(
                    f"MedSegDiffUNet: x (noisy mask) must have out_channels={self.out_channels} channels, got "
                    f"{x.shape[1]}."
                )
            if context.dim() != x.dim() or context.shape[1] != self.in_channels:
                raise ValueError(
                    f"MedSegDiffUNet: context (image) must have shape (B, in_channels={self.in_channels}, *spatial), "
                    f"got {list(context.shape)}."
                )
            if context.shape[0] * repeats != x.shape[0] or context.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"MedSegDiffUNet: context (image) shape {list(context.shape)} does not match x shape "
                    f"{list(x.shape)} in batch (times context_repeats={repeats}) or spatial size."
                )
            image = context
        spatial = x.shape[2:]
        for s in spatial:
            if s % self.size_divisor != 0:
                raise ValueError(
                    f"MedSegDiffUNet: spatial size {list(spatial)} must be divisible by {self.size_divisor} "
                    f"(2 ** {self.num_downsamplings} downsamplings) in every dimension."
                )
        batch = x.shape[0]
        t = timesteps
        if t.dim() == 0:
            t = t.reshape(1)
        if t.dim() != 1 or (t.shape[0] != 1 and t.shape[0] != batch):
            raise ValueError(
                f"MedSegDiffUNet: timesteps must have shape (B,), (1,) or () with B={batch}, "
                f"got {list(timesteps.shape)}."
            )
        if t.shape[0] != batch:
            t = t.expand(batch)

        # time embedding (float32 sinusoids, cast to the input dtype as MONAI's DiffusionModelUNet does)
        emb = self.time_embed(get_timestep_embedding(t, self.channels[0]).to(dtype=x.dtype))

        # The image rows of one shared image have one timestep: their embedding is that of its first mask row.
        emb_image = emb if repeats == 1 else emb[::repeats]

        h_image = self.conv_in_image(image)
        if self.self_condition:
            if x_self_cond is None:
                x_self_cond = torch.zeros_like(x)
            elif x_self_cond.shape != x.shape:
                raise ValueError(
                    f"MedSegDiffUNet: x_self_cond must have the shape of the noisy mask {list(x.shape)}, got "
                    f"{list(x_self_cond.shape)}."
                )
            h_mask = self.conv_in_mask(torch.cat([x, x_self_cond.to(x.dtype)], dim=1))
        else:
            if x_self_cond is not None:
                raise ValueError(
                    "MedSegDiffUNet: x_self_cond given, but the network was built with self_condition=False."
                )
            h_mask = self.conv_in_mask(x)
        skips: list[torch.Tensor] = [_add_shared(h_image, h_mask, repeats)]
        for level in self.encoder:
            if repeats > 1 and level.fuses:
                # the fusion makes the image features depend on the mask: one image row per mask row from here on
                h_image = _repeat_rows(h_image, repeats)
                emb_image = emb
                repeats = 1
            h_image, h_mask, level_skips = level(h_image, h_mask, emb, emb_image, repeats)
            skips.extend(level_skips)
        # eq. 2: E^I + E^x through the last encoder stage
        h, last_skips = self.last_stage(_add_shared(h_image, h_mask, repeats), emb)
        skips.extend(last_skips)
        h = self.middle_block(h, emb)
        for level in self.decoder:
            h = level(h, skips, emb)
        return self.out(h)
