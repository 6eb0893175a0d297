"""The throughput timers time real optimizer steps of the module on the synthetic batch."""

from __future__ import annotations

import pytest
import torch

from lit_imit.benchmarking import act_batch, measure_rate, measure_train_throughput
from lit_imit.modules.act import ACTModule

TINY = dict(cameras=["top"], state_dim=7, action_dim=7, chunk_size=10, n_action_steps=10, dim_model=32, n_heads=2,
            dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8,
            dropout=0.0, use_vae=False, lr=1e-3, lr_backbone=1e-3, pretrained_backbone=None)


def test_train_throughput_takes_real_steps_and_reports_them():
    torch.manual_seed(0)
    module = ACTModule(**TINY)
    batch = act_batch(2, ["top"], (32, 32), 7, 7, 10)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    first = float(module.compute_loss(batch)["loss"])
    result = measure_train_throughput(module, batch, steps=4, warmup=1)
    assert set(result) == {"samples_per_s", "step_s", "cpu_s_per_step", "last_loss"}
    assert result["samples_per_s"] == 2 / result["step_s"] > 0
    assert result["last_loss"] < first  # five Adam steps on one batch lower its loss
    changed = [k for k, v in module.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed


def test_measure_rate_counts_items_per_second():
    calls = []
    rate = measure_rate(lambda: calls.append(1), items=4, repeat=3)
    assert len(calls) == 4 and rate > 0  # one untimed call, three timed


class _LinearThenConv(torch.nn.Module):
    """A linear layer and a 1x1 convolution whose FLOPs are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 32)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=1)

    def training_losses(self, batch):
        return {"loss": self.linear(batch["x"]).sum() + self.conv(batch["image"]).sum()}


def test_train_flops_are_forward_plus_the_weight_gradients():
    from lit_imit.benchmarking import count_train_flops

    module = _LinearThenConv()
    batch = {"x": torch.randn(8, 64), "image": torch.randn(2, 3, 5, 5)}
    flops = count_train_flops(module, batch)
    linear = 2 * 8 * 64 * 32  # forward; the weight gradient costs as much (the input needs none)
    conv = 2 * 2 * 25 * 3 * 4
    assert flops["conv"] == 2 * conv
    assert flops["total"] == 2 * linear + 2 * conv
    assert all(p.grad is None for p in module.parameters())  # the count leaves no gradients behind


def test_cpu_peak_follows_the_vector_units_and_says_how():
    from lit_imit.benchmarking import cpu_peak_flops

    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "flags": "fma avx2 avx512f avx512_bf16"}
    peak, how = cpu_peak_flops("32", zen4, cores=2, clock_ghz=2.5)
    assert peak == 2 * 2.5e9 * 8 * 2 * 2 and "Zen 4" in how and "160 GFLOP/s" in how
    assert cpu_peak_flops("bf16-mixed", zen4, cores=2, clock_ghz=2.5)[0] == 2 * peak
    skylake = {"vendor_id": "GenuineIntel", "cpu family": "6", "flags": "fma avx2 avx512f"}
    assert cpu_peak_flops("32", skylake, cores=1, clock_ghz=2.0)[0] == 2.0e9 * 16 * 2 * 2
    assert cpu_peak_flops("bf16-mixed", skylake, cores=1, clock_ghz=2.0)[0] == 2.0e9 * 16 * 2 * 2  # no bf16 unit
    avx2 = {"vendor_id": "AuthenticAMD", "cpu family": "23", "flags": "fma avx2"}
    assert cpu_peak_flops("32", avx2, cores=2, clock_ghz=3.0)[0] == 2 * 3.0e9 * 8 * 2 * 2


def test_cpu_clock_from_the_environment_overrides_the_reported_one(monkeypatch):
    """A VM reports its nominal clock; $LIT_IMIT_CPU_CLOCK_GHZ sets the boost clock and the derivation says so."""
    from lit_imit.benchmarking import CLOCK_ENV, cpu_peak_flops

    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "flags": "fma avx2 avx512f", "cpu MHz": "2600.0"}
    reported, how = cpu_peak_flops("32", zen4, cores=2)
    assert reported == 2 * 2.6e9 * 32 and "(reported)" in how
    monkeypatch.setenv(CLOCK_ENV, "3.7")
    boosted, how = cpu_peak_flops("32", zen4, cores=2)
    assert boosted == pytest.approx(2 * 3.7e9 * 32) and f"${CLOCK_ENV}" in how


def test_gemm_ceiling_counts_two_n_cubed_flops_per_product(monkeypatch):
    """measure_gemm_flops = 2 n^3 x repeat / the timed seconds (a fake clock pins the seconds)."""
    from lit_imit import benchmarking

    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(benchmarking.time, "perf_counter", lambda: next(ticks))
    rate = benchmarking.measure_gemm_flops.__wrapped__("cpu", "32", n=64, repeat=5)
    assert rate == pytest.approx(2 * 64 ** 3 * 5 / 2.5)
    monkeypatch.undo()
    assert benchmarking.measure_gemm_flops.__wrapped__("cpu", "bf16-mixed", n=64, repeat=2) > 0


def test_a_measured_rate_above_the_data_sheet_peak_raises_the_peak_and_says_so():
    from lit_imit.benchmarking import peak_at_least_measured
    assert peak_at_least_measured(100e9, "sheet", 80e9) == (100e9, "sheet")
    peak, how = peak_at_least_measured(100e9, "sheet", 125e9)
    assert peak == 125e9 and how.startswith("sheet; raised to the measured GEMM rate 125 GFLOP/s") and "1.25x" in how
    assert peak_at_least_measured(None, "unknown GPU", 5e12) == (None, "unknown GPU")
