"""VINN: BYOL's loss and moving average, the nearest-neighbour chunks, the choice of k, the uncertainty,
checkpoints, and a fit through the CLI that builds the memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lit_imit.data.episodes import Episode
from lit_imit.modules.vinn import VINNModule
from lit_imit.nets.byol import BYOL, cosine_tau, ema_update, regression_loss, symmetric_loss
from lit_imit.nets.knn import gather_chunks, nearest, softmax_weights, sweep_k_errors, weighted_chunk

FEATURES = 512  # one camera's ResNet-18 features


def tiny_vinn(**kwargs) -> VINNModule:
    """A VINN with small BYOL heads, 2-d state and actions, identity normalisation."""
    args = dict(cameras=["top"], state_dim=2, action_dim=2, chunk_size=3, n_action_steps=3, projection_dim=8,
                hidden_dim=16, uncertainty_neighbours=2)
    module = VINNModule(**{**args, **kwargs})
    identity = {"mean": [0.0, 0.0], "std": [1.0, 1.0], "min": [-1.0, -1.0], "max": [1.0, 1.0]}
    module.load_stats({"qpos": identity, "action": identity})
    return module.eval()


def axis_features(values) -> torch.Tensor:
    """Feature rows whose distance to the zero vector is the given value (all along the first axis)."""
    features = torch.zeros(len(values), FEATURES)
    features[:, 0] = torch.tensor(values, dtype=torch.float32)
    return features


def stub_encoder(module: VINNModule, table: torch.Tensor) -> None:
    """Frames encode to ``table[pixel (0, 0, red)]``: tests choose each query's features by hand."""
    module.encode_images = lambda images: table[images["top"][:, 0, 0, 0].long()]


def obs_for(rows, qpos=None) -> dict[str, np.ndarray]:
    """Observations whose frames encode (through ``stub_encoder``) to the table rows ``rows``."""
    frames = np.zeros((len(rows), 4, 4, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = rows
    qpos = np.zeros((len(rows), 2), np.float32) if qpos is None else np.asarray(qpos, np.float32)
    return {"qpos": qpos, "images/top": frames}


# ---- BYOL ------------------------------------------------------------------------------------------------
def test_byol_loss_is_zero_for_aligned_and_four_for_opposite_vectors():
    v = torch.tensor([[1.0, 2.0, -2.0]])
    assert regression_loss(v, v).item() == pytest.approx(0.0, abs=1e-6)
    assert regression_loss(v, 5 * v).item() == pytest.approx(0.0, abs=1e-6)  # lengths do not matter
    assert regression_loss(v, -v).item() == pytest.approx(4.0)
    assert regression_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])).item() == pytest.approx(2.0)
    # symmetrised: view 1's prediction against view 2's target plus the reverse, per sample
    p1, p2, z1, z2 = v, v, -v, v
    assert symmetric_loss(p1, p2, z1, z2).item() == pytest.approx(0.0 + 4.0)


def test_target_is_the_moving_average_of_the_online_network():
    torch.manual_seed(0)
    target, online = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target.parameters(), online.parameters(), tau=0.9)
    for t, t0, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o, rtol=0, atol=1e-7)

    byol = BYOL(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), feature_dim=4, projection_dim=3, hidden_dim=5)
    with torch.no_grad():
        for p in byol.online_parameters():
            p.add_(1.0)  # the online network moved away from its copy
    old = [p.detach().clone() for p in byol.target_parameters()]
    online = [p.detach().clone() for p in (*byol.online_encoder.parameters(), *byol.online_projector.parameters())]
    byol.update_target(0.75)
    for t, t0, o in zip(byol.target_parameters(), old, online):
        torch.testing.assert_close(t, 0.75 * t0 + 0.25 * o, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in byol.target_parameters())
    # BYOL's cosine schedule: tau_base at the start, halfway at the middle, 1 at the end
    assert cosine_tau(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_tau(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_tau(0.99, 100, 100) == pytest.approx(1.0)


def test_byol_loss_trains_the_online_networks_only_and_validation_views_are_fixed():
    torch.manual_seed(0)
    module = tiny_vinn().train()
    batch = {"images/top": torch.randint(0, 255, (4, 24, 32, 3), dtype=torch.uint8), "qpos": torch.zeros(4, 2),
             "weight": torch.ones(4)}
    loss = module.compute_loss(batch)["loss"]
    assert torch.isfinite(loss) and 0.0 <= loss.item() <= 8.0
    loss.backward()
    net = module.byol["top"]
    assert all(p.grad is not None for p in net.predictor.parameters())
    assert all(p.grad is None for p in net.target_parameters())
    module.eval()
    state = torch.get_rng_state()
    first = module.evaluation_losses(batch)["loss"]
    assert torch.equal(first, module.evaluation_losses(batch)["loss"])  # the same views every time
    assert torch.equal(state, torch.get_rng_state())  # and the global stream untouched


# ---- nearest neighbours -------------------------------------------------------------------------------
def hand_memory(module: VINNModule) -> None:
    """Three stored frames at visual distances 1, 2, 5 from the zero query; the second one's state is 5 away.

    Episode A: actions (10, -10), (11, -11), (12, -12) at rows 0..2; episode B: (20, -20), (21, -21) at rows 3..4.
    Frame 0 is A's step 0, frame 1 is B's step 0, frame 2 is A's step 1.
    """
    actions = torch.tensor([[10.0, -10], [11, -11], [12, -12], [20, -20], [21, -21]])
    states = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    module.set_memory(axis_features([1.0, 2.0, 5.0]), states, actions, start=torch.tensor([0, 3, 1]),
                      last=torch.tensor([2, 4, 2]))


def test_knn_chunk_is_the_softmax_weighted_average_of_the_nearest_chunks():
    module = tiny_vinn(k=2, state_weight=0.2)
    hand_memory(module)
    stub_encoder(module, torch.zeros(1, FEATURES))
    # distances: 1, 2 + 0.2 * 5 = 3, 5 -> the two nearest are frames 0 and 1, weights softmax(-1, -3)
    w0, w1 = 1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))
    chunk0 = torch.tensor([[10.0, -10], [11, -11], [12, -12]])
    chunk1 = torch.tensor([[20.0, -20], [21, -21], [21, -21]])  # B ends after 2 steps: its last action is held
    expected = w0 * chunk0 + w1 * chunk1
    torch.testing.assert_close(module.predict_chunk(obs_for([0]))[0], expected)
    module.reset()
    executed = [module.select_action(obs_for([0]))[0] for _ in range(3)]  # the chunk runs open loop
    torch.testing.assert_close(torch.stack(executed), expected)

    module.chosen_k.fill_(3)  # all three: frame 2 is A's step 1 onwards
    chunk2 = torch.tensor([[11.0, -11], [12, -12], [12, -12]])
    weights = torch.softmax(-torch.tensor([1.0, 3.0, 5.0]), dim=0)
    torch.testing.assert_close(module.predict_chunk(obs_for([0]))[0],
                               weights[0] * chunk0 + weights[1] * chunk1 + weights[2] * chunk2)


def test_sweep_matches_a_direct_computation_of_every_k():
    torch.manual_seed(1)
    q, n, c, a, k_max = 5, 12, 3, 2, 7
    distances = torch.rand(q, n) * 3
    actions, start = torch.randn(40, a), torch.randint(0, 30, (n,))
    last = start + torch.randint(0, 10, (n,))
    targets = torch.randn(q, c, a)
    dist, index = nearest(distances, k_max)
    chunks = gather_chunks(actions, start[index], last[index], c)
    swept = sweep_k_errors(dist, chunks, targets, temperature=0.5)
    for k in range(1, k_max + 1):
        pred = weighted_chunk(softmax_weights(dist[:, :k], 0.5), chunks[:, :k])
        assert swept[k - 1].item() == pytest.approx(((pred - targets) ** 2).mean(dim=(1, 2)).sum().item(), rel=1e-5)


def test_k_selection_picks_the_k_with_the_smallest_validation_error():
    """The validation frame's true action is 0. Its nearest stored frame (distance 1) says 1, the next (1.1)
    says -e^0.1: with softmax weights e^-1 and e^-1.1 their average is 0 (up to the float16 memory), so k = 2 is
    perfect; a third
    neighbour (1.2) says 5 and the far ones (4, 5) say 50."""
    module = tiny_vinn(chunk_size=1, n_action_steps=1, state_weight=0.0, max_k=5)
    firsts = [1.0, -math.exp(0.1), 5.0, 50.0, 50.0]
    actions = torch.tensor([[v, v] for v in firsts])
    module.set_memory(axis_features([1.0, 1.1, 1.2, 4.0, 5.0]), torch.zeros(5, 2), actions,
                      start=torch.arange(5), last=torch.arange(5))
    stub_encoder(module, torch.zeros(1, FEATURES))
    frames = np.zeros((1, 4, 4, 3), np.uint8)
    validation = Episode({"observations/qpos": np.zeros((1, 2), np.float32), "observations/images/top": frames,
                          "action": np.zeros((1, 2), np.float32)})
    selection = module.select_k([validation])
    errors = selection["mse_by_k"]
    assert selection["k"] == 2 == int(module.chosen_k) and errors[1] == pytest.approx(0.0, abs=1e-6)
    assert errors[0] == pytest.approx(1.0) and min(errors[2:]) > 0.5
    assert selection["val_action_mse"] == pytest.approx(0.0, abs=1e-6)


def test_state_weight_candidates_are_chosen_with_k():
    """Visually the wrong frame is nearest; only with the state term does the right one win."""
    module = tiny_vinn(chunk_size=1, n_action_steps=1, state_weight=0.0, state_weight_candidates=[0.0, 1.0],
                       max_k=1)
    module.set_memory(axis_features([1.0, 2.0]), torch.tensor([[9.0, 0.0], [0.0, 0.0]]),
                      torch.tensor([[5.0, 5.0], [0.0, 0.0]]), start=torch.arange(2), last=torch.arange(2))
    stub_encoder(module, torch.zeros(1, FEATURES))
    validation = Episode({"observations/qpos": np.zeros((1, 2), np.float32),
                          "observations/images/top": np.zeros((1, 4, 4, 3), np.uint8),
                          "action": np.zeros((1, 2), np.float32)})
    selection = module.select_k([validation])
    assert selection["state_weight"] == 1.0 == float(module.chosen_state_weight) and selection["k"] == 1


def test_uncertainty_is_higher_where_the_nearest_frames_disagree():
    module = tiny_vinn(k=1, chunk_size=1, n_action_steps=1)
    # frames 0, 1 (near query row 0) agree on their first action; frames 2, 3 (near query row 1) do not
    features = torch.zeros(4, FEATURES)
    features[0, 0], features[1, 0], features[2, 1], features[3, 1] = 0.1, 0.2, 1.0, 1.1
    actions = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-2.0, 3.0], [2.0, -3.0]])
    module.set_memory(features, torch.zeros(4, 2), actions, start=torch.arange(4), last=torch.arange(4))
    table = torch.zeros(2, FEATURES)
    table[1, 1] = 1.05
    stub_encoder(module, table)
    module.reset()
    prediction = module.predict(obs_for([0, 1]))
    assert prediction.uncertainty[0].item() == pytest.approx(0.0, abs=1e-7)
    assert prediction.uncertainty[1].item() == pytest.approx((2.0 + 3.0) / 2)  # std of +-2 and +-3, averaged
    torch.testing.assert_close(prediction.action[0], torch.tensor([1.0, 1.0]))


# ---- memory, checkpoints, the CLI ------------------------------------------------------------------------
def synthetic_episode(length: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode({"observations/qpos": rng.normal(size=(length, 2)).astype(np.float32),
                    "observations/images/top": rng.integers(0, 255, (length, 24, 32, 3), dtype=np.uint8),
                    "action": rng.normal(size=(length, 2)).astype(np.float32)})


def test_checkpoint_alone_gives_bit_identical_actions(tmp_path):
    from lit_imit.policies import load_policy, save_policy

    torch.manual_seed(0)
    module = tiny_vinn(k=3, max_k=6, bank_stride=2)
    assert module.build_memory([synthetic_episode(9, 0), synthetic_episode(6, 1)]) == 5 + 3
    assert module.memory_features.dtype == torch.float16 and module.memory_actions.shape == (15, 2)
    module.select_k([synthetic_episode(5, 2)])
    path = tmp_path / "vinn.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "policy_class": "lit_imit.modules.vinn.VINNModule", "global_step": 0}, path)
    save_policy(module, tmp_path / "policy", training={})
    episode = synthetic_episode(4, 3)
    obs = [{"qpos": episode.obs("qpos")[t:t + 1], "images/top": episode.obs("images/top")[t:t + 1]}
           for t in range(4)]
    for loaded in (load_policy(path), load_policy(tmp_path / "policy")):
        assert int(loaded.chosen_k) == int(module.chosen_k) and len(loaded.memory_features) == 8
        module.reset()
        loaded.reset()
        for o in obs:
            assert torch.equal(module.select_action(o), loaded.select_action(o))


def test_a_module_without_memory_says_how_to_get_one():
    module = tiny_vinn()
    with pytest.raises(RuntimeError, match="no memory"):
        module.select_action(obs_for([0]))


def test_fit_through_the_cli_builds_the_memory_and_chooses_k(tmp_path):
    from lit_imit.cli import main
    from lit_imit.policies import load_policy
    from tests.test_cli import config, synthetic_store

    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(24, 32))
    cfg = config(tmp_path, {"data_dir": data_dir, "chunk_size": None}, max_epochs=1, limit_train_batches=2,
                 limit_val_batches=1)
    cfg["model"] = {"class_path": "lit_imit.modules.vinn.VINNModule",
                    "init_args": {"cameras": ["top"], "chunk_size": 5, "n_action_steps": 5, "projection_dim": 8,
                                  "hidden_dim": 16, "max_k": 20, "bank_stride": 3, "select_stride": 3}}
    cli = main({"fit": cfg})
    dm = cli.datamodule
    assert [i for i, _ in dm.read_episodes("train", ["qpos"])] == dm.train_ids and len(dm.val_ids) == 1
    ckpt = tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert int(state["memory_step"]) == 2 and len(state["memory_features"]) == 2 * 10  # 2 episodes of 30, stride 3
    assert 1 <= int(state["chosen_k"]) <= 20
    assert cli.model.last_selection is not None and cli.trainer.callback_metrics["vinn/k"] == int(state["chosen_k"])
    policy = load_policy(ckpt)
    frames = np.zeros((2, 24, 32, 3), np.uint8)
    assert policy.select_action({"qpos": np.zeros((2, 14), np.float32), "images/top": frames}).shape == (2, 14)
