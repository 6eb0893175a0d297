"""``python -m lit_imit test`` is rollout-first: success rate with its Wilson interval as ``test/`` metrics at the
tested weights' step, one log line, the held-out loss only on request; a checkpoint or a policy directory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lit_imit.cli import main
from tests.test_cli import STATE_ACT, _write, config, synthetic_store

ROLLOUT = {"class_path": "callbacks.rollout.RolloutEvaluation",
           "init_args": {"task": "transfer_cube", "n_episodes": 2, "n_envs": 2, "every_n_epochs": 0, "max_steps": 5,
                         "video": False}}
TEST_METRICS = {"test/success_rate", "test/success_ci_low", "test/success_ci_high", "test/return"}


def _cfg(root: Path, data_dir: str, test_loss: bool = False, callbacks=None) -> dict:
    cfg = config(root, {"data_dir": data_dir, "cameras": [], "test_loss": test_loss}, max_epochs=1,
                 limit_train_batches=2, limit_val_batches=0, callbacks=callbacks or [])
    cfg["model"] = STATE_ACT
    return cfg


def _scalar_steps(log_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [event.step for event in acc.Scalars(tag)]
    return steps


def _test(tmp_path: Path, name: str, cfg: dict, ckpt_path: Path, caplog) -> tuple[dict, list[str], Path]:
    """Run ``test`` in-process; returns its metrics, its log lines about success and its log dir."""
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path / name), version=0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="callbacks.rollout"):
        cli = main(["test", "--config", _write(tmp_path / f"{name}.yaml", cfg), "--ckpt_path", str(ckpt_path)])
    lines = [r.getMessage() for r in caplog.records if "success rate" in r.getMessage()]
    return dict(cli.trainer.callback_metrics), lines, tmp_path / name / "logs" / "version_0"


def test_test_rolls_out_a_checkpoint_or_its_policy_directory_at_the_trained_step(tmp_path, caplog):
    from lit_imit.policies import export_policy

    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))
    main({"fit": _cfg(tmp_path / "fit", data_dir)})
    ckpt = tmp_path / "fit" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    policy_dir = export_policy(ckpt, tmp_path / "policy")

    results = {}
    for name, path in (("ckpt", ckpt), ("dir", policy_dir)):
        metrics, lines, log_dir = _test(tmp_path, name, _cfg(tmp_path, data_dir, callbacks=[ROLLOUT]), path, caplog)
        assert TEST_METRICS <= metrics.keys() and not any("loss" in key for key in metrics), metrics.keys()
        assert metrics["test/success_ci_low"] <= metrics["test/success_rate"] <= metrics["test/success_ci_high"]
        assert len(lines) == 1 and lines[0].startswith("weights of step 2: test success rate") and "95% CI" in lines[0]
        assert _scalar_steps(log_dir, "test/success_rate") == [2]  # the checkpoint's global step, not 0
        results[name] = {k: float(v) for k, v in metrics.items()}
    assert results["ckpt"] == results["dir"]

    metrics, _, log_dir = _test(tmp_path, "loss", _cfg(tmp_path, data_dir, test_loss=True, callbacks=[ROLLOUT]),
                                ckpt, caplog)
    assert {"test/loss", "test/l1"} | TEST_METRICS <= metrics.keys()
    assert _scalar_steps(log_dir, "test/loss") == [2]


def test_test_without_rollouts_or_loss_is_refused(tmp_path):
    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))
    with pytest.raises(ValueError, match="test has nothing to measure.*RolloutEvaluation.*test_loss"):
        main({"test": _cfg(tmp_path, data_dir)})


def test_predict_is_not_offered(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "{fit,validate,test}" in usage and "predict" not in usage
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"])
    assert exit_info.value.code != 0
