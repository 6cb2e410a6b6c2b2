# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Diffusion segmentation inferer: ensemble sampling of masks conditioned on an image (MedSegDiff inference)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from monai.utils import StrEnum, optional_import
from torch import nn

from medsegdiff_monai.networks.nets.diffusion_segmenter import DiffusionSegmenter, check_segmenter_args, mask_channels
from medsegdiff_monai.networks.schedulers.sampler import DiffusionSampler
from medsegdiff_monai.utils.enums import look_up_named_option

sitk, has_sitk = optional_import("SimpleITK")

__all__ = ["DiffusionSegInferer", "FusionMode", "UncertaintyMode", "InfererOutput", "image_seeds"]


class FusionMode(StrEnum):
    """How ensemble members become one mask."""

    MEAN = "mean"
    VOTE = "vote"
    STAPLE = "staple"


class UncertaintyMode(StrEnum):
    """Which uncertainty map is computed from the ensemble."""

    VARIANCE = "variance"
    ENTROPY = "entropy"


class InfererOutput(StrEnum):
    """What ``DiffusionSegInferer.__call__`` returns."""

    PROB = "prob"
    MASK = "mask"
    UNCERTAINTY = "uncertainty"
    ALL = "all"


def image_seeds(images: torch.Tensor, seed: int) -> list[int]:
    """One noise seed per image, from ``seed`` and the image's content (CRC-32 of its float32 bytes).

    A case's noise then depends only on the seed and the case itself: not on the other cases of its batch, their
    order, or (in slice mode) on which slices share a network call. Identical images get identical noise, as they
    would with any per-case seed.

    Args:
        images: (B, C, *spatial).
        seed: the inferer's seed.

    Returns:
        B non-negative integers.
    """
    data = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return [(zlib.crc32(np.ascontiguousarray(item).tobytes()) << 31) ^ int(seed) for item in data]


class DiffusionSegInferer(Inferer):
    """Segment images by sampling a conditional diffusion model over masks, as an ensemble, and fusing it.

    The model diffuses masks mapped to ``[-1, 1]`` and is called as ``network(x, timesteps=t, context=image)``
    (``mode="crossattn"``, the :class:`~medsegdiff_monai.networks.nets.MedSegDiffUNet` contract) or as
    ``network(cat([x, image], 1), timesteps=t, context=None)`` (``mode="concat"``, e.g. MONAI's
    ``DiffusionModelUNet``), exactly as :class:`monai.inferers.DiffusionInferer` does. ``t`` is a long tensor of
    shape (batch,).

    Sampling is :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter`'s, the package's one sampling loop
    (the same module a bundle exports), with a :class:`~medsegdiff_monai.networks.schedulers.DiffusionSampler` built
    once from the constructor's arguments: respaced ancestral DDPM (``"ddpm"``), DDIM with ``eta`` (``"ddim"``)
    or DPM-Solver++(2M) (``"dpmpp_2m"``), each correct at any step count, with consistent clipping (the update
    uses the clipped x0 and the noise recomputed from it). It uses the schedule, ``prediction_type`` and clipping
    of ``scheduler`` but never its ``step`` (MONAI 1.6.1's DDPM/DDIM ``step`` go to the wrong noise level with
    fewer steps than training steps), so any MONAI scheduler samples correctly here. The inferer adds what an
    inferer needs: fusion, uncertainty, 3D volumes slice by slice and per-case random streams.

    All ``num_ensemble`` members run batched (the image is repeated along the batch: one network call per step
    for the whole ensemble) and the result is fused:

    - ``prob``: ensemble mean of the members' probabilities ``clamp((x0 + 1) / 2, 0, 1)``, shape (B, C, *spatial).
    - ``mask``: float {0, 1}. ``fusion="mean"``: ``prob >= threshold``; ``"vote"``: members binarised at
      ``threshold``, strict majority; ``"staple"``: STAPLE (SimpleITK, per image and channel) of the binarised
      members, its foreground probability ``>= threshold`` (where STAPLE is undefined, e.g. all members empty,
      the vote fraction is used).
    - ``fused``: the probability the mask is thresholded from (mean, vote fraction or STAPLE probability).
    - ``uncertainty``: ``"variance"``: ensemble variance of the member probabilities (0 to 0.25, 0 for one
      member); ``"entropy"``: binary entropy of ``prob`` in bits (0 to 1).
    - ``samples``: member probabilities, shape (B, N, C, *spatial).

    ``inferer(image, network)`` returns the entry selected by ``output`` (default ``prob``), so the inferer drops
    into :class:`monai.engines.SupervisedEvaluator` and :class:`monai.inferers.SliceInferer` (with
    ``network=lambda x: inferer(x, net)``); :meth:`segment` returns everything. Sampling runs under
    ``torch.no_grad`` with the sampler arithmetic in float32 (network outputs are cast; with ``autocast_dtype``
    the network itself runs in bfloat16/float16), no host synchronisation in the step loop, and MetaTensor inputs
    give MetaTensor outputs carrying the input's metadata.

    With ``slice_axis`` set, a 3D volume (B, C_in, H, W, D) is segmented with a 2D network slice by slice along
    that spatial axis (slices without a nonzero voxel are skipped), ``sw_batch_size`` slices x ``num_ensemble``
    members per network call; fusion (incl. STAPLE) and uncertainty are then computed on the whole volume.

    Example::

        scheduler = RespacedDDPMScheduler(num_train_timesteps=1000)
        inferer = DiffusionSegInferer(scheduler, num_inference_steps=10, num_ensemble=5, seed=0)
        prob = inferer(image, network)                   # (B, C, H, W) in [0, 1]
        out = inferer.segment(image, network)            # dict: prob, mask, fused, uncertainty, samples

    Args:
        scheduler: MONAI scheduler the model was trained with (gives ``num_train_timesteps``, ``alphas_cumprod``,
            ``prediction_type``, ``clip_sample``). Default: ``DDPMScheduler(1000)`` (linear betas, epsilon).
        num_inference_steps: number of denoising steps, in ``[1, scheduler.num_train_timesteps]``.
        sampler: "ddpm", "ddim" or "dpmpp_2m" (:class:`~medsegdiff_monai.networks.schedulers.SamplerType`).
        eta: DDIM stochasticity, >= 0 (only for ``sampler="ddim"``).
        num_ensemble: number N of samples per image, >= 1.
        threshold: probability threshold in (0, 1) for masks.
        fusion: "mean", "vote" or "staple" (needs SimpleITK).
        uncertainty: "variance" or "entropy".
        output: what ``__call__`` returns: "prob", "mask", "uncertainty" or "all" (the dict of :meth:`segment`).
        seed: makes results reproducible per case: the noise of each image (each slice in slice mode) is drawn
            from generators seeded with ``seed`` and the image's content (:func:`image_seeds`), so a case gets the
            same segmentation whatever other cases share its batch and in whatever order they come. None uses the
            global random state.
        clip_sample: clip the predicted x0 to the scheduler's clip range (default ``[-1, 1]``) at every step;
            None follows ``scheduler.clip_sample`` (True if absent).
        out_channels: number of mask channels; if None, ``network.out_channels`` (or
            ``network.module.out_channels``) is used. When given it takes precedence.
        mode: "crossattn" (image as ``context``) or "concat" (image concatenated after the noisy mask).
        slice_axis: None, or the spatial axis (0, 1, 2) of 3D inputs to slice for a 2D network.
        sw_batch_size: number of slices per network call in slice mode, >= 1.
        autocast_dtype: None (float32), "bfloat16" or "float16": run the network under ``torch.autocast`` on the
            input's device (bfloat16 pays on CPUs with AMX and on GPUs, and is slower on CPUs without native
            bfloat16 matrix instructions; see ``benchmarks/``); "auto": bfloat16 if one timed probe call on the
            device shows it is faster, else float32 (see ``DiffusionSegmenter``).
        progress: show a tqdm progress bar over the denoising steps.

    Raises:
        ValueError: on an invalid argument (named in the message).
        ImportError: ``fusion="staple"`` without SimpleITK installed.
    """

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        num_inference_steps: int = 10,
        sampler: str = "ddim",
        eta: float = 0.0,
        num_ensemble: int = 5,
        threshold: float = 0.5,
        fusion: str = "mean",
        uncertainty: str = "variance",
        output: str = "prob",
        seed: int | None = None,
        clip_sample: bool | None = None,
        out_channels: int | None = None,
        mode: str = "crossattn",
        slice_axis: int | None = None,
        sw_batch_size: int = 1,
        autocast_dtype: str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.solver = DiffusionSampler(scheduler, num_inference_steps, sampler, eta, clip_sample)
        self.num_ensemble, self.mode, self.autocast_dtype = check_segmenter_args(num_ensemble, mode, autocast_dtype)
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}.")
        self.fusion = look_up_named_option("fusion", fusion, FusionMode)
        if self.fusion == FusionMode.STAPLE and not has_sitk:
            raise ImportError("`fusion='staple'` needs SimpleITK: pip install SimpleITK (or use 'mean'/'vote').")
        self.uncertainty = look_up_named_option("uncertainty", uncertainty, UncertaintyMode)
        self.output = look_up_named_option("output", output, InfererOutput)
        if out_channels is not None and int(out_channels) < 1:
            raise ValueError(f"`out_channels` must be >= 1 or None, got {out_channels}.")
        if slice_axis is not None and slice_axis not in (0, 1, 2):
            raise ValueError(f"`slice_axis` must be None, 0, 1 or 2, got {slice_axis!r}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"`sw_batch_size` must be >= 1, got {sw_batch_size}.")
        self.num_inference_steps = self.solver.num_inference_steps
        self.sampler = self.solver.sampler
        self.threshold = float(threshold)
        self.seed = seed
        self.out_channels = None if out_channels is None else int(out_channels)
        self.slice_axis = slice_axis
        self.sw_batch_size = int(sw_batch_size)
        self.progress = bool(progress)
        self._segmenter: DiffusionSegmenter | None = None  # the last network's, reused while the network is

    # ------------------------------------------------------------------------------------------------ public API
    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Segment ``inputs`` and return the entry selected by ``output`` (default: probabilities).

        Args:
            inputs: images, (B, C_in, *spatial); (B, C_in, H, W, D) in slice mode.
            network: the diffusion model (see the class docstring for the call convention).
            args: not supported (the network is called as ``network(x, timesteps=t, context=image)``).
            kwargs: not supported.

        Returns:
            (B, C, *spatial) tensor (``output`` "prob", "mask" or "uncertainty") or the dict of :meth:`segment`.
        """
        result = self.segment(inputs, network, *args, **kwargs)
        return result if self.output == "all" else result[self.output]

    def segment(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample the ensemble and return every result.

        Args:
            inputs: images, (B, C_in, *spatial); (B, C_in, H, W, D) in slice mode.
            network: the diffusion model.
            args: not supported.
            kwargs: not supported.

        Returns:
            dict with "prob", "mask", "fused", "uncertainty" of shape (B, C, *spatial) and "samples" of shape
            (B, N, C, *spatial), all float32 in [0, 1] on the input's device.
        """
        if args or kwargs:
            raise ValueError(
                "DiffusionSegInferer calls the network as network(x, timesteps=t, context=image); extra arguments "
                f"from prepare_batch are not supported (got {len(args)} positional, keywords {sorted(kwargs)})."
            )
        image = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if not torch.is_floating_point(image):
            image = image.float()
        segmenter = self.segmenter(network)
        if self.slice_axis is None:
            samples = self._sample(segmenter, image)
        else:
            samples = self._sample_slices(image, segmenter)

        result = self._fuse(samples)
        if isinstance(inputs, MetaTensor):
            for key in ("prob", "mask", "fused", "uncertainty"):
                result[key] = MetaTensor(result[key], meta=inputs.meta, applied_operations=inputs.applied_operations)
        return result

    def segmenter(self, network: nn.Module, out_channels: int | None = None) -> DiffusionSegmenter:
        """The :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter` that samples ``network`` with this
        inferer's settings (e.g. to export it with ``torch.jit.script``). It is built once per network and reused.

        Args:
            network: the diffusion model.
            out_channels: number of mask channels (default: the constructor's, else ``network.out_channels``).

        Returns:
            the sampler module (it shares ``network``'s parameters and this inferer's ``DiffusionSampler``).
        """
        n_ch = mask_channels(network, out_channels if out_channels is not None else self.out_channels)
        cached = self._segmenter
        if cached is not None and cached.network is network and cached.out_channels == n_ch:
            return cached
        self._segmenter = DiffusionSegmenter(
            network,
            sampler=self.solver,
            num_ensemble=self.num_ensemble,
            out_channels=n_ch,
            mode=self.mode,
            autocast_dtype=self.autocast_dtype,
            progress=self.progress,
        )
        return self._segmenter

    def sample(self, image: torch.Tensor, network: nn.Module, out_channels: int | None = None) -> torch.Tensor:
        """Ensemble member probabilities for a batch of images, all members in one network call per step.

        Args:
            image: condition images, (B, C_in, *spatial), a plain tensor.
            network: the diffusion model.
            out_channels: number of mask channels (default: from the network or the constructor).

        Returns:
            (B, N, C, *spatial) float32 member probabilities ``clamp((x0 + 1) / 2, 0, 1)``.
        """
        return self._sample(self.segmenter(network, out_channels), image)

    # ---------------------------------------------------------------------------------------------- internals
    def _sample(self, segmenter: DiffusionSegmenter, image: torch.Tensor) -> torch.Tensor:
        """Members for a batch of images, with per-image noise streams when seeded."""
        seeds = None if self.seed is None else image_seeds(image, int(self.seed))
        return segmenter.sample(image, seeds=seeds)

    def _sample_slices(self, image: torch.Tensor, segmenter: DiffusionSegmenter) -> torch.Tensor:
        """Slice mode: a 2D network over 3D volumes, slice by slice along ``slice_axis``.

        Slices without any nonzero voxel (outside the head: MRI background is 0, before and after MONAI's
        ``NormalizeIntensity(nonzero=True)``) are not sampled; their members are 0 (background, no uncertainty).
        The others, of all volumes of the batch, go through the network ``sw_batch_size`` slices x
        ``num_ensemble`` members per call. Written instead of :class:`monai.inferers.SliceInferer`, which samples
        every slice and batches slices of one volume only.
        """
        if image.ndim != 5:
            raise ValueError(
                f"`slice_axis`={self.slice_axis} needs 3D inputs of shape (B, C, H, W, D), got {tuple(image.shape)}."
            )
        assert self.slice_axis is not None
        axis = 2 + self.slice_axis
        b, n, n_ch = image.shape[0], self.num_ensemble, segmenter.out_channels
        slices = image.movedim(axis, 1)  # (B, S, C, h, w)
        num_slices, plane = slices.shape[1], tuple(slices.shape[3:])
        slices = slices.reshape((b * num_slices,) + tuple(slices.shape[2:]))
        keep = torch.nonzero(slices.flatten(1).ne(0).any(dim=1)).flatten()  # one host sync per volume batch
        members = torch.zeros((b * num_slices, n, n_ch) + plane, dtype=torch.float32, device=image.device)
        for chunk in keep.split(self.sw_batch_size):
            members[chunk] = self._sample(segmenter, slices[chunk])
        members = members.reshape((b, num_slices, n, n_ch) + plane)  # (B, S, N, C, h, w) -> (B, N, C, *spatial)
        return members.permute(0, 2, 3, *[4 + d if d < self.slice_axis else (1 if d == self.slice_axis else 3 + d)
                                          for d in range(3)])

    def _fuse(self, samples: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fuse member probabilities (B, N, C, *spatial) into prob, mask, fused and uncertainty."""
        prob = samples.mean(dim=1)
        if self.uncertainty == "variance":
            unc = samples.var(dim=1, unbiased=False)
        else:
            p = prob.clamp(1e-12, 1 - 1e-12)
            unc = (-(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))).clamp(0.0, 1.0)
            unc = torch.where((prob <= 0) | (prob >= 1), torch.zeros_like(unc), unc)
        if self.fusion == "mean":
            fused = prob
            mask = (prob >= self.threshold).float()
        else:
            votes = (samples >= self.threshold).float()
            fused = votes.mean(dim=1)
            if self.fusion == "staple":
                fused = self._staple(votes, fused)
                mask = (fused >= self.threshold).float()
            else:
                mask = (fused > 0.5).float()
        return {"prob": prob, "mask": mask, "fused": fused, "uncertainty": unc, "samples": samples}

    @staticmethod
    def _staple(votes: torch.Tensor, vote_fraction: torch.Tensor) -> torch.Tensor:
        """STAPLE foreground probability per image and channel (SimpleITK); vote fraction where undefined."""
        out = np.empty(tuple(vote_fraction.shape), dtype=np.float32)
        members = votes.to("cpu", torch.uint8).numpy()
        fallback = vote_fraction.cpu().numpy()
        for b in range(members.shape[0]):
            for c in range(members.shape[2]):
                images = [sitk.GetImageFromArray(members[b, m, c]) for m in range(members.shape[1])]
                est = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0)).astype(np.float32)
                out[b, c] = np.where(np.isfinite(est), est, fallback[b, c])
        return torch.from_numpy(out).to(vote_fraction.device)
