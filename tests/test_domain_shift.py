"""Domain shifts in interactive learning (ASkDAgger's domain-shift experiment): the schedule, the ALOHA
``spawn_offset`` that moves the cube, the callback switching env after N episodes (logged, stored, resumed
exactly) and an interactive recipe testing each curve point in its checkpoint's domain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lit_imit.modules.act  # noqa: F401  (torchvision must load before dm_control's EGL: else a segfault)
from callbacks.interactive import InteractiveAggregation
from lit_imit.cli import main
from lit_imit.data.episodes import EpisodeStore
from lit_imit.envs import make_env, make_teacher
from lit_imit.envs.aloha import AlohaEnv
from lit_imit.interactive import DomainSchedule
from lit_imit.interactive_recipes import run_config, run_interactive
from lit_imit.recipes import REPO_ROOT, recipe
from tests.test_interactive_recipes import TINY_STATE_ACT, _logged, state_store, tiny_recipe

SHIFT = [0.0, 0.18]  # the shipped recipe's: the cube 18 cm further back
SHIFTED_BOX = ((0.0, 0.2), (0.58, 0.78))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Two cores shared with other jobs: the in-process fits use one torch thread (as the callback tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the schedule --------------------------------------------------------------------------------------
def test_schedule_switches_at_the_given_episode_counts():
    schedule = DomainSchedule([{"after_episodes": 3, "env_kwargs": {"spawn_offset": (0.0, 0.1)}},
                               {"after_episodes": 5, "env_kwargs": {"spawn_offset": None}}])
    assert [schedule.domain(n) for n in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    base = {"cameras": [], "env_state": True}
    assert schedule.env_kwargs(base, 0) == base
    assert schedule.env_kwargs(base, 1) == {**base, "spawn_offset": [0.0, 0.1]}  # plain data: tuples as lists
    assert schedule.env_kwargs(base, 2) == {**base, "spawn_offset": None}  # over the base, not over shift 1
    assert schedule.state(4) == {"domain": 1, "env_kwargs": {"spawn_offset": [0.0, 0.1]}}
    schedule.check_state({"domain": 1, "env_kwargs": {"spawn_offset": (0.0, 0.1)}}, 4)  # a tuple is the same setting
    assert len(DomainSchedule(None)) == 0 and DomainSchedule([]).domain(10**6) == 0
    DomainSchedule(None).check_state(None, 7)  # a checkpoint from before domain shifts: domain 0


@pytest.mark.parametrize("shifts, message", [
    ({"after_episodes": 3}, "must be a list"),
    ([{"after_episodes": 3, "env_kwarg": {"spawn_offset": [0, 0.1]}}],
     r"domain_shifts\[0\]: unknown keys \['env_kwarg'\]"),
    ([{"after_episodes": 0, "env_kwargs": {"spawn_offset": [0, 0.1]}}], r"domain_shifts\[0\].after_episodes must be"),
    ([{"after_episodes": 2, "env_kwargs": {}}], r"domain_shifts\[0\].env_kwargs must be a non-empty"),
    ([{"after_episodes": 2, "env_kwargs": {"cameras": ["top"]}}], r"sets \['cameras'\]: what the policy observes"),
    ([{"after_episodes": 4, "env_kwargs": {"a": 1}}, {"after_episodes": 4, "env_kwargs": {"a": 2}}],
     r"domain_shifts\[1\].after_episodes \(4\) must be larger"),
    ([{"after_episodes": 2, "env_kwargs": {"a": object()}}], "must be plain data"),
])
def test_bad_schedules_name_the_entry_and_key(shifts, message):
    with pytest.raises(ValueError, match=message):
        DomainSchedule(shifts)


def test_a_switch_inside_a_round_is_refused_at_config_time():
    shifts = [{"after_episodes": 3, "env_kwargs": {"spawn_offset": SHIFT}}]
    with pytest.raises(ValueError, match=r"after_episodes = 3 falls inside a round: rounds start after 0 \+ k \* 2"):
        InteractiveAggregation(episodes_per_round=2, domain_shifts=shifts)
    with pytest.raises(ValueError, match=r"falls inside a round: rounds start after 4 \+ k \* 1"):
        InteractiveAggregation(seed_episodes=4, episodes_per_round=1, domain_shifts=shifts)
    InteractiveAggregation(seed_episodes=1, episodes_per_round=2, domain_shifts=shifts)  # 1 + 1 * 2


def test_resuming_with_another_schedule_is_refused():
    schedule = DomainSchedule([{"after_episodes": 2, "env_kwargs": {"spawn_offset": SHIFT}}])
    with pytest.raises(ValueError, match="checkpoint is in domain 0 .* put it in domain 1"):
        schedule.check_state({"domain": 0, "env_kwargs": {}}, 5)
    with pytest.raises(ValueError, match="resume with the domain_shifts the run was started with"):
        schedule.check_state({"domain": 1, "env_kwargs": {"spawn_offset": [0.0, 0.1]}}, 5)


# ---- the ALOHA spawn offset -------------------------------------------------------------------------------
#: the cube's start pose for seeds 0-2, recorded before spawn_offset existed: the default env must keep it
DEFAULT_CUBE = {0: [0.12739233746429088, 0.45395734275277405], 1: [0.10236432494005135, 0.590092739265187],
                2: [0.05232242684986328, 0.45969822868282467]}


def test_default_placement_is_unchanged_bit_for_bit():
    plain, explicit = make_env("transfer_cube", cameras=[]), make_env("transfer_cube", cameras=[], spawn_offset=None)
    for seed, xy in DEFAULT_CUBE.items():
        plain.reset(seed=seed)
        explicit.reset(seed=seed)
        assert plain.unwrapped.object_poses()["box"].tolist() == [*xy, 0.05, 1.0, 0.0, 0.0, 0.0]
        np.testing.assert_array_equal(plain.unwrapped.physics.data.qpos, explicit.unwrapped.physics.data.qpos)
    assert plain.unwrapped.spawn_offset == (0.0, 0.0)


def test_shifted_env_places_the_cube_in_the_new_region():
    env = make_env("transfer_cube", cameras=[], env_state=True, spawn_offset=SHIFT)
    (x0, x1), (y0, y1) = SHIFTED_BOX
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        x, y = obs["env_state"][:2]
        assert x0 <= x <= x1 and y0 <= y <= y1, seed
        if seed in DEFAULT_CUBE:  # the same draws, moved: seed s is the original scene shifted
            np.testing.assert_allclose([x, y], np.add(DEFAULT_CUBE[seed], SHIFT), atol=1e-6)
    peg = make_env("insertion", cameras=[], spawn_offset=[-0.05, 0.1])  # every object of the task moves
    base = make_env("insertion", cameras=[])
    peg.reset(seed=4)
    base.reset(seed=4)
    for name in ("peg", "socket"):
        np.testing.assert_allclose(peg.unwrapped.object_poses()[name][:2] - base.unwrapped.object_poses()[name][:2],
                                   [-0.05, 0.1], atol=1e-12)


@pytest.mark.parametrize("offset, message", [
    ([0.0, -0.2], r"moves the box's spawn box .* y 0.200..0.400: off the usable table"),
    ([18.0, 0.0], "off the usable table"),
    ([0.1], r"two numbers \(dx, dy\)"),
    ("0.1,0.2", r"two numbers \(dx, dy\)"),
    ([float("nan"), 0.0], "must be finite"),
])
def test_bad_spawn_offsets_are_named(offset, message):
    with pytest.raises(ValueError, match=message):
        AlohaEnv(cameras=[], spawn_offset=offset)


@pytest.mark.parametrize("seed", range(4))
def test_teacher_succeeds_in_the_shifted_region(seed):
    """Take-overs in the new domain are valid demos (measured: 89 of seeds 0-89 there, 30/30 on 0-29 unshifted)."""
    env = make_env("transfer_cube", cameras=[], spawn_offset=SHIFT)
    teacher = make_teacher("transfer_cube", env)
    obs, _ = env.reset(seed=seed)
    teacher.reset()
    for _ in range(400):
        obs, _, terminated, truncated, info = env.step(teacher.act(obs))
        if terminated or truncated:
            break
    assert info["is_success"]


# ---- the callback through the CLI -------------------------------------------------------------------------
def shift_cfg(tmp: Path, data_dir: str, max_epochs: int, version: int = 0, after: int = 1,
              offset: list[float] = SHIFT) -> dict:
    """Tiny ACT from state (qpos + cube pose), 12-step episodes, a round after every epoch, the cube shifted
    after ``after`` interactive episodes."""
    init = {"task": "transfer_cube", "mode": "askdagger", "episodes_per_round": 1, "max_steps": 12, "n_min": 2,
            "seed": 10_000, "domain_shifts": [{"after_episodes": after, "env_kwargs": {"spawn_offset": offset}}]}
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
        "model": {"class_path": "lit_imit.modules.act.ACTModule", "init_args": TINY_STATE_ACT},
        "data": {"class_path": "lit_imit.data.EpisodeDataModule",
                 "init_args": {"data_dir": data_dir, "task": "transfer_cube", "batch_size": 4, "num_workers": 0,
                               "val_episodes": 0, "sampling": "prioritized", "priority_alpha": 1.5,
                               "samples_per_epoch": 8}},
    }


def _callback(cli) -> InteractiveAggregation:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, InteractiveAggregation))


def _collected(data_dir: str) -> list[tuple[int, int, np.ndarray]]:
    """(interactive episode, domain, first cube pose) of each demo the rounds stored."""
    store = EpisodeStore(data_dir)
    out = []
    for i in store.ids():
        attrs = store.info(i)["attrs"]
        if "interactive_episode" in attrs:
            cube = store.read(i).obs("env_state")[0]
            out.append((attrs["interactive_episode"], attrs["domain"], cube))
    return out


def test_rounds_switch_env_after_n_episodes_and_say_so(tmp_path):
    data_dir = state_store(tmp_path / "data")
    cli = main({"fit": shift_cfg(tmp_path, data_dir, max_epochs=2)})
    cb = _callback(cli)
    assert cb.episodes_done == 2
    collected = _collected(data_dir)
    assert {(e, d) for e, d, _ in collected} == {(0, 0), (1, 1)}  # an untrained novice: take-overs in both rounds
    (x0, x1), (y0, y1) = SHIFTED_BOX
    for episode, _, cube in collected:  # the cube is where the episode's domain puts it (12 steps: not yet moved)
        assert (y0 <= cube[1] <= y1) == (episode == 1) and x0 <= cube[0] <= x1
    assert _logged(tmp_path / "logs" / "version_0", "interactive/domain") == [0.0, 1.0]  # the round's domain
    ckpt = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["InteractiveAggregation"]["domain"] == {"domain": 1, "env_kwargs": {"spawn_offset": SHIFT}}


def test_an_env_argument_the_env_refuses_fails_at_setup(tmp_path):
    cfg = shift_cfg(tmp_path, state_store(tmp_path / "data"), max_epochs=1, offset=[0.0, -0.3])
    with pytest.raises(ValueError, match=r"domain_shifts\[0\].env_kwargs .* do not build a transfer_cube env: "
                                         "spawn_offset"):
        main({"fit": cfg})


def test_resume_after_the_switch_keeps_the_shifted_env(tmp_path):
    """Stop after the switch (2 rounds, shift after 1) and resume: the third round runs in the shifted env and
    the run ends as an uninterrupted one; a config with another schedule cannot resume it."""
    straight = main({"fit": shift_cfg(tmp_path / "a", state_store(tmp_path / "data_a"), max_epochs=3)})
    data_b = state_store(tmp_path / "data_b")
    main({"fit": shift_cfg(tmp_path / "b", data_b, max_epochs=2)})
    last = tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = main({"fit": {**shift_cfg(tmp_path / "b", data_b, max_epochs=3, version=1), "ckpt_path": str(last)}})
    cb, expected = _callback(resumed), _callback(straight)
    assert cb.episodes_done == 3 and cb.counts == expected.counts
    assert json.dumps(cb.gate.state_dict(), sort_keys=True) == json.dumps(expected.gate.state_dict(), sort_keys=True)
    after, before = _collected(data_b), _collected(str(tmp_path / "data_a"))
    assert [(e, d) for e, d, _ in after] == [(e, d) for e, d, _ in before] and {e for e, _, _ in after} == {0, 1, 2}
    (y0, y1) = SHIFTED_BOX[1]
    for (episode, _, cube), (_, _, same) in zip(after, before):  # the resumed round's cube: the shifted region
        assert (y0 <= cube[1] <= y1) == (episode >= 1)
        np.testing.assert_array_equal(cube, same)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="checkpoint is in domain 1 .* put it in domain 0"):
        main({"fit": {**shift_cfg(tmp_path / "b", data_b, max_epochs=3, version=2, after=5), "ckpt_path": str(last)}})


# ---- the recipe ----------------------------------------------------------------------------------------------
def test_recipe_tests_each_curve_point_in_its_domain(tmp_path, monkeypatch):
    import lit_imit.interactive_recipes as runs

    data_dir = state_store(tmp_path / "data")
    rec = tiny_recipe(tmp_path, data_dir)
    config = yaml.safe_load(Path(rec.config).read_text())
    config["trainer"]["callbacks"][0]["init_args"]["domain_shifts"] = [
        {"after_episodes": 2, "env_kwargs": {"spawn_offset": SHIFT}}]
    Path(rec.config).write_text(yaml.safe_dump(config))
    opened = []
    real = runs.heldout_envs

    def recording(task, env_kwargs, n_envs, num_workers=0):  # the real envs; note the arguments they got
        opened.append(dict(env_kwargs))
        return real(task, env_kwargs, n_envs, num_workers)

    monkeypatch.setattr(runs, "heldout_envs", recording)
    row = run_interactive(rec, "askdagger", 0, tmp_path / "runs", None, episodes=2)
    curve = row["curve"]
    assert [p["interactive_episodes"] for p in curve] == [0, 1, 2, 3]
    assert [p["domain"] for p in curve] == [0, 0, 1, 1]  # from the switch on: the shifted env
    assert [p["domain_env_kwargs"] for p in curve] == [{}, {}, {"spawn_offset": SHIFT}, {"spawn_offset": SHIFT}]
    assert row["domain_shifts"] == [{"after_episodes": 2, "env_kwargs": {"spawn_offset": SHIFT}}]
    assert [k.get("spawn_offset") for k in opened] == [None, SHIFT]  # one set of envs per domain
    assert row["env_kwargs"]["spawn_offset"] == SHIFT and json.dumps(row)


def test_shipped_shift_recipe_switches_halfway():
    rec = recipe("askdagger_transfer_cube_state_shift")
    base = run_config(recipe("askdagger_transfer_cube_state"), "askdagger", 0)
    config = run_config(rec, "askdagger", 0)
    by_class = {cb["class_path"]: cb for cb in config["trainer"]["callbacks"]}
    callback = by_class["callbacks.interactive.InteractiveAggregation"]["init_args"]
    # last in the list: --override=--trainer.callbacks.init_args.X=... reaches it (the smoke run in the header)
    assert config["trainer"]["callbacks"][-1]["init_args"] is callback
    episodes = config["trainer"]["max_epochs"] - callback["warmup_epochs"]
    shifts = callback.pop("domain_shifts")
    assert shifts == [{"after_episodes": episodes // 2, "env_kwargs": {"spawn_offset": SHIFT}}]
    assert episodes // 2 % config["checkpoint"]["every_n_epochs"] == 0  # a curve point right at the switch
    # otherwise the unshifted setting, seed for seed (its own data directory; the callbacks in another order)
    config["data"]["init_args"]["data_dir"] = base["data"]["init_args"]["data_dir"]
    config["trainer"]["callbacks"] = sorted(config["trainer"]["callbacks"], key=lambda cb: cb["class_path"])
    base["trainer"]["callbacks"] = sorted(base["trainer"]["callbacks"], key=lambda cb: cb["class_path"])
    assert config == base
    assert rec.interactive and (REPO_ROOT / rec.config).is_file()
    InteractiveAggregation(**callback, domain_shifts=shifts)  # builds: the switch falls between rounds


def test_plot_of_shifted_runs_renders(tmp_path):
    from lit_imit.plotting import plot_mode_comparison
    from tests.test_interactive_recipes import fake_row

    shifts = [{"after_episodes": 20, "env_kwargs": {"spawn_offset": SHIFT}}]
    rows = [{**fake_row(mode, 0, 10, [0.2, 0.6, 0.3, 0.7]), "domain_shifts": shifts}
            for mode in ("dagger", "askdagger")]
    png = plot_mode_comparison(rows, tmp_path, "shift")  # draws the dotted line at 20 episodes
    assert png.stat().st_size > 20_000
