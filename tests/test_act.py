"""ACT network and ACTModule: shapes, masking, losses, execution (chunks / temporal ensembling), uncertainty,
optimisation, checkpoints and the frozen backbone statistics. Tiny configs only (seconds in total)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lit_imit.benchmarking import act_batch
from lit_imit.modules.act import ACTModule, kl_divergence, masked_l1_per_sample
from lit_imit.modules.chunking import TemporalEnsembler
from lit_imit.nets.backbones import FrozenBatchNorm2d, ResNet18Features, imagenet_weights_cache_path
from lit_imit.nets.positional import SinePositionEncoding2d, sinusoid_table
from lit_imit.nets.pretrained import PretrainedWeightsUnavailable

K = 10  # chunk size of the tiny configs
HW = (64, 64)
STATE, ACTION = 14, 14


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny ops are faster on one thread, and far faster when the CPU is shared (no OpenMP barrier waits)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny(cameras=("top",), **overrides) -> ACTModule:
    cfg = dict(
        cameras=list(cameras),
        chunk_size=K,
        n_action_steps=K,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_vae_encoder_layers=1,
        latent_dim=4,
        dropout=0.0,
        n_uncertainty_samples=4,
    )
    cfg.update(overrides)
    return ACTModule(**cfg)


def with_stats(module: ACTModule, seed: int = 0) -> ACTModule:
    g = torch.Generator().manual_seed(seed)
    stats = {
        key: {
            "mean": torch.randn(dim, generator=g),
            "std": torch.rand(dim, generator=g) + 0.5,
            "min": -torch.ones(dim),
            "max": torch.ones(dim),
        }
        for key, dim in (("qpos", STATE), ("action", ACTION))
    }
    module.load_stats(stats)
    return module


def batch_for(cameras=("top",), batch_size=2, seed=0):
    return act_batch(batch_size, cameras, HW, STATE, ACTION, K, seed=seed)


def env_obs(n_envs=2, cameras=("top",), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = {"qpos": rng.normal(size=(n_envs, STATE))}
    for cam in cameras:
        obs[f"images/{cam}"] = rng.integers(0, 256, size=(n_envs, *HW, 3), dtype=np.uint8)
    return obs


# ---- positional encodings -------------------------------------------------------------------------------
def test_sinusoid_table_matches_formula():
    table = sinusoid_table(7, 6)
    assert table.shape == (7, 6)
    for pos, j in [(0, 0), (0, 1), (3, 2), (5, 3), (6, 5)]:
        angle = pos / 10000 ** (2 * (j // 2) / 6)
        expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        assert table[pos, j].item() == pytest.approx(expected, abs=1e-6)


def test_sine_2d_encoding_rows_then_columns():
    enc = SinePositionEncoding2d(8)(torch.zeros(1, 3, 4, 5))
    assert enc.shape == (1, 8, 4, 5)
    rows, cols = enc[0, :4], enc[0, 4:]
    assert torch.allclose(rows, rows[:, :, :1].expand_as(rows))  # row half constant along the width
    assert torch.allclose(cols, cols[:, :1, :].expand_as(cols))  # column half constant along the height
    # row 2 (coordinate 3 of 4), channel 0: sin(3 / 4 * 2 pi); channel 3: cos(y / 10000^(2/4))
    y = 3 / (4 + 1e-6) * 2 * math.pi
    assert rows[0, 2, 0].item() == pytest.approx(math.sin(y), abs=1e-5)
    assert rows[3, 2, 0].item() == pytest.approx(math.cos(y / 100), abs=1e-5)
    # the last column reaches 2 pi
    assert cols[0, 0, 4].item() == pytest.approx(math.sin(5 / (5 + 1e-6) * 2 * math.pi), abs=1e-5)


# ---- backbone ----------------------------------------------------------------------------------------------
def _randomise_bn_stats(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_fused_frozen_bn_equals_module_path_values_and_grads():
    torch.manual_seed(0)
    plain = ResNet18Features(fuse_frozen_bn=False)
    _randomise_bn_stats(plain)
    fused = ResNet18Features(fuse_frozen_bn=True)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    y_plain, y_fused = plain(x), fused(x)
    assert y_plain.shape == (2, 512, 2, 3)
    assert torch.allclose(y_plain, y_fused, atol=1e-4, rtol=1e-4)
    y_plain.square().mean().backward()
    y_fused.square().mean().backward()
    assert torch.allclose(plain.conv1.weight.grad, fused.conv1.weight.grad, atol=1e-5, rtol=1e-3)


def test_backbone_weights_from_path_and_imagenet_cache(tmp_path, monkeypatch):
    src = ResNet18Features()
    _randomise_bn_stats(src, seed=3)
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # a full classifier file: fc is dropped on load
    state["bn1.num_batches_tracked"] = torch.tensor(5)  # BatchNorm2d files carry this: dropped too
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    loaded = ResNet18Features(str(path))
    assert torch.equal(loaded.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    assert torch.equal(loaded.bn1.running_var, src.bn1.running_var)
    assert "r18.pth" in loaded.weights_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(PretrainedWeightsUnavailable, match="allow_random_init"):
        ResNet18Features("imagenet")
    with pytest.warns(UserWarning, match="RANDOM INIT"):
        missing = ResNet18Features("imagenet", allow_random_init=True)
    assert missing.weights_source.startswith("random init")
    cache = imagenet_weights_cache_path()
    assert str(cache).startswith(str(tmp_path))
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    cached = ResNet18Features("imagenet")
    assert torch.equal(cached.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    with pytest.raises(FileNotFoundError):
        ResNet18Features(str(tmp_path / "nope.pth"))


# ---- shapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cameras,shared", [(("top",), True), (("top", "wrist"), True), (("top", "wrist"), False)])
def test_output_shapes(cameras, shared):
    torch.manual_seed(0)
    module = with_stats(tiny(cameras, shared_backbone=shared))
    assert len(module.model.backbones) == (1 if shared else len(cameras))
    out = module(batch_for(cameras, batch_size=3))
    assert out.actions.shape == (3, K, ACTION)
    assert out.mu.shape == out.logvar.shape == (3, 4)
    assert module.select_action(env_obs(2, cameras)).shape == (2, ACTION)
    assert module.predict_chunk(env_obs(2, cameras)).shape == (2, K, ACTION)


def test_image_tokens_follow_camera_count():
    """Each camera adds its own feature cells to the transformer input (2x2 cells per 64x64 image)."""
    torch.manual_seed(0)
    for cameras in (("top",), ("top", "wrist")):
        module = tiny(cameras)
        qpos, images, extra = module._observation(batch_for(cameras))
        tokens, pos = module.model.observation_tokens(qpos, images, extra)
        assert tokens.shape == (2, 1 + 4 * len(cameras), 32)
        assert pos.shape == (1, 1 + 4 * len(cameras), 32)


# ---- losses and masking -----------------------------------------------------------------------------------------
def test_padded_actions_are_ignored_by_loss_and_cvae_encoder():
    torch.manual_seed(0)
    module = with_stats(tiny()).eval()
    batch = batch_for(batch_size=3)
    batch["action_is_pad"][:] = False
    batch["action_is_pad"][0, 6:] = True
    batch["action_is_pad"][2, 3:] = True
    changed = {k: v.clone() for k, v in batch.items()}
    changed["action"][batch["action_is_pad"]] = 1e3  # wild values where padded

    qpos, _, _ = module._observation(batch)
    a1, pad = module._targets(batch)
    a2, _ = module._targets(changed)
    mu1, logvar1 = module.model.encode_latent(qpos, a1, pad)
    mu2, logvar2 = module.model.encode_latent(qpos, a2, pad)
    assert torch.allclose(mu1, mu2, atol=1e-5) and torch.allclose(logvar1, logvar2, atol=1e-5)

    torch.manual_seed(1)
    loss1 = module.compute_loss(batch)
    torch.manual_seed(1)
    loss2 = module.compute_loss(changed)
    for name in ("loss", "l1", "kl"):
        assert loss1[name].item() == pytest.approx(loss2[name].item(), rel=1e-5, abs=1e-6)

    # a change in a *valid* step does reach both the posterior and the loss (the test can fail)
    changed["action"][1, 0] += 5.0
    a3, _ = module._targets(changed)
    assert not torch.allclose(module.model.encode_latent(qpos, a3, pad)[0], mu1, atol=1e-4)
    torch.manual_seed(1)
    assert module.compute_loss(changed)["l1"].item() != pytest.approx(loss1["l1"].item(), rel=1e-4)


def test_masked_l1_reductions_against_hand_computed_values():
    pred = torch.zeros(2, 4, 3)
    target = torch.ones(2, 4, 3)
    target[0, 2:] = 7.0  # padded below
    is_pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    # valid_entries: each sample divided by its own valid count (2*3 and 4*3 entries of error 1)
    assert masked_l1_per_sample(pred, target, is_pad, "valid_entries").tolist() == pytest.approx([1.0, 1.0])
    # all_entries (original ACT / LeRobot): padded entries count as 0 in a mean over all 4*3 entries
    per_sample = masked_l1_per_sample(pred, target, is_pad, "all_entries")
    assert per_sample.tolist() == pytest.approx([0.5, 1.0])
    reference = (torch.nn.functional.l1_loss(pred, target, reduction="none") * ~is_pad.unsqueeze(-1)).mean()
    assert per_sample.mean().item() == pytest.approx(reference.item())  # 0.75
    with pytest.raises(ValueError, match="l1_reduction"):
        masked_l1_per_sample(pred, target, is_pad, "sum")


def test_act_default_l1_is_the_original_reduction():
    torch.manual_seed(0)
    module = with_stats(tiny()).eval()
    assert module.hparams.l1_reduction == "all_entries"
    batch = batch_for(batch_size=3)
    batch["action_is_pad"][:] = False
    batch["action_is_pad"][0, 4:] = True
    torch.manual_seed(3)
    out = module(batch)
    target, pad = module._targets(batch)
    expected = ((out.actions - target).abs() * ~pad.unsqueeze(-1)).mean()
    torch.manual_seed(3)
    assert module.compute_loss(batch)["l1"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_state_only_act_with_env_state_token():
    """No camera: the encoder reads [latent, qpos, env_state]; env_state really changes the chunk."""
    torch.manual_seed(0)
    module = ACTModule(
        cameras=[], state_keys=["qpos", "env_state"], state_dim=[STATE, 7], action_dim=ACTION, chunk_size=K,
        n_action_steps=K, dim_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=1,
        n_vae_encoder_layers=1, latent_dim=4,
    )
    assert len(module.model.backbones) == 0
    stats = {key: {"mean": [0.0] * d, "std": [1.0] * d, "min": [-1.0] * d, "max": [1.0] * d}
             for key, d in (("qpos", STATE), ("env_state", 7), ("action", ACTION))}
    module.load_stats(stats)
    obs = {"qpos": torch.zeros(2, STATE), "env_state": torch.zeros(2, 7)}
    obs["env_state"][1, 0] = 3.0
    chunk = module.predict_chunk(obs)
    assert chunk.shape == (2, K, ACTION)
    assert not torch.allclose(chunk[0], chunk[1])
    batch = {"qpos": torch.randn(4, STATE), "env_state": torch.randn(4, 7), "action": torch.randn(4, K, ACTION),
             "action_is_pad": torch.zeros(4, K, dtype=torch.bool)}
    losses = module.compute_loss(batch)
    losses["loss"].backward()
    assert module.model.extra_state_projs[0].weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="env_state"):
        module.select_action({"qpos": torch.zeros(2, STATE)})
    with pytest.raises(ValueError, match="one size per state key"):
        ACTModule(cameras=[], state_keys=["qpos", "env_state"], state_dim=14)


def test_kl_matches_closed_form_and_the_module_uses_it():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    sigma = torch.exp(0.5 * logvar)
    closed = 0.5 * (sigma**2 + mu**2 - 1.0 - logvar).sum(-1)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ).sum(-1)
    assert torch.allclose(kl_divergence(mu, logvar), closed, atol=1e-5)
    assert torch.allclose(kl_divergence(mu, logvar), reference, atol=1e-5)

    torch.manual_seed(0)
    module = with_stats(tiny()).eval()
    batch = batch_for(batch_size=3)
    torch.manual_seed(7)
    out = module(batch)
    torch.manual_seed(7)
    losses = module.compute_loss(batch)
    assert losses["kl"].item() == pytest.approx(kl_divergence(out.mu, out.logvar).mean().item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["l1"].item() + 10.0 * losses["kl"].item(), rel=1e-5)


def test_importance_weights_weight_samples():
    """Each sample's loss is scaled by its weight: [0, 1] give half of sample 1's loss (the batch mean of
    [0, l_1]); weights [1, 1] give the plain mean, [2, 2] twice it."""
    torch.manual_seed(0)
    for use_vae in (False, True):  # with the VAE the KL (deterministic given the batch) is checked
        module = with_stats(tiny(use_vae=use_vae)).eval()
        batch = batch_for(batch_size=2)
        batch["weight"] = torch.tensor([0.0, 1.0])
        weighted = module.compute_loss(batch)
        alone = module.compute_loss({k: v[1:] for k, v in batch.items()})
        plain = module.compute_loss(batch, weighted=False)
        batch["weight"] = torch.tensor([1.0, 1.0])
        uniform = module.compute_loss(batch)
        batch["weight"] = torch.tensor([2.0, 2.0])
        doubled = module.compute_loss(batch)
        terms = ("kl",) if use_vae else ("loss", "l1")
        for name in terms:
            assert weighted[name].item() == pytest.approx(alone[name].item() / 2, rel=1e-5)
            assert uniform[name].item() == pytest.approx(plain[name].item(), rel=1e-5)
            assert doubled[name].item() == pytest.approx(2 * plain[name].item(), rel=1e-5)
            assert weighted[name].item() != pytest.approx(plain[name].item(), rel=1e-3)


def test_load_stats_floors_std():
    module = tiny()
    stats = {k: {"mean": np.zeros(14), "std": np.full(14, 1e-5), "min": -np.ones(14), "max": np.ones(14)}
             for k in ("qpos", "action")}
    module.load_stats(stats)
    assert torch.allclose(module.normalizer.stat("action", "std"), torch.full((14,), 0.01))
    assert bool(module.stats_initialized)


# ---- execution: chunks, temporal ensembling, reset ----------------------------------------------------------------
class ChunkScript:
    """Stands in for the network: returns pre-drawn normalised chunks and records the batch sizes it saw."""

    def __init__(self, n_envs: int, n_chunks: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.chunks = torch.randn(n_chunks, n_envs, K, ACTION, generator=g)
        self.calls: list[int] = []

    def __call__(self, obs):
        n = obs["qpos"].shape[0]
        chunk = self.chunks[len(self.calls), :n]
        self.calls.append(n)
        return chunk


def test_chunk_execution_queries_every_n_action_steps():
    module = with_stats(tiny(n_action_steps=4))
    script = ChunkScript(n_envs=2, n_chunks=4)
    module._query_chunk = script
    obs = env_obs(2)
    actions = [module.select_action(obs) for _ in range(10)]
    assert script.calls == [2, 2, 2]  # steps 0, 4, 8
    for t, action in enumerate(actions):
        expected = module.normalizer.un_mean_std("action", script.chunks[t // 4, :, t % 4])
        assert torch.allclose(action, expected, atol=1e-6)


def test_reset_clears_queues_for_all_or_some_envs():
    module = with_stats(tiny(n_action_steps=4))
    script = ChunkScript(n_envs=2, n_chunks=4)
    module._query_chunk = script
    obs = env_obs(2)
    module.select_action(obs)
    module.select_action(obs)
    module.reset()
    module.select_action(obs)  # a fresh episode starts with a query
    assert script.calls == [2, 2]
    module.reset(env_ids=[1])  # only env 1 restarts: only it is queried, env 0 continues its chunk
    action = module.select_action(obs)
    assert script.calls == [2, 2, 1]
    unnorm = lambda x: module.normalizer.un_mean_std("action", x)  # noqa: E731
    assert torch.allclose(action[0], unnorm(script.chunks[1, 0, 1]), atol=1e-6)
    assert torch.allclose(action[1], unnorm(script.chunks[2, 0, 0]), atol=1e-6)


@pytest.mark.parametrize("coeff", [0.01, 0.5])
def test_temporal_ensembling_equals_hand_computation(coeff):
    n_envs, steps = 2, 13
    module = with_stats(tiny(n_action_steps=1, temporal_ensemble_coeff=coeff))
    script = ChunkScript(n_envs, steps, seed=1)
    module._query_chunk = script
    obs = env_obs(n_envs)
    raw = module.normalizer.un_mean_std("action", script.chunks)  # (T, N, K, A)
    for t in range(steps):
        action = module.select_action(obs)
        first = max(0, t - K + 1)  # the oldest chunk that still covers step t
        preds = [raw[s, :, t - s] for s in range(first, t + 1)]  # oldest first
        weights = [math.exp(-coeff * i) for i in range(len(preds))]
        expected = sum(w * p for w, p in zip(weights, preds)) / sum(weights)
        assert torch.allclose(action, expected, atol=1e-5), t
    assert script.calls == [n_envs] * steps
    module.reset()
    assert module._execution.ensembler.sums is None


def test_temporal_ensembler_per_env_reset():
    ens = TemporalEnsembler(0.01, chunk_size=3)
    a = torch.ones(2, 3, 1)
    ens.update(a)
    ens.reset(env_ids=[0])
    out = ens.update(torch.full((2, 3, 1), 3.0))
    assert out[0].item() == pytest.approx(3.0)  # env 0 forgot its earlier prediction
    w0, w1 = 1.0, math.exp(-0.01)
    assert out[1].item() == pytest.approx((w0 * 1.0 + w1 * 3.0) / (w0 + w1))


def test_temporal_ensembling_requires_querying_every_step():
    with pytest.raises(ValueError, match="n_action_steps=1"):
        tiny(n_action_steps=5, temporal_ensemble_coeff=0.01)


def test_select_action_runs_in_eval_inference_mode_and_restores_the_mode():
    module = with_stats(tiny(dropout=0.5))
    module.train()
    obs = env_obs(1)
    first = module.select_action(obs)
    assert module.training
    assert first.is_inference() and not first.requires_grad
    module.reset()
    assert torch.equal(module.select_action(obs), first)  # dropout off: the same observation, the same action
    module.eval()
    module.select_action(env_obs(1))
    assert not module.training


def test_bf16_inference_runs_the_networks_in_bfloat16_and_returns_float32_actions_close_to_fp32():
    module = with_stats(tiny(n_action_steps=1, temporal_ensemble_coeff=0.01))
    dtypes = []
    module.model.register_forward_hook(lambda _m, _i, out: dtypes.append(out.actions.dtype))
    obs = env_obs(2)
    module.reset()
    fp32 = [module.select_action(obs) for _ in range(3)]
    module.set_inference_precision("bf16-mixed")
    module.reset()
    bf16 = [module.select_action(obs) for _ in range(3)]
    assert dtypes == [torch.float32] * 3 + [torch.bfloat16] * 3
    for a, b in zip(fp32, bf16):
        assert b.dtype == torch.float32
        assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05 * float(a.abs().max()))
    with pytest.raises(ValueError, match="bf16-mixed.*not 'fp16'"):
        module.set_inference_precision("fp16")


# ---- uncertainty -------------------------------------------------------------------------------------------------------
def test_predict_uncertainty_zero_when_decoder_ignores_z_positive_otherwise():
    torch.manual_seed(0)
    module = with_stats(tiny(n_action_steps=3))
    obs = env_obs(3)
    pred = module.predict(obs)
    assert pred.action.shape == (3, ACTION) and pred.uncertainty.shape == (3,)
    assert torch.all(pred.uncertainty > 1e-4)
    # the executed action uses z = 0: the same as select_action on a fresh episode
    module.reset()
    assert torch.allclose(module.select_action(obs), pred.action, atol=1e-5)

    with torch.no_grad():
        module.model.latent_proj.weight.zero_()  # z no longer reaches the decoder
    module.reset()
    pred = module.predict(obs)
    assert pred.uncertainty.shape == (3,)
    assert torch.all(pred.uncertainty.abs() < 1e-5)


def test_predict_reports_the_executed_chunks_uncertainty():
    torch.manual_seed(0)
    module = with_stats(tiny(n_action_steps=3))
    obs = env_obs(2)
    first = module.predict(obs).uncertainty
    second = module.predict(env_obs(2, seed=5)).uncertainty  # same chunk, no new query
    assert torch.equal(first, second)
    module.reset()
    module.select_action(obs)  # chunk without an estimate: predict scores the current observation
    assert torch.all(module.predict(obs).uncertainty > 0)


# ---- optimisation, checkpoints, frozen statistics --------------------------------------------------------------------
def train_on(module: ACTModule, batch: dict, steps: int) -> list[dict[str, float]]:
    """``steps`` real AdamW steps (the module's own optimiser) on one batch; the loss terms of each step."""
    optimizer = module.configure_optimizers()
    module.train()
    history = []
    for _ in range(steps):
        losses = module.compute_loss(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    return history


def test_loss_falls_when_overfitting_a_tiny_batch():
    """100 real AdamW steps on one batch of 4 smooth chunks (a_t = qpos + t * v): L1 and loss must collapse."""
    torch.manual_seed(0)
    module = with_stats(tiny(lr=3e-3, lr_backbone=3e-4, channels_last=False))
    batch = act_batch(4, ("top",), (32, 32), STATE, ACTION, K, seed=2)
    velocity = torch.randn(4, 1, ACTION, generator=torch.Generator().manual_seed(5)) * 0.3
    batch["action"] = batch["qpos"][:, None, :] + velocity * torch.arange(1, K + 1)[None, :, None]
    history = [(losses["loss"], losses["l1"]) for losses in train_on(module, batch, 100)]
    (loss0, l10), (loss_end, l1_end) = history[0], history[-1]
    assert loss_end < 0.3 * loss0, history[::10]
    assert l1_end < 0.3 * l10, history[::10]


def test_optimizer_param_groups_and_frozen_backbone():
    module = tiny(lr=3e-4, lr_backbone=2e-5)
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 2e-5]
    n_backbone = sum(p.numel() for p in module.model.backbone_parameters())
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == n_backbone
    frozen = tiny(lr_backbone=0.0)
    assert len(frozen.configure_optimizers().param_groups) == 1
    assert not any(p.requires_grad for p in frozen.model.backbone_parameters())


def test_cosine_schedule_warms_up_then_decays_both_groups_to_zero():
    module = tiny(lr=1e-3, lr_backbone=1e-4, lr_schedule="cosine", warmup_steps=2, max_steps=10)
    config = module.configure_optimizers()
    opt, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx([5e-4, 5e-5]) and lrs[1] == pytest.approx([1e-3, 1e-4])
    assert lrs[6][0] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert isinstance(tiny().configure_optimizers(), torch.optim.AdamW)  # constant: ACT's plain optimizer
    with pytest.raises(ValueError, match="lr_schedule"):
        tiny(lr_schedule="linear")


def test_frozen_batchnorm_stays_frozen_during_training():
    torch.manual_seed(0)
    module = with_stats(tiny(lr=1e-3, lr_backbone=1e-3))
    bns = [m for m in module.model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bns and all(not list(bn.parameters(recurse=False)) for bn in bns)
    _randomise_bn_stats(module.model)
    before = {k: v.clone() for k, v in module.model.backbones.state_dict().items()}
    optimizer = module.configure_optimizers()
    module.train()
    module.compute_loss(batch_for())["loss"].backward()
    optimizer.step()
    after = module.model.backbones.state_dict()
    for key, value in before.items():
        if any(s in key for s in ("running_mean", "running_var", ".bn", "bn1.", "downsample.1")):
            assert torch.equal(value, after[key]), key
    assert not torch.equal(before["0.conv1.weight"], after["0.conv1.weight"])  # the convolutions do train


def test_group_norm_backbone_normalises_trains_and_refuses_pretrained_weights(tmp_path):
    """backbone_norm='group': every norm is a trainable GroupNorm (zero mean, unit variance per group of 16
    channels), its affine parameters get gradients and move, and it refuses to start from batch-norm weights."""
    torch.manual_seed(0)
    module = with_stats(tiny(lr=1e-3, lr_backbone=1e-3, backbone_norm="group"))
    norms = [m for m in module.model.backbones.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 20 and not any(isinstance(m, FrozenBatchNorm2d) for m in module.model.modules())
    assert norms[0].num_groups == 64 // 16

    images = torch.rand(2, 3, 64, 64) * 4 - 2
    stem = module.model.backbones[0]
    grouped = stem.bn1(stem.conv1(images))
    per_group = grouped.reshape(2, norms[0].num_groups, -1)
    assert torch.allclose(per_group.mean(-1), torch.zeros(2, norms[0].num_groups), atol=1e-5)
    assert torch.allclose(per_group.var(-1, unbiased=False), torch.ones(2, norms[0].num_groups), atol=1e-3)

    before = norms[-1].weight.detach().clone()
    optimizer = module.configure_optimizers()
    module.train()
    module.compute_loss(batch_for())["loss"].backward()
    assert norms[-1].weight.grad is not None and norms[-1].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, norms[-1].weight)

    path = tmp_path / "resnet18.pth"
    torch.save(ResNet18Features().state_dict(), path)
    with pytest.raises(ValueError, match="from scratch"):
        ResNet18Features(str(path), norm="group")
    with pytest.raises(ValueError, match="backbone norm must be one of"):
        ResNet18Features(norm="batch")


def test_stride_16_backbone_stops_at_layer3_and_loads_full_resnet_files(tmp_path):
    """stride=16: the layer3 map (256 channels, H/16 x W/16) with the very numbers the full ResNet computes
    there, no layer4 parameters, and a whole-ResNet file loads with its layer4 entries left out. ACT then
    gets 4x as many image tokens and its loss trains through them."""
    torch.manual_seed(0)
    full = ResNet18Features()
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    half = ResNet18Features(str(path), stride=16)
    assert not any(k.startswith("layer4.") for k in half.state_dict())
    assert half.num_channels == 256
    images = torch.rand(2, 3, 96, 128)
    feats = half(images)
    assert feats.shape == (2, 256, 6, 8)
    x = full.maxpool(torch.relu(full._conv_bn(images, full.conv1, full.bn1)))
    for layer in (full.layer1, full.layer2, full.layer3):
        for block in layer:
            x = full._block(x, block)
    assert torch.allclose(feats, x, atol=1e-5)
    assert full(images).shape == (2, 512, 3, 4)
    with pytest.raises(ValueError, match="stride must be one of"):
        ResNet18Features(stride=8)

    coarse, fine = with_stats(tiny(use_vae=False)), with_stats(tiny(use_vae=False, backbone_stride=16))
    qpos, images_in = torch.zeros(1, STATE), [torch.zeros(1, 64, 64, 3, dtype=torch.uint8)]
    n_coarse = coarse.model.observation_tokens(qpos, images_in)[0].shape[1]
    n_fine = fine.model.observation_tokens(qpos, images_in)[0].shape[1]
    assert (n_coarse, n_fine) == (1 + 2 * 2, 1 + 4 * 4)
    optimizer = fine.configure_optimizers()
    fine.train()
    batch = batch_for()
    first = fine.compute_loss(batch)["loss"]
    for _ in range(5):
        optimizer.zero_grad()
        fine.compute_loss(batch)["loss"].backward()
        optimizer.step()
    assert fine.compute_loss(batch)["loss"] < first


def test_random_shift_moves_each_image_by_at_most_pad_with_edge_pixels():
    """Every output image is its input shifted by one (dy, dx) in [-pad, pad]^2 with the edge rows/columns
    repeated (DrQ's replicate pad + crop); the shifts differ between images; pad 0 is the identity."""
    from lit_imit.nets.augment import random_shift

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 12, 10, 3), dtype=torch.uint8)
    assert random_shift(images, 0) is images
    shifted = random_shift(images, 2)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    rows, cols = torch.arange(12), torch.arange(10)
    found = []
    for i in range(16):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(shifted[i], images[i][(rows + dy).clamp(0, 11)][:, (cols + dx).clamp(0, 9)])]
        assert len(matches) == 1, (i, matches)
        found.append(matches[0])
    assert len(set(found)) > 3
    with pytest.raises(ValueError, match="pad"):
        random_shift(images, -1)


def test_image_shift_augments_training_batches_only():
    """image_shift > 0: two training-mode losses on one batch differ (fresh shifts), eval-mode losses are equal
    and equal to those of a module without the option."""
    torch.manual_seed(0)
    plain = with_stats(tiny(use_vae=False))
    shifted = with_stats(tiny(use_vae=False, image_shift=4))
    shifted.load_state_dict(plain.state_dict())
    batch = batch_for(batch_size=4)
    shifted.train(), plain.train()
    assert torch.equal(plain.compute_loss(batch)["loss"], plain.compute_loss(batch)["loss"])  # nothing else random
    assert not torch.equal(shifted.compute_loss(batch)["loss"], shifted.compute_loss(batch)["loss"])
    shifted.eval(), plain.eval()
    assert torch.equal(shifted.compute_loss(batch)["loss"], plain.compute_loss(batch)["loss"])
    with pytest.raises(ValueError, match="image_shift"):
        tiny(image_shift=-1)


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    module = with_stats(tiny(("top", "wrist")))
    obs = env_obs(2, ("top", "wrist"))
    path = tmp_path / "act.pt"
    torch.save(module.state_dict(), path)
    fresh = tiny(("top", "wrist"))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh.predict_chunk(obs), module.predict_chunk(obs))
    assert torch.equal(fresh.select_action(obs), module.select_action(obs))


def test_lightning_checkpoint_round_trip(tmp_path):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    module = with_stats(tiny())
    samples = [{k: v[i] for k, v in batch_for(batch_size=2).items()} for i in range(2)]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(samples, batch_size=2), DataLoader(samples, batch_size=2))
    assert "val/loss" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics
    ckpt = tmp_path / "act.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = ACTModule.load_from_checkpoint(ckpt, weights_only=True)
    assert loaded.hparams.chunk_size == K and list(loaded.hparams.cameras) == ["top"]
    assert bool(loaded.stats_initialized)
    obs = env_obs(2)
    assert torch.equal(loaded.predict_chunk(obs), module.predict_chunk(obs))


def test_trains_under_bf16_autocast():
    """What Trainer(precision="bf16-mixed") runs: finite fp32 losses and gradients on every trainable tensor."""
    torch.manual_seed(0)
    module = with_stats(tiny(("top", "wrist")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = module.compute_loss(batch_for(("top", "wrist")))
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_image_pos_in_tokens_adds_the_cell_encoding_to_the_image_tokens_only():
    """Same weights: the image tokens differ by exactly their 2-D encoding; qpos token and positions do not."""
    torch.manual_seed(0)
    plain = tiny(channels_last=False)
    with_pos = tiny(channels_last=False, image_pos_in_tokens=True)
    with_pos.load_state_dict(plain.state_dict())
    batch = batch_for()
    qpos, images, extra = plain._observation(batch)
    tokens, pos = plain.model.observation_tokens(qpos, images, extra)
    tokens_pos, pos_pos = with_pos.model.observation_tokens(qpos, images, extra)
    torch.testing.assert_close(pos_pos, pos)
    torch.testing.assert_close(tokens_pos[:, :1], tokens[:, :1])  # the qpos token
    torch.testing.assert_close(tokens_pos[:, 1:] - tokens[:, 1:], pos[:, 1:].expand_as(tokens[:, 1:]))
    assert pos[:, 1:].abs().sum() > 0


def _aux_module(**overrides) -> ACTModule:
    module = tiny(channels_last=False, use_vae=False, aux_state_keys=["env_state"], aux_state_dim=7, **overrides)
    g = torch.Generator().manual_seed(1)
    module.load_stats({key: {"mean": torch.randn(d, generator=g), "std": torch.rand(d, generator=g) + 0.5,
                             "min": -torch.ones(d), "max": torch.ones(d)}
                       for key, d in (("qpos", STATE), ("env_state", 7), ("action", ACTION))})
    return module


def test_aux_state_head_regresses_the_normalised_target_from_the_images():
    """The aux term is the MSE of the head against the mean/std-normalised env_state, weighted into the loss;
    its gradient reaches the backbone; the data must carry env_state, the policy never reads it."""
    torch.manual_seed(0)
    module = _aux_module(aux_weight=0.5)
    batch = batch_for()
    batch["env_state"] = torch.randn(2, 7, generator=torch.Generator().manual_seed(3))
    losses = module.compute_loss(batch)
    qpos, images, extra = module._observation(batch)
    actions, is_pad = module._targets(batch)
    out = module.model(qpos, images, actions, is_pad, extra_states=extra)
    assert module.model(qpos, images, extra_states=extra).aux is None  # acting computes no aux
    stats = module.normalizer
    target = (batch["env_state"] - stats.stat("env_state", "mean")) / stats.stat("env_state", "std")
    torch.testing.assert_close(losses["aux"], (out.aux - target).pow(2).mean())
    torch.testing.assert_close(losses["loss"], losses["l1"] + 0.5 * losses["aux"])
    losses["aux"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.model.action_head.parameters())
    assert sum(p.grad.abs().sum() for p in module.model.backbone_parameters() if p.grad is not None) > 0
    assert module.data_requirements()["state_keys"][1] == ["qpos", "env_state"]
    with pytest.raises(ValueError, match=r"state_keys \+ aux_state_keys=\['qpos', 'env_state'\] needs data"):
        module.check_data_compatibility(type("Data", (), {"state_keys": ["qpos"]})())
    assert module.predict_chunk(env_obs()).shape == (2, K, ACTION)  # no env_state in the observation
    del batch["env_state"]
    with pytest.raises(KeyError, match="auxiliary target.*env_state"):
        module.compute_loss(batch)


def test_aux_state_keys_are_refused_as_inputs_or_without_cameras():
    with pytest.raises(ValueError, match="must not be inputs"):
        tiny(cameras=(), state_keys=["qpos", "env_state"], state_dim=[STATE, 7], aux_state_keys=["env_state"])
    with pytest.raises(ValueError, match="aux_dim needs cameras"):
        tiny(cameras=(), aux_state_keys=["env_state"])


def square_batch(module: ACTModule) -> dict:
    """8 images of a bright 8x8 square on black; env_state's first two entries (normalised) are its corner."""
    g = torch.Generator().manual_seed(4)
    batch = act_batch(8, ("top",), (64, 64), STATE, ACTION, K, seed=2)
    corners = torch.randint(0, 56, (8, 2), generator=g)
    images = torch.zeros(8, 64, 64, 3, dtype=torch.uint8)
    for i, (r, c) in enumerate(corners.tolist()):
        images[i, r:r + 8, c:c + 8] = 255
    batch["images/top"] = images
    mean, std = module.normalizer.stat("env_state", "mean"), module.normalizer.stat("env_state", "std")
    batch["env_state"] = mean + std * torch.cat([corners.float() / 28 - 1, torch.zeros(8, 5)], dim=1)
    return batch


@pytest.mark.parametrize("head", [{"image_pos_in_tokens": True}, {"aux_state_token": True}],
                         ids=["encoder_tokens", "keypoint_token"])
def test_aux_state_loss_falls_when_the_target_is_in_the_image(head):
    """A bright square's position (the target) must become readable within 150 steps, by the head on the encoder's
    image tokens and by the keypoint head of the estimate token alike."""
    torch.manual_seed(0)
    module = _aux_module(lr=3e-3, lr_backbone=1e-3, backbone_stride=16, **head)
    history = [losses["aux"] for losses in train_on(module, square_batch(module), 150)]
    assert history[-1] < 0.1 * history[0], history[::15]


def test_state_noise_perturbs_training_inputs_only():
    """Training batches get N(0, std^2) on the normalised qpos (and extra states); eval mode reads them as given."""
    torch.manual_seed(0)
    module = with_stats(tiny(state_noise_std=0.5, use_vae=False))  # no posterior sampling: noise is the only draw
    clean = [torch.zeros(20000, STATE), torch.ones(20000, 7)]
    module.train()
    noisy = module._noisy_states(clean)
    assert abs(noisy[0].std().item() - 0.5) < 0.01 and abs(noisy[0].mean().item()) < 0.01
    assert abs((noisy[1] - 1).std().item() - 0.5) < 0.01
    batch = batch_for()
    assert module.compute_loss(batch)["loss"] != module.compute_loss(batch)["loss"]  # fresh noise per batch
    module.eval()
    assert all(out is given for out, given in zip(module._noisy_states(clean), clean))
    assert module.compute_loss(batch)["loss"] == module.compute_loss(batch)["loss"]
    with pytest.raises(ValueError, match="state_noise_std"):
        tiny(state_noise_std=-0.1)


def test_aux_state_token_feeds_the_detached_estimate_to_the_encoder():
    """aux_state_token: one more encoder token, the projection of the keypoint head's estimate; the action loss
    does not train the head (detached), the aux term does and reaches the backbone; acting uses the estimate."""
    torch.manual_seed(0)
    plain = _aux_module()
    module = _aux_module(aux_state_token=True)
    batch = batch_for()
    batch["env_state"] = torch.randn(2, 7, generator=torch.Generator().manual_seed(3))
    qpos, images, extra = module._observation(batch)
    tokens, pos, estimate = module.model.observation_tokens_and_estimate(qpos, images, extra)
    n_plain = plain.model.observation_tokens(qpos, images, extra)[0].shape[1]
    assert tokens.shape[1] == pos.shape[1] == n_plain + 1 and estimate.shape == (2, 7)
    torch.testing.assert_close(tokens[:, 1], module.model.aux_token_proj(estimate))  # after qpos, before the images
    torch.testing.assert_close(pos[0, 1], module.model.extra_pos_embed.weight[-1])
    losses = module.compute_loss(batch)
    (losses["l1"]).backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.model.aux_head.parameters())
    assert module.model.aux_token_proj.weight.grad.abs().sum() > 0
    module.zero_grad()
    losses["aux"].backward()
    assert all(p.grad.abs().sum() > 0 for p in module.model.aux_head.parameters())
    assert sum(p.grad.abs().sum() for p in module.model.backbone_parameters() if p.grad is not None) > 0
    stats = module.normalizer
    target = (batch["env_state"] - stats.stat("env_state", "mean")) / stats.stat("env_state", "std")
    with torch.no_grad():
        torch.testing.assert_close(losses["aux"], (estimate - target).pow(2).mean())
    obs = env_obs()
    before = module.predict_chunk(obs)
    with torch.no_grad():
        module.model.aux_token_proj.bias.add_(1.0)  # only the token's content changes
    assert not torch.allclose(module.predict_chunk(obs), before)
    with pytest.raises(ValueError, match="aux_state_token needs aux_state_keys"):
        tiny(aux_state_token=True)


def test_aux_token_target_noise_teacher_forces_the_token_in_training_only():
    """In training the token carries the true normalised target (sigma 0: exactly it); validation and acting the
    estimate; the aux loss still trains the estimate."""
    torch.manual_seed(0)
    module = _aux_module(aux_state_token=True, aux_token_target_noise=0.0)
    batch = batch_for()
    batch["env_state"] = torch.randn(2, 7, generator=torch.Generator().manual_seed(3))
    target = module._aux_targets(batch)
    captured = []
    proj = module.model.aux_token_proj
    handle = proj.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach().clone()))
    module.train()
    module.compute_loss(batch)["aux"].backward()
    torch.testing.assert_close(captured[-1], target)
    assert all(p.grad.abs().sum() > 0 for p in module.model.aux_head.parameters())
    module.eval()
    module.compute_loss(batch)
    qpos, images, extra = module._observation(batch)
    estimate = module.model.observation_tokens_and_estimate(qpos, images, extra)[2]
    torch.testing.assert_close(captured[-1], estimate.detach())
    handle.remove()
    noisy = _aux_module(aux_state_token=True, aux_token_target_noise=0.5)
    assert not torch.equal(noisy._teacher_forced_token(target), target)
    assert noisy.eval()._teacher_forced_token(target) is None
    with pytest.raises(ValueError, match="aux_token_target_noise needs aux_state_token"):
        _aux_module(aux_token_target_noise=0.1)
