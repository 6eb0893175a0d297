"""SkillPriorModule: each stage's loss falls, stages chain through checkpoints, FIST's lookup, SkiLD's policy."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lit_imit.data.skills import SkillDataModule
from lit_imit.modules.skill_prior import SkillPriorModule
from lit_imit.nets.skills import OpenLoopDecoder, gaussian_kl, weighted_product
from tests.test_skills_data import make_store

TINY = dict(state_dim=4, action_dim=2, horizon=5, latent_dim=3, hidden_dim=16, n_layers=2, encoder_hidden=16,
            prior_hidden=16, prior_layers=2, contrastive_hidden=16, contrastive_dim=8, discriminator_hidden=8)

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models on a shared CPU: one intra-op thread avoids oversubscription stalls (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("skills")
    make_store(root / "play", episodes=6, length=40)
    make_store(root / "demo", episodes=3, length=30, offset=3.0, seed=77)
    return str(root / "play"), str(root / "demo")


def datamodule(data_dir, **kwargs):
    dm = SkillDataModule(data_dir, horizon=5, batch_size=32, val_episodes=0, num_workers=0, seed=1, **kwargs)
    dm.setup("fit")
    return dm


def train(module, dm, steps: int) -> list[float]:
    """Plain optimisation loop on the module's own loss, returning the loss per step."""
    if not bool(module.stats_initialized):
        module.load_stats(dm.stats)
    opt = module.configure_optimizers()
    losses = []
    batches = list(dm.train_dataloader())
    for step in range(steps):
        loss = module.compute_loss(batches[step % len(batches)])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def fitted_checkpoint(module, dm, path, steps: int = 1) -> str:
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         accelerator="cpu", use_distributed_sampler=False, num_sanity_val_steps=0,
                         limit_val_batches=0, enable_model_summary=False)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.mark.parametrize("stage", ["skill_prior", "goal_conditioned", "contrastive"])
def test_play_stage_losses_fall(stores, stage):
    torch.manual_seed(0)
    module = SkillPriorModule(stage=stage, optimizer="adam", lr=3e-3, **TINY)
    losses = train(module, datamodule(stores[0]), 150)
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15]), (stage, losses[:3], losses[-3:])


def test_validation_reports_how_much_the_decoder_reads_z(stores):
    """recon_mean_z is the decoded posterior mean's error (by hand), and a trained skill VAE reconstructs
    clearly better from it than from z = 0; stages without a VAE do not report them."""
    torch.manual_seed(0)
    module = SkillPriorModule(stage="skill_prior", optimizer="adam", lr=3e-3, **TINY)
    dm = datamodule(stores[0])
    train(module, dm, 200)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        losses = module.evaluation_losses(batch)
        states, actions = module._states(batch), module._actions(batch)
        mean, _ = module._encode(states, actions)
        by_hand = 0.5 * (module._decode_sequence(states, mean) - actions).pow(2).mean()
    assert torch.allclose(losses["recon_mean_z"], by_hand)
    assert losses["recon_mean_z"] < 0.8 * losses["recon_zero_z"], losses
    contrastive = SkillPriorModule(stage="contrastive", **TINY)
    contrastive.load_stats(dm.stats)
    assert "recon_zero_z" not in contrastive.evaluation_losses(batch)  # no VAE trains in that stage


def test_raw_states_option_feeds_the_networks_unnormalised_states(stores):
    """normalize_states: false (SPiRL's / FIST's raw states): no statistics, no clipping; the default
    normalises with the play statistics and clips."""
    dm = datamodule(stores[0])
    states = torch.tensor([[1.0, -2.0, 300.0, 0.5]])
    raw = SkillPriorModule(normalize_states=False, **TINY)
    raw.load_stats(dm.stats)
    assert torch.equal(raw.normalize_state(states), states)
    normalised = SkillPriorModule(**TINY)
    normalised.load_stats(dm.stats)
    assert float(normalised.normalize_state(states).abs().max()) <= normalised.hparams.state_clip


def test_raw_still_dims_only_centres_the_dimensions_the_play_data_never_moves():
    """raw_still_dims: a dimension whose std sits at the floor is centred, not divided by 0.01 (a knob turned by
    -1.2 rad enters as -1.2, not at the clip bound); the moving dimensions are normalised as before."""
    stats = {"state": {"mean": [1.0, 0.0, 2.0, 0.0], "std": [2.0, 0.01, 0.5, 1.0], "min": [-9.0] * 4,
                       "max": [9.0] * 4},
             "action": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "min": [-1.0] * 2, "max": [1.0] * 2}}
    states = torch.tensor([[3.0, -1.2, 3.0, 0.5]])
    still = SkillPriorModule(raw_still_dims=True, **TINY)
    still.load_stats(stats)
    assert torch.allclose(still.normalize_state(states), torch.tensor([[1.0, -1.2, 2.0, 0.5]]))
    default = SkillPriorModule(**TINY)
    default.load_stats(stats)
    assert torch.allclose(default.normalize_state(states), torch.tensor([[1.0, -10.0, 2.0, 0.5]]))  # clipped


def test_open_loop_decoder_variant_trains(stores):
    torch.manual_seed(0)
    module = SkillPriorModule(stage="skill_prior", decoder="open_loop", optimizer="adam", lr=3e-3, **TINY)
    assert isinstance(module.decoder, OpenLoopDecoder)
    losses = train(module, datamodule(stores[0]), 100)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    module.reset()
    actions = [module.select_action({"state": np.zeros((3, 4), np.float32)}) for _ in range(7)]
    assert all(a.shape == (3, 2) for a in actions)


def test_stage_chaining_loads_and_freezes_parts(stores, tmp_path):
    torch.manual_seed(0)
    play, demo = stores
    prior = SkillPriorModule(stage="skill_prior", **TINY)
    prior_ckpt = fitted_checkpoint(prior, datamodule(play), tmp_path / "prior.ckpt", steps=3)

    posterior = SkillPriorModule(
        stage="posterior", init_from=[{"ckpt": prior_ckpt, "parts": ["skill_encoder", "decoder", "prior"]}], **TINY)
    for part in ("skill_encoder", "decoder", "prior"):
        for key, value in getattr(posterior, part).state_dict().items():
            assert torch.equal(value, getattr(prior, part).state_dict()[key]), (part, key)
    assert torch.equal(posterior.normalizer.stat("state", "mean"), prior.normalizer.stat("state", "mean"))
    assert {n for n, p in posterior.named_parameters() if p.requires_grad} == {
        n for n, _ in posterior.named_parameters() if n.startswith("posterior.")}
    frozen_before = {k: v.clone() for k, v in posterior.skill_encoder.state_dict().items()}
    demo_dm = datamodule(demo)
    losses = train(posterior, demo_dm, 120)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    for key, value in posterior.skill_encoder.state_dict().items():
        assert torch.equal(value, frozen_before[key])  # the embedding stayed frozen
    # normalisation stays the play data's even though the posterior trains on demonstrations
    assert torch.equal(posterior.normalizer.stat("state", "mean"), prior.normalizer.stat("state", "mean"))
    post_ckpt = fitted_checkpoint(posterior, demo_dm, tmp_path / "posterior.ckpt")

    disc = SkillPriorModule(stage="discriminator", optimizer="adam", lr=3e-3, init_from=[
        {"ckpt": post_ckpt, "parts": ["skill_encoder", "decoder", "prior", "posterior"]}], **TINY)
    mixed = datamodule(play, demo_dir=demo, demo_fraction=0.5)
    losses = train(disc, mixed, 150)
    assert np.mean(losses[-10:]) < 0.5 * math.log(2)  # well below the BCE of chance (ln 2)
    batch = next(iter(mixed.train_dataloader()))
    assert float(disc.compute_loss(batch)["accuracy"]) > 0.9
    disc.reset()
    assert disc.policy == "skild"
    assert disc.select_action({"state": np.zeros((2, 4), np.float32)}).shape == (2, 2)


def test_posterior_stage_requires_a_frozen_embedding_and_bad_parts_are_named(tmp_path):
    with pytest.raises(ValueError, match="trained skill embedding"):  # when training would start
        SkillPriorModule(stage="posterior", **TINY).configure_optimizers()
    with pytest.raises(ValueError, match="unknown parts"):
        SkillPriorModule(init_from=[{"ckpt": "x.ckpt", "parts": ["wheels"]}], **TINY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SkillPriorModule(init_from=[{"ckpt": str(tmp_path / "none.ckpt"), "parts": ["prior"]}], **TINY)
    with pytest.raises(ValueError, match="stage must be"):
        SkillPriorModule(stage="rl", **TINY)


def test_mismatched_part_shapes_are_a_clear_error(stores, tmp_path):
    ckpt = fitted_checkpoint(SkillPriorModule(**TINY), datamodule(stores[0]), tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="does not fit this model's config"):
        SkillPriorModule(init_from=[{"ckpt": ckpt, "parts": ["decoder"]}], **{**TINY, "hidden_dim": 32})


def test_fist_lookup_picks_the_goal_h_steps_after_the_nearest_demo_state():
    module = SkillPriorModule(stage="goal_conditioned", policy="fist", use_distance=False, state_clip=1e3, **TINY)
    module.load_stats({"state": {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [0.0] * 4, "max": [1.0] * 4}})
    line = np.stack([np.arange(12.0), np.zeros(12), np.zeros(12), np.zeros(12)], axis=1)  # x = 0..11
    other = np.stack([np.zeros(6), 100 + np.arange(6.0), np.zeros(6), np.zeros(6)], axis=1)  # far away
    module.set_lookup_demos([line, other])
    goals, rows = module.fist_goals(torch.tensor([[2.2, 0.1, 0, 0], [9.0, 0, 0, 0], [0, 103.4, 0, 0]]))
    assert rows.tolist() == [2, 9, 12 + 3]
    assert goals[0, 0] == 2 + 5  # H = 5 steps later on the same demonstration
    assert goals[1, 0] == 11  # clipped to the demonstration's end
    assert goals[2, 1] == 100 + 5  # the second demonstration's own end, not the first's
    # with the contrastive encoder the match happens in feature space: identical features, identical row
    module.hparams.use_distance = True
    module._lookup_features = None
    _, rows = module.fist_goals(torch.tensor([[5.0, 0, 0, 0]]))
    assert rows.tolist() == [5]


def test_fist_policy_replans_every_k_steps_and_checkpoint_carries_the_demos(tmp_path):
    module = SkillPriorModule(stage="goal_conditioned", replan_every=2, **TINY)
    module.set_lookup_demos([np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)])
    calls = []
    original = module.skill_distribution
    module.skill_distribution = lambda states: calls.append(1) or original(states)
    module.reset()
    for _ in range(5):
        action = module.select_action({"state": np.zeros((3, 4), np.float32)})
    assert action.shape == (3, 2) and float(action.abs().max()) <= 1.0
    assert len(calls) == 3  # steps 0, 2, 4
    state = module.state_dict()
    torch.save(state, tmp_path / "sd.pt")
    fresh = SkillPriorModule(stage="goal_conditioned", replan_every=2, **TINY)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(fresh.lookup_states, module.lookup_states)
    assert torch.equal(fresh.lookup_goal_index, module.lookup_goal_index)
    with pytest.raises(RuntimeError, match="needs demonstrations"):
        SkillPriorModule(stage="goal_conditioned", **TINY).select_action({"state": np.zeros((1, 4), np.float32)})


def test_skild_policy_follows_the_posterior_where_d_is_high_and_the_prior_elsewhere():
    q = (torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2))
    p = (torch.tensor([[-1.0, -1.0]]), torch.zeros(1, 2))
    for d, expected in ((1.0, 1.0), (0.0, -1.0), (0.5, 0.0)):
        mean, log_std = weighted_product(q[0], q[1], torch.tensor([[d]]), p[0], p[1], torch.tensor([[1 - d]]))
        assert torch.allclose(mean, torch.full((1, 2), expected), atol=1e-5)
        assert torch.allclose(log_std, torch.zeros(1, 2), atol=1e-5)
    # the product minimises d KL(pi || q) + (1 - d) KL(pi || p): nudging its mean increases the objective
    d = 0.3
    mean, log_std = weighted_product(q[0], q[1], torch.tensor([[d]]), p[0], p[1], torch.tensor([[1 - d]]))

    def objective(m):
        return float(d * gaussian_kl(m, log_std, *q).sum() + (1 - d) * gaussian_kl(m, log_std, *p).sum())

    assert objective(mean) < objective(mean + 0.05) and objective(mean) < objective(mean - 0.05)


def test_predict_reports_a_spread_and_checkpoint_hparams_are_plain(stores, tmp_path):
    module = SkillPriorModule(stage="skill_prior", **TINY)
    ckpt = fitted_checkpoint(module, datamodule(stores[0]), tmp_path / "p.ckpt", steps=2)
    loaded = torch.load(ckpt, weights_only=True)  # no numpy or custom objects anywhere
    assert loaded["hyper_parameters"]["stage"] == "skill_prior"
    module.reset()
    pred = module.predict({"state": np.zeros((4, 4), np.float32)})
    assert pred.action.shape == (4, 2) and pred.uncertainty.shape == (4,)
    assert bool((pred.uncertainty >= 0).all())


def test_states_far_outside_the_play_data_are_clipped_so_losses_stay_finite():
    module = SkillPriorModule(stage="goal_conditioned", state_clip=5.0, **TINY)
    # dimension 3 never moved in the play data (std floored at 0.01); the demonstrations move it by 1.0
    module.load_stats({"state": {"mean": [0.0] * 4, "std": [1.0, 1.0, 1.0, 0.01], "min": [0.0] * 4,
                                 "max": [1.0] * 4}})
    states = torch.zeros(8, 6, 4)
    states[..., 3] = 1.0  # 100 sigma
    normalized = module.normalize_state(states)
    assert float(normalized.abs().max()) == 5.0
    batch = {"state": states, "action": torch.zeros(8, 5, 2), "weight": torch.ones(8)}
    losses = module.compute_loss(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="state_clip"):
        SkillPriorModule(state_clip=0.0, **TINY)


def test_the_data_takes_the_skill_length_from_the_model(tmp_path):
    """A config says H once, in the model; a data horizon that disagrees fails naming both keys."""
    model = SkillPriorModule(stage="skill_prior", **TINY)
    alone = SkillDataModule(str(tmp_path / "play"))
    assert alone.horizon == 10 and alone.action_dim is None  # without a model: the papers' H
    alone.adopt_model_settings(model)
    assert alone.horizon == 5 and alone.action_dim == 2
    model.check_data_compatibility(alone)
    fixed = SkillDataModule(str(tmp_path / "play"), horizon=7)
    fixed.adopt_model_settings(model)
    assert fixed.horizon == 7
    with pytest.raises(ValueError, match=r"model.init_args.horizon=5 needs data.init_args.horizon to be 5, got 7"):
        model.check_data_compatibility(fixed)
