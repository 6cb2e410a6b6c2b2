# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""A conditional diffusion denoiser and its sampler as one segmentation network: ``forward(image) -> probabilities``."""

from __future__ import annotations

import logging
from typing import Any, List, Optional

import torch
from monai.networks.schedulers import Scheduler
from monai.utils import StrEnum, optional_import
from torch import nn

from ...utils.enums import look_up_named_option
from ...utils.precision import bfloat16_kernels_available, time_autocast
from ..schedulers.sampler import DiffusionSampler

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
logger = logging.getLogger(__name__)

__all__ = [
    "DiffusionSegmenter",
    "ConditioningMode",
    "AutocastDtype",
    "AUTOCAST_DTYPES",
    "check_segmenter_args",
    "mask_channels",
]


class ConditioningMode(StrEnum):
    """How the image reaches the network: as ``context`` ("crossattn") or concatenated after the mask ("concat")."""

    CROSSATTN = "crossattn"
    CONCAT = "concat"


class AutocastDtype(StrEnum):
    """Reduced precisions the network may run in under ``torch.autocast``; ``AUTO`` (inference only): bfloat16
    when a timed probe call shows it is faster on the device at hand, else float32."""

    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    AUTO = "auto"


AUTOCAST_DTYPES = {AutocastDtype.BFLOAT16.value: torch.bfloat16, AutocastDtype.FLOAT16.value: torch.float16}


def mask_channels(network: Any, out_channels: int | None = None) -> int:
    """Number of mask channels a diffusion network denoises: ``out_channels`` if given, else the network's
    ``out_channels`` attribute (or that of ``network.module``, for ``DistributedDataParallel``).

    Raises:
        ValueError: when neither gives a positive integer.
    """
    if out_channels is not None:
        if int(out_channels) < 1:
            raise ValueError(f"`out_channels` must be >= 1 or None, got {out_channels}.")
        return int(out_channels)
    for obj in (network, getattr(network, "module", None)):
        n_ch = getattr(obj, "out_channels", None)
        if isinstance(n_ch, int) and n_ch > 0:
            return n_ch
    raise ValueError(
        "The number of mask channels is unknown: the network has no integer `out_channels` attribute, "
        "so pass `out_channels`."
    )


def check_segmenter_args(num_ensemble: int, mode: str, autocast_dtype: str | None) -> tuple[int, str, str | None]:
    """Validate the arguments of :class:`DiffusionSegmenter` that are not the sampler's (those are checked by
    :class:`~medsegdiff_monai.networks.schedulers.DiffusionSampler`).

    Returns:
        ``(num_ensemble, mode, autocast_dtype)`` normalised.

    Raises:
        ValueError: naming the first invalid argument.
    """
    if int(num_ensemble) < 1:
        raise ValueError(f"`num_ensemble` must be >= 1, got {num_ensemble}.")
    mode = look_up_named_option("mode", mode, ConditioningMode)
    if autocast_dtype is not None:
        autocast_dtype = look_up_named_option("autocast_dtype", autocast_dtype, AutocastDtype)
    return int(num_ensemble), mode, autocast_dtype


class DiffusionSegmenter(nn.Module):
    """Segment images with a conditional diffusion model: an ensemble of masks sampled from noise, averaged.

    It wraps a trained noise-prediction network (e.g. :class:`~medsegdiff_monai.networks.nets.MedSegDiffUNet`) and
    the sampler into one module whose ``forward(image)`` returns the ensemble-mean foreground probability, so it
    can stand wherever MONAI expects a segmentation network: as a bundle's ``network_def`` (``verify_net_in_out``,
    ``ckpt_export`` / ``torch.jit.script``), inside :class:`monai.inferers.SliceInferer` or
    :class:`monai.inferers.SlidingWindowInferer`, or as the network of a :class:`monai.engines.SupervisedEvaluator`.
    :class:`~medsegdiff_monai.inferers.DiffusionSegInferer` samples with this module too and adds fusion rules,
    uncertainty maps and slice-by-slice 3D inference on top.

    Sampling: masks live in ``[-1, 1]``; ``num_ensemble`` members start from independent Gaussian noise and are
    denoised together, the image repeated along the batch, so each of the ``num_inference_steps`` steps is one
    network call for the whole ensemble. The visited timesteps and the update rule are those of a
    :class:`~medsegdiff_monai.networks.schedulers.DiffusionSampler` (built from ``scheduler``,
    ``num_inference_steps``, ``sampler``, ``eta`` and ``clip_sample``, or given ready-made as ``sampler``):

    - ``sampler="ddpm"``: respaced ancestral DDPM, the posterior ``q(x_s | x_t, x0)`` ("fixed_small" variance);
    - ``sampler="ddim"``: DDIM with ``eta`` (0: deterministic);
    - ``sampler="dpmpp_2m"``: DPM-Solver++(2M), multistep, data prediction with thresholding (deterministic).

    Every update is a function of the current sample and the *clipped* predicted x0, so clipping stays
    consistent and results do not degrade with more steps (see ``DiffusionSampler``). This loop is the only
    sampling loop of the package: :class:`~medsegdiff_monai.inferers.DiffusionSegInferer` and the bundle sample
    through it. Member probabilities are ``clamp((x0 + 1) / 2, 0, 1)`` of the last step's x0. A network with
    ``self_condition = True`` (:class:`~medsegdiff_monai.networks.nets.MedSegDiffUNet`) gets the previous step's
    clipped x0 as ``x_self_cond`` from the second step on.

    Noise: from ``generator`` (or the global random state), or, in eager mode with ``seeds`` given to
    :meth:`sample`, from one seed per image: the noise of image ``b`` at step ``k`` comes from a generator seeded
    with ``(seeds[b], k)``, so an image's result does not depend on the other images of the batch or their order.

    The state dict is the wrapped network's (same keys, no ``network.`` prefix; the sampler's tables are not
    saved), so the checkpoint of a trained denoiser loads into this module directly, as MONAI's ``ckpt_export``
    and ``CheckpointLoader`` do, and a state dict of this module loads into a bare denoiser.

    Args:
        network: the noise-prediction network (a module, or any callable for eager use), called as
            ``network(x, timesteps=t, context=image)`` (``mode`` "crossattn", the MedSegDiffUNet convention) or
            ``network(cat([x, image], 1), timesteps=t)`` ("concat", e.g. MONAI's ``DiffusionModelUNet``); ``t`` is a
            long tensor of shape (batch,).
        scheduler: the MONAI scheduler the network was trained with. Default: ``DDPMScheduler(1000)``.
        num_inference_steps: denoising steps (network calls), in ``[1, scheduler.num_train_timesteps]``.
            Default 10.
        sampler: "ddpm", "ddim" or "dpmpp_2m", or a ready
            :class:`~medsegdiff_monai.networks.schedulers.DiffusionSampler` (then ``scheduler``,
            ``num_inference_steps``, ``eta`` and ``clip_sample`` must be left unset).
        eta: DDIM stochasticity, >= 0 (only for ``sampler="ddim"``).
        num_ensemble: ensemble members per image, >= 1.
        clip_sample: clip the predicted x0 to the scheduler's clip range at every step; None follows
            ``scheduler.clip_sample`` (True if the scheduler has none).
        out_channels: number of mask channels; None takes ``network.out_channels``.
        mode: "crossattn" or "concat", see ``network``.
        autocast_dtype: None (float32), "bfloat16" or "float16": run the network under ``torch.autocast`` on the
            input's device with this dtype; the sampler arithmetic stays float32. "auto": float32 on processors
            without bfloat16 kernels (:func:`~medsegdiff_monai.utils.bfloat16_kernels_available`, no timing);
            otherwise, at the first network call on a device, time one call on one row in float32 and in bfloat16
            (:func:`~medsegdiff_monai.utils.time_autocast`) and use bfloat16 from then on if it is at least
            ``AUTO_MIN_SPEEDUP`` (1.1) times faster, else float32; the choice and the times are in
            ``autocast_choices``. Eager mode only (ignored when scripted).
        progress: show a tqdm progress bar over the steps (eager mode only).
        share_context: with a network that has ``supports_context_repeats = True`` (MedSegDiffUNet) in mode
            "crossattn", pass each image once with ``context_repeats=num_ensemble`` instead of repeating it per
            member, so the network computes its member-independent image features once per image and step (same
            result). Eager mode only (a scripted module repeats the image).

    Shapes:
        ``forward``: image ``(B, C_in, *spatial)`` -> probabilities ``(B, out_channels, *spatial)``, float32 in [0, 1].
        :meth:`sample`: image ``(B, C_in, *spatial)`` -> members ``(B, num_ensemble, out_channels, *spatial)``.

    Example::

        net = MedSegDiffUNet.from_preset("B", in_channels=4, out_channels=1)
        net.load_state_dict(torch.load("models/model.pt"))
        segmenter = DiffusionSegmenter(net, RespacedDDPMScheduler(1000), num_inference_steps=10, num_ensemble=5)
        prob = segmenter.eval()(image)  # (B, 1, H, W)
        scripted = torch.jit.script(segmenter)
    """

    # a TorchScript constant, so the call with ``x_self_cond`` is compiled only for networks that take it
    __constants__ = ["self_condition"]

    def __init__(
        self,
        network: nn.Module,
        scheduler: Scheduler | None = None,
        num_inference_steps: int | None = None,
        sampler: str | DiffusionSampler = "ddim",
        eta: float | None = None,
        num_ensemble: int = 5,
        clip_sample: bool | None = None,
        out_channels: int | None = None,
        mode: str = "crossattn",
        autocast_dtype: str | None = None,
        progress: bool = False,
        share_context: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            if not callable(network):
                raise TypeError(f"`network` must be a torch.nn.Module or a callable, got {type(network).__name__}.")
            network = _CallableNetwork(network)
        if isinstance(sampler, DiffusionSampler):
            given = {"scheduler": scheduler, "num_inference_steps": num_inference_steps, "eta": eta}
            given["clip_sample"] = clip_sample
            extra = sorted(k for k, v in given.items() if v is not None)
            if extra:
                raise ValueError(f"`sampler` is a DiffusionSampler, which fixes {extra}: leave them unset.")
            solver = sampler
        else:
            steps = 10 if num_inference_steps is None else num_inference_steps
            solver = DiffusionSampler(scheduler, steps, sampler, 0.0 if eta is None else eta, clip_sample)
        self.num_ensemble, self.mode, self.autocast_dtype = check_segmenter_args(num_ensemble, mode, autocast_dtype)

        self.network = network
        self.solver = solver
        self.out_channels = mask_channels(network, out_channels)
        self.num_inference_steps = solver.num_inference_steps
        self.sampler = solver.sampler
        self.progress = bool(progress)
        self.self_condition = bool(getattr(network, "self_condition", False))
        # device -> {"dtype": ..., "times": ...} ("auto"); not annotated: TorchScript warns on annotated empty dicts
        self.autocast_choices = {}  # type: ignore[var-annotated]
        self.share_context = (
            bool(share_context)
            and self.mode == "crossattn"
            and bool(getattr(network, "supports_context_repeats", False))
        )

        # the state dict is the network's: strip / add the "network." prefix
        self.register_state_dict_post_hook(_strip_network_prefix)
        self.register_load_state_dict_pre_hook(_add_network_prefix)

    def extra_repr(self) -> str:
        return (
            f"num_ensemble={self.num_ensemble}, mode={self.mode!r}, autocast_dtype={self.autocast_dtype!r}, "
            f"share_context={self.share_context}"
        )

    def _denoise(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        repeats: int = 1,
        x_self_cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One network call, returning the ``out_channels`` mean-prediction channels in float32."""
        if not torch.jit.is_scripting():
            dtype = self._autocast_for(x, t, cond, repeats)
            if dtype is not None:
                with torch.autocast(device_type=x.device.type, dtype=AUTOCAST_DTYPES[dtype]):
                    return self._call_network(x, t, cond, repeats, x_self_cond).float()
        return self._call_network(x, t, cond, repeats, x_self_cond).float()

    @torch.jit.unused
    def _autocast_for(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, repeats: int) -> str | None:
        """The autocast dtype of the network calls on ``x``'s device; for "auto", measured once per device."""
        if self.autocast_dtype != AutocastDtype.AUTO:
            return self.autocast_dtype
        key = str(x.device)
        if key not in self.autocast_choices and not bfloat16_kernels_available(x.device):
            logger.info("amp_dtype 'auto' on %s: no bfloat16 kernels for this processor -> float32", x.device)
            self.autocast_choices[key] = {"dtype": None, "times": {}}
        if key not in self.autocast_choices:
            # probe: one row (one image, one member) with fixed noise, so the global random state is untouched
            g = torch.Generator(device=x.device).manual_seed(0)
            probe_x = torch.randn((1,) + tuple(x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
            probe_t, probe_c = t[:1], cond[:1]
            dtype, times = time_autocast(lambda: self._call_network(probe_x, probe_t, probe_c, 1), x.device)
            self.autocast_choices[key] = {"dtype": dtype, "times": times}
        return self.autocast_choices[key]["dtype"]  # type: ignore[no-any-return]

    def _call_network(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        repeats: int = 1,
        x_self_cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self.mode == "concat":
            if self.self_condition:
                out = self.network(torch.cat([x, cond.to(x.dtype)], dim=1), timesteps=t, x_self_cond=x_self_cond)
            else:
                out = self.network(torch.cat([x, cond.to(x.dtype)], dim=1), timesteps=t)
        else:
            out = self._call_crossattn(x, t, cond, repeats, x_self_cond)
        c = self.out_channels
        if out.shape[1] == 2 * c:  # learned-variance models: keep the mean prediction
            out = out[:, :c]
        elif out.shape[1] != c:
            raise ValueError(
                "The network returned " + str(out.shape[1]) + " channels, expected out_channels=" + str(c) + "."
            )
        return out

    def _call_crossattn(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, repeats: int, x_self_cond: Optional[torch.Tensor]
    ) -> torch.Tensor:
        if self.self_condition:
            if not torch.jit.is_scripting():
                if repeats > 1:
                    return self.network(
                        x, timesteps=t, context=cond, context_repeats=repeats, x_self_cond=x_self_cond
                    )
            return self.network(x, timesteps=t, context=cond, x_self_cond=x_self_cond)
        if not torch.jit.is_scripting():
            if repeats > 1:  # each image once, shared by its `repeats` member rows (eager only)
                return self.network(x, timesteps=t, context=cond, context_repeats=repeats)
        return self.network(x, timesteps=t, context=cond)

    def sample(
        self,
        image: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        seeds: Optional[List[int]] = None,
    ) -> torch.Tensor:
        """Sample the ensemble: member probabilities for a batch of images, all members in one call per step.

        Runs without gradient tracking; the loop has no host synchronisation.

        Args:
            image: condition images ``(B, C_in, *spatial)``.
            generator: random generator on ``image.device`` (None: the global random state).
            seeds: one seed per image (eager mode): the noise of image ``b`` is drawn from its own generators, so
                its result does not depend on the rest of the batch. Takes precedence over ``generator``.

        Returns:
            ``(B, num_ensemble, out_channels, *spatial)`` float32 member probabilities ``clamp((x0 + 1) / 2, 0, 1)``.
        """
        with torch.no_grad():
            b = image.shape[0]
            n = self.num_ensemble
            spatial: List[int] = [int(d) for d in image.shape[2:]]
            repeats = 1
            if not torch.jit.is_scripting():
                if self.share_context:
                    repeats = n
            # member m of image i at row i * n + m
            cond = image if n == 1 or repeats > 1 else image.repeat_interleave(n, dim=0)
            if not cond.is_floating_point():
                cond = cond.float()
            shape = [b * n, self.out_channels] + spatial
            x = self._noise(shape, image.device, 0, generator, seeds)
            bar = None
            if not torch.jit.is_scripting():
                if self.progress and has_tqdm:
                    bar = tqdm(total=self.num_inference_steps, desc="diffusion steps", leave=False)
            x0 = x
            x0_prev: Optional[torch.Tensor] = None
            last = self.num_inference_steps - 1
            for i in range(self.num_inference_steps):
                t = self.solver.timesteps[i].expand(b * n)
                # self-conditioning: the previous step's clipped x0 (none at the first step)
                x_self_cond: Optional[torch.Tensor] = None
                if self.self_condition and i > 0:
                    x_self_cond = x0
                x0 = self.solver.predict_x0(i, self._denoise(x, t, cond, repeats, x_self_cond), x)
                if not torch.jit.is_scripting():
                    if bar is not None:
                        bar.update(1)
                if i == last:
                    break  # the last update lands on the clean sample: x0 itself
                noise: Optional[torch.Tensor] = None
                if self.solver.stochastic:
                    noise = self._noise(shape, image.device, i + 1, generator, seeds)
                x = self.solver.step(i, x, x0, x0_prev, noise)
                x0_prev = x0
            if not torch.jit.is_scripting():
                if bar is not None:
                    bar.close()
            probs = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
            return probs.reshape([b, n, self.out_channels] + spatial)

    def _noise(
        self,
        shape: List[int],
        device: torch.device,
        step: int,
        generator: Optional[torch.Generator],
        seeds: Optional[List[int]],
    ) -> torch.Tensor:
        """Standard normal noise of ``shape``: per image from ``seeds`` (eager), else from ``generator``."""
        if not torch.jit.is_scripting():
            if seeds is not None:
                return _per_image_noise(shape, device, step, seeds)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: condition images ``(B, C_in, *spatial)``.

        Returns:
            ensemble-mean foreground probabilities ``(B, out_channels, *spatial)``, float32 in [0, 1].
        """
        return self.sample(image).mean(dim=1)


def _per_image_noise(shape: list[int], device: torch.device, step: int, seeds: list[int]) -> torch.Tensor:
    """Noise for ``len(seeds)`` images whose rows (``shape[0] // len(seeds)`` members each) come from a generator
    seeded with the image's seed and the step: independent of the other images of the batch."""
    per_image = shape[0] // len(seeds)
    if per_image * len(seeds) != shape[0]:
        raise ValueError(f"`seeds` must have one seed per image: got {len(seeds)} for {shape[0]} ensemble rows.")
    parts = []
    for seed in seeds:
        g = torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + step) % (2**63))
        parts.append(torch.randn([per_image] + shape[1:], generator=g, device=device, dtype=torch.float32))
    return torch.cat(parts)


class _CallableNetwork(nn.Module):
    """Holds a plain callable as a module (eager mode only), as MONAI's inferers accept any callable network."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn
        n_ch = getattr(fn, "out_channels", None)
        if isinstance(n_ch, int):
            self.out_channels = n_ch

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


def _strip_network_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    head = prefix + "network."
    for key in [k for k in state_dict if k.startswith(head)]:  # re-inserted in order, at the end
        state_dict[prefix + key[len(head) :]] = state_dict.pop(key)


def _add_network_prefix(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    head = prefix + "network."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(head)]:
        state_dict[head + key[len(prefix) :]] = state_dict.pop(key)
