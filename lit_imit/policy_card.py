"""What a policy directory says about its weights: the training record and the README card.

A policy directory (:func:`lit_imit.policies.save_policy`) travels without the run that made it, so it carries
where its weights came from: the steps trained, the episodes trained on (directory, task, ids) and the
checkpoint, in ``config.json`` under ``training``, plus the held-out result of that checkpoint when
``results/results.jsonl`` has one. ``README.md`` renders the same for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from lit_imit.results import results_table


def training_from_checkpoint(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The training record of a Lightning checkpoint: its step and epoch, and the episodes of its DataModule
    (their directory from the DataModule's state, or for older checkpoints from the run's ``config.yaml``)."""
    record: dict[str, Any] = {"checkpoint": str(Path(path).resolve()), "global_step": int(checkpoint.get("global_step", 0)),
                              "epoch": checkpoint.get("epoch")}
    state = next((v for v in checkpoint.values() if isinstance(v, Mapping) and "train_ids" in v), None)
    if state is not None:
        record.update(_episodes(state))
    if record.get("data_dir") is None:
        record.update(_data_from_run_config(Path(path)))
    return record


def training_from_module(module: Any) -> dict[str, Any]:
    """The training record of a live module: its trainer's step and DataModule when attached, else the step its
    weights were loaded at."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return {"global_step": getattr(module, "trained_steps", None)}
    record: dict[str, Any] = {"global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "train_ids"):
        record.update(_episodes(datamodule.state_dict()))
    return record


def _episodes(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"data_dir": state.get("data_dir"), "task": state.get("task"),
            "train_ids": [int(i) for i in state.get("train_ids", [])],
            "val_ids": [int(i) for i in state.get("val_ids", [])]}


def _data_from_run_config(path: Path) -> dict[str, Any]:
    """``data_dir`` and ``task`` from the ``config.yaml`` LightningCLI saved next to ``checkpoints/``."""
    config_path = path.parent.parent / "config.yaml"
    if not config_path.is_file():
        return {}
    import yaml

    data = ((yaml.safe_load(config_path.read_text()) or {}).get("data") or {}).get("init_args") or {}
    return {"data_dir": data.get("data_dir"), "task": data.get("task"), "run_config": str(config_path.resolve())}


def id_ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    ids = sorted(int(i) for i in ids)
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def render_card(config: Mapping[str, Any], name: str) -> str:
    """README.md of a policy directory called ``name``, from its ``config.json``."""
    init_args = config.get("init_args") or {}
    training = config.get("training") or {}
    lines = [
        f"# {config['policy_class'].rpartition('.')[2]} policy", "",
        "A `lit_imit` policy directory: `config.json` (the policy class and its init args), "
        "`model.safetensors` (the weights, normalisation statistics included; no optimiser state).", "",
        "```python",
        "from lit_imit.policies import load_policy",
        "",
        f'policy = load_policy("{name}")  # in eval mode; policy.reset(), then policy.select_action(batched_obs)',
        "```", "",
        f"`python scripts/deploy.py --ckpt {name} ...` and `python -m lit_imit test --config CONFIG --ckpt_path {name}` "
        "take it where they take a checkpoint.", "",
        "## Policy", "",
        f"- class: `{config['policy_class']}`",
        f"- cameras: {init_args.get('cameras', '—')}; state keys: {init_args.get('state_keys', '—')}",
        "", "## Training data", "",
        *_training_lines(training),
        "", "## Held-out result", "",
        *_result_lines(config.get("results")),
    ]
    return "\n".join(lines) + "\n"


def _training_lines(training: Mapping[str, Any]) -> list[str]:
    lines = []
    if training.get("data_dir") or training.get("task"):
        lines.append(f"- episodes: `{training.get('data_dir')}` (task `{training.get('task')}`)")
    elif "train_ids" not in training:
        lines.append("- episodes: not recorded (the weights were saved without their DataModule)")
    if "train_ids" in training:
        train, val = training["train_ids"], training.get("val_ids", [])
        lines.append(f"- {len(train)} training episodes (ids {id_ranges(train) or 'none'}), {len(val)} validation "
                     f"episodes (ids {id_ranges(val) or 'none'})")
    if training.get("global_step") is not None:
        epoch = f", epoch {training['epoch']}" if training.get("epoch") is not None else ""
        lines.append(f"- trained for {training['global_step']} optimiser steps{epoch}")
    if training.get("checkpoint"):
        lines.append(f"- exported from `{training['checkpoint']}`")
    return lines


def _result_lines(row: Mapping[str, Any] | None) -> list[str]:
    if not row:
        return ["None recorded for these weights (`scripts/export_policy.py --results` looks the checkpoint up in "
                "`results/results.jsonl`)."]
    return [f"Rolled out on seeds {row.get('eval_seeds')} by `{row.get('command')}` ({row.get('date', 'undated')}):",
            "", results_table([row]).rstrip("\n")]
