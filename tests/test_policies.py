"""lit_imit.policies: a checkpoint is rebuilt as the class that wrote it, recorded at save time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_imit.modules.bc import BCModule
from lit_imit.policies import PolicyLoadError, load_policy


def tiny_bc() -> BCModule:
    """A BC module the old hyper-parameter guess (ACT, Diffusion) cannot place: only the record finds it."""
    torch.manual_seed(0)
    module = BCModule(state_dim=7, action_dim=7, hidden_dims=(16,))
    module.load_stats({key: {"mean": np.zeros(7), "std": np.ones(7), "min": -np.ones(7), "max": np.ones(7)}
                       for key in ("qpos", "action")})
    return module


def trainer_checkpoint(module, path) -> dict:
    """What ``pl.Trainer.save_checkpoint`` writes for ``module``; returns the saved dict."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=path.parent)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return torch.load(path, weights_only=True)


def rewrite(path, checkpoint: dict, **changes) -> None:
    torch.save({**checkpoint, **changes}, path)


def test_checkpoint_records_its_class_and_loads_as_it_with_identical_weights(tmp_path):
    original = tiny_bc()
    checkpoint = trainer_checkpoint(original, tmp_path / "bc.ckpt")
    assert checkpoint["policy_class"] == "lit_imit.modules.bc.BCModule"
    loaded = load_policy(tmp_path / "bc.ckpt")
    assert type(loaded) is BCModule and not loaded.training
    assert loaded.state_dict().keys() == original.state_dict().keys()
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_unknown_recorded_class_is_an_error_naming_the_file_and_class(tmp_path):
    checkpoint = trainer_checkpoint(tiny_bc(), tmp_path / "bc.ckpt")
    path = tmp_path / "unknown.ckpt"
    rewrite(path, checkpoint, policy_class="lit_imit.modules.nothing_here.GonePolicy")
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message and "lit_imit.modules.nothing_here.GonePolicy" in message and "\n" not in message


def test_a_recorded_class_must_be_a_policy_module(tmp_path):
    checkpoint = trainer_checkpoint(tiny_bc(), tmp_path / "bc.ckpt")
    path = tmp_path / "foreign.ckpt"
    rewrite(path, checkpoint, policy_class="collections.OrderedDict")
    with pytest.raises(PolicyLoadError, match="not a PolicyModule") as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_older_checkpoints_fall_back_to_the_cli_class_path_then_name_the_file(tmp_path):
    checkpoint = trainer_checkpoint(tiny_bc(), tmp_path / "bc.ckpt")
    del checkpoint["policy_class"]
    cli = tmp_path / "cli.ckpt"  # LightningCLI kept the class path in the hyper-parameters
    rewrite(cli, checkpoint, hyper_parameters={**checkpoint["hyper_parameters"],
                                               "_class_path": "lit_imit.modules.bc.BCModule"})
    assert type(load_policy(cli)) is BCModule
    bare = tmp_path / "bare.ckpt"  # neither: the old guess knows ACT and Diffusion, not BC
    rewrite(bare, checkpoint)
    with pytest.raises(PolicyLoadError, match="names no policy class") as info:
        load_policy(bare)
    assert str(bare) in str(info.value)
