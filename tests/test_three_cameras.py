"""act-plus-plus's sim layout of three cameras (top, left_wrist, right_wrist): recorded by the DataModule,
served in batches, and read by ACT through one shared backbone."""

from __future__ import annotations

import numpy as np
import torch

from lit_imit.data import EpisodeDataModule

CAMERAS = ["top", "left_wrist", "right_wrist"]


def test_three_camera_demos_are_recorded_batched_and_read_by_act(tmp_path):
    from lit_imit.modules.act import ACTModule

    dm = EpisodeDataModule(str(tmp_path / "demos"), task="transfer_cube", generate_if_missing=1, cameras=CAMERAS,
                           image_size=[24, 32], chunk_size=5, batch_size=4, num_workers=0, val_episodes=0)
    dm.prepare_data()  # records one teacher episode with the three cameras
    dm.setup("fit")
    episode = dm.store.read(dm.train_ids[0])
    length = len(episode.arrays["action"])
    for cam in CAMERAS:
        frames = episode.obs(f"images/{cam}")
        assert frames.shape == (length, 24, 32, 3) and frames.dtype == np.uint8
        assert frames.std() > 0, cam  # a rendered view, not a blank frame
    batch = next(iter(dm.train_dataloader()))
    for cam in CAMERAS:
        assert batch[f"images/{cam}"].shape == (4, 24, 32, 3) and batch[f"images/{cam}"].dtype == torch.uint8

    act = ACTModule(cameras=CAMERAS, chunk_size=5, n_action_steps=5, dim_model=16, n_heads=2, dim_feedforward=16,
                    n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, use_vae=False,
                    pretrained_backbone=None)
    act.check_data_compatibility(dm)
    act.load_stats(dm.stats)
    qpos, images = batch["qpos"], [batch[f"images/{cam}"] for cam in CAMERAS]
    tokens, _ = act.model.observation_tokens(qpos, images)
    one_camera = ACTModule(cameras=["top"], chunk_size=5, n_action_steps=5, dim_model=16, n_heads=2,
                           dim_feedforward=16, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1,
                           use_vae=False, pretrained_backbone=None)
    single, _ = one_camera.model.observation_tokens(qpos, images[:1])
    assert tokens.shape[1] - 1 == 3 * (single.shape[1] - 1)  # qpos token + every camera's cells, in sequence
    assert len(act.model.backbones) == 1  # one ResNet shared by the cameras
    loss = act.compute_loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
