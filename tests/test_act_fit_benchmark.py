"""The end-to-end throughput instrument: StepTimer's stamps, the steady-state rate taken from them, and the
``act_fit`` row running a real ``python -m lit_imit fit`` on a tiny store (LeRobot's side is not tested here: it
needs LeRobot's own venv)."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from callbacks.step_timer import StepTimer
from lit_imit.benchmarking import read_step_times, steady_rate
from tests.conftest import make_episode_arrays

TINY_ACT = dict(dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
                n_vae_encoder_layers=1, latent_dim=8, chunk_size=10, n_action_steps=10, dropout=0.0)


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_step_timer_stamps_the_requested_steps_in_order(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 4)), batch_size=2)
    timer = StepTimer(str(tmp_path / "times" / "steps.json"), steps=[4, 2, 9])
    trainer = pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer])
    trainer.fit(_Linear(), data)
    times = read_step_times(tmp_path / "times" / "steps.json")
    assert sorted(times["steps"]) == [2, 4]  # step 9 never came: a 5-step run
    assert times["steps"][4] > times["steps"][2] and times["unix"][4] >= times["unix"][2]
    assert json.loads((tmp_path / "times" / "steps.json").read_text())["requested"] == [2, 4, 9]


def test_step_timer_refuses_steps_before_the_first_update(tmp_path):
    with pytest.raises(ValueError, match="global steps >= 1"):
        StepTimer(str(tmp_path / "t.json"), steps=[0, 3])


def test_steady_rate_counts_the_updates_between_two_stamps():
    rate = steady_rate({2: 10.0, 6: 12.0, 7: 13.0}, first=2, last=6, batch_size=8)
    assert rate["steps_per_s"] == 2.0 and rate["samples_per_s"] == 16.0 and rate["step_s"] == 0.5
    assert rate["timed_steps"] == 4 and rate["timed_s"] == 2.0
    with pytest.raises(ValueError, match=r"steps \[9\] were not stamped"):
        steady_rate({2: 10.0, 6: 12.0}, first=2, last=9, batch_size=8)
    with pytest.raises(ValueError, match="must come after"):
        steady_rate({2: 10.0, 6: 12.0}, first=6, last=2, batch_size=8)


def test_read_step_times_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_step_times(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="other.json: no 'steps'"):
        read_step_times(tmp_path / "other.json")


def _tiny_store(path, hw=(48, 64)):
    from lit_imit.data import EpisodeStore

    store = EpisodeStore(path)
    for i in range(2):
        store.add(make_episode_arrays(30, hw=hw, seed=i), {"task": "transfer_cube", "source": "teacher", "seed": i})
    return store


def test_act_fit_row_times_a_real_fit_against_the_in_memory_step(tmp_path, capsys):
    from lit_imit.tools.benchmark import main

    store = _tiny_store(tmp_path / "store")
    status = main(["--only", "act_fit", "--threads", "1", "--steps", "1", "--fit-store", str(store.root),
                   "--fit-image-size", "48x64", "--fit-steps", "4", "--fit-skip", "1", "--fit-checkpoint-every", "2",
                   "--fit-workers", "1", "--fit-precision", "32", "--fit-model", json.dumps(TINY_ACT)])
    assert status == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines() if text.startswith("{")]
    assert line["name"] == "act_fit" and line["unit"] == "samples/s" and line["value"] > 0
    assert line["fit_steps_per_s"] * 8 == pytest.approx(line["value"], rel=1e-3)
    assert line["in_memory_samples_per_s"] > 0 and line["fit_vs_in_memory"] > 0
    assert line["timed_steps"] == [1, 4] and line["checkpoint_every"] == 2 and line["num_workers"] == 1
    assert line["image_size"] == [48, 64] and line["chunk_size"] == 10 and line["precision"] == "32"
    assert line["episodes"] == 2 and line["frames"] == 60 and line["to_first_timed_step_s"] > 0
    assert "last.ckpt" in line["checkpoints"] and len(line["checkpoints"]) >= 2  # every 2 steps, and last
    assert "lerobot_samples_per_s" not in line  # no --fit-lerobot-python


def test_act_fit_refuses_a_store_recorded_at_another_size(tmp_path):
    from lit_imit.benchmarks import _fit_store

    store = _tiny_store(tmp_path / "store", hw=(24, 32))
    with pytest.raises(ValueError, match=r"episode_0+\.hdf5: observations/images/top is 24x32"):
        _fit_store(store.root, 2, (48, 64))


def test_act_fit_model_overrides_must_be_a_json_object():
    from lit_imit.benchmarks import _act_fit_model, _fit_overrides

    # LeRobot's ACT shape is ACTModule's defaults (d_model 512, ff 3200...) with chunks of 100
    assert _act_fit_model(_fit_overrides(None)) == {"cameras": ["top"], "chunk_size": 100, "n_action_steps": 100}
    assert _act_fit_model(_fit_overrides('{"dim_model": 32}'))["dim_model"] == 32
    with pytest.raises(ValueError, match="--fit-model"):
        _fit_overrides("[1, 2]")
    with pytest.raises(ValueError, match="--fit-model"):
        _fit_overrides("{dim_model: 32}")
