"""A round's episodes give the same outcomes in the training process and in env worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lit_imit.modules.act  # noqa: F401  (torchvision must load before dm_control's EGL: else a segfault)
from lit_imit.envs import make_judge
from lit_imit.interactive import SAG, InteractiveConfig, Label, info_relabel
from lit_imit.modules.act import ACTModule
from lit_imit.policies import policy_from_snapshot, policy_snapshot
from lit_imit.rounds import EpisodeJob, RoundRunner, RoundSetting

STATE_ACT = {
    "cameras": [], "state_keys": ["qpos", "env_state"], "state_dim": [14, 7], "chunk_size": 10, "n_action_steps": 10,
    "dim_model": 16, "n_heads": 2, "dim_feedforward": 32, "n_encoder_layers": 1, "n_decoder_layers": 1,
    "n_vae_encoder_layers": 1, "latent_dim": 4, "n_uncertainty_samples": 4,
}


def _novice() -> ACTModule:
    torch.manual_seed(0)
    module = ACTModule(**STATE_ACT)
    def unit(n):
        return {"mean": [0.1] * n, "std": [0.5] * n, "min": [-1.0] * n, "max": [1.0] * n}

    stats = {"qpos": unit(14), "env_state": unit(7), "action": unit(14)}
    module.load_stats(stats)
    return module.eval()


def _jobs(gate: SAG, version: int, indices) -> list[EpisodeJob]:
    return [EpisodeJob(i, version, gate.fork([7, i])) for i in indices]


def _summary(outcome):
    return ([(d.query, d.label, round(d.uncertainty, 5), d.executed) for d in outcome.decisions],
            [(d.source, {k: v.shape for k, v in d.arrays.items()}) for d in outcome.demos], outcome.length)


def test_a_policy_snapshot_acts_like_the_module():
    module = _novice()
    copy = policy_from_snapshot(policy_snapshot(module))
    obs = {"qpos": torch.randn(3, 14), "env_state": torch.randn(3, 7)}
    with torch.inference_mode():
        assert torch.equal(module.select_action(obs), copy.select_action(obs))


@pytest.mark.slow
def test_episodes_in_workers_equal_episodes_in_process():
    module = _novice()
    gate = SAG(n_min=1, seed=0)
    for u, label in [(0.1, Label.KNOWN_SUCCESS), (0.9, Label.KNOWN_FAILURE)] * 2:
        gate.record(u, label, version=0)
    config = InteractiveConfig(mode="askdagger", decision_steps=10, max_steps=30)
    setting = RoundSetting("transfer_cube", make_judge("transfer_cube"), config, info_relabel(), seed=500)
    env_kwargs = {"cameras": [], "env_state": True}
    here, there = RoundRunner("transfer_cube", env_kwargs, 0), RoundRunner("transfer_cube", env_kwargs, 2)
    try:
        local = here.run(module, _jobs(gate, 1, [0, 1, 2]), setting)
        remote = there.run(module, _jobs(gate, 1, [0, 1, 2]), setting)
        assert [o.index for o in remote] == [0, 1, 2]
        assert [_summary(o) for o in remote] == [_summary(o) for o in local]
        for a, b in zip(local, remote):
            for da, db in zip(a.demos, b.demos):
                for key in da.arrays:
                    np.testing.assert_allclose(da.arrays[key], db.arrays[key], rtol=1e-5, atol=1e-6)
        # a second round reuses the workers and sees the module's new weights
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05)
        again_here = here.run(module, _jobs(gate, 2, [3]), setting)
        again_there = there.run(module, _jobs(gate, 2, [3]), setting)
        assert _summary(again_there[0]) == _summary(again_here[0])
    finally:
        here.close()
        there.close()
    assert len(gate) == 4  # the shared gate is only read: the callback records the decisions afterwards


def test_a_worker_killed_mid_round_fails_the_round_clearly_and_the_next_round_runs_on_fresh_workers():
    """kill -9 of an env worker while it runs an episode: the round raises ``EnvWorkerError`` naming the worker
    and its signal (no hang, no partial outcomes), and the same jobs then run on new workers, unchanged."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from lit_imit.envs.vector import EnvWorkerError

    module = _novice()
    gate = SAG(n_min=1, seed=0)
    config = InteractiveConfig(mode="dagger", decision_steps=10, max_steps=400)
    setting = RoundSetting("transfer_cube", make_judge("transfer_cube"), config, info_relabel(), seed=500)
    runner = RoundRunner("transfer_cube", {"cameras": [], "env_state": True}, 1)
    before = set(multiprocessing.active_children())

    def kill_the_worker_once_it_runs() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = [p for p in multiprocessing.active_children() if p not in before]
            if new and runner._pool is not None:  # the worker has built its env: the episode starts now
                time.sleep(1.0)  # mid-episode: 400 steps take ~3 s
                os.kill(new[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_once_it_runs)
    killer.start()
    try:
        with pytest.raises(EnvWorkerError, match=r"died \(exit code -9"):
            runner.run(module, _jobs(gate, 1, [0]), setting)
        killer.join()
        again = runner.run(module, _jobs(gate, 1, [0]), setting)
        here = RoundRunner("transfer_cube", {"cameras": [], "env_state": True}, 0)
        try:
            expected = here.run(module, _jobs(gate, 1, [0]), setting)
        finally:
            here.close()
        assert [_summary(o) for o in again] == [_summary(o) for o in expected]
    finally:
        killer.join()
        runner.close()
