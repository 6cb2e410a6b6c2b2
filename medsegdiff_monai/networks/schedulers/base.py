# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Shared machinery of the respaced schedulers: float32 schedule, timestep -> next-visited-level lookup."""

from __future__ import annotations

from typing import Any

import torch

from monai.utils import unsqueeze_right

from .respacing import check_num_inference_steps, next_timestep_table, previous_timestep_table

__all__ = ["RespacedSchedulerMixin"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16 inputs, otherwise the input's (floating) dtype."""
    return torch.promote_types(dtype, torch.float32)


class RespacedSchedulerMixin:
    """Mixin for MONAI ``Scheduler`` subclasses that step between the timesteps actually visited.

    It provides:

    - ``alphas_cumprod`` that always stays float32. MONAI 1.6.1's ``Scheduler.add_noise``/``get_velocity``
      overwrite ``self.alphas_cumprod`` with the *input's* dtype: one bfloat16 batch rounds every
      ``alpha_bar > 0.996`` to 1 for good (the noise vanishes at small t). Here the setter casts back to float32,
      and ``add_noise``/``get_velocity`` compute in float32 and return the input's dtype.
    - ``timesteps`` whose assignment (by ``set_timesteps`` or by hand) refreshes a lookup table
      ``t -> previous visited timestep`` (see :func:`previous_timestep_table`), so that ``step`` finds the noise
      level it goes to with a tensor gather: no ``.item()``, no host synchronisation, per-sample timesteps of
      shape (B,) allowed.
    - ``_alphas_at(timestep, sample)``: ``(alpha_bar_t, alpha_bar_prev, is_final)`` shaped to broadcast against
      ``sample``; ``alpha_bar_prev`` is :meth:`_final_alpha_cumprod` after the last visited step.
    """

    num_train_timesteps: int

    # --- float32 schedule ----------------------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.__dict__["_alphas_cumprod_f32"]

    @alphas_cumprod.setter
    def alphas_cumprod(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value)
        if value.dtype != torch.float64:
            value = value.to(torch.float32)
        self.__dict__["_alphas_cumprod_f32"] = value
        self.__dict__["_respacing_cache"] = {}

    @property
    def timesteps(self) -> torch.Tensor:
        return self.__dict__["_timesteps"]

    @timesteps.setter
    def timesteps(self, value: torch.Tensor) -> None:
        self.__dict__["_timesteps"] = value
        self.__dict__["_respacing_cache"] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Visit ``num_inference_steps`` timesteps (MONAI's spacing), after checking the count.

        Args:
            num_inference_steps: number of sampling steps, in ``[1, num_train_timesteps]``.
            device: device of ``self.timesteps``.

        Raises:
            ValueError: if ``num_inference_steps`` is outside ``[1, num_train_timesteps]``.
        """
        n = check_num_inference_steps(num_inference_steps, self.num_train_timesteps)
        super().set_timesteps(n, device=device)  # type: ignore[misc]

    # --- lookups ------------------------------------------------------------------------------------------------
    def _final_alpha_cumprod(self) -> torch.Tensor:
        """``alpha_bar`` reached after the last visited step (1: the clean sample)."""
        return torch.tensor(1.0)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alphas_cumprod, prev_table, next_table, final_alpha)`` on ``device``, cached until they change."""
        cache: dict[Any, Any] = self.__dict__.setdefault("_respacing_cache", {})
        key = str(device)
        if key not in cache:
            ts = torch.as_tensor(self.timesteps)
            cache[key] = (
                self.alphas_cumprod.to(device),
                previous_timestep_table(ts, self.num_train_timesteps).to(device),
                next_timestep_table(ts, self.num_train_timesteps).to(device),
                torch.as_tensor(self._final_alpha_cumprod(), dtype=self.alphas_cumprod.dtype).to(device),
            )
        return cache[key]  # type: ignore[no-any-return]

    @staticmethod
    def _as_index(timestep: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep)
        if t.device != device:
            t = t.to(device)
        if t.is_floating_point():
            t = t.round()
        t = t.long()
        return t.reshape(()) if t.numel() == 1 else t.flatten()

    @staticmethod
    def _shape_like(coef: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return coef if coef.ndim == 0 else unsqueeze_right(coef, sample.ndim)

    def _alphas_at(
        self, timestep: int | torch.Tensor, sample: torch.Tensor, direction: str = "prev"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``alpha_bar`` at ``timestep`` and at the visited level the step goes to.

        Args:
            timestep: current timestep: int, 0-d or (1,) tensor, or (B,) tensor (one per sample); floats are
                rounded.
            sample: current sample (B, C, *spatial), gives device and number of dimensions.
            direction: "prev" (denoising step) or "next" (inversion step).

        Returns:
            ``(a_t, a_to, is_final)``: float32 tensors, 0-d or shaped (B, 1, ..., 1); ``is_final`` is a bool
            tensor, True where no further visited level exists (denoising to the clean sample).
        """
        ac, prev_tab, next_tab, final = self._tables(sample.device)
        t = self._as_index(timestep, sample.device)
        a_t = ac[t]
        if direction == "prev":
            to = prev_tab[t]
            is_final = to < 0
            a_to = torch.where(is_final, final, ac[to.clamp(min=0)])
        else:
            to = next_tab[t]
            is_final = torch.zeros_like(to, dtype=torch.bool)
            a_to = ac[to]
        return self._shape_like(a_t, sample), self._shape_like(a_to, sample), self._shape_like(is_final, sample)

    # --- float32-safe forward process ---------------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(a_t) * x0 + sqrt(1 - a_t) * noise``, computed in float32, returned in the input's dtype.

        Args:
            original_samples: clean samples, shape (B, C, *spatial).
            noise: standard normal noise, same shape.
            timesteps: (B,) integer timesteps.

        Returns:
            Noisy samples, shape and dtype of ``original_samples``.
        """
        ac = self._tables(original_samples.device)[0]
        a_t = unsqueeze_right(ac[timesteps.to(original_samples.device).long()], original_samples.ndim)
        wd = _work_dtype(original_samples.dtype)
        out = a_t.sqrt() * original_samples.to(wd) + (1.0 - a_t).sqrt() * noise.to(wd)
        return out.to(original_samples.dtype)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Velocity target ``sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` in float32, returned in the input's dtype.

        Args:
            sample: clean samples x0, shape (B, C, *spatial).
            noise: standard normal noise, same shape.
            timesteps: (B,) integer timesteps.

        Returns:
            Velocity, shape and dtype of ``sample``.
        """
        ac = self._tables(sample.device)[0]
        a_t = unsqueeze_right(ac[timesteps.to(sample.device).long()], sample.ndim)
        wd = _work_dtype(sample.dtype)
        out = a_t.sqrt() * noise.to(wd) - (1.0 - a_t).sqrt() * sample.to(wd)
        return out.to(sample.dtype)

    def _clip_range(self) -> tuple[float, float] | None:
        if not getattr(self, "clip_sample", False):
            return None
        lo, hi = getattr(self, "clip_sample_values", (-1.0, 1.0))
        return float(lo), float(hi)
