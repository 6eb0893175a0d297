"""The normalisation statistics' one home: values, errors, and checkpoints from before it existed."""

from __future__ import annotations

import pytest
import torch

from lit_imit.modules.bc import BCModule
from lit_imit.nets.normalizer import Normalizer


def stats_for(dim: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(dim, generator=g) - 1.0
    return {"mean": torch.randn(dim, generator=g), "std": torch.rand(dim, generator=g) + 0.5,
            "min": lo, "max": lo + torch.rand(dim, generator=g) + 0.1}


def test_normalizations_match_hand_computed_values_and_invert():
    norm = Normalizer({"qpos": 3})
    assert not bool(norm.initialized)
    stats = {"qpos": {"mean": [1.0, 0.0, -1.0], "std": [2.0, 1.0, 0.5], "min": [0.0, -1.0, 2.0], "max": [4.0, 1.0, 2.0]}}
    norm.load(stats)
    assert bool(norm.initialized)
    x = torch.tensor([[3.0, 0.5, 0.0]])
    torch.testing.assert_close(norm.mean_std("qpos", x), torch.tensor([[1.0, 0.5, 2.0]]))
    # min-max to [-1, 1]; the constant third dimension divides by the floor of the range, not by zero
    torch.testing.assert_close(norm.min_max("qpos", x), torch.tensor([[0.5, 0.5, 2.0 * (0.0 - 2.0) / 1e-4 - 1.0]]))
    torch.testing.assert_close(norm.un_mean_std("qpos", norm.mean_std("qpos", x)), x)
    torch.testing.assert_close(norm.un_min_max("qpos", norm.min_max("qpos", x)), x)
    # a floor on the range: wider ranges map as before; narrower ones are widened about their midpoint
    torch.testing.assert_close(norm.min_max("qpos", x, min_range=1.0), torch.tensor([[0.5, 0.5, -4.0]]))
    torch.testing.assert_close(norm.min_max("qpos", x, min_range=3.0), torch.tensor([[0.5, 1.0 / 3.0, -4.0 / 3.0]]))


def test_diffusion_state_min_range_bounds_a_nearly_constant_input():
    from lit_imit.modules.diffusion import DiffusionModule

    kwargs = dict(cameras=[], state_keys=["qpos"], state_dim=2, action_dim=2, down_dims=[8, 16], horizon=8,
                  n_action_steps=4, n_obs_steps=1)
    stats = {"qpos": {"mean": [0.0, 1.0], "std": [1.0, 0.001], "min": [-1.0, 0.999], "max": [1.0, 1.001]},
             "action": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "min": [-1.0, -1.0], "max": [1.0, 1.0]}}
    obs = {"qpos": torch.tensor([[[0.5, 1.03]]])}  # a 0.03 deviation of a dimension that spans 0.002
    plain, floored = DiffusionModule(**kwargs), DiffusionModule(**kwargs, state_min_range=0.04)
    for module in (plain, floored):
        module.load_stats(stats)
    assert plain.global_condition(obs)[0, 1].item() == pytest.approx(30.0, rel=1e-3)
    assert floored.global_condition(obs)[0].tolist() == pytest.approx([0.5, 1.5], rel=1e-4)
    with pytest.raises(ValueError, match="state_min_range"):
        DiffusionModule(**kwargs, state_min_range=0.0)


def test_statistics_of_the_wrong_size_or_key_are_named():
    norm = Normalizer({"qpos": 3, "action": 2})
    with pytest.raises(KeyError, match="'action'"):
        norm.load({"qpos": stats_for(3, 0)})
    with pytest.raises(ValueError, match="'qpos'/mean have shape \\(4,\\)"):
        norm.load({"qpos": stats_for(4, 0), "action": stats_for(2, 1)})
    with pytest.raises(KeyError, match="no statistic 'mean' for 'env_state'"):
        norm.stat("env_state", "mean")


def test_a_checkpoint_from_before_the_normalizer_loads_bit_exactly():
    module = BCModule(state_keys=["qpos"], state_dim=[5], action_dim=3, hidden_dims=[8])
    module.load_stats({"qpos": stats_for(5, 0), "action": stats_for(3, 1)})
    legacy = {}
    for key, value in module.state_dict().items():  # the layout written by earlier versions
        if key.startswith("normalizer."):
            name = key[len("normalizer."):]
            key = "stats_initialized" if name == "initialized" else f"stat_{name}"
        legacy[key] = value.clone()
    fresh = BCModule(state_keys=["qpos"], state_dim=[5], action_dim=3, hidden_dims=[8])
    fresh.load_state_dict(legacy)  # strict: no missing or unexpected keys
    assert bool(fresh.stats_initialized)
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
