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
from monai.networks.schedulers import DDPMScheduler, Scheduler
from monai.utils import optional_import

from medsegdiff_monai.networks.schedulers.respacing import (
    ddim_coefficients,
    ddim_update,
    predict_x0_and_eps,
    spaced_timesteps,
)

sitk, has_sitk = optional_import("SimpleITK")
tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["DiffusionSegInferer"]

SAMPLERS = ("ddim", "ddpm")
FUSIONS = ("mean", "vote", "staple")
UNCERTAINTIES = ("variance", "entropy")
OUTPUTS = ("prob", "mask", "uncertainty", "all")
MODES = ("crossattn", "concat")


class DiffusionSegInferer(Inferer):
    """Segment images by sampling a conditional diffusion model over masks, as an ensemble, and fusing it.

    The model diffuses masks mapped to ``[-1, 1]`` and is called as ``network(x, timesteps=t, context=image)``
    (``mode="crossattn"``, the :class:`~medsegdiff_monai.networks.nets.MedSegDiffUNet` contract) or as
    ``network(cat([x, image], 1), timesteps=t, context=None)`` (``mode="concat"``, e.g. MONAI's
    ``DiffusionModelUNet``), exactly as :class:`monai.inferers.DiffusionInferer` does. ``t`` is a long tensor of
    shape (batch,).

    Sampling uses the noise schedule (``alphas_cumprod``), ``prediction_type``, ``clip_sample`` and (DDIM)
    ``final_alpha_cumprod``/``steps_offset`` of ``scheduler`` but never its ``step``: MONAI 1.6.1's DDPM/DDIM
    ``step`` go to the wrong noise level when fewer steps than training steps are used, so any MONAI scheduler,
    corrected (:class:`~medsegdiff_monai.networks.schedulers.RespacedDDIMScheduler`) or not, samples correctly
    here. The visited timesteps are ``linspace(T - 1, 0, num_inference_steps).round()`` (MONAI's spacing) and each
    update goes to the next visited level (see :mod:`medsegdiff_monai.networks.schedulers.respacing`):

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
    ``torch.no_grad`` with the computation in float32 (network outputs are cast), no host synchronisation in the
    step loop, and MetaTensor inputs give MetaTensor outputs carrying the input's metadata.

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
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.scheduler = scheduler if scheduler is not None else DDPMScheduler(num_train_timesteps=1000)
        num_train = int(getattr(self.scheduler, "num_train_timesteps", 0))
        if num_train < 1 or not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError("`scheduler` must be a MONAI Scheduler with `num_train_timesteps` and `alphas_cumprod`.")
        if not 1 <= int(num_inference_steps) <= num_train:
            raise ValueError(
                f"`num_inference_steps` must be in [1, num_train_timesteps={num_train}], got {num_inference_steps}."
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {sampler!r}.")
        if not eta >= 0:
            raise ValueError(f"`eta` must be >= 0, got {eta}.")
        if int(num_ensemble) < 1:
            raise ValueError(f"`num_ensemble` must be >= 1, got {num_ensemble}.")
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
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        if slice_axis is not None and slice_axis not in (0, 1, 2):
            raise ValueError(f"`slice_axis` must be None, 0, 1 or 2, got {slice_axis!r}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"`sw_batch_size` must be >= 1, got {sw_batch_size}.")
        prediction_type = getattr(self.scheduler, "prediction_type", "epsilon")
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"`scheduler.prediction_type` {prediction_type!r} is not supported.")

        self.num_train_timesteps = num_train
        self.num_inference_steps = int(num_inference_steps)
        self.sampler = sampler
        self.eta = 1.0 if sampler == "ddpm" else float(eta)
        self.num_ensemble = int(num_ensemble)
        self.threshold = float(threshold)
        self.fusion = fusion
        self.uncertainty = uncertainty
        self.output = output
        self.seed = seed
        self.prediction_type = str(prediction_type)
        if clip_sample is None:
            clip_sample = bool(getattr(self.scheduler, "clip_sample", True))
        self.clip_sample = bool(clip_sample)
        lo, hi = getattr(self.scheduler, "clip_sample_values", (-1.0, 1.0))
        self.clip_range: tuple[float, float] | None = (float(lo), float(hi)) if self.clip_sample else None
        self.out_channels = None if out_channels is None else int(out_channels)
        self.mode = mode
        self.slice_axis = slice_axis
        self.sw_batch_size = int(sw_batch_size)
        self.progress = bool(progress)

    # ------------------------------------------------------------------------------------------------ public API
    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Segment ``inputs`` and return the entry selected by ``output`` (default: probabilities).

        Args:
            inputs: images, (B, C_in, *spatial); (B, C_in, H, W, D) in slice mode.
            network: the diffusion model (see the class docstring for the call convention).
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            (B, C, *spatial) tensor (``output`` "prob", "mask" or "uncertainty") or the dict of :meth:`segment`.
        """
        result = self.segment(inputs, network, *args, **kwargs)
        return result if self.output == "all" else result[self.output]

    @torch.no_grad()
    def segment(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Sample the ensemble and return every result.

        Args:
            inputs: images, (B, C_in, *spatial); (B, C_in, H, W, D) in slice mode.
            network: the diffusion model.
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            dict with "prob", "mask", "fused", "uncertainty" of shape (B, C, *spatial) and "samples" of shape
            (B, N, C, *spatial), all float32 in [0, 1] on the input's device.
        """
        image = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if not torch.is_floating_point(image):
            image = image.float()
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=image.device).manual_seed(int(self.seed))
        n_ch = self._mask_channels(network)

        if self.slice_axis is None:
            samples = self.sample(image, network, n_ch, generator, *args, **kwargs)
        else:
            samples = self._sample_slices(image, network, n_ch, generator, *args, **kwargs)

        result = self._fuse(samples)
        if isinstance(inputs, MetaTensor):
            for key in ("prob", "mask", "fused", "uncertainty"):
                result[key] = MetaTensor(result[key], meta=inputs.meta, applied_operations=inputs.applied_operations)
        return result

    @torch.no_grad()
    def sample(
        self,
        image: torch.Tensor,
        network: Callable[..., torch.Tensor],
        out_channels: int | None = None,
        generator: torch.Generator | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Ensemble member probabilities for a batch of images, all members in one network call per step.

        Args:
            image: condition images, (B, C_in, *spatial), a plain tensor.
            network: the diffusion model.
            out_channels: number of mask channels (default: from the network or the constructor).
            generator: random generator on ``image.device`` (None: global random state).
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            (B, N, C, *spatial) float32 member probabilities ``clamp((x0 + 1) / 2, 0, 1)``.
        """
        n_ch = self._mask_channels(network) if out_channels is None else int(out_channels)
        b, n = image.shape[0], self.num_ensemble
        spatial = tuple(image.shape[2:])
        device = image.device
        cond = image.repeat_interleave(n, dim=0) if n > 1 else image  # member m of image i at row i * n + m
        x = torch.randn((b * n, n_ch) + spatial, generator=generator, device=device, dtype=torch.float32)

        timesteps, a_t, c_x0, c_eps, sigma = self._coefficients(device)
        steps = range(self.num_inference_steps)
        if self.progress and has_tqdm:
            steps = tqdm(steps, desc="diffusion steps", leave=False)
        x0 = x
        last = self.num_inference_steps - 1
        for i in steps:
            t = timesteps[i].expand(b * n)
            if self.mode == "concat":
                out = network(torch.cat([x, cond.to(x.dtype)], dim=1), *args, timesteps=t, context=None, **kwargs)
            else:
                out = network(x, *args, timesteps=t, context=cond, **kwargs)
            out = self._check_output(out, n_ch).float()
            x0, eps = predict_x0_and_eps(out, x, a_t[i], self.prediction_type, self.clip_range)
            if i == last:
                break  # the last update lands on the clean sample: use x0 itself
            noise = None
            if self.eta > 0:
                noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
            x = ddim_update(x0, eps, c_x0[i], c_eps[i], sigma[i], noise)
        probs = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
        return probs.reshape((b, n, n_ch) + spatial)

    # ---------------------------------------------------------------------------------------------- internals
    def _coefficients(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Per-step tensors on ``device``, computed once per call: timesteps, a_t, and the DDIM coefficients."""
        offset = int(getattr(self.scheduler, "steps_offset", 0) or 0)
        timesteps = spaced_timesteps(self.num_train_timesteps, self.num_inference_steps, offset)
        alphas = torch.as_tensor(self.scheduler.alphas_cumprod).detach().to("cpu", torch.float64)
        final = torch.as_tensor(getattr(self.scheduler, "final_alpha_cumprod", 1.0)).to("cpu", torch.float64)
        a_t = alphas[timesteps]
        a_s = torch.cat([alphas[timesteps[1:]], final.reshape(1)])
        c_x0, c_eps, sigma = ddim_coefficients(a_t, a_s, self.eta)
        to = {"device": device, "dtype": torch.float32}
        return timesteps.to(device), a_t.to(**to), c_x0.to(**to), c_eps.to(**to), sigma.to(**to)

    def _mask_channels(self, network: Any) -> int:
        if self.out_channels is not None:
            return self.out_channels
        for obj in (network, getattr(network, "module", None)):
            n_ch = getattr(obj, "out_channels", None)
            if isinstance(n_ch, int) and n_ch > 0:
                return n_ch
        raise ValueError(
            "The number of mask channels is unknown: the network has no integer `out_channels` attribute, "
            "so pass `out_channels` to DiffusionSegInferer."
        )

    @staticmethod
    def _check_output(out: Any, n_ch: int) -> torch.Tensor:
        if isinstance(out, Mapping) or isinstance(out, (tuple, list)):
            raise ValueError("The network must return a single tensor.")
        if isinstance(out, MetaTensor):
            out = out.as_tensor()
        if out.shape[1] == 2 * n_ch:  # learned-variance models: keep the mean prediction
            out = out[:, :n_ch]
        elif out.shape[1] != n_ch:
            raise ValueError(f"The network returned {out.shape[1]} channels, expected out_channels={n_ch}.")
        return out  # type: ignore[no-any-return]

    def _sample_slices(
        self,
        image: torch.Tensor,
        network: Callable[..., torch.Tensor],
        n_ch: int,
        generator: torch.Generator | None,
        *args: Any,
        **kwargs: Any,
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
        n = self.num_ensemble

        def predictor(slices: torch.Tensor) -> torch.Tensor:
            # (S, C_in, h, w) -> (S, N * C, h, w): members flattened into channels for the merger
            return self.sample(slices, network, n_ch, generator, *args, **kwargs).flatten(1, 2)

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
