# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Update rules for diffusion sampling with fewer steps than the training chain ("respacing").

A sampler visits a decreasing subsequence ``t_0 > t_1 > ... > t_{n-1}`` of the training timesteps. Each update
must go from the noise level of ``t_i`` to the noise level of ``t_{i+1}`` (and, after the last entry, to the clean
sample with ``alpha_bar = 1``). MONAI 1.6.1's ``DDPMScheduler.step`` always goes to ``t - 1`` and its
``DDIMScheduler.step`` to ``t - num_train_timesteps // num_inference_steps``, while their ``set_timesteps`` space
the visited steps by ``linspace``; both therefore sample at wrong noise levels whenever fewer steps than training
steps are used. The functions here hold the corrected math once, shared by
:class:`~medsegdiff_monai.networks.schedulers.RespacedDDPMScheduler`,
:class:`~medsegdiff_monai.networks.schedulers.RespacedDDIMScheduler` and
:class:`~medsegdiff_monai.inferers.DiffusionSegInferer`.

Notation: ``a_t = alpha_bar_t`` (``alphas_cumprod[t]``) of the current step, ``a_s`` of the next (less noisy)
step actually visited. Everything is computed in float32 at least.

- Deterministic/stochastic DDIM (Song et al. 2021, eq. 12 and 16) between the two visited levels::

      sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)
      x_s   = sqrt(a_s) * x0 + sqrt(1 - a_s - sigma^2) * eps + sigma * z

- Respaced ancestral DDPM (Nichol & Dhariwal 2021, sec. 4): the visited subsequence is itself a Markov chain with
  ``beta'_t = 1 - a_t / a_s``; its posterior ``q(x_s | x_t, x0)`` has::

      mean = sqrt(a_s) * beta'_t / (1 - a_t) * x0 + sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t) * x_t
      var  = (1 - a_s) / (1 - a_t) * beta'_t        ("fixed_small"; "fixed_large" uses beta'_t)

  which equals DDIM with ``eta = 1`` exactly (also with clipping, see below).

- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2), the multistep second-order solver of the
  diffusion ODE in data prediction, with ``lambda = log(sqrt(a) / sqrt(1 - a))`` and ``h = lambda_s - lambda_t``::

      x_s = sqrt(1 - a_s) / sqrt(1 - a_t) * x_t + sqrt(a_s) * (1 - exp(-h)) * D
      D   = (1 + 1 / (2 r)) * x0 - 1 / (2 r) * x0_prev,   r = h_prev / h     (D = x0 at the first step)

Consistent clipping, the principle every update here follows: **the update is a function of ``(x_t, x0)`` only**
(plus the previous ``x0`` for DPM-Solver++ and fresh noise). When ``x0`` is clipped to ``[-1, 1]`` (or
thresholded), the noise estimate the update implies is the one recomputed from the clipped ``x0`` and ``x_t``,
``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` (guided-diffusion's rule), never the network's raw one. Keeping the
raw noise beside a clipped ``x0`` (MONAI's and diffusers' DDIM) breaks the identity
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``: for masks ``x0`` is clipped almost everywhere, so a small bias of the
network's noise is re-added at every step instead of cancelling, and sampling gets *worse* as the number of steps
grows (see ``tests/test_sampler.py``). All three samplers are therefore written as
``x_s = c_xt * x_t + c_x0 * x0 + c_prev * x0_prev + sigma * z`` with per-step coefficients
(:func:`update_coefficients`).
"""

from __future__ import annotations

import torch

__all__ = [
    "check_num_inference_steps",
    "spaced_timesteps",
    "previous_timestep_table",
    "next_timestep_table",
    "predict_x0_and_eps",
    "ddim_coefficients",
    "posterior_coefficients",
    "dpm_solver_pp_2m_coefficients",
    "update_coefficients",
]


def check_num_inference_steps(num_inference_steps: int, num_train_timesteps: int) -> int:
    """Validate a number of sampling steps (the one check every sampling path uses).

    Args:
        num_inference_steps: number n of sampling steps.
        num_train_timesteps: length T of the training chain.

    Returns:
        ``int(num_inference_steps)``.

    Raises:
        ValueError: if ``num_inference_steps`` is outside ``[1, num_train_timesteps]``.
    """
    if not 1 <= int(num_inference_steps) <= int(num_train_timesteps):
        raise ValueError(
            f"`num_inference_steps` must be in [1, num_train_timesteps={num_train_timesteps}], "
            f"got {num_inference_steps}."
        )
    return int(num_inference_steps)


def spaced_timesteps(
    num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0, device: str | torch.device | None = None
) -> torch.Tensor:
    """Decreasing timesteps visited by a sampler, spaced as MONAI's ``set_timesteps`` does (rounded linspace).

    Args:
        num_train_timesteps: length T of the training chain.
        num_inference_steps: number n of sampling steps, ``1 <= n <= T``.
        steps_offset: offset added to every step (MONAI DDIM's ``steps_offset``), ``0 <= steps_offset < T``.
        device: device of the result.

    Returns:
        Long tensor of shape (n,), strictly decreasing, first entry ``T - 1``, last entry ``steps_offset``.

    Raises:
        ValueError: if ``num_inference_steps`` is outside ``[1, num_train_timesteps]`` or ``steps_offset`` outside
            ``[0, num_train_timesteps)``.
    """
    check_num_inference_steps(num_inference_steps, num_train_timesteps)
    if not 0 <= int(steps_offset) < int(num_train_timesteps):
        raise ValueError(f"`steps_offset` must be in [0, {num_train_timesteps}), got {steps_offset}.")
    steps = torch.linspace(num_train_timesteps - 1 - steps_offset, 0, int(num_inference_steps), device=device)
    return steps.round().long() + int(steps_offset)


def previous_timestep_table(timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Lookup table ``prev[t]`` = the largest visited timestep strictly below ``t``, or -1 if there is none.

    For a visited ``t = timesteps[i]`` this is ``timesteps[i + 1]`` (-1 after the last), i.e. the noise level the
    sampler actually goes to next. Built with tensor ops only (no host synchronisation), on ``timesteps.device``.

    Args:
        timesteps: visited timesteps, any order, shape (n,).
        num_train_timesteps: length T of the training chain.

    Returns:
        Long tensor of shape (T,).
    """
    visited = torch.sort(timesteps.long().flatten()).values  # ascending; duplicates are harmless here
    t_all = torch.arange(num_train_timesteps, device=visited.device)
    idx = torch.searchsorted(visited, t_all, right=False) - 1  # last visited index with visited < t
    return torch.where(idx >= 0, visited[idx.clamp(min=0)], torch.full_like(t_all, -1))


def next_timestep_table(timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Lookup table ``nxt[t]`` = the smallest visited timestep strictly above ``t`` (``T - 1`` if none).

    Args:
        timesteps: visited timesteps, any order, shape (n,).
        num_train_timesteps: length T of the training chain.

    Returns:
        Long tensor of shape (T,).
    """
    visited = torch.sort(timesteps.long().flatten()).values
    t_all = torch.arange(num_train_timesteps, device=visited.device)
    idx = torch.searchsorted(visited, t_all, right=True)  # first visited index with visited > t
    top = torch.full_like(t_all, num_train_timesteps - 1)
    return torch.where(idx < visited.numel(), visited[idx.clamp(max=visited.numel() - 1)], top)


def predict_x0_and_eps(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    prediction_type: str,
    clip_range: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted clean sample ``x0`` and noise ``eps`` from a network output at noise level ``a_t``.

    Scriptable with ``torch.jit.script`` (it runs inside :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter`);
    ``prediction_type`` is compared as a plain string (MONAI's ``DDPMPredictionType`` members are equal to them).

    When ``clip_range`` is given, ``x0`` is clamped and ``eps`` is recomputed from the clamped ``x0`` and ``x_t``
    (``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``, guided-diffusion's rule), so that the pair stays consistent:
    ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` holds after clipping as before. MONAI's and diffusers' DDIM keep the
    raw ``eps`` instead; with masks, whose ``x0`` is clipped almost everywhere, that re-adds any bias of the
    network's noise at every step and makes sampling degrade as the number of steps grows (module docstring).

    Args:
        model_output: network output, shape (B, C, *spatial): noise, clean sample or velocity.
        sample: current noisy sample ``x_t``, same shape.
        alpha_prod_t: ``alpha_bar_t``, a 0-d tensor or broadcastable to ``sample`` (e.g. (B, 1, 1, 1)).
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_range: optional ``(min, max)`` for ``x0``.

    Returns:
        ``(x0, eps)``, both shaped like ``sample``.

    Raises:
        ValueError: for an unknown ``prediction_type``.
    """
    sqrt_a = alpha_prod_t.sqrt()
    sqrt_1ma = (1.0 - alpha_prod_t).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - sqrt_1ma * eps) / sqrt_a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - sqrt_a * x0) / sqrt_1ma
    elif prediction_type == "v_prediction":
        x0 = sqrt_a * sample - sqrt_1ma * model_output
        eps = sqrt_a * model_output + sqrt_1ma * sample
    else:
        raise ValueError(
            "`prediction_type` must be one of 'epsilon', 'sample', 'v_prediction', got '" + prediction_type + "'."
        )
    if clip_range is not None:
        x0 = x0.clamp(clip_range[0], clip_range[1])
        eps = (sample - sqrt_a * x0) / sqrt_1ma
    return x0, eps


def ddim_coefficients(
    alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor, eta: float | torch.Tensor = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of the DDIM update ``x_s = c_x0 * x0 + c_eps * eps + sigma * z`` from level a_t to a_s.

    Works element-wise on tensors of any shape, e.g. all steps of a sampler at once.

    Args:
        alpha_prod_t: ``alpha_bar`` of the current step.
        alpha_prod_prev: ``alpha_bar`` of the step reached (1 for the clean sample).
        eta: 0 for deterministic DDIM, 1 for the ancestral (respaced DDPM, "fixed_small") update.

    Returns:
        ``(c_x0, c_eps, sigma)``, float32 (or wider) tensors broadcast from the inputs.
    """
    a_t = alpha_prod_t.float() if alpha_prod_t.dtype in (torch.float16, torch.bfloat16) else alpha_prod_t
    a_s = alpha_prod_prev.to(a_t.dtype)
    variance = (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)
    sigma = eta * variance.clamp(min=0.0).sqrt()
    c_eps = (1.0 - a_s - sigma**2).clamp(min=0.0).sqrt()
    return a_s.sqrt(), c_eps, sigma


def posterior_coefficients(
    alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean coefficients and variances of the respaced posterior ``q(x_s | x_t, x0)``.

    With ``beta'_t = 1 - a_t / a_s`` (the beta of the respaced Markov chain that visits only the sampled steps):
    ``mean = c_x0 * x0 + c_xt * x_t``, ``var_small = (1 - a_s) / (1 - a_t) * beta'_t`` and ``var_large = beta'_t``.

    Args:
        alpha_prod_t: ``alpha_bar`` of the current step.
        alpha_prod_prev: ``alpha_bar`` of the step reached (1 for the clean sample).

    Returns:
        ``(c_x0, c_xt, var_small, beta_respaced)``.
    """
    a_t = alpha_prod_t.float() if alpha_prod_t.dtype in (torch.float16, torch.bfloat16) else alpha_prod_t
    a_s = alpha_prod_prev.to(a_t.dtype)
    beta = (1.0 - a_t / a_s).clamp(min=0.0)
    c_x0 = a_s.sqrt() * beta / (1.0 - a_t)
    c_xt = (a_t / a_s).sqrt() * (1.0 - a_s) / (1.0 - a_t)
    var_small = (1.0 - a_s) / (1.0 - a_t) * beta
    return c_x0, c_xt, var_small, beta


def dpm_solver_pp_2m_coefficients(
    alpha_prod_t: torch.Tensor, alpha_prod_next: torch.Tensor, alpha_prod_prev: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of one DPM-Solver++(2M) step ``x_s = c_xt * x_t + c_x0 * x0 + c_prev * x0_prev``.

    Lu et al. 2022, algorithm 2 (multistep, second order, data prediction). The step goes from level ``a_t`` to
    ``a_s``; ``alpha_prod_prev`` is the level of the step *before* ``t`` (where ``x0_prev`` was predicted). Without
    it (the first step) the update is first order: DDIM with ``eta = 0``. A step to the clean sample (``a_s = 1``,
    ``h = inf``) is first order as well and lands on ``x0`` (``c_x0 = 1``), as the solver's ``lower_order_final``.

    Args:
        alpha_prod_t: ``alpha_bar`` of the current step.
        alpha_prod_next: ``alpha_bar`` of the step reached.
        alpha_prod_prev: ``alpha_bar`` of the previous step, or None at the first step.

    Returns:
        ``(c_xt, c_x0, c_prev)``, broadcast from the inputs.
    """
    a_t = alpha_prod_t.double()
    a_s = alpha_prod_next.to(a_t)
    lam_t = 0.5 * (a_t.log() - (1.0 - a_t).log())
    lam_s = 0.5 * (a_s.log() - (1.0 - a_s).log())  # +inf for a_s = 1
    final = a_s >= 1.0
    sig_ratio = torch.where(final, torch.zeros_like(a_t), ((1.0 - a_s) / (1.0 - a_t)).clamp(min=0.0).sqrt())
    phi = a_s.sqrt() * -torch.expm1(-(lam_s - lam_t))  # sqrt(a_s) * (1 - exp(-h)); 1 when a_s = 1
    if alpha_prod_prev is None:
        return sig_ratio, phi, torch.zeros_like(phi)
    a_p = alpha_prod_prev.to(a_t)
    lam_p = 0.5 * (a_p.log() - (1.0 - a_p).log())
    inv_2r = (lam_s - lam_t) / (2.0 * (lam_t - lam_p))  # 1 / (2 r), r = h_prev / h
    inv_2r = torch.where(final, torch.zeros_like(inv_2r), inv_2r)
    return sig_ratio, phi * (1.0 + inv_2r), -phi * inv_2r


def update_coefficients(
    sampler: str,
    alpha_prod_t: torch.Tensor,
    alpha_prod_next: torch.Tensor,
    alpha_prod_prev: torch.Tensor | None = None,
    eta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-step coefficients of ``x_s = c_xt * x_t + c_x0 * x0 + c_prev * x0_prev + sigma * z`` for a sampler.

    Every sampler is written in terms of ``(x_t, x0)``, so a clipped ``x0`` is always paired with the noise it
    implies (module docstring). Element-wise on tensors of any shape (e.g. all steps at once), computed in float64.

    - "ddim": DDIM with ``eta``: ``x_s = sqrt(a_s) x0 + c_eps eps + sigma z`` with the consistent
      ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``;
    - "ddpm": the respaced posterior ``q(x_s | x_t, x0)`` ("fixed_small" variance) = DDIM with ``eta = 1``;
    - "dpmpp_2m": DPM-Solver++(2M) (:func:`dpm_solver_pp_2m_coefficients`), deterministic.

    Args:
        sampler: "ddim", "ddpm" or "dpmpp_2m".
        alpha_prod_t: ``alpha_bar`` of the current step.
        alpha_prod_next: ``alpha_bar`` of the step reached (1 for the clean sample).
        alpha_prod_prev: ``alpha_bar`` of the previous visited step ("dpmpp_2m" only; None at the first step).
        eta: DDIM stochasticity ("ddim" only).

    Returns:
        ``(c_xt, c_x0, c_prev, sigma)``, float64.

    Raises:
        ValueError: for an unknown ``sampler``.
    """
    a_t = alpha_prod_t.double()
    a_s = alpha_prod_next.to(a_t)
    if sampler == "dpmpp_2m":
        c_xt, c_x0, c_prev = dpm_solver_pp_2m_coefficients(a_t, a_s, alpha_prod_prev)
        return c_xt, c_x0, c_prev, torch.zeros_like(c_xt)
    if sampler == "ddpm":
        c_x0, c_xt, var, _ = posterior_coefficients(a_t, a_s)
        return c_xt, c_x0, torch.zeros_like(c_xt), var.clamp(min=0.0).sqrt()
    if sampler == "ddim":
        sqrt_as, c_eps, sigma = ddim_coefficients(a_t, a_s, eta)
        c_xt = c_eps / (1.0 - a_t).sqrt()  # eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)
        return c_xt, sqrt_as - c_xt * a_t.sqrt(), torch.zeros_like(c_xt), sigma
    raise ValueError(f"`sampler` must be one of 'ddpm', 'ddim', 'dpmpp_2m', got {sampler!r}.")
