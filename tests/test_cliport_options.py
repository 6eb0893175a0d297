"""CLIPort options from ASkDAgger: the LeakyReLU activation and the confidence / margin uncertainty measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lit_imit.benchmarking import cliport_batch
from lit_imit.modules.cliport import (
    CLIPortModule,
    confidence,
    entropy,
    heatmap_uncertainty,
    margin,
    tiny_config,
)
from lit_imit.nets.cliport import normalize_clip, normalize_spatial
from lit_imit.nets.transporter import LEAKY_RELU_SLOPE, activation_layer

SMALL_HW = (32, 32)
MEASURES = ("entropy", "confidence", "margin")


def tiny_module(**overrides) -> CLIPortModule:
    torch.manual_seed(0)
    return CLIPortModule(**tiny_config(n_rotations=4, crop_size=32, **overrides))


def streams(module: CLIPortModule) -> list[nn.Module]:
    """The trainable two-stream nets (everything but the frozen CLIP)."""
    return [module.net.attention, module.net.key, module.net.query]


class ActivationCalls(TorchFunctionMode):
    """Records the activation functions called, however they are reached (modules or functional calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if "relu" in name:
            self.names.add(name.rstrip("_"))
        return func(*args, **(kwargs or {}))


# ---- activation --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relu_and_leaky() -> tuple[CLIPortModule, CLIPortModule]:
    return tiny_module(), tiny_module(activation="leaky_relu")


def test_leaky_relu_replaces_every_relu_of_the_streams_and_keeps_the_state_dict_keys(relu_and_leaky):
    relu, leaky = relu_and_leaky
    assert relu.hparams.activation == "relu"
    for net in streams(leaky):
        kinds = [type(m) for m in net.modules()]
        assert nn.LeakyReLU in kinds and nn.ReLU not in kinds
        assert all(m.negative_slope == LEAKY_RELU_SLOPE for m in net.modules() if isinstance(m, nn.LeakyReLU))
    for net_relu, net_leaky in zip(streams(relu), streams(leaky)):  # one LeakyReLU where each ReLU was
        n_relu = sum(isinstance(m, nn.ReLU) for m in net_relu.modules())
        assert n_relu == sum(isinstance(m, nn.LeakyReLU) for m in net_leaky.modules()) > 0
    assert list(relu.state_dict()) == list(leaky.state_dict())
    assert {k: v.shape for k, v in relu.state_dict().items()} == {k: v.shape for k, v in leaky.state_dict().items()}
    assert any(isinstance(m, nn.ReLU) for m in leaky.net.clip.modules())  # the frozen CLIP is untouched


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_the_streams_call_only_the_chosen_activation(relu_and_leaky, activation):
    """Functional calls count too: run one two-stream net on precomputed CLIP features and record them."""
    module = relu_and_leaky[activation == "leaky_relu"]
    net = module.net
    raw = cliport_batch(1, hw=SMALL_HW)
    inp = torch.cat([raw["color"].float().permute(0, 3, 1, 2), raw["height"].unsqueeze(1).expand(1, 3, *SMALL_HW)], 1)
    with torch.no_grad():
        features = net.clip.image_features(normalize_clip(inp))
        text = net.encode_text(raw["instruction"])
        with ActivationCalls() as calls:
            net.key(normalize_spatial(inp), features, text)
    assert calls.names == {activation}


def test_leaky_relu_network_trains_and_its_checkpoint_loads_into_a_relu_module(relu_and_leaky):
    relu, leaky = relu_and_leaky
    leaky.train()
    batch = cliport_batch(2, hw=SMALL_HW, seed=1)
    loss = leaky.compute_loss(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in leaky.net.attention.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    leaky.zero_grad(set_to_none=True)
    relu.load_state_dict(leaky.state_dict())  # same keys: strict loading works across activations


def test_leaky_and_plain_relu_differ_only_on_negative_inputs():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert activation_layer("relu")(x).tolist() == [0.0, 0.0, 3.0]
    assert activation_layer("leaky_relu")(x).tolist() == pytest.approx([-2.0 * LEAKY_RELU_SLOPE, 0.0, 3.0])


def test_bad_activation_name_raises():
    with pytest.raises(ValueError, match="relu.*leaky_relu"):
        tiny_module(activation="gelu")


# ---- uncertainty measures ----------------------------------------------------------------------------------
def test_confidence_and_margin_of_a_known_softmax():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    logits = probs.log() + 7.0  # any shift: the softmax is the same
    torch.testing.assert_close(confidence(logits), torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(margin(logits), torch.tensor([1 - (0.5 - 0.3), 1.0]))
    # the measures flatten every non-batch dimension (a place map is R x H x W)
    torch.testing.assert_close(confidence(logits.view(2, 2, 2)), confidence(logits))
    torch.testing.assert_close(margin(logits.view(2, 1, 2, 2)), margin(logits))
    expected_entropy = -(probs * probs.log()).sum(1)
    torch.testing.assert_close(heatmap_uncertainty(logits, "entropy"), expected_entropy)


def test_one_hot_maps_are_certain_under_every_measure():
    one_hot = torch.full((1, 3, 5), -1e4)
    one_hot[0, 1, 2] = 0.0
    for measure in MEASURES:
        assert heatmap_uncertainty(one_hot, measure).item() == pytest.approx(0.0, abs=1e-6)


def test_peaked_maps_are_less_uncertain_than_flat_ones_and_bounds_hold():
    g = torch.Generator().manual_seed(0)
    flat = torch.zeros(3, 8, 6)
    noisy = torch.randn(3, 8, 6, generator=g)
    peaked = noisy.clone()
    peaked[:, 2, 3] += 8.0
    for measure in MEASURES:
        u_flat, u_noisy, u_peaked = (heatmap_uncertainty(x, measure) for x in (flat, noisy, peaked))
        assert (u_peaked < u_noisy).all() and (u_noisy <= u_flat + 1e-6).all(), measure
    for measure in ("confidence", "margin"):
        u = heatmap_uncertainty(torch.randn(50, 4, 4, generator=g) * 5, measure)
        assert ((u >= 0) & (u <= 1)).all()
    assert confidence(flat).tolist() == pytest.approx([1 - 1 / 48] * 3)
    assert margin(flat).tolist() == pytest.approx([1.0] * 3)


def test_bad_measure_name_raises():
    with pytest.raises(ValueError, match="entropy.*confidence.*margin"):
        tiny_module(uncertainty_measure="variance")
    with pytest.raises(ValueError, match="margin"):
        heatmap_uncertainty(torch.zeros(1, 4), "variance")


# ---- predict with each measure -----------------------------------------------------------------------------
def obs_batch(n: int = 3, seed: int = 0) -> dict:
    batch = cliport_batch(n, hw=SMALL_HW, seed=seed)
    return {"color": batch["color"].numpy(), "height": batch["height"].numpy(),
            "instruction": np.asarray(["put the red blocks in a green bowl"] * n)}


@pytest.fixture(scope="module")
def shared() -> CLIPortModule:
    return tiny_module()


@pytest.mark.parametrize("normalizer", ["running_max", "max_entropy"])
@pytest.mark.parametrize("measure", MEASURES)
def test_predict_returns_finite_uncertainties_for_each_measure(shared, measure, normalizer):
    shared.hparams.uncertainty_measure = measure
    shared.hparams.uncertainty_normalizer = normalizer
    shared.entropy_max_pick.zero_()
    shared.entropy_max_place.zero_()
    try:
        prediction = shared.predict(obs_batch(3))
    finally:
        shared.hparams.uncertainty_measure = "entropy"
        shared.hparams.uncertainty_normalizer = "running_max"
    u = prediction.uncertainty
    assert prediction.action.shape == (3, 14)
    assert u.shape == (3,) and torch.isfinite(u).all() and (u >= 0).all() and (u <= 1 + 1e-6).all()
    raw = shared.last_measures
    assert set(raw) == {"pick", "place"} and raw["pick"].shape == (3,)
    if measure == "entropy":
        torch.testing.assert_close(raw["pick"], shared.last_entropies["pick"])
    else:
        assert ((raw["pick"] >= 0) & (raw["pick"] <= 1)).all()
    if normalizer == "running_max":  # the buffers hold the running maxima of the selected measure
        assert shared.entropy_max_pick.item() == pytest.approx(raw["pick"].max().item())
        assert shared.entropy_max_place.item() == pytest.approx(raw["place"].max().item())
    else:  # u = 1/2 (u_pick / M_pick + u_place / M_place), M = log(n) for the entropy and 1 otherwise
        h, w = SMALL_HW
        bounds = (math.log(h * w), math.log(h * w * 4)) if measure == "entropy" else (1.0, 1.0)
        torch.testing.assert_close(u, 0.5 * (raw["pick"] / bounds[0] + raw["place"] / bounds[1]))


def test_uniform_heatmaps_give_the_largest_uncertainty_under_margin(shared, monkeypatch):
    """Margin is already in [0, 1]: with M = 1, tied maps score exactly 1 (confidence: 1 - 1/n)."""
    h, w = SMALL_HW
    monkeypatch.setattr(shared.net, "pick_logits", lambda inp, text: torch.zeros(len(inp), h, w))
    monkeypatch.setattr(shared.net, "place_logits", lambda inp, pick, text: torch.zeros(len(inp), 4, h, w))
    monkeypatch.setitem(shared.hparams, "uncertainty_normalizer", "max_entropy")
    monkeypatch.setitem(shared.hparams, "uncertainty_measure", "margin")
    torch.testing.assert_close(shared.predict(obs_batch(2)).uncertainty, torch.ones(2))
    monkeypatch.setitem(shared.hparams, "uncertainty_measure", "confidence")
    expected = 0.5 * ((1 - 1 / (h * w)) + (1 - 1 / (4 * h * w)))
    torch.testing.assert_close(shared.predict(obs_batch(2)).uncertainty, torch.full((2,), expected))
    assert entropy(torch.zeros(1, h, w)).item() == pytest.approx(math.log(h * w))


def test_channels_last_gives_the_plain_layouts_losses_and_gradients():
    """channels_last (the default) is a speed switch: the same weights give the same losses and gradients as the
    default layout, at the CPU-sized network's downsampled input (its strided 1x1 shortcuts included)."""
    torch.manual_seed(0)
    plain = CLIPortModule(**tiny_config(n_rotations=4, crop_size=32, downsample=4, channels_last=False))
    fast = CLIPortModule(**tiny_config(n_rotations=4, crop_size=32, downsample=4))
    assert fast.hparams.channels_last and not plain.hparams.channels_last
    fast.load_state_dict(plain.state_dict())
    batch = cliport_batch(2)
    losses = [module.training_losses(batch)["loss"] for module in (plain, fast)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    for loss in losses:
        loss.backward()
    # another layout sums in another order: each gradient agrees to 1e-4 of its own largest entry (measured: 1e-5)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        if p.grad is not None:
            scale = p.grad.abs().max().item()
            assert (q.grad - p.grad).abs().max().item() <= 1e-4 * scale + 1e-7, name
