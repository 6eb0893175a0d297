"""The kitchen skill probe (lit_imit.tools.skill_probe): a hand-over replays the demo exactly up to the switch."""

from __future__ import annotations

import pytest
import torch

from lit_imit.data.episodes import EpisodeStore
from lit_imit.data.recording import record_teacher_episodes
from lit_imit.modules.skill_prior import SkillPriorModule
from lit_imit.tools.skill_probe import demo_skills, probe, read_demos, summary


@pytest.fixture(scope="module")
def kitchen_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demos")
    record_teacher_episodes("kitchen-mktl", 1, EpisodeStore(root), cameras=[], seed=3)
    return read_demos(root, "positions", 1)


def small_fist_module() -> SkillPriorModule:
    torch.manual_seed(0)
    return SkillPriorModule(stage="goal_conditioned", state_dim=30, state_key="positions", action_dim=9,
                            hidden_dim=16, n_layers=2, encoder_hidden=16, prior_hidden=16, prior_layers=2).eval()


def test_handover_replays_the_demo_to_the_earlier_subtask_then_measures_the_next(kitchen_demo):
    """Up to the switch the env follows the demo's states exactly (same seed, same actions); the switch comes
    ``lead`` steps after the sub-task before the measured one, and only then do the closest passes count."""
    torch.set_num_threads(1)
    [demo] = kitchen_demo
    module = small_fist_module()
    assert demo_skills(module, demo["states"], demo["actions"]).shape == (len(demo["actions"]) // 10, 10)
    [result] = probe(module, "kitchen-mktl", [demo], ["handover"], "light switch", lead=5)
    assert {"microwave", "kettle", "top burner"} <= set(result.completed)
    assert result.switch_step == result.completed["top burner"] + 5
    assert result.replay_gap == 0.0
    assert 0.0 <= result.closest_site < 2.0 and result.closest_goal >= 0.0
    report = summary([result], ["microwave", "kettle", "top burner", "light switch"])
    assert report["handover"]["top burner"] == 1 and report["handover"]["demos"] == 1


def test_an_unknown_subtask_names_the_envs_own(kitchen_demo):
    with pytest.raises(ValueError, match="not one of this env's"):
        probe(small_fist_module(), "kitchen-mktl", kitchen_demo, ["skills"], "slide cabinet")
