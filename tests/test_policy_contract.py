"""The policy contract every method module offers (lit_imit.modules.base.PolicyModule)."""

import inspect

import pytest
import torch

from lit_imit.modules.act import ACTModule
from lit_imit.modules.base import PolicyModule, batch_size_of, require_all_rows
from lit_imit.modules.bc import BCModule
from lit_imit.modules.cliport import CLIPortModule
from lit_imit.modules.diffusion import DiffusionModule
from lit_imit.modules.skill_prior import SkillPriorModule
from lit_imit.modules.vinn import VINNModule

MODULES = [ACTModule, BCModule, CLIPortModule, DiffusionModule, SkillPriorModule, VINNModule]


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_every_method_computes_its_losses_and_leaves_stepping_and_logging_to_the_base(cls):
    assert cls.compute_loss is not PolicyModule.compute_loss
    for hook in ("training_step", "validation_step", "test_step"):
        assert getattr(cls, hook) is getattr(PolicyModule, hook), f"{cls.__name__} overrides {hook}"
    reset = inspect.signature(cls.reset)
    assert list(reset.parameters)[:2] == ["self", "env_ids"] and reset.parameters["env_ids"].default is None


def test_base_logs_every_term_under_its_prefix():
    module = BCModule(state_keys=["qpos"], state_dim=4, action_dim=2, chunk_size=1, hidden_dims=[8])
    logged = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, (float(value), kw))
    batch = {"qpos": torch.rand(5, 4), "action": torch.rand(5, 1, 2), "weight": torch.ones(5)}
    loss = module.training_step(batch, 0)
    assert logged["train/loss"][0] == pytest.approx(float(loss))
    assert logged["train/loss"][1]["batch_size"] == 5 and not logged["train/loss"][1]["sync_dist"]
    module.validation_step(batch, 0)
    module.test_step(batch, 0)
    assert logged["val/loss"][1]["sync_dist"] and logged["test/loss"][1]["sync_dist"]


def test_weights_count_in_training_only():
    module = BCModule(state_keys=["qpos"], state_dim=4, action_dim=2, chunk_size=1, hidden_dims=[8])
    batch = {"qpos": torch.rand(4, 4), "action": torch.rand(4, 1, 2), "weight": torch.tensor([1.0, 0, 0, 0])}
    only_first = float(module.compute_loss({k: v[:1] for k, v in batch.items()})["loss"])
    assert float(module.training_losses(batch)["loss"]) == pytest.approx(only_first / 4)  # mean of w_i * l_i
    unweighted = float(module.compute_loss(batch, weighted=False)["loss"])
    assert float(module.evaluation_losses(batch)["loss"]) == pytest.approx(unweighted) != only_first


def test_batch_size_and_row_checks():
    assert batch_size_of({"text": ["a", "b"], "pick_pixel": torch.zeros(2, 2)}) == 2
    with pytest.raises(ValueError, match="no tensor"):
        batch_size_of({"text": ["a"]})
    require_all_rows(object(), None, 3)
    require_all_rows(object(), [2, 0, 1], 3)
    require_all_rows(object(), [0], None)  # nothing to reset yet
    with pytest.raises(ValueError, match=r"rows \[0, 2\] alone"):
        require_all_rows(object(), torch.tensor([2, 0]), 3)
