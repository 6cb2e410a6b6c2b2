# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Oracle tests of the respaced schedulers (and of the MONAI 1.6.1 defect they fix).

An oracle network knows the clean sample x0 and returns, for the sample x_t it is given at timestep t, the exact
noise ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` (or the matching x0 / velocity). Such a network recovers x0
at the last step even from a broken sampler, so the final result proves nothing; the trajectory does:

- deterministic DDIM keeps the sample on one noise direction: the oracle sees the same eps at every step;
- ancestral sampling keeps x_t distributed as q(x_t | x0): the oracle sees noise of unit variance at every step.
"""

from __future__ import annotations

import pytest
import torch
from parameterized import parameterized

from monai.bundle import ConfigParser
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medsegdiff_monai.networks.schedulers import (
    RespacedDDIMScheduler,
    RespacedDDPMScheduler,
    previous_timestep_table,
    spaced_timesteps,
)

T = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


SHAPE = (16, 1, 64, 64)  # 65536 values per step: the variance estimate has std ~0.006


def _x0(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=g) * 2 - 1
    x0[:, :, :16] = torch.sign(x0[:, :, :16])  # include exact +-1 values (binary masks)
    return x0


class Oracle(torch.nn.Module):
    """Returns the exact model output for a known x0; records the true noise of every sample it sees."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.x0 = x0
        self.ac = alphas_cumprod.double()
        self.prediction_type = prediction_type
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(timesteps).flatten()[0].round().long()
        a = self.ac[t]
        xd, x0 = x.double(), self.x0.double()
        eps = (xd - a.sqrt() * x0) / (1 - a).sqrt()
        self.seen.append(eps.float())
        if self.prediction_type == "epsilon":
            return eps.float()
        if self.prediction_type == "sample":
            return x0.float()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()  # v_prediction


def _trajectory(scheduler, n_steps: int, prediction_type: str = "epsilon", seed: int = 0, **step_kwargs):
    """Run scheduler.step with the oracle; return (noise the oracle saw at each step, final sample, x0)."""
    x0 = _x0(seed)
    scheduler.set_timesteps(n_steps)
    oracle = Oracle(x0, scheduler.alphas_cumprod, prediction_type)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(SHAPE, generator=g)
    for t in scheduler.timesteps:
        out = oracle(x, t)
        x, _ = scheduler.step(out, t, x, generator=g, **step_kwargs)
    return oracle.seen, x, x0


def _max_direction_change(seen: list[torch.Tensor]) -> float:
    return max(float((e - seen[0]).abs().max()) for e in seen)


def _max_variance_error(seen: list[torch.Tensor]) -> float:
    return max(abs(float(e.var()) - 1.0) for e in seen)


# ------------------------------------------------------------------------------------------------------ ours


@parameterized.expand([(n,) for n in (1000, 100, 50, 10, 1)])
def test_ddim_deterministic_oracle_noise_is_constant(n_steps):
    sched = RespacedDDIMScheduler(num_train_timesteps=T, clip_sample=False)
    seen, final, x0 = _trajectory(sched, n_steps)
    assert len(seen) == n_steps
    assert _max_direction_change(seen) <= 1e-3
    assert _max_variance_error(seen) < 0.05
    assert float((final - x0).abs().max()) < 1e-3


@parameterized.expand(
    [
        (pt, n, sch)
        for pt in ("epsilon", "sample", "v_prediction")
        for n in (100, 10)
        for sch in ("linear_beta", "cosine")
    ]
    + [("sample", 1000, "linear_beta"), ("v_prediction", 1000, "scaled_linear_beta")]
)
def test_ddim_prediction_types_and_schedules(prediction_type, n_steps, schedule):
    sched = RespacedDDIMScheduler(num_train_timesteps=T, schedule=schedule, prediction_type=prediction_type)
    seen, final, x0 = _trajectory(sched, n_steps, prediction_type)
    assert _max_direction_change(seen) <= 1e-3
    assert float((final - x0).abs().max()) < 1e-3


@parameterized.expand([(n,) for n in (1000, 100, 10)])
def test_ddpm_ancestral_oracle_noise_has_unit_variance(n_steps):
    sched = RespacedDDPMScheduler(num_train_timesteps=T, clip_sample=True)
    seen, final, x0 = _trajectory(sched, n_steps)
    assert len(seen) == n_steps
    assert _max_variance_error(seen) < 0.05
    means = [abs(float(e.mean())) for e in seen]
    assert max(means) < 0.02
    assert float((final - x0).abs().max()) < 1e-3


@parameterized.expand([(pt, n) for pt in ("sample", "v_prediction") for n in (100, 10)])
def test_ddpm_prediction_types(prediction_type, n_steps):
    sched = RespacedDDPMScheduler(num_train_timesteps=T, prediction_type=prediction_type)
    seen, final, x0 = _trajectory(sched, n_steps, prediction_type)
    assert _max_variance_error(seen) < 0.05
    assert float((final - x0).abs().max()) < 1e-3


@parameterized.expand([(n,) for n in (100, 10)])
def test_ddim_eta_one_keeps_unit_variance(n_steps):
    sched = RespacedDDIMScheduler(num_train_timesteps=T)
    seen, _, _ = _trajectory(sched, n_steps, eta=1.0)
    assert _max_variance_error(seen) < 0.05
    seen_half, _, _ = _trajectory(RespacedDDIMScheduler(num_train_timesteps=T), n_steps, eta=0.5)
    assert _max_variance_error(seen_half) < 0.05


def test_ddpm_equals_ddim_with_eta_one():
    """The respaced posterior q(x_s | x_t, x0) is DDIM with eta = 1 (same noise, same result, no clipping)."""
    ddpm, ddim = RespacedDDPMScheduler(T, clip_sample=False), RespacedDDIMScheduler(T, clip_sample=False)
    for s in (ddpm, ddim):
        s.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g) * 0.3
    for t in ddpm.timesteps[:-1]:
        a, _ = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(3))
        b, _ = ddim.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_full_chain_matches_monai():
    """With every training step visited the corrected schedulers are MONAI's update."""
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    for t in (999, 500, 3, 1):
        a, a0 = RespacedDDPMScheduler(T).step(out, t, x, generator=torch.Generator().manual_seed(1))
        b, b0 = DDPMScheduler(T).step(out, t, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a0, b0)
        a, _ = RespacedDDIMScheduler(T, clip_sample=False).step(out, t, x)
        b, _ = DDIMScheduler(T, clip_sample=False).step(out, t, x)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        # with clipping MONAI keeps the raw noise; here it is recomputed from the clipped x0 (consistent pair)
        ddim = DDIMScheduler(T, clip_sample=True)
        ddim.set_timesteps(T)
        a, x0c = RespacedDDIMScheduler(T, clip_sample=True).step(out, t, x)
        a_t, a_s = ddim.alphas_cumprod[t], ddim.alphas_cumprod[t - 1]
        eps = (x - a_t.sqrt() * x0c) / (1 - a_t).sqrt()
        torch.testing.assert_close(a, a_s.sqrt() * x0c + (1 - a_s).sqrt() * eps, atol=1e-5, rtol=1e-4)


def test_step_pairs_with_next_visited_timestep():
    sched = RespacedDDIMScheduler(T)
    sched.set_timesteps(10)
    ts = sched.timesteps.tolist()
    assert ts == spaced_timesteps(T, 10).tolist() and ts[0] == T - 1 and ts[-1] == 0
    table = previous_timestep_table(sched.timesteps, T)
    assert [int(table[t]) for t in ts] == ts[1:] + [-1]
    x = torch.zeros(1, 1, 2, 2)
    for i, t in enumerate(ts):  # int, 0-d and float timesteps find the same level
        for tt in (t, torch.tensor(t), torch.tensor([float(t)])):
            a_t, a_s, final = sched._alphas_at(tt, x)
            assert float(a_t) == pytest.approx(float(sched.alphas_cumprod[t]))
            expected = 1.0 if i == len(ts) - 1 else float(sched.alphas_cumprod[ts[i + 1]])
            assert float(a_s) == pytest.approx(expected)
            assert bool(final) == (i == len(ts) - 1)


def test_per_sample_timesteps():
    """A (B,) timestep tensor steps every sample from its own level."""
    sched = RespacedDDIMScheduler(T)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    ts = sched.timesteps[[0, 4, 9]]
    batched, _ = sched.step(out, ts, x)
    for i in range(3):
        single, _ = sched.step(out[i : i + 1], ts[i], x[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single)


def test_set_timesteps_validation():
    for cls in (RespacedDDPMScheduler, RespacedDDIMScheduler):
        sched = cls(T)
        for bad in (0, -1, T + 1):
            with pytest.raises(ValueError, match="num_inference_steps"):
                sched.set_timesteps(bad)
    with pytest.raises(ValueError, match="eta"):
        RespacedDDIMScheduler(T).step(torch.zeros(1, 1, 2, 2), 10, torch.zeros(1, 1, 2, 2), eta=-0.1)


def test_alphas_cumprod_stay_float32_with_bf16():
    x0 = torch.full((2, 1, 4, 4), 0.5, dtype=torch.bfloat16)
    noise = torch.ones_like(x0)
    t = torch.tensor([0, 0])
    for cls in (RespacedDDPMScheduler, RespacedDDIMScheduler):
        sched = cls(T)
        noisy = sched.add_noise(x0, noise, t)
        vel = sched.get_velocity(x0, noise, t)
        assert sched.alphas_cumprod.dtype == torch.float32
        assert noisy.dtype == vel.dtype == torch.bfloat16
        # sqrt(1 - a_0) = 0.01: the noise must not vanish (it does once a_0 is rounded to bf16 = 1.0)
        assert float(noisy[0, 0, 0, 0]) == pytest.approx(0.5 * 0.99995 + 0.01, abs=4e-3)
        assert float(vel[0, 0, 0, 0]) == pytest.approx(0.99995 - 0.01 * 0.5, abs=4e-3)
        sched.alphas_cumprod = sched.alphas_cumprod.to(torch.bfloat16)  # as MONAI code would assign
        assert sched.alphas_cumprod.dtype == torch.float32
    stock = DDPMScheduler(T)
    stock.add_noise(x0, noise, t)
    assert stock.alphas_cumprod.dtype == torch.bfloat16  # MONAI 1.6.1 behaviour this guards against


@parameterized.expand([(RespacedDDIMScheduler, "ddim"), (RespacedDDPMScheduler, "ddpm")])
def test_drop_in_for_monai_diffusion_inferer_sample(cls, kind):
    sched = cls(num_train_timesteps=T)
    sched.set_timesteps(10)
    x0 = _x0(1)
    oracle = Oracle(x0, sched.alphas_cumprod)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    out = DiffusionInferer(sched).sample(noise, oracle, verbose=False, conditioning=torch.zeros(SHAPE))
    assert len(oracle.seen) == 10
    assert float((out - x0).abs().max()) < 1e-3
    if kind == "ddim":
        assert _max_direction_change(oracle.seen) <= 1e-3
    else:
        assert _max_variance_error(oracle.seen) < 0.05


def test_json_configurable():
    parser = ConfigParser(
        {
            "ddim": {
                "_target_": "medsegdiff_monai.networks.schedulers.RespacedDDIMScheduler",
                "num_train_timesteps": 500,
                "schedule": "scaled_linear_beta",
                "beta_start": 0.0005,
                "beta_end": 0.0195,
                "prediction_type": "v_prediction",
            },
            "ddpm": {"_target_": "medsegdiff_monai.networks.schedulers.RespacedDDPMScheduler", "clip_sample": False},
        }
    )
    ddim, ddpm = parser.get_parsed_content("ddim"), parser.get_parsed_content("ddpm")
    assert isinstance(ddim, DDIMScheduler) and ddim.num_train_timesteps == 500
    assert ddim.prediction_type == "v_prediction"
    assert isinstance(ddpm, DDPMScheduler) and not ddpm.clip_sample


# ----------------------------------------------------------------------------------- MONAI 1.6.1 stock defect


def test_monai_stock_schedulers_fail_oracle_checks():
    """MONAI 1.6.1's DDIM (10 of 1000 steps) and DDPM (100 of 1000) sample at wrong noise levels.

    If this test fails, MONAI has fixed its step pairing: the Respaced* subclasses may then be retired.
    """
    seen, final, x0 = _trajectory(DDIMScheduler(num_train_timesteps=T, clip_sample=False), 10)
    assert _max_direction_change(seen) > 1.0  # ours: < 1e-3
    assert _max_variance_error(seen) > 1.0  # ours: < 0.05
    assert float((final - x0).abs().max()) < 1e-3  # ... although the oracle still recovers x0

    seen, final, x0 = _trajectory(DDPMScheduler(num_train_timesteps=T, clip_sample=False), 100)
    assert _max_variance_error(seen) > 100.0  # ours: < 0.05
    assert _max_direction_change(seen) > 100.0
    assert float((final - x0).abs().max()) < 1e-3
