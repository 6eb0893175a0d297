"""Interactive recipes: one (mode, seed) run end to end through the real CLI (tiny ACT from state, 12-step
episodes), the shipped experiment config, the argument checks of scripts/reproduce.py, and the comparison
table and plot drawn from results rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_imit.data.episodes import EpisodeStore
from lit_imit.interactive import MODES
from lit_imit.interactive_recipes import (
    MAX_SEED,
    check_mode,
    check_seed,
    grid,
    run_config,
    run_interactive,
    seeds_of,
    split_overrides,
)
from lit_imit.recipes import RECIPES, SELECTION_SEED, TEST_SEED, Recipe, recipe, retest_run, run_recipe
from lit_imit.results import (
    annotations_to_reach,
    append_row,
    interactive_summary,
    latest_interactive_runs,
    read_rows,
    render_table,
)

#: what the issue asks of every interactive row
ROW_FIELDS = ("recipe", "method", "task", "mode", "seed", "interactive_episodes", "annotations", "validations",
              "relabels", "success_rate", "episodes", "ci_low", "ci_high", "curve")
TINY_STATE_ACT = {
    "cameras": [], "state_keys": ["qpos", "env_state"], "state_dim": [14, 7], "chunk_size": 6, "n_action_steps": 6,
    "dim_model": 16, "n_heads": 2, "dim_feedforward": 32, "n_encoder_layers": 1, "n_decoder_layers": 1,
    "n_vae_encoder_layers": 1, "latent_dim": 4, "dropout": 0.0, "use_vae": True, "n_uncertainty_samples": 2,
    "lr": 1e-3, "lr_backbone": 1e-3,
}


def state_store(root: Path, episodes: int = 2, length: int = 20) -> str:
    """Synthetic "teacher demos" in the env's state layout (qpos 14, env_state 7): recording real ones would
    cost seconds per 400-step episode."""
    store = EpisodeStore(root)
    for i in range(episodes):
        rng = np.random.default_rng(i)
        qpos = np.cumsum(rng.normal(0, 0.02, size=(length + 1, 14)), axis=0).astype(np.float32)
        store.add({"observations/qpos": qpos[:-1], "observations/env_state": rng.normal(size=(length, 7)).astype(np.float32),
                   "action": qpos[1:].copy()}, {"task": "transfer_cube", "source": "teacher"})
    return str(root)


def tiny_recipe(tmp: Path, data_dir: str) -> Recipe:
    """A 1-epoch warm-up, then 3 rounds of one 12-step interactive episode; a checkpoint every epoch."""
    config = {
        "seed_everything": 1000, "torch_threads": 1,
        "trainer": {
            "max_epochs": 4, "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [
                {"class_path": "callbacks.interactive.InteractiveAggregation",
                 "init_args": {"mode": "askdagger", "episodes_per_round": 1, "warmup_epochs": 1, "max_steps": 12,
                               "n_min": 2, "seed": 10000}},
                {"class_path": "callbacks.rollout.RolloutEvaluation",
                 "init_args": {"n_episodes": 2, "every_n_epochs": 0, "max_steps": 12, "video": False}},
            ],
        },
        "checkpoint": {"monitor": None, "save_top_k": -1, "every_n_epochs": 1},
        "model": {"class_path": "lit_imit.modules.act.ACTModule", "init_args": TINY_STATE_ACT},
        "data": {"class_path": "lit_imit.data.EpisodeDataModule",
                 "init_args": {"data_dir": data_dir, "task": "transfer_cube", "batch_size": 4, "num_workers": 0,
                               "val_episodes": 0, "sampling": "prioritized", "priority_alpha": 1.5,
                               "samples_per_epoch": 8}},
    }
    path = tmp / "tiny_interactive.yaml"
    path.write_text(yaml.safe_dump(config))
    return Recipe(name="tiny_interactive", method="act", task="transfer_cube", config=str(path), obs="state",
                  demos=2, expected_minutes=1, preset="interactive", curve_episodes=1, test_workers=0, test_n_envs=2)


def _logged(log_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return [values[s] for s in sorted(values)]


def test_a_tiny_interactive_run_writes_a_row_with_its_curve(tmp_path, monkeypatch):
    data_dir = state_store(tmp_path / "data")
    rec = tiny_recipe(tmp_path, data_dir)
    results = tmp_path / "results.jsonl"
    variant = ["--interactive.p_rand=0.5"]  # a variant: the callback's random-query rate
    row = run_interactive(rec, "askdagger", 3, tmp_path / "runs", results, episodes=2, extra_overrides=variant)
    assert read_rows(results)[-1]["run_dir"] == row["run_dir"] and row["extra_overrides"] == variant
    for field in ROW_FIELDS:
        assert row[field] is not None, field
    assert row["mode"] == "askdagger" and row["seed"] == 3 and row["method"] == "act"
    assert row["episodes"] == 2 and row["eval_seeds"] == f"{TEST_SEED}-{TEST_SEED + 1}"
    assert 0.0 <= row["ci_low"] <= row["success_rate"] <= row["ci_high"] <= 1.0
    # the run's config: the mode and the seeds of seed 3 and the variant's p_rand
    run_dir = Path(row["run_dir"])
    written = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    assert written["seed_everything"] == 1003 and written["data"]["init_args"]["seed"] == 3
    assert written["trainer"]["callbacks"][0]["init_args"]["seed"] == 13_000
    assert written["trainer"]["callbacks"][0]["init_args"]["p_rand"] == 0.5

    curve = row["curve"]
    assert [p["interactive_episodes"] for p in curve] == [0, 1, 2, 3] == list(range(row["interactive_episodes"] + 1))
    assert [p["episodes"] for p in curve] == [1, 1, 1, 2]  # curve_episodes at the intermediate points
    assert curve[0]["annotations"] == 0 and curve[-1]["annotations"] == row["annotations"]
    for key in ("annotations", "validations", "relabels", "annotated_steps"):
        counts = [p[key] for p in curve]
        assert counts == sorted(counts), key
    # the same counters as the callback logged after each round, and as the demos in the store
    logged = _logged(run_dir / "lightning_logs", "interactive/n_annotations")
    assert [p["annotations"] for p in curve[1:]] == logged
    assert [p["annotated_steps"] for p in curve[1:]] == _logged(run_dir / "lightning_logs",
                                                                 "interactive/n_annotated_steps")
    store = EpisodeStore(data_dir)
    collected = [store.info(i)["attrs"] for i in store.ids()[2:]]
    teacher = [i for i in store.ids()[2:] if store.info(i)["attrs"]["source"] == "teacher"]
    assert row["annotations"] == len(teacher) > 0  # an untrained novice fails: the teacher takes over
    assert row["annotated_steps"] == sum(store.length(i) for i in teacher)
    assert row["validations"] == sum(a["source"] == "validated" for a in collected) and row["relabels"] == 0

    # evaluated again without training: a row of its own, the same counters
    monkeypatch.setitem(RECIPES, rec.name, rec)
    again = retest_run(run_dir, results, episodes=2, test_seed=2_000_000)
    assert again["retest_of"] == str(run_dir) and again["mode"] == "askdagger" and again["seed"] == 3
    assert again["extra_overrides"] == variant  # the re-test is of the variant, not of the setting as shipped
    assert [p["annotations"] for p in again["curve"]] == [p["annotations"] for p in curve]
    latest = latest_interactive_runs(read_rows(results))
    assert len(latest) == 1 and latest[0]["mode"] == "askdagger [p_rand=0.5]"
    assert latest[0]["run_dir"] == again["run_dir"] and latest[0]["retest_of"] == str(run_dir)


def test_a_failed_interactive_run_gets_a_row_with_the_error(tmp_path, monkeypatch):
    import lit_imit.interactive_recipes as runs

    def crash(*args, **kwargs):
        raise RuntimeError("fit exited with status 1")

    monkeypatch.setattr(runs, "fit_run", crash)
    rec = tiny_recipe(tmp_path, str(tmp_path / "data"))
    with pytest.raises(RuntimeError, match="fit exited"):
        run_interactive(rec, "dagger", 0, tmp_path / "runs", tmp_path / "r.jsonl", episodes=2)
    row = read_rows(tmp_path / "r.jsonl")[-1]
    assert row["mode"] == "dagger" and row["seed"] == 0 and row["success_rate"] is None and row["curve"] == []
    assert "fit exited" in row["error"] and row["annotations"] is None  # no last.ckpt: nothing counted yet
    assert "dagger" in render_table([row])  # the rendering takes a failed interactive row


def test_shipped_setting_gives_every_mode_the_same_start():
    rec = recipe("askdagger_transfer_cube_state")
    assert rec.interactive and rec.curve_episodes >= 1
    configs = {mode: run_config(rec, mode, 1) for mode in MODES}
    callback = configs["askdagger"]["trainer"]["callbacks"][0]["init_args"]
    for mode, config in configs.items():  # only the callback's mode differs between the modes of a seed
        same = json.loads(json.dumps(config))
        same["trainer"]["callbacks"][0]["init_args"]["mode"] = "askdagger"
        assert same == configs["askdagger"], mode
    # every mode samples with the prioritized sampler: the warm-up draws are the same; modes without PIER never
    # set priorities, so their draws stay uniform over the stored steps
    data = configs["dagger"]["data"]["init_args"]
    assert data["sampling"] == "prioritized" and data["val_episodes"] == 0
    model = configs["dagger"]["model"]["init_args"]
    assert model["n_action_steps"] == model["chunk_size"] and model.get("temporal_ensemble_coeff") is None
    assert model["use_vae"] and model["n_uncertainty_samples"] >= 2  # the uncertainty SAG gates on
    # a checkpoint at the end of the warm-up and every N episodes after it, the last at the end of the run
    every = configs["dagger"]["checkpoint"]["every_n_epochs"]
    warmup, epochs = callback["warmup_epochs"], configs["dagger"]["trainer"]["max_epochs"]
    assert warmup % every == 0 and (epochs - warmup) % every == 0 and callback["episodes_per_round"] == 1
    assert configs["dagger"]["checkpoint"]["monitor"] is None and configs["dagger"]["checkpoint"]["save_top_k"] == -1
    rollout = configs["dagger"]["trainer"]["callbacks"][1]
    assert rollout["class_path"].endswith("RolloutEvaluation") and rollout["init_args"]["every_n_epochs"] == 0


def test_a_callback_override_makes_a_variant_of_the_setting():
    """``--interactive.KEY=VALUE`` reaches the callback in the run's config (the command line cannot name one
    callback of a list); the fit's own overrides pass through; mode and seed stay the recipe's."""
    callback_args, cli = split_overrides(["--interactive.pier_beta0=0.0", "--trainer.max_epochs=40",
                                          "--interactive.sag_mode=success"])
    assert callback_args == {"pier_beta0": 0.0, "sag_mode": "success"} and cli == ["--trainer.max_epochs=40"]
    rec = recipe("askdagger_transfer_cube_state")
    shipped, variant = run_config(rec, "askdagger", 2), run_config(rec, "askdagger", 2, callback_args)
    init = variant["trainer"]["callbacks"][0]["init_args"]
    assert init["pier_beta0"] == 0.0 and init["sag_mode"] == "success"
    assert init["mode"] == "askdagger" and init["seed"] == shipped["trainer"]["callbacks"][0]["init_args"]["seed"]
    init.update({k: shipped["trainer"]["callbacks"][0]["init_args"][k] for k in callback_args})
    assert variant == shipped  # nothing else changed
    for bad, message in [("--interactive.mode=dagger", "comes from --mode"), ("--interactive.seed=3", "from --seed"),
                         ("--interactive.pier_beta0", "KEY=VALUE")]:
        with pytest.raises(ValueError, match=message):
            split_overrides([bad])


def test_a_variant_run_is_its_own_line_not_a_replacement_of_the_mode():
    shipped = fake_row("askdagger", 0, 6, [0.2, 0.3])
    variant = {**fake_row("askdagger", 0, 6, [0.2, 0.7]), "extra_overrides": ["--interactive.pier_beta0=0.0"]}
    runs = latest_interactive_runs([shipped, variant, fake_row("active_dagger", 0, 20, [0.2, 0.5])])
    assert [(r["mode"], r["success_rate"]) for r in runs] == [
        ("active_dagger", 0.5), ("askdagger", 0.3), ("askdagger [pier_beta0=0.0]", 0.7)]
    level, summary = interactive_summary(runs)
    assert level == pytest.approx(0.5) and [m["mode"] for m in summary][-1] == "askdagger [pier_beta0=0.0]"


def test_the_warm_up_does_not_depend_on_the_mode(tmp_path):
    """The BC warm-up of a seed gives the same weights in every mode (here dagger, without PIER, and askdagger)."""
    import torch

    from lit_imit.cli import main

    rec = tiny_recipe(tmp_path, state_store(tmp_path / "data"))
    weights = {}
    for mode in ("dagger", "askdagger"):
        config = run_config(rec, mode, 0)
        config["trainer"].update(max_epochs=1, default_root_dir=str(tmp_path / mode), accelerator="cpu",
                                 logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                         "init_args": {"save_dir": str(tmp_path / mode)}})
        cli = main({"fit": config})
        weights[mode] = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}
    assert weights["dagger"].keys() == weights["askdagger"].keys()
    for key, value in weights["dagger"].items():
        assert torch.equal(value, weights["askdagger"][key]), key


def test_seeds_keep_demos_episodes_and_tests_apart():
    episodes = 1000  # interactive episodes a run may use before its env seeds meet the next seed's
    first, last = seeds_of(0), seeds_of(MAX_SEED)
    assert last["data_seed"] + 100 < first["episode_seed"]  # demos (seeds s.., fewer than 100) below
    assert last["episode_seed"] + episodes <= SELECTION_SEED < TEST_SEED
    assert seeds_of(1)["episode_seed"] - seeds_of(0)["episode_seed"] == episodes


def test_mode_and_seed_errors_are_clear():
    with pytest.raises(ValueError, match="unknown mode 'hg_dagger': choose from dagger, active_dagger"):
        check_mode("hg_dagger")
    for bad in (-1, MAX_SEED + 1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer in 0..89"):
            check_seed(bad)
    assert grid(["askdagger", "dagger"], [1, 0]) == [("dagger", 1), ("askdagger", 1), ("dagger", 0), ("askdagger", 0)]
    with pytest.raises(ValueError, match="interactive experiment: run it per mode and seed"):
        run_recipe(recipe("askdagger_transfer_cube_state"), "/nonexistent", None)
    with pytest.raises(ValueError, match="not an interactive experiment"):
        run_interactive(recipe("act_transfer_cube_state"), "dagger", 0, "/nonexistent", None)


@pytest.mark.parametrize("args, message", [
    (["askdagger_transfer_cube_state", "--seed", "0"], "runs per mode and seed: give --mode"),
    (["askdagger_transfer_cube_state", "--mode", "all"], "runs per mode and seed: give --mode"),
    (["act_transfer_cube_state", "--mode", "dagger", "--seed", "0"], "--mode and --seed are for interactive"),
    (["askdagger_transfer_cube_state", "--mode", "hg_dagger", "--seed", "0"], "invalid choice: 'hg_dagger'"),
    (["askdagger_transfer_cube_state", "--mode", "dagger", "--seed", "90"], "a seed is an integer in 0..89"),
    (["no_such_recipe"], "unknown recipe 'no_such_recipe'"),
])
def test_reproduce_refuses_bad_interactive_arguments(args, message, tmp_path, capsys):
    from lit_imit.tools.reproduce import main

    try:
        code = main([*args, "--results", str(tmp_path / "r.jsonl"), "--work-dir", str(tmp_path / "runs"),
                     "--readme", ""])
    except SystemExit as stop:  # argparse's own checks
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "runs").exists()


# ---- the comparison from rows ------------------------------------------------------------------------
def fake_row(mode: str, seed: int, annotations_per_10: float, success: list[float]) -> dict:
    curve = [{"interactive_episodes": 10 * k, "annotations": int(annotations_per_10 * k),
              "validations": 3 * k, "relabels": 0, "annotated_steps": int(50 * annotations_per_10 * k),
              "success_rate": s, "successes": int(20 * s), "episodes": 20, "ci_low": 0.0, "ci_high": 1.0}
             for k, s in enumerate(success)]
    last = curve[-1]
    return {"recipe": "setting", "method": "act", "task": "transfer_cube", "mode": mode, "seed": seed,
            "interactive_episodes": last["interactive_episodes"], "annotations": last["annotations"],
            "validations": last["validations"], "relabels": 0, "annotated_steps": last["annotated_steps"],
            "success_rate": success[-1], "successes": int(50 * success[-1]), "episodes": 50, "ci_low": 0.1,
            "ci_high": 0.99, "curve": curve, "wall_minutes": 30.0, "commit": "abc", "run_dir": f"/runs/{mode}-{seed}"}


def comparison_rows() -> list[dict]:
    return [
        fake_row("dagger", 0, 80, [0.2, 0.5, 0.8, 0.9]), fake_row("dagger", 1, 80, [0.1, 0.6, 0.7, 0.9]),
        fake_row("active_dagger", 0, 20, [0.2, 0.4, 0.6, 0.8]), fake_row("active_dagger", 1, 24, [0.1, 0.3, 0.8, 0.8]),
        fake_row("askdagger", 0, 6, [0.2, 0.5, 0.8, 0.9]), fake_row("askdagger", 1, 8, [0.1, 0.6, 0.7, 0.85]),
    ]


def test_summary_counts_annotations_to_the_active_dagger_level():
    assert annotations_to_reach([{"success_rate": 0.5, "annotations": 3}, {"success_rate": 0.8, "annotations": 9}],
                                0.8) == 9
    assert annotations_to_reach([{"success_rate": 0.5, "annotations": 3}], 0.8) is None
    level, summary = interactive_summary(comparison_rows())
    assert level == pytest.approx(0.8)  # the active-DAgger runs' mean final success
    by_mode = {m["mode"]: m for m in summary}
    assert list(by_mode) == ["dagger", "active_dagger", "askdagger"]
    assert by_mode["active_dagger"]["to_reach"] == pytest.approx((60 + 48) / 2) and by_mode["active_dagger"]["reached"] == 2
    assert by_mode["askdagger"]["to_reach"] == pytest.approx((12 + 24) / 2)
    assert by_mode["askdagger"]["fewer_than_baseline"] == pytest.approx(54 / 18)
    assert by_mode["dagger"]["annotations"] == 240 and by_mode["askdagger"]["success"] == pytest.approx(0.875)


def test_plot_and_table_render_from_results_rows(tmp_path):
    results = tmp_path / "results.jsonl"
    for row in comparison_rows():
        append_row(results, row)
    append_row(results, {**fake_row("askdagger", 0, 6, [0.0]), "success_rate": None, "curve": [],
                         "error": "StopSignal: stopped by SIGTERM"})  # a stopped rerun does not replace the run
    from scripts.plot_interactive import main

    written = main(["--results", str(results), "--out", str(tmp_path / "plots")])
    png, table = tmp_path / "plots" / "interactive_setting.png", tmp_path / "plots" / "interactive_setting.md"
    assert written == [png, table] and png.stat().st_size > 20_000
    from PIL import Image

    assert min(Image.open(png).size) > 300
    text = table.read_text()
    assert "annotations to first reach 0.80" in text and "| askdagger | 0, 1 |" in text and "3.0×" in text
    # RESULTS.md: learning recipes as before, the interactive runs in their own tables
    rendered = render_table(read_rows(results))
    learning, interactive = rendered.split("### Interactive learning")
    assert "askdagger" not in learning and "| askdagger | 0, 1 |" in interactive and "stopped by SIGTERM" in interactive


def test_plot_from_results_without_interactive_rows_is_a_clear_error(tmp_path):
    from scripts.plot_interactive import main

    results = tmp_path / "results.jsonl"
    results.write_text("")
    with pytest.raises(SystemExit):
        main(["--results", str(results), "--out", str(tmp_path / "plots")])
    with pytest.raises(SystemExit):  # logs or results, not both
        main([str(tmp_path), "--results", str(results), "--out", str(tmp_path / "plots")])
