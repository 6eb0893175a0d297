"""Interactive learning: the per-episode loop (toy simulator), the judges (ALOHA teacher), the callback
through the CLI (tiny ACT on ALOHA transfer cube), exact resume and DDP on two CPU processes.

The toy simulator is a 1-D reach: the state is a position ``x``, the goal is ``g``, an action is a target
position that the "robot" approaches by at most 0.1 per step, and the staged reward is 1 within 0.05 of
the goal. The teacher moves straight to the goal; the toy novice is good on one side of the table and bad
(moves away) on the other, and knows it (high uncertainty there), so every gating branch is exercised.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

import lit_imit.modules.act  # noqa: F401  (torchvision must load before dm_control's EGL: else a segfault)
from callbacks.interactive import InteractiveAggregation
from lit_imit.cli import main
from lit_imit.data.datamodule import STAGING_DIR
from lit_imit.data.episodes import EpisodeStore
from lit_imit.interactive import (
    SAG,
    ActionAgreementJudge,
    Decision,
    Label,
    InteractiveConfig,
    PolicyNovice,
    Segment,
    StepRewardJudge,
    info_relabel,
    pier_inputs,
    round_summary,
    run_interactive_episode,
    run_segment,
    segment_arrays,
)
from tests.conftest import ROOT, make_episode_arrays


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The CI box has two cores shared with other jobs: two OpenMP threads per process thrash (a tiny ACT
    step took 10 s instead of 0.4 s under load), so this module's in-process fits use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# toy world
# ------------------------------------------------------------------------------------------------


class Reach:
    """Deterministic 1-D reach with exact snapshots; counts steps so foresight can be checked."""

    def __init__(self, goal: float = 1.0, speed: float = 0.1) -> None:
        self.goal, self.speed = goal, speed
        self.x, self.t, self.steps_taken = 0.0, 0, 0

    @property
    def unwrapped(self) -> "Reach":
        return self

    def obs(self) -> dict[str, Any]:
        return {"qpos": np.array([self.x], np.float32), "image": np.full((2, 2, 3), self.t % 255, np.uint8),
                "instruction": "reach"}

    def reset(self, *, seed: int | None = None):
        rng = np.random.default_rng(seed)
        self.x, self.t = float(rng.uniform(-0.5, 0.5)), 0
        return self.obs(), {}

    def step(self, action):
        target = float(np.asarray(action).reshape(-1)[0])
        self.x += float(np.clip(target - self.x, -self.speed, self.speed))
        self.t += 1
        self.steps_taken += 1
        reward = float(abs(self.x - self.goal) < 0.05)
        return self.obs(), reward, False, False, {"is_success": bool(reward), "achieved_instruction": None}

    def get_state(self):
        return (self.x, self.t)

    def set_state(self, state):
        self.x, self.t = state
        return self.obs()


class ReachTeacher:
    def __init__(self, sim: Reach) -> None:
        self.sim = sim
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def act(self, obs) -> np.ndarray:
        x = self.sim.x
        return np.array([x + np.clip(self.sim.goal - x, -0.1, 0.1)], np.float32)


class SidedNovice:
    """Teacher-like for x >= 0, moves away from the goal for x < 0; uncertainty 0.9 there, else 0.1.
    The uncertainty of a decision is fixed at its first step (like an ACT chunk)."""

    def __init__(self, sim: Reach, steps: int) -> None:
        self.sim, self.steps = sim, steps
        self.resets, self.k, self.u = 0, 0, 0.0

    def reset(self) -> None:
        self.resets += 1
        self.k = 0

    def step(self, obs):
        x = float(obs["qpos"][0])
        if self.k % self.steps == 0:
            self.u = 0.9 if x < 0 else 0.1
        self.k += 1
        direction = 1.0 if self.u < 0.5 else -1.0
        return np.array([x + 0.1 * direction], np.float32), self.u


class FixedGate:
    """Duck-typed gate: queries (actively) iff u >= threshold, randomly on a fixed pattern; records all."""

    def __init__(self, threshold: float, random_every: int = 0) -> None:
        self.threshold, self.random_every = threshold, random_every
        self.calls, self.records = 0, []

    def decide(self, u: float, version: int | None = None) -> Decision:
        self.calls += 1
        rnd = bool(self.random_every) and self.calls % self.random_every == 0
        active = u >= self.threshold
        return Decision(query=active or rnd, active=active, random=rnd, uncertainty=u, threshold=self.threshold,
                        version=int(version or 0))

    def record(self, u: float, label: int, version: int | None = None) -> None:
        self.records.append((u, int(label), version))


def toy(mode: str, gate=None, steps: int = 3, max_steps: int = 30, seed: int = 3, **cfg):
    sim = Reach()
    novice = SidedNovice(sim, steps)
    teacher = ReachTeacher(sim)
    judge = ActionAgreementJudge(tolerance=0.5, motion_floor=0.05)
    config = InteractiveConfig(mode=mode, decision_steps=steps, max_steps=max_steps, **cfg)
    out = run_interactive_episode(sim, novice, teacher, gate, judge, config, index=7, seed=seed, version=2,
                                  relabel=info_relabel())
    return out, sim, novice, teacher


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


def test_query_everything_validates_good_plans_and_teacher_takes_over_bad_ones():
    out, sim, novice, _ = toy("askdagger", FixedGate(-math.inf))
    assert out.length == 30 and len(out.decisions) == 10
    assert all(d.query and d.active for d in out.decisions)
    for d in out.decisions:
        assert d.label == (Label.KNOWN_FAILURE if d.failed else Label.KNOWN_SUCCESS)
        assert d.executed == ("teacher" if d.failed else "novice")
    failed = [d for d in out.decisions if d.failed]
    assert failed and len(failed) < len(out.decisions)  # both branches happen (start at x < 0, then x >= 0)
    sources = [(demo.decision, demo.source) for demo in out.demos]
    assert sources == [(d.index, "teacher" if d.failed else "validated") for d in out.decisions]
    # foresight does not count: the sim stepped (decisions of 3 steps) + (3 per rolled-back foresight)
    assert sim.steps_taken == 30 + 3 * len(failed)
    assert novice.resets == 1 + len(failed)  # episode start + after each take-over
    for demo in out.demos:
        assert demo.arrays["action"].shape == (3, 1) and demo.arrays["observations/qpos"].shape == (3, 1)
        assert demo.arrays["observations/instruction"].tolist() == ["reach"] * 3  # per-step text
        assert demo.version == 2 and demo.episode == 7 and demo.instruction == "reach"  # the obs's goal
    # teacher segments start from the state the novice's plan was foreseen from (the snapshot)
    for demo, d in zip(out.demos, out.decisions):
        assert demo.start_step == d.step


def test_unqueried_decisions_run_the_novice_for_real_and_store_nothing():
    gate = FixedGate(threshold=2.0)  # never active
    out, sim, novice, _ = toy("askdagger", gate)
    assert not any(d.query for d in out.decisions) and out.demos == []
    assert all(d.executed == "novice" and d.label == Label.UNKNOWN for d in out.decisions)
    assert sim.steps_taken == 30  # no foresight without a query
    assert any(d.failed for d in out.decisions)  # ground truth is still judged for the logs
    assert [r[1] for r in gate.records] == [Label.UNKNOWN] * 10


def test_random_only_queries_label_without_annotation():
    failed = valid = 0
    for seed in range(4):  # starts on both sides of the table: all-valid and all-failing episodes
        out, _, _, _ = toy("askdagger", FixedGate(threshold=2.0, random_every=1), seed=seed)
        for d in out.decisions:  # every decision is a random-only query: the novice always executes
            assert d.query and not d.active and d.executed == "novice"
            assert d.label == (Label.KNOWN_FAILURE if d.failed else Label.KNOWN_SUCCESS)
        assert [demo.source for demo in out.demos] == ["validated"] * sum(not d.failed for d in out.decisions)
        failed += sum(d.failed for d in out.decisions)
        valid += sum(not d.failed for d in out.decisions)
    assert failed and valid  # failures gave labels only (nothing to relabel, no annotation)


def test_active_dagger_annotates_every_active_query_even_valid_ones():
    out, _, _, _ = toy("active_dagger", FixedGate(-math.inf))
    assert [demo.source for demo in out.demos] == ["teacher"] * len(out.decisions)
    assert all(d.executed == "teacher" for d in out.decisions)
    assert [demo.label for demo in out.demos] == [d.label for d in out.decisions]


def test_dagger_labels_every_decision_state_and_lets_the_novice_drive():
    out, sim, _, _ = toy("dagger")
    assert len(out.demos) == len(out.decisions) == 10
    assert all(demo.source == "teacher" for demo in out.demos)
    assert all(d.executed == "novice" for d in out.decisions)
    assert sim.steps_taken == 60  # each decision: teacher label on a snapshot, then the novice for real
    assert out.teacher_steps == 0 and out.novice_steps == 30
    for demo in out.demos:  # labels are teacher trajectories from the novice-visited decision state
        qpos, action = demo.arrays["observations/qpos"][:, 0], demo.arrays["action"][:, 0]
        np.testing.assert_allclose(action, qpos + np.clip(1.0 - qpos, -0.1, 0.1), atol=1e-6)


def test_dagger_beta_one_is_the_teacher_driving():
    out, sim, _, _ = toy("dagger", dagger_beta=1.0)
    assert out.success and out.teacher_steps == 30 and sim.steps_taken == 30
    assert all(not d.judged and d.executed == "teacher" for d in out.decisions)


def test_episode_with_sag_records_every_decision_in_the_gate():
    gate = SAG(p_rand=0.2, n_min=2, seed=0)
    out, _, _, _ = toy("askdagger", gate, max_steps=60)
    assert len(gate) == len(out.decisions) == 20
    assert gate.r == [d.label for d in out.decisions] and gate.k == [2] * 20
    # labels accumulate, then the threshold becomes finite and low-u decisions go unqueried
    assert math.isinf(out.decisions[0].threshold)
    assert any(not d.query for d in out.decisions[5:])


def test_max_steps_cuts_the_last_decision_short():
    out, _, _, _ = toy("askdagger", FixedGate(2.0), steps=4, max_steps=10)
    assert out.length == 10 and len(out.decisions) == 3


def test_relabeled_demos_carry_the_achieved_instruction_and_no_uncertainty():
    class Relabels(Reach):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            info["achieved_instruction"] = "reach backwards" if self.x < 0 else None
            return obs, r, term, trunc, info

    sim = Relabels()
    gate = FixedGate(-math.inf)
    out = run_interactive_episode(sim, SidedNovice(sim, 3), ReachTeacher(sim), gate,
                                  ActionAgreementJudge(tolerance=0.5), InteractiveConfig("askdagger", 3, 12),
                                  index=0, seed=3, version=1, relabel=info_relabel())
    relabeled = [demo for demo in out.demos if demo.source == "relabeled"]
    assert relabeled and all(demo.instruction == "reach backwards" and math.isnan(demo.uncertainty)
                             and demo.label == Label.UNKNOWN_RELABELING for demo in relabeled)
    assert all(set(demo.arrays["observations/instruction"]) == {"reach backwards"} for demo in relabeled)
    assert sum(1 for r in gate.records if r[1] == Label.UNKNOWN_RELABELING) == len(relabeled)
    assert round_summary([out])["relabels"] == len(relabeled)


def test_segment_arrays_share_one_layout_for_flat_and_dict_actions():
    from gymnasium import spaces

    pose = spaces.Box(-1.0, 1.0, (7,), np.float32)
    space = spaces.Dict({"pick": pose, "place": pose})
    obs = {"color": np.zeros((2, 2, 3), np.uint8), "instruction": "put the red block in the bowl"}
    teacher = Segment(actor="teacher", start_step=0, start_reward=0.0, observations=[obs] * 2,
                      actions=[{"pick": np.zeros(7), "place": np.ones(7)}] * 2)
    novice = Segment(actor="novice", start_step=0, start_reward=0.0, observations=[obs] * 2,
                     actions=[np.r_[np.zeros(7), np.ones(7)]] * 2)  # CLIPort's flat pick + place
    a, b = segment_arrays(teacher, action_space=space), segment_arrays(novice, action_space=space)
    layout = ["action/pick", "action/place", "observations/color", "observations/instruction"]
    assert sorted(a) == sorted(b) == layout
    for key in ("action/pick", "action/place"):
        assert a[key].dtype == np.float32 and a[key].shape == (2, 7) and np.array_equal(a[key], b[key])
    relabeled = segment_arrays(novice, instruction="put the blue block in the bowl", action_space=space)
    assert relabeled["observations/instruction"].tolist() == ["put the blue block in the bowl"] * 2
    with pytest.raises(ValueError, match="does not split"):
        segment_arrays(Segment("novice", 0, 0.0, observations=[obs], actions=[np.zeros(3)]), action_space=space)


def test_demos_with_text_round_trip_through_the_store(tmp_path):
    obs = {"qpos": np.zeros(1, np.float32), "instruction": "reach"}
    seg = Segment("novice", 0, 0.0, observations=[obs] * 3, actions=[np.zeros(1)] * 3)
    store = EpisodeStore(tmp_path)
    episode = store.read(store.add(segment_arrays(seg, instruction="reach back"), {"source": "relabeled"}))
    assert list(episode.arrays["observations/instruction"]) == ["reach back"] * 3


def test_pier_inputs_treat_missing_metadata_as_offline():
    u, r, k = pier_inputs([None, {"uncertainty": 0.3, "label": 1, "version": 2}, {"uncertainty": None,
                                                                                    "label": -3, "version": 1}])
    assert math.isnan(u[0]) and r[0] == Label.UNKNOWN_OFFLINE and k[0] == 0
    assert (u[1], r[1], k[1]) == (0.3, 1, 2) and math.isnan(u[2]) and r[2] == -3


def test_step_reward_judge_is_the_reference_test():
    seg = Segment("novice", 0, 0.0, rewards=[0.25], infos=[{"max_step_reward": 0.25}], actions=[0])
    assert StepRewardJudge()(seg)
    seg.rewards = [0.2]
    assert not StepRewardJudge()(seg)
    seg.infos = [{"max_step_reward": 0.25, "physics_error": "boom"}]
    seg.rewards = [0.25]
    assert not StepRewardJudge()(seg)


# ------------------------------------------------------------------------------------------------
# the ALOHA judge against the real teacher (no cameras: ~2 ms per teacher step)
# ------------------------------------------------------------------------------------------------


def _aloha_segments(kind: str, seed: int = 0, steps: int = 100, segments: int = 3):
    from lit_imit.envs import make_env, make_teacher

    env = make_env("transfer_cube", cameras=[])
    sim = env.unwrapped
    teacher = make_teacher("transfer_cube", env)
    rng = np.random.default_rng(seed)
    obs, _ = sim.reset(seed=seed)
    joints = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]

    def novice(o):
        a = teacher.act(o).astype(np.float64)
        if kind == "still":
            return o["qpos"].astype(np.float64)
        if kind.startswith("noise"):
            a[joints] += rng.normal(0.0, float(kind[5:]), len(joints))
        return a

    out, reward = [], 0.0
    for i in range(segments):
        seg = run_segment(sim, novice, obs, steps, "novice", i * steps, reward,
                          label=lambda o: teacher.act(o))
        out.append(seg)
        obs, reward = seg.final_observation, seg.rewards[-1]
    env.close()
    return out


def test_the_task_table_names_each_family_its_judge():
    from lit_imit.envs import make_judge

    for task in ("transfer_cube", "insertion"):
        judge = make_judge(task)
        assert isinstance(judge, ActionAgreementJudge) and judge.gripper_dims == [6, 13]
    assert isinstance(make_judge("put-block-in-bowl-seen-colors"), StepRewardJudge)
    assert make_judge("transfer_cube", tolerance=0.5).tolerance == 0.5
    with pytest.raises(ValueError, match="'mycobot_move_cube' has no default judge"):
        make_judge("mycobot_move_cube")


def test_aloha_judge_accepts_the_teacher_and_small_noise_and_rejects_bad_plans():
    from lit_imit.envs import make_judge

    judge = make_judge("transfer_cube")
    assert all(judge(s) for s in _aloha_segments("teacher"))
    assert sum(judge(s) for s in _aloha_segments("noise0.005")) >= 2
    for kind in ("still", "noise0.05"):
        segs = _aloha_segments(kind, segments=2)
        assert not any(judge(s) for s in segs), (kind, [judge.errors(s) for s in segs])


def test_agreement_judge_catches_regression_and_needs_labels():
    judge = ActionAgreementJudge(tolerance=10.0, state_key=None)
    seg = Segment("novice", 0, start_reward=2.0, actions=[np.zeros(2)], teacher_actions=[np.zeros(2)],
                  observations=[{}], rewards=[1.0], infos=[{}])
    assert not judge(seg)
    seg.rewards = [2.0]
    assert judge(seg)
    seg.teacher_actions = []
    with pytest.raises(ValueError, match="teacher label"):
        judge(seg)


# ------------------------------------------------------------------------------------------------
# skill-level decisions: Ravens pick-and-place (one env step = one decision), demos CLIPort can read
# ------------------------------------------------------------------------------------------------


def test_ravens_pick_place_decisions_go_through_the_same_loop(tmp_path):
    from callbacks.interactive import default_judge
    from lit_imit.data.cliport import PickPlaceDataset
    from lit_imit.envs import make_env, make_teacher

    task = "stack-block-pyramid-seq-seen-colors"
    env = make_env(task)
    oracle = make_teacher(task, env)

    class EveryOtherPlaceWrong:
        """The oracle's flat pick + place (CLIPort's action layout), with every second place scrambled."""

        def __init__(self) -> None:
            self.n, self.rng = 0, np.random.default_rng(0)

        def reset(self) -> None:
            pass

        def step(self, obs):
            self.n += 1
            a = oracle.act(obs)
            place = np.array(a["place"], copy=True)
            if self.n % 2 == 0:
                place[:2] = [self.rng.uniform(0.3, 0.7), self.rng.uniform(-0.4, 0.4)]
            return np.concatenate([a["pick"], place]), (0.9 if self.n % 2 == 0 else 0.1)

    judge = default_judge(task)
    assert isinstance(judge, StepRewardJudge)
    out = run_interactive_episode(env.unwrapped, EveryOtherPlaceWrong(), oracle, FixedGate(-math.inf), judge,
                                  InteractiveConfig("askdagger", 1, 6), index=0, seed=3, version=1,
                                  relabel=info_relabel())
    env.close()
    assert [d.failed for d in out.decisions] == [False, True] * 3  # the step-reward test sees the bad places
    assert [demo.source for demo in out.demos] == ["validated", "teacher"] * 3
    assert out.success  # the teacher repaired every bad place
    from lit_imit.data.episodes import write_episode

    store = EpisodeStore(tmp_path)  # files written directly: EpisodeStore.add still insists on qpos
    for i, demo in enumerate(out.demos):
        write_episode(store.path(i), demo.arrays, demo.attrs(task, "ravens", out.seed))
    dataset = PickPlaceDataset(store, range(len(out.demos)))
    assert len(dataset) == 6 and dataset[1]["instruction"] == out.demos[1].instruction


# ------------------------------------------------------------------------------------------------
# a real policy module as the novice
# ------------------------------------------------------------------------------------------------

TINY_ACT = {
    "cameras": ["top"], "chunk_size": 6, "n_action_steps": 6, "dim_model": 16, "n_heads": 2,
    "dim_feedforward": 32, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_vae_encoder_layers": 1,
    "latent_dim": 4, "lr": 1e-3, "lr_backbone": 1e-3, "pretrained_backbone": None,
}


def test_policy_novice_reports_one_uncertainty_per_chunk():
    from lit_imit.modules.act import ACTModule

    torch.manual_seed(0)
    module = ACTModule(**TINY_ACT)
    novice = PolicyNovice(module)
    obs = {"qpos": np.zeros(14, np.float32), "qvel": np.zeros(14, np.float32),
           "images/top": np.zeros((24, 32, 3), np.uint8)}
    novice.reset()
    steps = [novice.step(obs) for _ in range(7)]
    us = [u for _, u in steps]
    assert all(u == us[0] for u in us[:6]) and us[6] != us[0]  # a new chunk, new latent samples
    assert steps[0][0].shape == (14,) and steps[0][0].dtype == np.float32


# ------------------------------------------------------------------------------------------------
# the callback through the CLI: tiny ACT on ALOHA transfer cube, 48x64 images, 12-step episodes
# ------------------------------------------------------------------------------------------------

HW = (48, 64)
INTERACTIVE_TAGS = ("threshold", "sensitivity", "specificity", "query_rate", "novice_success", "system_success",
                    "n_annotations", "n_relabels", "n_validations", "n_demos", "target", "target_sensitivity")


def teacher_store(root: Path, episodes: int = 4) -> str:
    """Synthetic "teacher demos" in the env's observation layout (qpos, qvel, images/top at 48x64)."""
    store = EpisodeStore(root)
    for i in range(episodes):
        store.add(make_episode_arrays(20, hw=HW, seed=i), {"task": "transfer_cube", "source": "teacher"})
    return str(root)


def interactive_cfg(tmp: Path, data_dir: str, max_epochs: int, mode: str = "askdagger", version: int = 0,
                    extra_callbacks: list | None = None, data: dict | None = None, **callback) -> dict:
    init = {"task": "transfer_cube", "mode": mode, "episodes_per_round": 1, "max_steps": 12, "n_min": 2,
            "env_kwargs": {"cameras": ["top"], "image_size": list(HW)}, **callback}
    return {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "limit_train_batches": 2,
            "limit_val_batches": 1, "log_every_n_steps": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(tmp),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp), "name": "logs", "version": version}},
            "callbacks": [{"class_path": "callbacks.interactive.InteractiveAggregation", "init_args": init},
                          *(extra_callbacks or [])],
        },
        "checkpoint": {"save_top_k": -1, "every_n_epochs": 1},
        "model": {"class_path": "lit_imit.modules.act.ACTModule", "init_args": TINY_ACT},
        "data": {"class_path": "lit_imit.data.EpisodeDataModule",
                 "init_args": {"data_dir": data_dir, "chunk_size": 6, "batch_size": 4, "num_workers": 0,
                               "val_episodes": 1, "sampling": "prioritized", "priority_alpha": 1.5,
                               "samples_per_epoch": 8, **(data or {})}},
    }


def _callback(cli) -> InteractiveAggregation:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, InteractiveAggregation))


def _tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_the_callback_hands_pier_its_bias_compensation_flag():
    from types import SimpleNamespace

    dm = SimpleNamespace(priority_alpha=1.5)
    assert InteractiveAggregation(mode="askdagger").pier(dm).beta(50) == 1.0  # the reference: compensated
    pier = InteractiveAggregation(mode="askdagger", pier_bias_compensation=False).pier(dm)
    assert pier.alpha == 1.5 and not pier.bias_compensation and pier.beta(50) == 0.0


def test_the_callback_hands_the_weight_normalization_to_pier_and_the_datamodule():
    from types import SimpleNamespace

    dm = SimpleNamespace(priority_alpha=1.5, train_ids=[0, 1], episode_meta={}, calls=[])
    dm.set_priorities = lambda priorities, beta, normalization: dm.calls.append((beta, normalization))
    assert InteractiveAggregation(mode="askdagger").pier(dm).weight_normalization == "max"  # the reference
    cb = InteractiveAggregation(mode="askdagger", pier_weight_normalization="mean")
    assert cb.pier(dm).weight_normalization == "mean"
    cb._prioritize(dm)
    assert dm.calls == [(1.0, "mean")]
    with pytest.raises(ValueError, match="weight_normalization must be one of"):
        InteractiveAggregation(mode="askdagger", pier_weight_normalization="median")


def test_askdagger_fit_collects_feedback_into_the_store_and_datamodule(tmp_path):
    data_dir = teacher_store(tmp_path / "data")
    cli = main({"fit": interactive_cfg(tmp_path, data_dir, max_epochs=2)})
    cb, dm = _callback(cli), cli.datamodule
    store = EpisodeStore(data_dir)
    new_ids = [i for i in store.ids() if i >= 4]
    assert cb.rounds_done == 2 and cb.episodes_done == 2 and cb.seeded
    assert len(new_ids) == cb.counts["demos"] > 0  # an untrained novice fails: the teacher takes over
    assert dm.train_ids[-len(new_ids):] == new_ids  # appended in order, after the initial split
    assert cb.counts["demos"] == cb.counts["annotations"] + cb.counts["validations"] + cb.counts["relabels"]
    for i in new_ids:
        attrs, meta = store.info(i)["attrs"], dm.episode_meta[i]
        assert attrs["source"] == meta["source"] and attrs["round"] == meta["version"] in (1, 2)
        assert meta["label"] == (Label.KNOWN_SUCCESS if meta["source"] == "validated" else meta["label"])
        assert store.length(i) <= 6  # one decision = one executed chunk of the tiny ACT
    # the gate saw every decision, priorities cover every training episode (PIER), beta set
    assert len(cb.gate) >= cb.counts["decisions"] == len(cb.decision_log["failed"])
    assert set(dm.episode_priority) == set(dm.train_ids)
    offline = [i for i in dm.train_ids if i < 4]
    assert all(dm.episode_priority[i] == 1.0 for i in offline)  # offline demos: p = 1
    # the DataModule's sampling (P ~ p^alpha per step, PER weights) is exactly PIER's with step counts
    from lit_imit.interactive import PIER

    u, r, k = pier_inputs([dm.episode_meta.get(i) for i in dm.train_ids])
    rows = dm.train_set.index[:, 0]
    expected = PIER(alpha=1.5).compute(u, r, k, n_interactive=cb.n_interactive,
                                       counts=np.bincount(rows, minlength=len(dm.train_ids)))
    probs, weights = dm.sampling_distribution()
    np.testing.assert_allclose(probs, expected.probs[rows], rtol=1e-9)
    np.testing.assert_allclose(weights, expected.weights[rows], rtol=1e-5)
    tags = _tags(tmp_path / "logs" / "version_0")
    for tag in INTERACTIVE_TAGS:
        assert f"interactive/{tag}" in tags, tag
    # the checkpoint loads weights-only (the CLI's parse-time load) and holds the aggregated state
    ckpt = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["callbacks"]["InteractiveAggregation"]
    assert state["counts"] == cb.counts and state["gate"]["r"] == cb.gate.r
    assert ckpt["EpisodeDataModule"]["train_ids"] == dm.train_ids
    assert not list((Path(data_dir) / STAGING_DIR).glob("*.hdf5"))


def test_shipped_config_builds_with_the_reference_settings(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "act" / "askdagger_transfer_cube.yaml").read_text())
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                "init_args": {"save_dir": str(tmp_path)}}
    cfg["model"]["init_args"]["pretrained_backbone"] = None
    cfg["trainer"]["callbacks"][0]["init_args"]["judge"] = {
        "class_path": "lit_imit.interactive.judges.ActionAgreementJudge",
        "init_args": {"gripper_dims": [6, 13], "tolerance": 0.5}}
    cli = main(cfg, run=False)  # no subcommand without run
    cb = _callback(cli)
    assert cb.mode == "askdagger" and cb.episodes_per_round == 1 and cb.warmup_epochs == 40
    assert cb.sag_kwargs == {"mode": "sensitivity", "target": 0.9, "p_rand": 0.2, "n_min": 15, "n_rep": 10,
                             "u_normalization": True, "impute": True}
    assert cb.pier(cli.datamodule).state_dict() == {"lam": 0.5, "base": 10.0, "alpha": 1.5, "beta0": 1.0,
                                                    "beta_steps": 100, "bias_compensation": True,
                                                    "weight_normalization": "max"}
    assert isinstance(cb.judge, ActionAgreementJudge) and cb.judge.tolerance == 0.5
    assert cb.task is None  # the config says the task once, in the data; setup() adopts it as here
    cb._adopt_task(cli.datamodule.task)
    assert cb.task == "transfer_cube" and cb.sim_id == "lit_imit/AlohaTransferCube-v0"
    assert cb._decision_steps(cli.model) == 100 and cb.max_steps == 400  # one chunk, the task's time limit


def _snapshot(cli) -> dict:
    cb, dm = _callback(cli), cli.datamodule
    return {"train_ids": list(dm.train_ids), "meta": dict(dm.episode_meta), "priority": dict(dm.episode_priority),
            "beta": dm.importance_beta, "gate": cb.gate.state_dict(), "counts": dict(cb.counts),
            "log": {k: list(v) for k, v in cb.decision_log.items()}, "episodes_done": cb.episodes_done,
            "weights": {k: v.detach().clone() for k, v in cli.model.state_dict().items()}}


def _assert_same(a: dict, b: dict, same_ids: bool = True) -> None:
    assert a["counts"] == b["counts"] and a["log"] == b["log"] and a["episodes_done"] == b["episodes_done"]
    assert json.dumps(a["gate"], sort_keys=True) == json.dumps(b["gate"], sort_keys=True)
    assert a["beta"] == b["beta"]
    if same_ids:
        assert a["train_ids"] == b["train_ids"]
        assert json.dumps(a["meta"], sort_keys=True) == json.dumps(b["meta"], sort_keys=True)
        assert a["priority"] == b["priority"]
    else:  # same data in the same order, different ids
        assert len(a["train_ids"]) == len(b["train_ids"])
        pairs = list(zip(a["train_ids"], b["train_ids"]))
        assert json.dumps([a["meta"].get(x) for x, _ in pairs]) == json.dumps([b["meta"].get(y) for _, y in pairs])
        assert [a["priority"][x] for x, _ in pairs] == [b["priority"][y] for _, y in pairs]
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key


@pytest.mark.slow
def test_resume_after_a_round_continues_exactly(tmp_path):
    """Stop after round 2 and resume = uninterrupted (same ids, gate, priorities, weights); resuming from
    round 1 instead leaves round 2's files on disk unused and collects the same data under new ids."""
    straight = main({"fit": interactive_cfg(tmp_path / "a", teacher_store(tmp_path / "data_a"), max_epochs=3)})
    expected = _snapshot(straight)
    data_b = teacher_store(tmp_path / "data_b")
    main({"fit": interactive_cfg(tmp_path / "b", data_b, max_epochs=2)})
    ckpts = tmp_path / "b" / "logs" / "version_0" / "checkpoints"
    resumed = main({"fit": {**interactive_cfg(tmp_path / "b", data_b, max_epochs=3, version=1),
                            "ckpt_path": str(ckpts / "last.ckpt")}})
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    _assert_same(expected, _snapshot(resumed))
    on_disk = EpisodeStore(data_b).ids()
    assert set(expected["train_ids"]) <= set(on_disk) and len(on_disk) == len(expected["train_ids"]) + 1  # + 1 val

    from_round_1 = main({"fit": {**interactive_cfg(tmp_path / "b", data_b, max_epochs=3, version=2),
                                 "ckpt_path": str(ckpts / "epoch0000.ckpt")}})
    again = _snapshot(from_round_1)
    _assert_same(expected, again, same_ids=False)
    round_1 = [i for i in again["train_ids"] if again["meta"].get(i, {}).get("version") == 1]
    later = [i for i in again["train_ids"] if again["meta"].get(i, {}).get("version", 0) > 1]
    written_before = set(EpisodeStore(data_b).ids()) - set(again["train_ids"])
    assert written_before and min(later) > max(written_before) > max(round_1)  # unused, ids continue after them


@pytest.mark.slow
def test_resume_after_a_round_with_dataloader_workers_continues_exactly(tmp_path):
    """As above with 2 DataLoader worker processes, which prefetch the round's first batches (of the grown,
    re-weighted dataset) before Lightning hands the loader its epoch: the resumed run still matches."""
    workers = {"num_workers": 2}
    straight = main({"fit": interactive_cfg(tmp_path / "a", teacher_store(tmp_path / "data_a"), max_epochs=3,
                                            data=workers)})
    data_b = teacher_store(tmp_path / "data_b")
    main({"fit": interactive_cfg(tmp_path / "b", data_b, max_epochs=2, data=workers)})
    ckpts = tmp_path / "b" / "logs" / "version_0" / "checkpoints"
    resumed = main({"fit": {**interactive_cfg(tmp_path / "b", data_b, max_epochs=3, version=1, data=workers),
                            "ckpt_path": str(ckpts / "last.ckpt")}})
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    _assert_same(_snapshot(straight), _snapshot(resumed))


def test_resume_from_last_after_a_kill_collects_nothing_twice(tmp_path):
    """Epoch checkpoints every 2 epochs, a kill right after round 1: last.ckpt (written after every round)
    resumes with round 1's data, so the store ends as an uninterrupted run's and nothing is orphaned."""
    from tests.test_cli import Killed

    def cfg(root: Path, data_dir: str, version: int = 0, kill: bool = False) -> dict:
        kill_cb = [{"class_path": "tests.test_cli.KillAtEpochStart", "init_args": {"n": 1}}] if kill else []
        out = interactive_cfg(root, data_dir, max_epochs=2, version=version, extra_callbacks=kill_cb)
        out["checkpoint"] = {"every_n_epochs": 2}
        return out

    straight = main({"fit": cfg(tmp_path / "a", teacher_store(tmp_path / "data_a"))})
    data_b = teacher_store(tmp_path / "data_b")
    with pytest.raises(Killed):
        main({"fit": cfg(tmp_path / "b", data_b, kill=True)})
    ckpt = tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = main({"fit": {**cfg(tmp_path / "b", data_b, version=1), "ckpt_path": str(ckpt)}})
    assert EpisodeStore(data_b).ids() == EpisodeStore(tmp_path / "data_a").ids()
    _assert_same(_snapshot(straight), _snapshot(resumed))


def _collected_store(root: Path) -> str:
    """Teacher demos plus one episode an interactive round wrote (as ``Demo.attrs`` marks it)."""
    data_dir = teacher_store(root)
    EpisodeStore(data_dir).add(make_episode_arrays(20, hw=HW, seed=9),
                               {"task": "transfer_cube", "source": "validated", "round": 1, "interactive_episode": 0})
    return data_dir


def test_fresh_start_on_a_store_with_collected_rounds_is_refused(tmp_path):
    data_dir = _collected_store(tmp_path / "data")
    with pytest.raises(RuntimeError, match=r"--ckpt_path .*last\.ckpt.*reuse_interactive_store"):
        main({"fit": interactive_cfg(tmp_path, data_dir, max_epochs=1)})


def test_reuse_interactive_store_trains_on_a_collected_store(tmp_path):
    data_dir = _collected_store(tmp_path / "data")
    cfg = interactive_cfg(tmp_path, data_dir, max_epochs=1, warmup_epochs=1, data={"reuse_interactive_store": True})
    cli = main({"fit": cfg})
    assert 4 in [*cli.datamodule.train_ids, *cli.datamodule.val_ids]  # the collected episode is used
    assert cli.trainer.global_step == 2


class StateProbe(pl.Callback):
    """Dumps what must agree across DDP ranks after each round (runs after InteractiveAggregation)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, InteractiveAggregation))
        dm = trainer.datamodule
        state = {"train_ids": dm.train_ids, "meta": {str(k): v for k, v in dm.episode_meta.items()},
                 "priority": {str(k): v for k, v in dm.episode_priority.items()}, "beta": dm.importance_beta,
                 "callback": cb.state_dict(), "dataset_len": len(dm.train_set)}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(state, sort_keys=True))


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_rounds_with_identical_state(tmp_path):
    data_dir = teacher_store(tmp_path / "data")
    probe = {"class_path": "tests.test_interactive_callback.StateProbe",
             "init_args": {"out_dir": str(tmp_path / "probe")}}
    cfg = interactive_cfg(tmp_path, data_dir, max_epochs=2, extra_callbacks=[probe], episodes_per_round=2)
    cfg["trainer"].update(devices=2, strategy="ddp")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a shared two-core box
    out = subprocess.run([sys.executable, "-m", "lit_imit", "fit", "--config", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    for epoch in (0, 1):
        rank0, rank1 = (json.loads((tmp_path / "probe" / f"rank{r}_epoch{epoch}.json").read_text()) for r in (0, 1))
        assert rank0 == rank1
    final = json.loads((tmp_path / "probe" / "rank0_epoch1.json").read_text())
    assert final["callback"]["episodes_done"] == 4 and final["callback"]["counts"]["episodes"] == 4
    episodes = sorted({m["episode"] for m in final["meta"].values()})
    assert set(episodes) <= {0, 1, 2, 3} and any(e % 2 for e in episodes)  # rank 1's demos came through
    assert len(final["meta"]) == final["callback"]["counts"]["demos"] > 0
    store = EpisodeStore(data_dir)
    assert store.ids() == list(range(4 + final["callback"]["counts"]["demos"]))
    # demos were added in episode order: ids increase with (episode, decision)
    order = [(m["episode"], m["decision"]) for _, m in sorted(final["meta"].items(), key=lambda kv: int(kv[0]))]
    assert order == sorted(order)
    assert not list((Path(data_dir) / STAGING_DIR).glob("*.hdf5"))
    assert "interactive/query_rate" in _tags(tmp_path / "logs" / "version_0")


@pytest.mark.slow
def test_from_scratch_seeds_with_gated_novice_episodes(tmp_path):
    data_dir = str(tmp_path / "empty")
    cfg = interactive_cfg(tmp_path, data_dir, max_epochs=1, mode="askdagger_no_pier", seed_episodes=1,
                          data={"sampling": "uniform", "val_episodes": 0, "allow_empty": True})
    cli = main({"fit": cfg})
    cb, dm = _callback(cli), cli.datamodule
    assert cb.seeded and cb.episodes_done == 2 and cb.rounds_done == 2
    versions = [dm.episode_meta[i]["version"] for i in dm.train_ids]
    assert versions[0] == 0 and sorted(versions) == versions and set(versions) <= {0, 1}
    assert bool(cli.model.stats_initialized)  # stats from the seeded episodes reached the module
    assert torch.allclose(cli.model.normalizer.stat("action", "mean"), torch.tensor(dm.stats["action"]["mean"]))
    assert dm.episode_priority == {}  # no PIER in this mode


# ------------------------------------------------------------------------------------------------
# ASkDAgger's own setting: CLIPort on a Ravens task, from scratch, through the CLI
# ------------------------------------------------------------------------------------------------

def cliport_interactive_cfg(tmp: Path, max_epochs: int, version: int = 0) -> dict:
    """A tiny CLIPort trained from an empty store by 1 gated episode per round (8 steps of batch 1)."""
    from lit_imit.modules.cliport import tiny_config

    init = {"task": "put-block-in-bowl-seen-colors", "mode": "askdagger", "episodes_per_round": 1,
            "seed_episodes": 1, "n_min": 2, "max_steps": 3}
    return {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp), "name": "logs", "version": version}},
            "callbacks": [{"class_path": "callbacks.interactive.InteractiveAggregation", "init_args": init}],
        },
        "checkpoint": {"save_top_k": -1, "every_n_epochs": 1},
        "model": {"class_path": "lit_imit.modules.cliport.CLIPortModule",
                  "init_args": tiny_config(downsample=4, crop_size=32, lr=5e-5, activation="leaky_relu")},
        "data": {"class_path": "lit_imit.data.cliport.CLIPortDataModule",
                 "init_args": {"data_dir": str(tmp / "data"), "task": "put-block-in-bowl-seen-colors",
                               "allow_empty": True, "batch_size": 1, "val_episodes": 0, "sampling": "prioritized",
                               "priority_alpha": 1.5, "samples_per_epoch": 8}},
    }


@pytest.mark.slow
def test_cliport_askdagger_from_scratch_on_ravens_through_the_cli(tmp_path):
    """The reference's loop: the untrained CLIPort is gated from the first decision, the oracle's feedback
    (validated / relabeled / annotated pick-places) lands in the store with PIER metadata, every round trains
    8 steps at batch 1 on the prioritized data, and the stored demos are CLIPort training samples."""
    from lit_imit.data.cliport import PickPlaceDataset

    cli = main({"fit": cliport_interactive_cfg(tmp_path, max_epochs=2)})
    cb, dm = _callback(cli), cli.datamodule
    assert cb.seeded and cb.episodes_done == 3 and cb.rounds_done == 3  # the seed episode + one per epoch
    assert cli.trainer.global_step == 16  # 8 steps of batch 1 per round
    counts = cb.counts
    assert counts["demos"] == counts["annotations"] + counts["validations"] + counts["relabels"] > 0
    assert counts["annotations"] > 0  # an untrained novice fails and is queried (everything is, below n_min)
    store = EpisodeStore(tmp_path / "data")
    assert store.ids() == dm.train_ids and len(dm.train_ids) == counts["demos"]
    assert set(dm.episode_priority) == set(dm.train_ids)
    for i in dm.train_ids:
        meta = dm.episode_meta[i]
        assert meta["source"] in ("teacher", "validated", "relabeled")
        if meta["source"] == "relabeled":  # no uncertainty, an unknown label (PIER priority 1)
            assert meta["label"] == Label.UNKNOWN_RELABELING and math.isnan(meta["uncertainty"])
        else:  # a queried decision: known label and the novice's uncertainty
            assert meta["label"] in (Label.KNOWN_SUCCESS, Label.KNOWN_FAILURE) and math.isfinite(meta["uncertainty"])
    sample = PickPlaceDataset(store, dm.train_ids)[0]
    assert isinstance(sample["instruction"], str) and sample["instruction"]
    tags = _tags(tmp_path / "logs" / "version_0")
    for tag in INTERACTIVE_TAGS:
        assert f"interactive/{tag}" in tags, tag
    ckpt = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["InteractiveAggregation"]["counts"] == counts


@pytest.mark.parametrize("name", ["put_block_in_bowl", "packing_shapes"])
def test_shipped_cliport_askdagger_configs_hold_the_reference_settings(name, tmp_path):
    """Built from the shipped file (with a random tiny CLIP instead of the offline-unavailable openai weights)."""
    from lit_imit.modules.cliport import TINY_CLIP

    cfg = yaml.safe_load((ROOT / "configs" / "cliport" / f"askdagger_{name}.yaml").read_text())
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                "init_args": {"save_dir": str(tmp_path)}}
    cfg["model"]["init_args"].update(clip_pretrained=None, clip_overrides=TINY_CLIP, spatial_width=8)
    cfg["data"]["init_args"]["data_dir"] = str(tmp_path / "data")
    cli = main(cfg, run=False)
    cb = _callback(cli)
    assert cb.mode == "askdagger" and cb.episodes_per_round == 1 and cb.seed_episodes == 1
    assert cb.sag_kwargs == {"mode": "sensitivity", "target": 0.9, "p_rand": 0.2, "n_min": 15, "n_rep": 10,
                             "u_normalization": True, "impute": True}
    assert cb.pier(cli.datamodule).state_dict() == {"lam": 0.5, "base": 10.0, "alpha": 1.5, "beta0": 1.0,
                                                    "beta_steps": 100, "bias_compensation": True,
                                                    "weight_normalization": "max"}
    cb._adopt_task(cli.datamodule.task)  # as setup() does: the config names the task once, in the data
    assert isinstance(cb.judge, StepRewardJudge) and cb._decision_steps(cli.model) == 1
    hp, dm = cli.model.hparams, cli.datamodule
    assert hp.lr == 5e-5 and hp.activation == "leaky_relu" and hp.uncertainty_measure == "entropy"
    assert dm.batch_size == 1 and dm.samples_per_epoch == 8 and dm.allow_empty and dm.sampling == "prioritized"
    assert cli.trainer.max_epochs == 300
    prefixes = sorted(c.log_prefix for c in cli.trainer.callbacks if hasattr(c, "log_prefix"))
    assert prefixes == ["rollout", "rollout_unseen"]
