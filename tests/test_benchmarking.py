"""The throughput timers time real optimizer steps of the module on the synthetic batch."""

from __future__ import annotations

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
