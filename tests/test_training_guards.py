"""Training stops with a clear error at a non-finite loss instead of saving NaN weights with exit status 0."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lit_imit.benchmarking import act_batch
from lit_imit.modules.act import ACTModule

TINY = dict(cameras=["top"], state_dim=7, action_dim=7, chunk_size=10, n_action_steps=10, dim_model=32, n_heads=2,
            dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=4,
            dropout=0.0, pretrained_backbone=None)


def test_a_non_finite_loss_stops_training_before_the_weights_change(tmp_path):
    torch.manual_seed(0)
    module = ACTModule(**TINY)
    stats = {key: {"mean": np.zeros(7), "std": np.ones(7), "min": -np.ones(7), "max": np.ones(7)}
             for key in ("qpos", "action")}
    stats["action"]["mean"][3] = np.nan  # statistics computed from data with a NaN in it
    module.load_stats(stats)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    batch = act_batch(2, ["top"], (32, 32), 7, 7, 10)
    data = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at global step 0, epoch 0.*'train/l1'"):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    assert not list(tmp_path.rglob("*.ckpt"))
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, before[key], equal_nan=True)
