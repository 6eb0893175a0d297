"""``python -m lit_imit fit|validate|test --config ...``: one LightningCLI for every method.

The defaults encode the DDP and exact-resume rules of docs/architecture.md: an explicit integer seed
(``True`` would mean 0), a TensorBoard logger, a checkpoint callback (``callbacks.checkpoint.EpochEndCheckpoint``)
that saves at the end of the training epoch (after the rollout and aggregation callbacks have run),
``last.ckpt`` after every epoch and the best by its monitor every ``every_n_epochs``, dataloaders rebuilt every epoch
(interactive datasets grow), our own rank-sharded sampler instead of Lightning's wrapper, and the RNG
states in every checkpoint so a resumed run continues exactly.

``test`` is rollout-first: ``RolloutEvaluation`` logs ``test/success_rate`` with its Wilson interval at the
tested weights' training step and says it once in the log (Lightning's metrics table is off unless
``--verbose true``); the held-out loss runs only with ``data.init_args.test_loss: true``. ``--ckpt_path`` takes
a checkpoint file or a policy directory (``lit_imit.policies.save_policy``); a checkpoint file's model
hyper-parameters replace the config's (Lightning's rule: the weights need their architecture), and the CLI
names every setting dropped that way. Lightning's ``predict`` is not
offered: a policy acts in an env (``RolloutEvaluation``, ``scripts/deploy.py``), not on a dataset.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback

from callbacks.checkpoint import EpochEndCheckpoint
from callbacks.rng import RestoreRNG
from callbacks.rollout import RolloutEvaluation
from lit_imit.allocator import keep_freed_memory
from lit_imit.modules.base import PolicyModule
from lit_imit.policies import load_policy
from lit_imit.tensorboard import flatten_config, settings_that_matter, write_hparams

#: loggers of this project whose INFO lines (rollout results, recording progress) the CLI shows
PACKAGE_LOGGERS = ("lit_imit", "callbacks")

DEFAULT_SEED = 1000
log = logging.getLogger(__name__)


#: modules imported before parsing so that configs may use short class names (``class_path: ACTModule``)
COMPONENTS = (
    "lit_imit.modules.base",
    "lit_imit.data.datamodule",
    "callbacks.rng",
    "callbacks.rollout",
)
OPTIONAL_COMPONENTS = (
    "lit_imit.modules.bc",
    "lit_imit.modules.act",
    "lit_imit.modules.diffusion",
    "lit_imit.modules.cliport",
    "lit_imit.modules.skill_prior",
    "lit_imit.modules.residual_ppo",
    "lit_imit.modules.skill_sac",
    "lit_imit.modules.skild_rl",
    "lit_imit.modules.vinn",
    "lit_imit.data.cliport",
    "lit_imit.data.skills",
    "lit_imit.data.rollouts",
    "callbacks.ema",
    "callbacks.residual",
    "callbacks.interactive",
)


def import_components() -> None:
    """Import every method, DataModule and callback so their short names resolve in configs."""
    for name in COMPONENTS:
        importlib.import_module(name)
    for name in OPTIONAL_COMPONENTS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


#: what ``python -m lit_imit --help`` says first
DESCRIPTION = ("lit_imit: robot imitation learning with PyTorch Lightning. fit trains a policy from a config "
               "(configs/...yaml: ACT, Diffusion Policy, VINN, CLIPort, skill priors, residual RL, interactive "
               "DAgger/ASkDAgger), validate scores it, test rolls it out in simulation (a checkpoint or a policy "
               "directory).")


class LitImitCLI(LightningCLI):
    """LightningCLI with the project's defaults, a forced, configurable ``checkpoint`` group and a rollout-first
    ``test`` (see the module docstring)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate, test: Lightning's ``predict`` runs ``predict_step`` over a dataset, which a policy has
        no use for (it acts in an env: ``test`` rolls it out, ``scripts/deploy.py`` runs it on the twin or arm)."""
        commands = dict(LightningCLI.subcommands())
        commands.pop("predict")
        return commands

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:  # the rollout line in the log says the result; Lightning's table only with --verbose
            self.parser.set_defaults({"test.verbose": False})

    def test(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **kwargs: Any) -> Any:
        """``Trainer.test`` of a checkpoint file or a policy directory (which replaces the config's model, as a
        checkpoint's hyper-parameters do); refused when it would measure nothing."""
        if ckpt_path is not None and Path(ckpt_path).is_dir():
            model = self.model = load_policy(ckpt_path)
            ckpt_path = None
        require_test_measure(self.trainer, datamodule)
        return self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the config's model with the checkpoint's hyper-parameters (the weights need the
        architecture they were trained with). It does so silently, so a ``--model.init_args.x`` given with
        ``--ckpt_path`` would be dropped without a word: say which settings the checkpoint overrode."""
        before = model_settings(self.config)
        super()._parse_ckpt_path()
        changed = changed_settings(before, model_settings(self.config))
        if changed:
            log.warning(
                "--ckpt_path: the checkpoint's model hyper-parameters replace the config's, so these settings "
                "are not used: %s. To act differently with trained weights, export a policy directory "
                "(lit-imit-export-policy CKPT OUT), edit its config.json and pass --ckpt_path OUT to test",
                "; ".join(f"{key}={given!r} (checkpoint: {kept!r})" for key, given, kept in changed))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EpochEndCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_on_train_epoch_end": True,
            "checkpoint.filename": "epoch{epoch:04d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_argument(
            "--torch_threads", type=Optional[int], default=None,
            help="intra-op CPU threads of torch in this process (each DDP rank); default: torch's choice (all "
                 "cores). 1 is faster for small networks on a 2-core machine: ACT from state steps in 0.11 s "
                 "with 1 thread, 0.13 s with 2 (small matmuls do not pay for the threading)",
        )
        parser.add_argument(
            "--keep_freed_memory", type=bool, default=True,
            help="keep freed memory in the process (glibc mallopt: no mmap for large blocks, no heap trimming) so "
                 "each training step reuses the last one's pages instead of faulting in fresh ones from the "
                 "kernel (lit_imit.allocator: ~100k page faults per ACT step at LeRobot's shape without it once warm, "
                 "~0 with it); the process then keeps its peak heap until it exits. false leaves glibc's defaults",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        threads = config.get("torch_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        if config.get("keep_freed_memory"):
            keep_freed_memory()
        checkpoint = config.get("checkpoint")
        if checkpoint is not None and not checkpoint.get("save_on_train_epoch_end"):
            raise ValueError(
                "checkpoint.save_on_train_epoch_end must stay true: otherwise checkpoints can be written before "
                "the rollout/aggregation callbacks run and a resumed run would lose a round"
            )
        if checkpoint is not None and checkpoint.get("save_last") is not True:
            raise ValueError(
                f"checkpoint.save_last must stay true (got {checkpoint.get('save_last')!r}): last.ckpt, written after "
                "every epoch, is what a killed run resumes from ('link' would point at a stale best checkpoint)"
            )
        if checkpoint is not None and str(checkpoint.get("filename") or "").startswith("last"):
            raise ValueError(
                f"checkpoint.filename {checkpoint.get('filename')!r} starts with 'last': best checkpoints must not be "
                "named like last.ckpt (recipes.select_checkpoint tells them apart by that prefix)"
            )


def model_settings(config: Any) -> dict[str, Any]:
    """The subcommand's model settings as flat ``model.x`` keys (empty without a subcommand or model)."""
    sub = config.get("subcommand") if hasattr(config, "get") else None
    model = config.get(sub, {}).get("model") if sub else None
    if model is None:
        return {}
    as_dict = model.as_dict() if hasattr(model, "as_dict") else dict(model)
    return flatten_config(as_dict, "model")


def changed_settings(given: dict[str, Any], kept: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, given value, value kept) for every setting in ``given`` whose value ``kept`` replaced."""
    return [(key, value, kept[key]) for key, value in sorted(given.items())
            if key in kept and kept[key] != value]


def require_test_measure(trainer: Any, datamodule: Any) -> None:
    """``test`` needs rollouts or the held-out loss; without either it would end silently with no number."""
    if any(isinstance(cb, RolloutEvaluation) for cb in trainer.callbacks) or getattr(datamodule, "test_loss", False):
        return
    raise ValueError("test has nothing to measure: add a callbacks.rollout.RolloutEvaluation to trainer.callbacks "
                     "(success rate on seeded episodes), or set data.init_args.test_loss: true (the validation "
                     "split's losses)")


def show_package_logs() -> None:
    """Let this project's INFO lines reach the terminal (stderr) once, as Lightning does for its own, unless the
    application configured logging itself (the root logger has handlers). They do not propagate: a library that
    configures the root logger later (the simulators' imports do) would print each line a second time."""
    if logging.getLogger().handlers:
        return
    for name in PACKAGE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not any(getattr(h, "lit_imit_cli", False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.lit_imit_cli = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


class SaveConfigToTensorBoard(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the log directory, and the settings that shape learning (model, data,
    trainer, checkpoint selection; ``settings_that_matter``) in TensorBoard's HPARAMS tab, next to the success
    rate and losses: runs can be compared by any of them, not only by the module's arguments."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "_get_file_writer"):  # not TensorBoard
            return
        config = self.config.as_dict()
        config.pop("config", None)  # the paths of the YAML files read, not settings
        write_hparams(experiment, settings_that_matter(flatten_config(config)))


def trainer_defaults() -> dict[str, Any]:
    return {
        "logger": {
            "class_path": "lit_imit.tensorboard.RunLogger",  # TensorBoardLogger without the epoch scalar
            "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
        },
        "callbacks": [RestoreRNG()],
        "use_distributed_sampler": False,
        "reload_dataloaders_every_n_epochs": 1,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
    }


def main(args: ArgsType = None, run: bool = True) -> LitImitCLI:
    import_components()
    show_package_logs()

    torch.set_float32_matmul_precision("high")
    return LitImitCLI(
        PolicyModule,
        LightningDataModule,  # episodes (EpisodeDataModule and its subclasses) or envs (EnvDataModule, for RL)
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=DEFAULT_SEED,
        save_config_callback=SaveConfigToTensorBoard,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lit_imit", "description": DESCRIPTION},
        auto_configure_optimizers=False,
        trainer_defaults=trainer_defaults(),
        args=args,
        run=run,
    )
