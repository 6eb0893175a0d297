"""Pretrained weights that a config asks for and that are not on this machine stop the run, with a message
that says how to provide them, unless the config says ``allow_random_init: true``; nothing ever downloads.

Every test runs with empty, private caches (torchvision's hub dir, the Hugging Face cache, open_clip's URL
cache) and with sockets that refuse to connect, so a download attempt fails the test instead of hanging."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml

from lit_imit.benchmarking import act_batch
from lit_imit.modules.act import ACTModule
from lit_imit.nets.backbones import ResNet18Features, imagenet_weights_cache_path
from lit_imit.nets.pretrained import PretrainedWeightsUnavailable
from tests.conftest import ROOT

K = 4
TINY_ACT = dict(cameras=["top"], chunk_size=K, n_action_steps=K, dim_model=16, n_heads=2, dim_feedforward=32,
                n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=4, dropout=0.0,
                n_uncertainty_samples=2)
#: the paper configs: they ask for pretrained weights and must never fall back to random init on their own
PAPER_CONFIGS = {
    "act/transfer_cube.yaml": "pretrained_backbone", "act/insertion.yaml": "pretrained_backbone",
    "act/askdagger_transfer_cube.yaml": "pretrained_backbone", "act/mycobot_move_cube.yaml": "pretrained_backbone",
    "cliport/put_block_in_bowl.yaml": "clip_pretrained", "cliport/packing_shapes.yaml": "clip_pretrained",
    "cliport/askdagger_put_block_in_bowl.yaml": "clip_pretrained",
    "cliport/askdagger_packing_shapes.yaml": "clip_pretrained",
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Empty private weight caches, and no network (a connection attempt raises)."""
    import huggingface_hub.constants

    import lit_imit.nets.cliport as cliport_nets

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setattr(cliport_nets, "CLIP_URL_CACHE", tmp_path / "clip_cache")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---- ACT: ResNet-18 ---------------------------------------------------------------------------------------
def test_act_without_cached_imagenet_weights_stops_and_says_how_to_provide_them():
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        ACTModule(**TINY_ACT, pretrained_backbone="imagenet")
    message = str(info.value)
    cache = imagenet_weights_cache_path()
    assert cache.name == "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file
    assert str(cache) in message and "allow_random_init: true" in message
    assert "pretrained_backbone: /path/to/resnet18.pth" in message and "state_dict" in message


def test_act_with_allow_random_init_warns_and_trains():
    with pytest.warns(UserWarning, match="RANDOM INIT") as record:
        module = ACTModule(**TINY_ACT, pretrained_backbone="imagenet", allow_random_init=True)
    assert sum("RANDOM INIT" in str(w.message) for w in record) == 1  # one warning, not one per layer or call
    assert module.model.backbones[0].weights_source.startswith("random init")
    assert module.hparams.allow_random_init is True  # saved: a checkpoint rebuilds the same way
    loss = module.compute_loss(act_batch(2, ["top"], (32, 32), 14, 14, K))["loss"]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("allow_random_init", [False, True])
def test_act_missing_weights_file_is_an_error_naming_it(tmp_path, allow_random_init):
    missing = tmp_path / "no" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ACTModule(**TINY_ACT, pretrained_backbone=str(missing), allow_random_init=allow_random_init)


def test_act_loads_a_local_resnet18_state_dict(tmp_path):
    torch.manual_seed(5)
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    module = ACTModule(**TINY_ACT, pretrained_backbone=str(path))
    loaded = module.model.backbones[0].state_dict()
    assert loaded.keys() == {k for k in state if not k.startswith("fc.") and "num_batches_tracked" not in k}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    """A random torchvision resnet18 state dict, as an ImageNet file is laid out (fc and BN counters too)."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():  # non-trivial statistics, so that a skipped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net.state_dict()


def test_imagenet_file_is_read_from_the_torchvision_cache(tmp_path):
    state = torchvision_resnet18_state()
    cache = imagenet_weights_cache_path()
    assert cache.is_relative_to(tmp_path)
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    backbone = ResNet18Features("imagenet")
    assert torch.equal(backbone.layer2[0].downsample[1].running_var, state["layer2.0.downsample.1.running_var"])


# ---- CLIPort: CLIP ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random open_clip RN50 saved as a state dict (the layout of open_clip_pytorch_model.bin)."""
    import open_clip

    torch.manual_seed(7)
    state = open_clip.create_model("RN50", pretrained=None).state_dict()
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    return path, state


def _assert_clip_weights(clip, state: dict[str, torch.Tensor]) -> None:
    assert clip.pretrained_loaded is True
    loaded = clip.model.state_dict()
    for key in ("visual.layer3.0.conv2.weight", "visual.bn1.running_var", "token_embedding.weight",
                "transformer.resblocks.0.mlp.c_fc.weight", "text_projection"):
        assert torch.equal(loaded[key], state[key]), key


def test_cliport_without_cached_clip_weights_stops_and_says_how_to_provide_them(tmp_path):
    from lit_imit.modules.cliport import CLIPortModule, tiny_config

    with pytest.raises(PretrainedWeightsUnavailable) as info:
        CLIPortModule(**tiny_config(clip_overrides=None, clip_pretrained="openai"))
    message = str(info.value)
    assert "allow_random_init: true" in message and "clip_pretrained: /path/to/RN50.bin" in message
    assert str(tmp_path / "hf_hub" / "models--timm--resnet50_clip.openai") in message  # the HF cache looked up
    assert str(tmp_path / "clip_cache" / "RN50.pt") in message  # open_clip's URL cache


@pytest.mark.parametrize("allow_random_init", [False, True])
def test_cliport_missing_clip_file_is_an_error_naming_it(tmp_path, allow_random_init):
    from lit_imit.modules.cliport import CLIPortModule, tiny_config

    missing = tmp_path / "RN50.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        CLIPortModule(**tiny_config(clip_overrides=None, clip_pretrained=str(missing),
                                    allow_random_init=allow_random_init))


def test_cliport_passes_allow_random_init_to_its_clip(monkeypatch):
    """The module-level switch reaches the CLIP encoder (a CLIPort with the full RN50 is too big to build here;
    the encoder's own warning and random init are tested in test_cliport_nets.py)."""
    import lit_imit.nets.cliport as cliport_nets
    from lit_imit.modules.cliport import CLIPortModule, tiny_config

    seen = {}

    class Built(Exception):
        pass

    def fake_encoders(model_name, pretrained, overrides, trainable, allow_random_init):
        seen.update(pretrained=pretrained, allow_random_init=allow_random_init)
        raise Built

    monkeypatch.setattr(cliport_nets, "CLIPEncoders", fake_encoders)
    with pytest.raises(Built):
        CLIPortModule(**tiny_config(clip_overrides=None, clip_pretrained="openai", allow_random_init=True))
    assert seen == {"pretrained": "openai", "allow_random_init": True}


def test_clip_loads_a_local_checkpoint_file(clip_file):
    from lit_imit.nets.cliport import CLIPEncoders

    path, state = clip_file
    _assert_clip_weights(CLIPEncoders("RN50", pretrained=str(path)), state)


def test_clip_tag_is_read_from_the_hugging_face_cache_with_its_quickgelu(tmp_path, clip_file):
    """A tag resolves to the file open_clip's download would have left in the HF cache; the OpenAI weights'
    QuickGELU, which open_clip's plain "RN50" config lacks, is applied."""
    from lit_imit.nets.cliport import CLIPEncoders

    path, state = clip_file
    repo = tmp_path / "hf_hub" / "models--timm--resnet50_clip.openai"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").symlink_to(path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    clip = CLIPEncoders("RN50", pretrained="openai")
    _assert_clip_weights(clip, state)
    assert type(clip.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


# ---- configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_keep_asking_for_pretrained_weights(name):
    """A paper config asks for its weights and does not opt into random init: offline it stops, it never
    silently trains a different model."""
    init_args = yaml.safe_load((ROOT / "configs" / name).read_text())["model"]["init_args"]
    assert init_args[PAPER_CONFIGS[name]] in ("imagenet", "openai")
    assert not init_args.get("allow_random_init", False)


def test_a_damaged_weights_file_is_a_one_line_error_naming_it(tmp_path):
    """A truncated download is reported as such (not as torch's unpickling advice to set weights_only=False)."""
    from lit_imit.checkpoints import CheckpointError
    from lit_imit.nets.backbones import load_pretrained_state

    good = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(2)}, good)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="damaged.pth"):
        load_pretrained_state(str(damaged))
