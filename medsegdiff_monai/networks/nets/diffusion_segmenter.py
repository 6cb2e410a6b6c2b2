# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""A conditional diffusion denoiser and its sampler as one segmentation network: ``forward(image) -> probabilities``."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler
from monai.utils import optional_import
from torch import nn

from ..schedulers.respacing import ddim_coefficients, ddim_update, predict_x0_and_eps, spaced_timesteps

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["DiffusionSegmenter", "check_sampling_args", "mask_channels", "SAMPLERS", "MODES"]

SAMPLERS = ("ddim", "ddpm")
MODES = ("crossattn", "concat")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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


def check_sampling_args(
    scheduler: Scheduler | None,
    num_inference_steps: int,
    sampler: str,
    eta: float,
    num_ensemble: int,
    mode: str,
    autocast_dtype: str | None,
) -> Scheduler:
    """Validate the sampling arguments of :class:`DiffusionSegmenter` (and of the inferer built on it).

    Returns:
        ``scheduler``, or the default ``DDPMScheduler(1000)`` when it is None.

    Raises:
        ValueError: naming the first invalid argument.
    """
    scheduler = scheduler if scheduler is not None else DDPMScheduler(num_train_timesteps=1000)
    num_train = int(getattr(scheduler, "num_train_timesteps", 0))
    if num_train < 1 or not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError("`scheduler` must be a MONAI Scheduler with `num_train_timesteps` and `alphas_cumprod`.")
    if not 1 <= int(num_inference_steps) <= num_train:
        raise ValueError(
            f"`num_inference_steps` must be in [1, num_train_timesteps={num_train}], got {num_inference_steps}."
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {sampler!r}.")
    if not float(eta) >= 0:
        raise ValueError(f"`eta` must be >= 0, got {eta}.")
    if int(num_ensemble) < 1:
        raise ValueError(f"`num_ensemble` must be >= 1, got {num_ensemble}.")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"`autocast_dtype` must be None or one of {tuple(AUTOCAST_DTYPES)}, got {autocast_dtype!r}.")
    prediction_type = str(getattr(scheduler, "prediction_type", "epsilon"))
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`scheduler.prediction_type` {prediction_type!r} is not supported.")
    return scheduler


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
    network call for the whole ensemble. The visited timesteps are ``linspace(T - 1, 0, n).round()`` (MONAI's
    spacing) and each update goes from the noise level of one visited timestep to that of the next
    (:mod:`medsegdiff_monai.networks.schedulers.respacing`):

    - ``sampler="ddim"``: DDIM with ``eta`` (0: deterministic);
    - ``sampler="ddpm"``: respaced ancestral DDPM, the posterior ``q(x_s | x_t, x0)`` with "fixed_small" variance,
      computed in its DDIM form with ``eta = 1``.

    Only the noise schedule (``alphas_cumprod``), ``prediction_type``, ``clip_sample``/``clip_sample_values`` and (DDIM)
    ``final_alpha_cumprod``/``steps_offset`` of ``scheduler`` are used, never its ``step``: MONAI 1.6.1's DDPM/DDIM
    ``step`` goes to the wrong noise level with fewer steps than training steps, so any MONAI scheduler samples
    correctly here. Member probabilities are ``clamp((x0 + 1) / 2, 0, 1)`` of the final denoised sample.

    The state dict is the wrapped network's (same keys, no ``network.`` prefix; the sampler's tables are not
    saved), so the checkpoint of a trained denoiser loads into this module directly, as MONAI's ``ckpt_export``
    and ``CheckpointLoader`` do, and a state dict of this module loads into a bare denoiser.

    Args:
        network: the noise-prediction network (a module, or any callable for eager use), called as ``network(x, timesteps=t, context=image)`` (``mode``
            "crossattn", the MedSegDiffUNet convention) or ``network(cat([x, image], 1), timesteps=t)`` ("concat",
            e.g. MONAI's ``DiffusionModelUNet``); ``t`` is a long tensor of shape (batch,).
        scheduler: the MONAI scheduler the network was trained with. Default: ``DDPMScheduler(1000)``.
        num_inference_steps: denoising steps, in ``[1, scheduler.num_train_timesteps]``.
        sampler: "ddim" or "ddpm".
        eta: DDIM stochasticity, >= 0 (only for ``sampler="ddim"``).
        num_ensemble: ensemble members per image, >= 1.
        clip_sample: clip the predicted x0 to the scheduler's clip range at every step; None follows
            ``scheduler.clip_sample`` (True if the scheduler has none).
        out_channels: number of mask channels; None takes ``network.out_channels``.
        mode: "crossattn" or "concat", see ``network``.
        autocast_dtype: None (float32), "bfloat16" or "float16": run the network under ``torch.autocast`` on the
            input's device with this dtype; the sampler arithmetic stays float32. Eager mode only (ignored when
            scripted).
        progress: show a tqdm progress bar over the steps (eager mode only).

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

    def __init__(
        self,
        network: nn.Module,
        scheduler: Scheduler | None = None,
        num_inference_steps: int = 10,
        sampler: str = "ddim",
        eta: float = 0.0,
        num_ensemble: int = 5,
        clip_sample: bool | None = None,
        out_channels: int | None = None,
        mode: str = "crossattn",
        autocast_dtype: str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            if not callable(network):
                raise TypeError(f"`network` must be a torch.nn.Module or a callable, got {type(network).__name__}.")
            network = _CallableNetwork(network)
        scheduler = check_sampling_args(scheduler, num_inference_steps, sampler, eta, num_ensemble, mode, autocast_dtype)
        num_train = int(scheduler.num_train_timesteps)
        prediction_type = str(getattr(scheduler, "prediction_type", "epsilon"))

        self.network = network
        self.out_channels = mask_channels(network, out_channels)
        self.num_train_timesteps = num_train
        self.num_inference_steps = int(num_inference_steps)
        self.sampler = sampler
        self.eta = 1.0 if sampler == "ddpm" else float(eta)
        self.num_ensemble = int(num_ensemble)
        self.prediction_type = prediction_type
        if clip_sample is None:
            clip_sample = bool(getattr(scheduler, "clip_sample", True))
        lo, hi = getattr(scheduler, "clip_sample_values", (-1.0, 1.0))
        self.clip_sample = bool(clip_sample)
        self.clip_min, self.clip_max = float(lo), float(hi)
        self.mode = mode
        self.autocast_dtype = autocast_dtype
        self.progress = bool(progress)

        # per-step tables, computed once in float64 and stored float32; not part of the state dict
        offset = int(getattr(scheduler, "steps_offset", 0) or 0)
        timesteps = spaced_timesteps(num_train, self.num_inference_steps, offset)
        alphas = torch.as_tensor(scheduler.alphas_cumprod).detach().to("cpu", torch.float64)
        final = torch.as_tensor(getattr(scheduler, "final_alpha_cumprod", 1.0)).to("cpu", torch.float64)
        a_t = alphas[timesteps]
        a_s = torch.cat([alphas[timesteps[1:]], final.reshape(1)])
        c_x0, c_eps, sigma = ddim_coefficients(a_t, a_s, self.eta)
        self.register_buffer("timesteps", timesteps, persistent=False)
        self.register_buffer("alpha_prod_t", a_t.float(), persistent=False)
        self.register_buffer("coef_x0", c_x0.float(), persistent=False)
        self.register_buffer("coef_eps", c_eps.float(), persistent=False)
        self.register_buffer("sigma", sigma.float(), persistent=False)

        # the state dict is the network's: strip / add the "network." prefix
        self.register_state_dict_post_hook(_strip_network_prefix)
        self.register_load_state_dict_pre_hook(_add_network_prefix)

    def extra_repr(self) -> str:
        return (
            f"num_inference_steps={self.num_inference_steps}, sampler={self.sampler!r}, eta={self.eta}, "
            f"num_ensemble={self.num_ensemble}, prediction_type={self.prediction_type!r}, mode={self.mode!r}"
        )

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One network call, returning the ``out_channels`` mean-prediction channels in float32."""
        if not torch.jit.is_scripting():
            if self.autocast_dtype is not None:
                with torch.autocast(device_type=x.device.type, dtype=AUTOCAST_DTYPES[self.autocast_dtype]):
                    return self._call_network(x, t, cond).float()
        return self._call_network(x, t, cond).float()

    def _call_network(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.mode == "concat":
            out = self.network(torch.cat([x, cond.to(x.dtype)], dim=1), timesteps=t)
        else:
            out = self.network(x, timesteps=t, context=cond)
        c = self.out_channels
        if out.shape[1] == 2 * c:  # learned-variance models: keep the mean prediction
            out = out[:, :c]
        elif out.shape[1] != c:
            raise ValueError(
                "The network returned " + str(out.shape[1]) + " channels, expected out_channels=" + str(c) + "."
            )
        return out

    def sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample the ensemble: member probabilities for a batch of images, all members in one call per step.

        Runs without gradient tracking; the loop has no host synchronisation.

        Args:
            image: condition images ``(B, C_in, *spatial)``.
            generator: random generator on ``image.device`` (None: the global random state).

        Returns:
            ``(B, num_ensemble, out_channels, *spatial)`` float32 member probabilities ``clamp((x0 + 1) / 2, 0, 1)``.
        """
        with torch.no_grad():
            b = image.shape[0]
            n = self.num_ensemble
            spatial: list[int] = [int(d) for d in image.shape[2:]]
            cond = image if n == 1 else image.repeat_interleave(n, dim=0)  # member m of image i at row i * n + m
            if not cond.is_floating_point():
                cond = cond.float()
            shape = [b * n, self.out_channels] + spatial
            x = torch.randn(shape, generator=generator, device=image.device, dtype=torch.float32)
            clip_range: tuple[float, float] | None = None
            if self.clip_sample:
                clip_range = (self.clip_min, self.clip_max)
            bar = None
            if not torch.jit.is_scripting():
                if self.progress and has_tqdm:
                    bar = tqdm(total=self.num_inference_steps, desc="diffusion steps", leave=False)
            x0 = x
            last = self.num_inference_steps - 1
            for i in range(self.num_inference_steps):
                t = self.timesteps[i].expand(b * n)
                out = self._denoise(x, t, cond)
                x0, eps = predict_x0_and_eps(out, x, self.alpha_prod_t[i], self.prediction_type, clip_range)
                if not torch.jit.is_scripting():
                    if bar is not None:
                        bar.update(1)
                if i == last:
                    break  # the last update lands on the clean sample: x0 itself
                noise: torch.Tensor | None = None
                if self.eta > 0:
                    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = ddim_update(x0, eps, self.coef_x0[i], self.coef_eps[i], self.sigma[i], noise)
            if not torch.jit.is_scripting():
                if bar is not None:
                    bar.close()
            probs = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
            return probs.reshape([b, n, self.out_channels] + spatial)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: condition images ``(B, C_in, *spatial)``.

        Returns:
            ensemble-mean foreground probabilities ``(B, out_channels, *spatial)``, float32 in [0, 1].
        """
        return self.sample(image).mean(dim=1)


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
