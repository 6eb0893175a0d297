"""The README's Python API example runs as written: it is read from the README, not copied here."""

from __future__ import annotations

import re

import numpy as np
import torch

from lit_imit.modules.act import ACTModule
from lit_imit.policies import save_policy
from tests.conftest import ROOT


def readme_api_example() -> str:
    """The first ``python`` block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def tiny_state_policy(directory) -> None:
    """An untrained state-only ACT reading what the example's env gives (qpos + the cube pose)."""
    torch.manual_seed(0)
    module = ACTModule(cameras=[], state_keys=["qpos", "env_state"], state_dim=[14, 7], action_dim=14, chunk_size=10,
                       n_action_steps=10, dim_model=16, n_heads=2, dim_feedforward=32, n_encoder_layers=1,
                       n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=4)
    module.load_stats({key: {"mean": np.zeros(dim), "std": np.full(dim, 0.1), "min": -np.ones(dim),
                             "max": np.ones(dim)} for key, dim in (("qpos", 14), ("env_state", 7), ("action", 14))})
    save_policy(module, directory)


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_api_example()
    path = re.search(r'load_policy\("([^"]+)"\)', code).group(1)
    tiny_state_policy(tmp_path / path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["done"] and namespace["obs"]["qpos"].shape == (14,)
    assert re.search(r"^success: (True|False)$", capsys.readouterr().out, re.M)
