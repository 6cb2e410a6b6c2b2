# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Diffusion segmentation inferer: ensemble sampling of masks conditioned on an image (MedSegDiff inference)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer, SliceInferer
from monai.networks.schedulers import Scheduler
from monai.utils import optional_import
from torch import nn

from medsegdiff_monai.networks.nets.diffusion_segmenter import DiffusionSegmenter, check_sampling_args, mask_channels

sitk, has_sitk = optional_import("SimpleITK")

__all__ = ["DiffusionSegInferer"]

FUSIONS = ("mean", "vote", "staple")
UNCERTAINTIES = ("variance", "entropy")
OUTPUTS = ("prob", "mask", "uncertainty", "all")


class DiffusionSegInferer(Inferer):
    """Segment images by sampling a conditional diffusion model over masks, as an ensemble, and fusing it.

    The model diffuses masks mapped to ``[-1, 1]`` and is called as ``network(x, timesteps=t, context=image)``
    (``mode="crossattn"``, the :class:`~medsegdiff_monai.networks.nets.MedSegDiffUNet` contract) or as
    ``network(cat([x, image], 1), timesteps=t, context=None)`` (``mode="concat"``, e.g. MONAI's
    ``DiffusionModelUNet``), exactly as :class:`monai.inferers.DiffusionInferer` does. ``t`` is a long tensor of
    shape (batch,).

    Sampling is :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter`'s (the same module a bundle exports):
    it uses the noise schedule, ``prediction_type`` and clipping of ``scheduler`` but never its ``step``, because
    MONAI 1.6.1's DDPM/DDIM ``step`` go to the wrong noise level when fewer steps than training steps are used;
    any MONAI scheduler, corrected (:class:`~medsegdiff_monai.networks.schedulers.RespacedDDIMScheduler`) or not,
    samples correctly here. The visited timesteps are ``linspace(T - 1, 0, num_inference_steps).round()`` and each
    update goes to the next visited level:

    - ``sampler="ddim"``: DDIM with ``eta`` (0: deterministic);
    - ``sampler="ddpm"``: respaced ancestral DDPM, the posterior ``q(x_s | x_t, x0)`` with
      ``beta'_t = 1 - a_t / a_s`` and "fixed_small" variance, computed in its DDIM form with ``eta = 1``
      (``eta`` is ignored); with ``clip_sample`` the clipped x0 is combined with the network's noise estimate.

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
    that spatial axis via :class:`monai.inferers.SliceInferer`, ``sw_batch_size`` slices x ``num_ensemble``
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
        sampler: "ddim" or "ddpm".
        eta: DDIM stochasticity, >= 0 (only for ``sampler="ddim"``).
        num_ensemble: number N of samples per image, >= 1.
        threshold: probability threshold in (0, 1) for masks.
        fusion: "mean", "vote" or "staple" (needs SimpleITK).
        uncertainty: "variance" or "entropy".
        output: what ``__call__`` returns: "prob", "mask", "uncertainty" or "all" (the dict of :meth:`segment`).
        seed: seed of a ``torch.Generator`` on the input's device, re-seeded at every call (same input, same
            output); None uses the global random state.
        clip_sample: clip the predicted x0 to the scheduler's clip range (default ``[-1, 1]``) at every step;
            None follows ``scheduler.clip_sample`` (True if absent).
        out_channels: number of mask channels; if None, ``network.out_channels`` (or
            ``network.module.out_channels``) is used. When given it takes precedence.
        mode: "crossattn" (image as ``context``) or "concat" (image concatenated after the noisy mask).
        slice_axis: None, or the spatial axis (0, 1, 2) of 3D inputs to slice for a 2D network.
        sw_batch_size: number of slices per network call in slice mode, >= 1.
        autocast_dtype: None (float32), "bfloat16" or "float16": run the network under ``torch.autocast`` on the
            input's device (bfloat16 pays on CPUs with AMX/AVX-512-bf16 and on GPUs; see ``benchmarks/``).
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
        self.scheduler = check_sampling_args(
            scheduler, num_inference_steps, sampler, eta, num_ensemble, mode, autocast_dtype
        )
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}.")
        if fusion not in FUSIONS:
            raise ValueError(f"`fusion` must be one of {FUSIONS}, got {fusion!r}.")
        if fusion == "staple" and not has_sitk:
            raise ImportError("`fusion='staple'` needs SimpleITK: pip install SimpleITK (or use 'mean'/'vote').")
        if uncertainty not in UNCERTAINTIES:
            raise ValueError(f"`uncertainty` must be one of {UNCERTAINTIES}, got {uncertainty!r}.")
        if output not in OUTPUTS:
            raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}.")
        if out_channels is not None and int(out_channels) < 1:
            raise ValueError(f"`out_channels` must be >= 1 or None, got {out_channels}.")
        if slice_axis is not None and slice_axis not in (0, 1, 2):
            raise ValueError(f"`slice_axis` must be None, 0, 1 or 2, got {slice_axis!r}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"`sw_batch_size` must be >= 1, got {sw_batch_size}.")
        self.num_train_timesteps = int(self.scheduler.num_train_timesteps)
        self.num_inference_steps = int(num_inference_steps)
        self.sampler = sampler
        self.eta = 1.0 if sampler == "ddpm" else float(eta)
        self.num_ensemble = int(num_ensemble)
        self.threshold = float(threshold)
        self.fusion = fusion
        self.uncertainty = uncertainty
        self.output = output
        self.seed = seed
        self.clip_sample = clip_sample
        self.out_channels = None if out_channels is None else int(out_channels)
        self.mode = mode
        self.slice_axis = slice_axis
        self.sw_batch_size = int(sw_batch_size)
        self.autocast_dtype = autocast_dtype
        self.progress = bool(progress)

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
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=image.device).manual_seed(int(self.seed))
        segmenter = self.segmenter(network)

        if self.slice_axis is None:
            samples = segmenter.sample(image, generator)
        else:
            samples = self._sample_slices(image, segmenter, generator)

        result = self._fuse(samples)
        if isinstance(inputs, MetaTensor):
            for key in ("prob", "mask", "fused", "uncertainty"):
                result[key] = MetaTensor(result[key], meta=inputs.meta, applied_operations=inputs.applied_operations)
        return result

    def segmenter(self, network: nn.Module, out_channels: int | None = None) -> DiffusionSegmenter:
        """The :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter` that samples ``network`` with this
        inferer's settings (e.g. to export it with ``torch.jit.script``).

        Args:
            network: the diffusion model.
            out_channels: number of mask channels (default: the constructor's, else ``network.out_channels``).

        Returns:
            the sampler module (it shares ``network``'s parameters).
        """
        return DiffusionSegmenter(
            network,
            self.scheduler,
            num_inference_steps=self.num_inference_steps,
            sampler=self.sampler,
            eta=self.eta,
            num_ensemble=self.num_ensemble,
            clip_sample=self.clip_sample,
            out_channels=mask_channels(network, out_channels if out_channels is not None else self.out_channels),
            mode=self.mode,
            autocast_dtype=self.autocast_dtype,
            progress=self.progress,
        )

    def sample(
        self,
        image: torch.Tensor,
        network: nn.Module,
        out_channels: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ensemble member probabilities for a batch of images, all members in one network call per step.

        Args:
            image: condition images, (B, C_in, *spatial), a plain tensor.
            network: the diffusion model.
            out_channels: number of mask channels (default: from the network or the constructor).
            generator: random generator on ``image.device`` (None: global random state).

        Returns:
            (B, N, C, *spatial) float32 member probabilities ``clamp((x0 + 1) / 2, 0, 1)``.
        """
        return self.segmenter(network, out_channels).sample(image, generator)

    # ---------------------------------------------------------------------------------------------- internals
    def _sample_slices(
        self, image: torch.Tensor, segmenter: DiffusionSegmenter, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Slice mode: a 2D network over a 3D volume via MONAI's SliceInferer, slices x members batched."""
        if image.ndim != 5:
            raise ValueError(
                f"`slice_axis`={self.slice_axis} needs 3D inputs of shape (B, C, H, W, D), got {tuple(image.shape)}."
            )
        assert self.slice_axis is not None
        roi = [s for d, s in enumerate(image.shape[2:]) if d != self.slice_axis]
        slicer = SliceInferer(
            roi_size=roi, sw_batch_size=self.sw_batch_size, spatial_dim=self.slice_axis, overlap=0.0, mode="constant"
        )
        n, n_ch = self.num_ensemble, segmenter.out_channels

        def predictor(slices: torch.Tensor) -> torch.Tensor:
            # (S, C_in, h, w) -> (S, N * C, h, w): members flattened into channels for the merger
            return segmenter.sample(slices, generator).flatten(1, 2)

        merged = slicer(image, predictor)
        assert isinstance(merged, torch.Tensor)
        merged = merged.as_tensor() if isinstance(merged, MetaTensor) else merged
        return merged.reshape((image.shape[0], n, n_ch) + tuple(image.shape[2:])).float()

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
