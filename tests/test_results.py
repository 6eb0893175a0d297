"""The results file, its rendered table, and a tiny recipe run end to end through scripts/reproduce.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_imit.recipes import (
    RECIPES, SELECTION_SEED, TEST_SEED, Recipe, list_recipes, rollout_settings, rollout_task, run_recipe,
)
from lit_imit.results import (
    README_BEGIN, README_END, BusyWatch, append_row, changes_from_recipe, demo_keys, headline_rows, other_busy_runs,
    read_rows, render_files, render_table,
)

REPO = Path(__file__).resolve().parents[1]


def _row(**kw):
    row = {"recipe": "r", "method": "act", "task": "transfer_cube", "obs": "state", "demos": 50, "train_steps": 10,
           "wall_minutes": 1.5, "device": "cpu", "successes": 45, "episodes": 50, "success_rate": 0.9,
           "ci_low": 0.79, "ci_high": 0.96, "eval_seeds": "1000000-1000049", "commit": "abc", "command": "x",
           "target": 0.8}
    row.update(kw)
    return row


def test_rows_append_and_render(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, _row(recipe="a", success_rate=0.5, successes=25, ci_low=0.37, ci_high=0.63))
    append_row(path, _row(recipe="a"))  # a rerun: the latest row of a recipe is the one shown first
    append_row(path, _row(recipe="b", success_rate=None, successes=None, ci_low=None, ci_high=None,
                          error="RuntimeError: fit exited with status 1"))
    rows = read_rows(path)
    assert [r["recipe"] for r in rows] == ["a", "a", "b"] and all("date" in r for r in rows)
    table = render_table(rows)
    latest, history = table.split("### Every run")
    assert "**0.90** (45/50, CI 0.79–0.96)" in latest and "0.50" not in latest
    assert "0.50" in history and "failed: RuntimeError" in history
    assert "≥ 0.80 ✓" in latest
    with pytest.raises(ValueError, match="lacks"):
        append_row(path, {"recipe": "c"})


def test_the_headline_shows_each_recipe_as_shipped_not_its_latest_side_run(tmp_path):
    """A later ablation (an override the config does not hold), a re-test with another sampler and a run stopped
    on purpose do not replace a recipe's own figure; a run whose override the config has since adopted does."""
    (tmp_path / "cfg.yaml").write_text("trainer:\n  max_steps: 24000\nmodel:\n  init_args: {lr: 0.001}\n")
    rate = lambda k: dict(success_rate=k / 50, successes=k, ci_low=0.0, ci_high=1.0)  # noqa: E731
    rows = [
        _row(recipe="a", config="cfg.yaml", run_dir="/runs/a/1", extra_overrides=[], **rate(10)),
        _row(recipe="a", config="cfg.yaml", run_dir="/runs/a/2", extra_overrides=["--trainer.max_steps=24000"],
             **rate(30)),  # the config's setting now: the recipe as shipped
        _row(recipe="a", config="cfg.yaml", run_dir="/runs/a/3", extra_overrides=["--model.init_args.lr=0.01"],
             **rate(40)),  # an ablation
        _row(recipe="a", config="cfg.yaml", run_dir="/runs/a/4", retest_of="/runs/a/2", sampler="ddpm-100",
             **rate(20)),  # the shipped policy with another sampler
        _row(recipe="a", config="cfg.yaml", run_dir="/runs/a/5", extra_overrides=[],
             **dict(rate(0), success_rate=None, error="StopSignal: stopped by SIGTERM")),
        _row(recipe="b", config="cfg.yaml", run_dir="/runs/b/1", extra_overrides=["--model.init_args.lr=0.5"],
             **rate(5)),
        _row(recipe="b", config="cfg.yaml", run_dir="/runs/b/2", extra_overrides=[],
             **dict(rate(0), success_rate=None, error="StopSignal: stopped by SIGTERM")),
        _row(recipe="b", config="cfg.yaml", run_dir="/runs/b/3", retest_of="/runs/b/1", **rate(7)),
    ]
    chosen = {r["recipe"]: r for r in headline_rows(rows, tmp_path)}
    assert chosen["a"]["run_dir"] == "/runs/a/2"
    assert chosen["b"]["run_dir"] == "/runs/b/3"  # no shipped run: the latest one not stopped, a re-test of b/1
    rows.append(_row(recipe="a", config="cfg.yaml", run_dir="/runs/a/6", retest_of="/runs/a/2", **rate(25)))
    assert headline_rows(rows, tmp_path)[0]["run_dir"] == "/runs/a/6"  # a plain re-test on fresh seeds counts
    headline = render_table(rows, tmp_path).split("### Every run")[0]
    assert "**0.50** (25/50" in headline and "**0.80**" not in headline
    assert "`--trainer.max_steps=24000` (now the config's)" in render_table(rows, tmp_path)


def test_extra_splits_render_under_the_main_figure(tmp_path):
    """A row's ``extra_tests`` (the same policy on another split, e.g. unseen colours) show in its success cell,
    in RESULTS.md and the README table alike; the target is judged on the main figure alone."""
    path = tmp_path / "results.jsonl"
    unseen = {"successes": 9, "episodes": 50, "success_rate": 0.18, "ci_low": 0.0977, "ci_high": 0.3084,
              "eval_seeds": "1000000-1000049"}
    append_row(path, _row(recipe="clip", success_rate=0.62, successes=31, ci_low=0.48, ci_high=0.74, target=0.5,
                          extra_tests={"put-block-in-bowl-unseen-colors": unseen}))
    append_row(path, _row(recipe="plain"))
    render_files(path, tmp_path / "RESULTS.md", None)
    latest = (tmp_path / "RESULTS.md").read_text().split("### Every run")[0]
    clip_line = next(line for line in latest.splitlines() if "`clip`" in line)
    assert "**0.62** (31/50, CI 0.48–0.74)<br>put-block-in-bowl-unseen-colors: 0.18 (9/50, CI 0.10–0.31)" in clip_line
    assert "≥ 0.50 ✓" in clip_line
    plain_line = next(line for line in latest.splitlines() if "`plain`" in line)
    assert "<br>" not in plain_line
    kitchen = render_table([_row(recipe="fist", subtasks_completed=1.02)])
    assert "<br>sub-tasks completed: 1.02 of 4" in kitchen


def test_a_retest_row_names_its_sampler_and_actions_per_query():
    row = _row(recipe="diff", retest_of="/runs/diffusion_insertion_state/20261205-233546", sampler="ddim-10",
               action_steps=4)
    cell = next(line for line in render_table([row]).splitlines() if "`diff`" in line)
    assert "re-test of `20261205-233546`, sampler ddim-10, 4 actions per query" in cell


def test_a_retest_row_shows_the_overrides_of_the_run_it_retests():
    run = _row(recipe="img", run_dir="/runs/img/20261207-080648", overrides=["--model.init_args.lr=1e-3"])
    retest = _row(recipe="img", retest_of="/runs/img/20261207-080648", run_dir="/runs/img/20261207-080648")
    lines = [line for line in render_table([run, retest]).splitlines() if "`img`" in line and "re-test" in line]
    assert lines and all("`--model.init_args.lr=1e-3` re-test of `20261207-080648`" in line for line in lines)
    alone = next(line for line in render_table([retest]).splitlines() if "`img`" in line)
    assert "lr=1e-3" not in alone and "re-test of `20261207-080648`" in alone


def test_a_residual_row_shows_its_base_alone_on_the_same_seeds():
    row = _row(recipe="res", success_rate=0.72, successes=36, ci_low=0.583, ci_high=0.825, target=None,
               base_success_rate=0.62, base_successes=31, base_ci_low=0.4815, base_ci_high=0.7414)
    line = next(line for line in render_table([row]).splitlines() if "`res`" in line)
    assert "**0.72** (36/50, CI 0.58–0.82)<br>base alone: 0.62 (31/50, CI 0.48–0.74)" in line


def _orphan(*marker: str) -> int:
    """A sleeping python process with ``marker`` in its command line, re-parented away from this test (its
    parent exits at once), as another user's run would be; returns its pid."""
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
            f"*{list(marker)!r}], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(p.pid)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_runs_sharing_the_machine_are_seen_but_a_runs_own_children_are_not():
    other = _orphan("-m lit_imit", "fit", "--config", "someone-else.yaml")
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m lit_imit", "own-child.yaml"])
    try:
        with BusyWatch(period=0.05) as watch:
            seen = other_busy_runs()
        assert any("someone-else.yaml" in cmd for cmd in seen)
        assert not any("own-child.yaml" in cmd for cmd in seen)
        assert any("someone-else.yaml" in cmd for cmd in watch.seen)
    finally:
        own.kill()
        subprocess.run(["kill", str(other)], check=False)
    row = _row(recipe="shared", shared_with=sorted(seen))
    line = next(line for line in render_table([row]).splitlines() if "`shared`" in line)
    assert f"2 min (box shared with {len(seen)} other run(s))" in line
    quiet = next(line for line in render_table([_row(recipe="q", shared_with=[])]).splitlines() if "`q`" in line)
    assert "2 min |" in quiet and "shared" not in quiet


def test_render_files_replaces_only_the_readme_block(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, _row(recipe="only"))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    render_files(path, tmp_path / "RESULTS.md", readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "`only`" in text and "`only`" in (tmp_path / "RESULTS.md").read_text()


def test_malformed_results_line_names_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(_row()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"results.jsonl:2"):
        read_rows(path)


def test_recipes_list_and_seed_ranges_are_disjoint():
    assert "act_transfer_cube_state" in list_recipes() and "min" in list_recipes()
    for rec in RECIPES.values():
        assert (REPO / rec.config).exists(), rec.config
    # recording uses seeds 0.., selection 100000.., the held-out test 1000000..: disjoint for any sane count
    assert SELECTION_SEED >= 10 * 1000 and TEST_SEED >= SELECTION_SEED + 100_000


def test_shipped_recipe_configs_select_on_seeds_disjoint_from_the_test():
    import yaml

    for rec in RECIPES.values():
        settings = rollout_settings(yaml.safe_load((REPO / rec.config).read_text()))
        first = settings.get("seed", SELECTION_SEED)
        assert first + settings["n_episodes"] <= TEST_SEED, rec.name
        assert first >= 10_000, rec.name  # above any demo seed


def test_shipped_recipes_roll_out_the_task_they_are_about():
    """The test rolls out the callback's task, else the data's: a config whose data reads another task's
    episodes (play data) must name its task in the callback, or its row would score another env."""
    import yaml

    for rec in RECIPES.values():
        config = yaml.safe_load((REPO / rec.config).read_text())
        task = rollout_task(config)
        for override in rec.overrides:  # a recipe that moves its config to another task says so in both places
            if override.startswith("--trainer.callbacks.init_args.task="):
                task = override.split("=", 1)[1]
        assert task == rec.task, rec.name


@pytest.mark.slow
def test_tiny_recipe_end_to_end_writes_a_row(tmp_path, monkeypatch):
    """Demos -> fit -> held-out test through the real CLI, on a recipe shrunk to seconds."""
    tiny = Recipe(
        name="tiny_act_state", method="act", task="transfer_cube", config="configs/act/transfer_cube_state.yaml",
        obs="state", demos=2, expected_minutes=1,
        overrides=("--trainer.max_steps", "6", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches",
                   "1", "--data.init_args.generate_if_missing", "2", "--data.init_args.val_episodes", "0",
                   "--trainer.callbacks.init_args.n_episodes", "2", "--trainer.callbacks.init_args.every_n_epochs",
                   "1", "--trainer.callbacks.init_args.max_steps", "20", "--checkpoint.every_n_epochs", "1"),
    )
    results = tmp_path / "results.jsonl"
    row = run_recipe(tiny, tmp_path / "runs", results, episodes=2)
    # the chosen checkpoint is the best by validation rollouts: epoch 0 (3 steps) or epoch 1 (6 steps)
    assert row["train_steps"] in (3, 6) and row["episodes"] == 2 and row["demos"] == 2
    assert row["eval_seeds"] == f"{TEST_SEED}-{TEST_SEED + 1}"
    assert 0.0 <= row["success_rate"] <= 1.0 and row["ci_low"] <= row["success_rate"] <= row["ci_high"]
    assert read_rows(results)[-1]["recipe"] == "tiny_act_state"
    assert row["cameras"] == [] and row["state_keys"] == ["qpos", "env_state"]

    # the finished run tested again on other seeds, without training: its own row, marked as a re-test
    from lit_imit.recipes import retest_run

    monkeypatch.setitem(RECIPES, tiny.name, tiny)
    again = retest_run(row["run_dir"], results, episodes=2, test_seed=2_000_000)
    assert again["retest_of"] == row["run_dir"] and again["checkpoint"] == row["checkpoint"]
    assert again["eval_seeds"] == "2000000-2000001" and again["train_steps"] == row["train_steps"]
    assert "re-test of" in render_table(read_rows(results))
    last = retest_run(row["run_dir"], results, episodes=2, checkpoint="last")
    assert Path(last["checkpoint"]).name == "last.ckpt" and last["train_steps"] == 6
    # ACT has no sampler, no fixed actions per query, no initial noise: a row with the error for each
    for setting, flag in ((dict(sampler=("ddpm", 100)), "--sampler"), (dict(action_steps=4), "--action-steps"),
                          (dict(initial_noise="zero"), "--initial-noise")):
        with pytest.raises(ValueError, match=f"{flag} is for Diffusion"):
            retest_run(row["run_dir"], results, episodes=2, **setting)
        assert f"ACTModule has no {flag[2:].replace('-', ' ')}" in read_rows(results)[-1]["error"]


def test_reproduce_script_lists_and_renders(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--list"],
                         capture_output=True, text=True, check=True).stdout
    assert "act_transfer_cube_state" in out and "paper" in out
    results = tmp_path / "r.jsonl"
    append_row(results, _row(recipe="x"))
    subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--render", "--results", str(results),
                    "--markdown", str(tmp_path / "R.md"), "--readme", ""], check=True, capture_output=True)
    assert "`x`" in (tmp_path / "R.md").read_text()



def test_a_results_file_elsewhere_renders_beside_itself_and_leaves_the_shipped_tables_alone(tmp_path):
    """``--results /tmp/r.jsonl`` (a trial run) must not rewrite results/RESULTS.md or the README's table."""
    from lit_imit.recipes import REPO_ROOT
    from lit_imit.tools.reproduce import parse_args

    shipped = REPO_ROOT / "results" / "RESULTS.md", REPO_ROOT / "README.md"
    before = [p.read_bytes() for p in shipped]
    results = tmp_path / "r.jsonl"
    append_row(results, _row(recipe="trial"))
    args = parse_args(["--render", "--results", str(results)])
    assert (args.markdown, args.readme) == (str(tmp_path / "RESULTS.md"), "")
    subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--render", "--results", str(results)],
                   check=True, capture_output=True)
    assert "`trial`" in (tmp_path / "RESULTS.md").read_text()
    assert [p.read_bytes() for p in shipped] == before
    default = parse_args(["--render"])
    assert (default.markdown, default.readme) == (str(REPO_ROOT / "results" / "RESULTS.md"),
                                                  str(REPO_ROOT / "README.md"))

@pytest.mark.slow
def test_paper_preset_runs_on_cpu_with_a_tiny_step_count(tmp_path):
    """The GPU recipe's command path (full-size ACT, shadows, its overrides) on a CPU: 2 steps, 1 demo."""
    from dataclasses import replace

    from lit_imit.recipes import recipe

    paper = recipe("act_transfer_cube_paper")
    assert paper.preset == "paper" and "bf16-mixed" in paper.gpu_overrides
    tiny = replace(paper, name="paper_tiny", overrides=paper.overrides + (
        "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--data.init_args.generate_if_missing", "1", "--data.init_args.val_episodes", "0",
        "--data.init_args.image_size", "[96, 128]", "--data.init_args.num_workers", "0",
        "--trainer.callbacks.init_args.env_kwargs", "{cameras: [top], image_size: [96, 128], fast_render: false}",
        "--trainer.callbacks.init_args.n_episodes", "1", "--trainer.callbacks.init_args.n_envs", "1",
        "--trainer.callbacks.init_args.every_n_epochs", "1", "--trainer.callbacks.init_args.max_steps", "3",
        "--checkpoint.every_n_epochs", "1",
    ))
    row = run_recipe(tiny, tmp_path / "runs", tmp_path / "r.jsonl", episodes=1)
    assert row["train_steps"] == 2 and row["preset"] == "paper" and row["episodes"] == 1
    assert row["overrides"][row["overrides"].index("--model.init_args.pretrained_backbone") + 1] == "null"
    assert row["overrides"][row["overrides"].index("--model.init_args.backbone_norm") + 1] == "group"


def test_a_recipe_stopped_by_sigterm_gets_its_row_and_stops_its_fit(tmp_path):
    """``kill`` of reproduce.py mid-fit: the fit child is stopped (not orphaned) and the run's row says so."""
    import os
    import signal
    import time

    driver = tmp_path / "driver.py"
    driver.write_text(f"""
import sys
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "scripts")!r}]
from lit_imit.recipes import Recipe, register
register(Recipe(name="endless", method="act", task="transfer_cube", config="configs/act/transfer_cube_state.yaml",
                obs="state", demos=1, expected_minutes=1,
                overrides=("--trainer.max_steps", "1000000", "--data.init_args.generate_if_missing", "1",
                           "--data.init_args.val_episodes", "0", "--trainer.callbacks.init_args.every_n_epochs", "0")))
import reproduce
sys.exit(reproduce.main(["endless", "--work-dir", {str(tmp_path / "runs")!r}, "--results",
                         {str(tmp_path / "r.jsonl")!r}, "--markdown", {str(tmp_path / "R.md")!r}, "--readme", ""]))
""")
    proc = subprocess.Popen([sys.executable, str(driver)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # until the fit has trained a little (its log shows the first epoch)
        logs = list((tmp_path / "runs").rglob("fit.log"))
        if logs and "Epoch 0" in logs[0].read_text(errors="replace"):
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the fit never started")
    fit_pids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert fit_pids
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    row = read_rows(tmp_path / "r.jsonl")[-1]
    assert row["recipe"] == "endless" and row["success_rate"] is None and "SIGTERM" in row["error"]
    for pid in fit_pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


#: a recipe of 150 two-step epochs, a rollout every 5 (one 10-step episode): long enough to be stopped mid-fit
RESUMABLE = Recipe(
    name="resumable", method="act", task="transfer_cube", config="configs/act/transfer_cube_state.yaml",
    obs="state", demos=1, expected_minutes=1,
    overrides=("--trainer.max_steps", "300", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
               "0", "--data.init_args.generate_if_missing", "1", "--data.init_args.val_episodes", "0",
               "--trainer.callbacks.init_args.n_episodes", "1", "--trainer.callbacks.init_args.n_envs", "1",
               "--trainer.callbacks.init_args.every_n_epochs", "5", "--trainer.callbacks.init_args.max_steps", "10",
               "--checkpoint.every_n_epochs", "5"),
)


def test_a_stopped_run_resumes_from_its_last_epoch_and_gets_a_row_of_the_whole_run(tmp_path, monkeypatch):
    """``kill`` mid-fit, then ``--resume RUN_DIR``: the fit goes on from last.ckpt in the same checkpoint
    directory (the best so far stays in the race), its log is appended to, and the row adds up both parts."""
    import os
    import signal
    import time

    import yaml

    from lit_imit.checkpoints import load_checkpoint
    from lit_imit.recipes import resume_run

    results = tmp_path / "r.jsonl"
    driver = tmp_path / "driver.py"
    driver.write_text(f"""
import sys
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "scripts")!r}]
from lit_imit.recipes import Recipe, register
register(Recipe(**{dict(RESUMABLE.__dict__)!r}))
import reproduce
sys.exit(reproduce.main(["resumable", "--work-dir", {str(tmp_path / "runs")!r}, "--results", {str(results)!r},
                         "--markdown", {str(tmp_path / "R.md")!r}, "--readme", ""]))
""")
    proc = subprocess.Popen([sys.executable, str(driver)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # until the fit has written a best checkpoint (epoch 4's rollout) and gone on
        ckpts = list((tmp_path / "runs").rglob("version_0/checkpoints/epoch*.ckpt"))
        if ckpts and load_checkpoint(ckpts[0].parent / "last.ckpt").get("global_step", 0) > 10:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the fit never wrote a best checkpoint")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    stopped = read_rows(results)[-1]
    run_dir = Path(stopped["run_dir"])
    assert "SIGTERM" in stopped["error"]
    first_ckpts = run_dir / "lightning_logs" / "version_0" / "checkpoints"
    stopped_at = load_checkpoint(first_ckpts / "last.ckpt")["global_step"]
    assert 10 < stopped_at < 300

    monkeypatch.setitem(RECIPES, RESUMABLE.name, RESUMABLE)
    row = resume_run(run_dir, results, command="resume")
    assert row["resumed_at_step"] == stopped_at and row["first_command"] == stopped["command"]
    assert load_checkpoint(first_ckpts / "last.ckpt")["global_step"] == 300  # the same directory, to the end
    resumed_config = yaml.safe_load((run_dir / "lightning_logs" / "version_1" / "config.yaml").read_text())
    assert (run_dir / resumed_config["checkpoint"]["dirpath"]).resolve() == first_ckpts.resolve()
    assert sorted(p.name for p in first_ckpts.glob("last*")) == ["last.ckpt"]  # restored, not a last-v1.ckpt beside it
    assert Path(row["checkpoint"]).parent == first_ckpts and row["successes"] is not None
    assert row["parts_wall_minutes"][0] == stopped["wall_minutes"]
    assert row["wall_minutes"] == pytest.approx(sum(row["parts_wall_minutes"]), abs=0.011)
    log_text = (run_dir / "fit.log").read_text(errors="replace")
    assert "==== resumed from" in log_text and log_text.index("Epoch 0") < log_text.index("==== resumed from")
    assert read_rows(results)[-1]["command"] == "resume"
    assert f"resumed at step {stopped_at}" in render_table(read_rows(results))
    with pytest.raises(ValueError, match="finished and was tested"):
        resume_run(run_dir, results)


def test_resume_refuses_runs_it_cannot_continue_as_they_were(tmp_path, monkeypatch):
    from lit_imit.recipes import resume_run
    from lit_imit.results import git_commit

    monkeypatch.setitem(RECIPES, RESUMABLE.name, RESUMABLE)
    results = tmp_path / "r.jsonl"
    run_dir = tmp_path / "runs" / "resumable" / "20260101-000000"
    run_dir.mkdir(parents=True)
    with pytest.raises(ValueError, match="has no row of"):
        resume_run(run_dir, results)
    append_row(results, _row(recipe="resumable", run_dir=str(run_dir), success_rate=None, successes=None,
                             commit="0123456789", error="StopSignal: stopped by SIGTERM"))
    with pytest.raises(ValueError, match="started at commit 0123456789.*git worktree add DIR 0123456789"):
        resume_run(run_dir, results)
    append_row(results, _row(recipe="resumable", run_dir=str(run_dir), success_rate=None, successes=None,
                             commit=git_commit(REPO), error="StopSignal: stopped by SIGTERM"))
    results.write_text(results.read_text().splitlines()[-1] + "\n")  # the row at this commit only
    with pytest.raises(ValueError, match="stopped before its final fit began"):
        resume_run(run_dir, results)
    interactive = tmp_path / "runs" / "askdagger_transfer_cube_state" / "x"
    interactive.mkdir(parents=True)
    with pytest.raises(ValueError, match="an interactive run is not resumed"):
        resume_run(interactive, results)
    import fcntl

    with open(run_dir / ".resume.lock", "w") as held:  # another resume of this run holds the lock (flock is per open)
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="is being resumed by another process"):
            resume_run(run_dir, results)


def test_a_killed_driver_takes_its_child_along(tmp_path):
    """``kill -9`` of the process running ``run_child`` leaves no orphan: the kernel sends the child SIGTERM."""
    import os
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    driver = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
              f"from lit_imit.recipes import run_child; run_child([sys.executable, '-c', {child!r}], Path('.'), None)")
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=tmp_path)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    child_pid = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while Path(f"/proc/{child_pid}").exists() and time.time() < deadline:
        state = Path(f"/proc/{child_pid}/stat").read_text().split()[2]
        if state == "Z":
            break
        time.sleep(0.2)
    assert not Path(f"/proc/{child_pid}").exists() or Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z"


def test_commit_is_dirty_for_code_changes_but_not_for_recorded_results(tmp_path):
    from lit_imit.results import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    for name in ("README.md", "results/results.jsonl", "code.py"):
        (tmp_path / name).write_text("x\n")
    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "init", "--allow-empty")
    git("add", "-A")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "files")
    (tmp_path / "README.md").write_text("table\n")
    (tmp_path / "results" / "results.jsonl").write_text("row\n")
    assert not git_commit(tmp_path).endswith("-dirty")
    (tmp_path / "code.py").write_text("changed\n")
    assert git_commit(tmp_path).endswith("-dirty")


def test_the_machine_names_its_vector_units():
    """Two 'AMD EPYC, 2 cores' boxes, one AVX2 and one AVX-512 with bf16, differ by up to 2x per step."""
    from lit_imit.results import vector_units

    assert vector_units({"fma", "avx2"}) == "AVX2"
    assert vector_units({"fma", "avx2", "avx512f", "avx512_bf16"}) == "AVX-512, BF16"
    assert vector_units({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}) == "AMX"
    assert vector_units(set()) == ""


def _git_commit(repo, files: dict[str, str]) -> str:
    """Write ``files`` (name -> text) into the git repository ``repo``, commit them, return the short hash."""
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run(["git", "-C", str(repo), "add", *files], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
                   check=True, capture_output=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=10", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_run_of_settings_its_config_has_since_changed_is_not_the_recipe_as_shipped(tmp_path):
    """With git history, a row is judged by its config at its commit plus its overrides: a later change to the
    config (here the step count) retires it from the headline, an override that the config later adopted does
    not, and where the data lives is not a setting."""
    def commit(text: str) -> str:
        return _git_commit(tmp_path, {"cfg.yaml": text})

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    data = "data:\n  init_args: {data_dir: data/a, generate_if_missing: 50}\n"
    first = commit("trainer:\n  max_steps: 6000\n" + data)
    second = commit("trainer:\n  max_steps: 18000\n" + data)
    rows = [
        _row(recipe="a", config="cfg.yaml", run_dir="/r/1", commit=first, extra_overrides=[]),
        _row(recipe="a", config="cfg.yaml", run_dir="/r/2", commit=first + "-dirty",
             extra_overrides=["--trainer.max_steps=18000", "--data.init_args.data_dir=/elsewhere"]),
        _row(recipe="a", config="cfg.yaml", run_dir="/r/3", commit=second, extra_overrides=["--trainer.max_steps=9"]),
    ]
    assert headline_rows(rows, tmp_path)[0]["run_dir"] == "/r/2"
    rows.append(_row(recipe="a", config="cfg.yaml", run_dir="/r/4", commit=second, extra_overrides=[]))
    assert headline_rows(rows, tmp_path)[0]["run_dir"] == "/r/4"
    other_data = _row(recipe="a", config="cfg.yaml", run_dir="/r/5", commit=second, demos=200,
                      extra_overrides=["--data.init_args.data_dir=/elsewhere"])  # 200 demos where it records 50
    assert headline_rows([*rows, other_data], tmp_path)[0]["run_dir"] == "/r/4"
    commit("trainer:\n  max_steps: 24000\n" + data)  # nothing run with today's settings: the latest run stands in
    assert headline_rows(rows, tmp_path)[0]["run_dir"] == "/r/4"
    assert [r["run_dir"] for r in headline_rows(rows[:3], tmp_path)] == ["/r/3"]


def test_a_run_whose_earlier_stage_config_has_since_changed_is_not_the_recipe_as_shipped(tmp_path):
    """A recipe in stages (FIST's four configs): a row whose final config is today's but whose pre-training stage
    then held other settings is not the headline once a run of today's stages exists; without the stages given,
    or without git, only the final config is compared."""
    def commit(stage_epochs: int) -> str:
        return _git_commit(tmp_path, {"stage.yaml": f"trainer:\n  max_epochs: {stage_epochs}\n",
                                      "final.yaml": "trainer:\n  max_epochs: 50\n"})

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shipped = commit(50)
    trial = commit(150)
    commit(50)  # the trial reverted: today's stage is the shipped one again
    rows = [_row(recipe="f", config="final.yaml", run_dir="/r/1", commit=shipped, extra_overrides=[]),
            _row(recipe="f", config="final.yaml", run_dir="/r/2", commit=trial, extra_overrides=[])]
    stages = {"f": ("stage.yaml",)}
    assert headline_rows(rows, tmp_path, stages)[0]["run_dir"] == "/r/1"
    assert headline_rows(rows, tmp_path)[0]["run_dir"] == "/r/2"  # the final config alone cannot tell them apart
    retest = _row(recipe="f", config="final.yaml", run_dir="/r/2", retest_of="/r/2", commit=shipped)
    assert headline_rows([*rows, retest], tmp_path, stages)[0]["run_dir"] == "/r/1"  # judged by the run it re-tests


def test_a_config_mixing_play_with_demonstrations_counts_its_demonstrations():
    play_only = {"data": {"init_args": {"data_dir": "play", "generate_if_missing": 200}}}
    mixed = {"data": {"init_args": {"data_dir": "play", "generate_if_missing": 200, "demo_dir": "demos",
                                    "demo_generate_if_missing": 10}}}
    assert demo_keys(play_only) == ("data_dir", "generate_if_missing")
    assert demo_keys(mixed) == ("demo_dir", "demo_generate_if_missing")
    row = _row(recipe="a", config="cfg.yaml", run_dir="/r/1", commit="abc", demos=10, extra_overrides=[])
    assert changes_from_recipe(row, {}, mixed, mixed) == []
    assert changes_from_recipe(row, {}, play_only, play_only) == ["10 demos where the config records 200"]


def test_an_override_in_exponent_form_matches_the_number_in_the_config():
    # PyYAML reads "1e-3" as a string; the CLI (and a config's "1.0e-3") as the number
    config = {"model": {"init_args": {"lr": 1.0e-3}}, "trainer": {"max_steps": 24000}}
    then = {"model": {"init_args": {"lr": 5.0e-4}}, "trainer": {"max_steps": 12000}}
    row = _row(recipe="a", config="cfg.yaml", run_dir="/r/1", commit="abc",
               extra_overrides=["--model.init_args.lr=1e-3", "--trainer.max_steps=24000"])
    assert changes_from_recipe(row, {}, config, then) == []
    assert changes_from_recipe(row, {}, config) == []
    slower = dict(row, extra_overrides=["--model.init_args.lr=1e-4", "--trainer.max_steps=24000"])
    assert changes_from_recipe(slower, {}, config, then) == ["the config has changed since this run"]


def test_a_retest_of_a_run_of_todays_settings_is_a_run_as_shipped():
    config = {"model": {"init_args": {"lr": 1.0e-3}}}
    then = {"model": {"init_args": {"lr": 5.0e-4}}}
    run = _row(recipe="a", config="cfg.yaml", run_dir="/r/1", commit="abc",
               extra_overrides=["--model.init_args.lr=1e-3"])
    retest = _row(recipe="a", config="cfg.yaml", run_dir="/r/1", commit="abc", retest_of="/r/1", overrides=None)
    assert changes_from_recipe(retest, {"/r/1": run}, config, then) == []
    older = dict(run, extra_overrides=[])  # a run of the config as it was: lr 5e-4
    assert changes_from_recipe(retest, {"/r/1": older}, config, then) == ["the config has changed since this run"]
