"""scripts/plot_interactive.py on small generated TensorBoard logs (two runs, one of them resumed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT


def write_run(logdir, rounds: int, query_decay: float, start: int = 0, with_rollouts: bool = True,
              mode: str = "sensitivity") -> None:
    """Scalars as InteractiveAggregation logs them: one point per round at that epoch's global step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    for r in range(start, start + rounds):
        step = 10 * (r + 1)
        annotations, validations = 3 * (r + 1), 2 * r
        values = {
            "interactive/n_demos": annotations + validations, "interactive/n_annotations": annotations,
            "interactive/n_validations": validations, "interactive/n_relabels": 0.0,
            "interactive/n_episodes": r + 1, "interactive/query_rate": float(np.exp(-query_decay * r)),
            "interactive/system_success": 0.5 + 0.05 * r, "interactive/novice_success": 0.1 * r,
            "interactive/episode_success": 0.2, "interactive/sensitivity": 0.88, "interactive/target": 0.9,
            f"interactive/target_{mode}": 0.9,
            "interactive/specificity": float("nan") if r == 0 else 0.4,
        }
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=step)
        if with_rollouts and r % 2 == 1:
            writer.add_scalar("rollout/success_rate", 0.1 * r, global_step=step)
        writer.add_scalar("train/loss", 1.0 / (r + 1), global_step=step - 5)
    writer.close()


def test_plots_are_written_for_several_runs(tmp_path):
    write_run(tmp_path / "askdagger" / "version_0", 3, 0.5)
    write_run(tmp_path / "askdagger" / "version_1", 3, 0.5, start=3)  # resumed into a new version
    write_run(tmp_path / "active_dagger", 5, 0.1, with_rollouts=False, mode="success")
    out = subprocess.run([sys.executable, "scripts/plot_interactive.py", str(tmp_path / "askdagger"),
                          str(tmp_path / "active_dagger"), "--out", str(tmp_path / "plots")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in ("success_vs_demos.png", "gating.png", "demo_types.png"):
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 10_000 and str(path) in out.stdout
        from PIL import Image

        assert min(Image.open(path).size) > 300


def test_series_are_merged_across_files_and_aligned_to_counts(tmp_path):
    from lit_imit.plotting import against, load_scalars

    write_run(tmp_path / "run" / "version_0", 3, 0.5)
    write_run(tmp_path / "run" / "version_1", 3, 0.5, start=3)
    scalars = load_scalars(tmp_path / "run")
    steps, demos = scalars["interactive/n_demos"]
    assert steps.tolist() == [10, 20, 30, 40, 50, 60]
    assert demos.tolist() == [3 * (r + 1) + 2 * r for r in range(6)]
    xs, ys = against(scalars["rollout/success_rate"], scalars["interactive/n_demos"])
    assert xs.tolist() == [demos[1], demos[3], demos[5]] and np.allclose(ys, [0.1, 0.3, 0.5])
    # a point logged between two counts takes the count logged before it; before the first count: dropped
    xs, _ = against((np.array([5, 25]), np.array([1.0, 2.0])), scalars["interactive/n_demos"])
    assert xs.tolist() == [demos[1]]


def test_a_log_without_interactive_scalars_is_a_clear_error(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "bc"))
    writer.add_scalar("train/loss", 1.0, 0)
    writer.close()
    from scripts.plot_interactive import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "bc"), "--out", str(tmp_path / "plots")])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "plots")])
