"""CLIPort's two-stream "what/where" pick-and-place network (Shridhar et al., CoRL 2021): plain nn.Modules.

The network maps a top-down 6-channel heightmap (RGB 0..255 plus the height in metres repeated three
times, ``lit_imit.envs.ravens.geometry.heightmap_input``) and a language instruction to

* pick logits over every pixel (the *attention* module), and
* place logits over every pixel x ``n_rotations`` yaws (the *transport* module): a 64x64 crop around the pick
  pixel is rotated ``n_rotations`` times, each rotation is embedded into a query kernel, and the kernels
  are cross-correlated with a key embedding of the whole scene. Rotating the crop rather than learning the
  rotation makes the place prediction equivariant to the pick crop's rotation.

Each of the three embeddings (attention, key, query) is a ``TwoStreamNet``: a Transporter ResNet on the
heightmap (``SpatialStream``, the "where" stream) and a CLIP ResNet U-Net conditioned on the instruction
(``LanguageUNet``, the "what" stream), joined by six lateral connections (spatial -> semantic, concat + 1x1
conv), with the sentence embedding multiplied into three decoder stages. Stream outputs are added
(attention) or concatenated and mixed by a 1x1 conv (transport), as CLIPort's ``cliport`` agent does.

Where this differs from the original, on purpose:

* one frozen CLIP model is shared by all streams (CLIPort loads one per stream, each frozen from the same
  weights, so the features are identical); ``train_clip=True`` trains it instead (not in the paper);
* the CLIP weights come from open_clip: ``clip_pretrained`` is an open_clip tag (e.g. ``"openai"``, read
  from the Hugging Face cache open_clip downloads it into, or from ``~/.cache/clip``; nothing is downloaded)
  or a local checkpoint file; None = random init. Asked-for weights that are not on this machine stop with
  ``PretrainedWeightsUnavailable`` unless ``allow_random_init`` (then random init and a loud warning); a
  missing file is always an error. A tag's QuickGELU setting is applied (the OpenAI weights were trained
  with it; open_clip's "RN50" config alone would build plain GELU); a file is loaded into ``clip_model``'s
  config as it is (name the model ``RN50-quickgelu`` for a file of OpenAI's weights);
* the query crops are sampled directly at their rotated positions (no rotation of the full image) and the
  correlation keeps exactly the output pixels (the original resizes the correlation map by one pixel);
* the streams are He-initialised with identity-initialised residual blocks and the transport averages its
  correlation over the kernel entries instead of summing them (``init="torch"`` restores the original's
  PyTorch default init and raw sum; under it a random stream's output is ~1e-5 of its input's scale);
* widths are configurable (``spatial_width``, ``clip_overrides``) so that tests and CPU runs can use a tiny
  network; the paper's network is the default (spatial width 64, CLIP RN50);
* ``activation="leaky_relu"`` swaps every ReLU of the trainable streams (Transporter ResNet blocks, the
  semantic decoder and its U-Net steps, the lateral fusions, the transport's stream fusion) for a LeakyReLU
  of slope 0.01, as ASkDAgger does against vanishing gradients in interactive training; the frozen CLIP
  keeps its own ReLUs. The default "relu" is CLIPort's.
"""

from __future__ import annotations

import copy
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_imit.nets.pretrained import missing_file, unavailable
from lit_imit.nets.transporter import (
    ConvBlock,
    IdentityBlock,
    SpatialStream,
    activation_layer,
    check_activation,
    correlate,
    he_init_,
    rotated_crops,
    rotation_angles,
)

#: CLIPort's normalisation constants (``utils.preprocess``): Transporter stream colour/depth, CLIP colour
TRANSPORTER_COLOR_MEAN, TRANSPORTER_COLOR_STD = 0.18877631, 0.07276466
DEPTH_MEAN, DEPTH_STD = 0.00509261, 0.00903967
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_STRIDE = 32


def normalize_spatial(x: Tensor) -> Tensor:
    """Raw 6-channel input -> the Transporter stream's normalised input (CLIPort's fixed constants)."""
    rgb = (x[:, :3] / 255.0 - TRANSPORTER_COLOR_MEAN) / TRANSPORTER_COLOR_STD
    depth = (x[:, 3:] - DEPTH_MEAN) / DEPTH_STD
    return torch.cat([rgb, depth], dim=1)


def normalize_clip(x: Tensor) -> Tensor:
    """Raw 6-channel input -> CLIP's normalised RGB (the height channels are not seen by CLIP)."""
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x[:, :3] / 255.0 - mean) / std


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")
#: where open_clip itself caches weights it fetches from a URL (the OpenAI ``clip`` package uses it too)
CLIP_URL_CACHE = Path("~/.cache/clip")


def _looks_like_file(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES)


def _hf_file_names(filename: str) -> list[str]:
    """The files open_clip asks the Hugging Face hub for, in its order (safetensors first)."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if not filename:
        return [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def clip_cache_candidates(tag_cfg: Mapping[str, Any]) -> list[tuple[str, Path | None]]:
    """(description, cached file or None) of every place open_clip's download of a tag would land.

    Only the local caches are looked at (``try_to_load_from_cache`` never touches the network), so a tag
    can be resolved to a file offline and open_clip is then only ever given that file.
    """
    candidates: list[tuple[str, Path | None]] = []
    hf_hub = tag_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        for name in _hf_file_names(filename):
            hit = try_to_load_from_cache(repo_id, name)
            where = (f"{constants.HF_HUB_CACHE}/models--{repo_id.replace('/', '--')}/snapshots/<revision>/{name} "
                     f"(Hugging Face cache of {repo_id})")
            candidates.append((where, Path(hit) if isinstance(hit, str) else None))
    url = tag_cfg.get("url", "")
    if url:
        path = CLIP_URL_CACHE.expanduser() / os.path.basename(url)
        candidates.append((f"{path} (from {url})", path if path.is_file() else None))
    return candidates


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's own RN50.pt is a TorchScript archive: torch.load refuses those with weights_only=True."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _clip_from_file(open_clip: Any, model_name: str, path: Path, quick_gelu: bool) -> nn.Module:
    """open_clip's model with the weights of a local file (open_clip is given a file, so it fetches nothing)."""
    model = open_clip.create_model(model_name, pretrained=str(path), force_quick_gelu=quick_gelu,
                                   weights_only=not _is_torchscript_archive(path))
    model.pretrained_loaded = True
    log.info("CLIP %s: weights from %s", model_name, path)
    return model


def _random_clip(open_clip: Any, model_name: str) -> nn.Module:
    model = open_clip.create_model(model_name, pretrained=None)
    model.pretrained_loaded = False
    return model


def _create_clip(open_clip: Any, model_name: str, pretrained: str | None, allow_random_init: bool = False) -> nn.Module:
    """open_clip's model with ``pretrained`` weights, read from a local file or open_clip's caches only.

    ``pretrained`` is a file (which must exist: a typo is never random init) or an open_clip tag of
    ``model_name``; a tag whose weights are in none of the caches raises ``PretrainedWeightsUnavailable``
    naming them, or, with ``allow_random_init``, warns loudly and builds a random CLIP.
    """
    if not pretrained:
        return _random_clip(open_clip, model_name)
    tag_cfg = open_clip.pretrained.get_pretrained_cfg(model_name, pretrained)  # tags first, as open_clip does
    path = Path(pretrained).expanduser()
    if not tag_cfg:
        if path.is_file():
            return _clip_from_file(open_clip, model_name, path, quick_gelu=False)
        if _looks_like_file(pretrained):
            raise missing_file(path, "clip_pretrained")
        tags = open_clip.pretrained.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"clip_pretrained {pretrained!r} is neither a file nor an open_clip tag of {model_name} "
                         f"(tags: {tags})")
    candidates = clip_cache_candidates(tag_cfg)
    for _, cached in candidates:
        if cached is not None:
            return _clip_from_file(open_clip, model_name, cached, quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    looked_up = "; ".join(where for where, _ in candidates)
    what = (f"CLIP {model_name} weights were asked for (clip_pretrained: {pretrained}) but open_clip's caches "
            f"hold none: looked up {looked_up}")
    unavailable(what, _clip_weights_help(model_name, tag_cfg), allow_random_init, "clip_pretrained")
    return _random_clip(open_clip, model_name)


def _clip_weights_help(model_name: str, tag_cfg: Mapping[str, Any]) -> str:
    """How to provide a tag's weights without a network (for the error and the warning)."""
    how = (f"Put the file there (`hf download {os.path.split(tag_cfg.get('hf_hub', ''))[0]}` on a machine with a "
           f"network fills that cache: copy it over), or set `clip_pretrained: /path/to/{model_name}.bin` to a "
           f"local CLIP checkpoint open_clip loads (a state dict of open_clip's {model_name}, such as the cached "
           f"open_clip_pytorch_model.bin")
    if tag_cfg.get("quick_gelu") and not model_name.endswith("-quickgelu"):
        how += f"; for a file of these weights also set `clip_model: {model_name}-quickgelu`, their activation"
    return how + ")"


class CLIPEncoders(nn.Module):
    """The CLIP ResNet visual trunk (pre-pool features plus U-Net skips) and text encoder, via open_clip.

    Frozen by default (CLIPort runs CLIP under ``no_grad``): its parameters do not train, batch norm stays
    in eval mode, and sentence embeddings are cached per instruction string (the cache is dropped whenever
    weights are loaded).

    Args:
        model_name: an open_clip model with a ResNet ("modified ResNet") visual tower: RN50, RN101, RN50x4...
        pretrained: open_clip pretrained tag (read from open_clip's caches, never downloaded) or a local
            checkpoint file; None = random init. A tag whose weights are not cached raises
            ``PretrainedWeightsUnavailable``; a local file that does not exist is always an error.
        allow_random_init: a tag whose weights are not cached gives a random CLIP and a loud warning instead
            (``pretrained_loaded`` is then False).
        overrides: changes to the open_clip model config, e.g. ``{"embed_dim": 64, "vision_cfg": {"width": 8,
            "layers": [1, 1, 1, 1]}, "text_cfg": {"width": 64, "heads": 2, "layers": 1}}`` (random init only).
        trainable: train the CLIP weights too (not in the paper).
    """

    def __init__(self, model_name: str = "RN50", pretrained: str | None = None,
                 overrides: Mapping[str, Any] | None = None, trainable: bool = False,
                 allow_random_init: bool = False) -> None:
        super().__init__()
        import open_clip

        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"open_clip has no model named {model_name!r}")
        if not isinstance(config["vision_cfg"].get("layers"), (list, tuple)):
            raise ValueError(f"CLIPort needs a ResNet CLIP (RN50, RN101, ...); {model_name} has a ViT visual tower")
        if overrides:
            if pretrained:
                raise ValueError("clip_overrides change the architecture: they cannot be used with pretrained weights")
            config = _deep_merge(config, overrides)
            model = open_clip.model.CLIP(**config)
        else:
            model = _create_clip(open_clip, model_name, pretrained, allow_random_init)
        model.visual.attnpool = nn.Identity()  # CLIPort uses the pre-pool map; the pooling head would be dead weight
        model.logit_scale.requires_grad_(False)
        self.model = model
        self.pretrained_loaded = bool(getattr(model, "pretrained_loaded", False))
        context_length = config["text_cfg"].get("context_length", 77)
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
        width = int(config["vision_cfg"].get("width", 64))
        self.skip_channels = (4 * width, 8 * width, 16 * width)  # layer1..layer3 (Bottleneck expansion 4)
        self.out_channels = 32 * width  # layer4
        self.text_dim = int(config["embed_dim"])
        self.trainable = trainable
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()
        self._text_cache: dict[str, Tensor] = {}

    def train(self, mode: bool = True) -> "CLIPEncoders":
        """A frozen CLIP stays in eval mode (its batch norm statistics never move)."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._text_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def image_features(self, rgb: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(layer4 map at 1/32, [layer1 @1/4, layer2 @1/8, layer3 @1/16]) of CLIP-normalised RGB."""
        visual = self.model.visual
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            x = visual.stem(rgb.to(visual.conv1.weight.dtype))
            skips = []
            for layer in (visual.layer1, visual.layer2, visual.layer3):
                x = layer(x)
                skips.append(x)
            x = visual.layer4(x)
        return x, skips

    def encode_text(self, instructions: Sequence[str]) -> Tensor:
        """Sentence embeddings (B, text_dim) of the instructions (CLIP's projected end-of-text feature)."""
        device = self.model.token_embedding.weight.device
        if self.trainable:
            return self.model.encode_text(self.tokenizer(list(instructions)).to(device)).float()
        missing = sorted({s for s in instructions if s not in self._text_cache})
        if missing:
            with torch.no_grad():
                emb = self.model.encode_text(self.tokenizer(missing).to(device)).float()
            for text, row in zip(missing, emb):
                self._text_cache[text] = row
        return torch.stack([self._text_cache[s].to(device) for s in instructions])


class DoubleConv(nn.Module):
    """(3x3 conv -> norm -> activation) x 2, the U-Net decoder block (batch norm in CLIPort's U-Net)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, norm: bool = True,
                 activation: str = "relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels) if norm else nn.Identity(), activation_layer(activation, True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels) if norm else nn.Identity(), activation_layer(activation, True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Up(nn.Module):
    """x2 bilinear upsampling, concatenation with the skip feature, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True, activation: str = "relu") -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, norm, activation)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class LateralFusion(nn.Module):
    """Lateral connection from the spatial stream: activation(concat) -> 1x1 conv (CLIPort's FusionConvLat)."""

    def __init__(self, channels: int, lateral_channels: int, activation: str = "relu") -> None:
        super().__init__()
        self.act = activation_layer(activation)
        self.conv = nn.Conv2d(channels + lateral_channels, channels, 1, bias=False)

    def forward(self, x: Tensor, lateral: Tensor) -> Tensor:
        if lateral.shape[-2:] != x.shape[-2:]:
            lateral = F.interpolate(lateral, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(self.act(torch.cat([x, lateral], dim=1)))


class LanguageUNet(nn.Module):
    """The "what" stream decoder (CLIPort's ``CLIPLingUNetLat``) on top of CLIP's visual features.

    With CLIP channels c (2048 for RN50): conv c -> c/2; three stages of [multiply by a linear projection of
    the sentence embedding -> U-Net up-step with CLIP's layer3/2/1 skip -> lateral fusion] down to c/16
    channels at 1/4 resolution; three ConvBlock+IdentityBlock+x2 stages (c/32, c/64, c/128 channels) each
    followed by a lateral fusion; a 1x1 head. The output is at 2x the input resolution before the final
    resize, as in the original. Every activation of this decoder is ``activation`` (CLIP's own are not).
    """

    def __init__(self, clip_channels: int, skip_channels: Sequence[int], text_dim: int,
                 lateral_channels: Sequence[int], out_channels: int, batchnorm: bool = False,
                 decoder_norm: bool = True, activation: str = "relu") -> None:
        super().__init__()
        c = clip_channels
        if c % 128:
            raise ValueError(f"CLIP feature channels must be a multiple of 128, got {c}")
        act = check_activation(activation)
        d = [c // 2, c // 4, c // 8, c // 16, c // 32, c // 64, c // 128]
        s1, s2, s3 = skip_channels
        self.conv_in = nn.Sequential(nn.Conv2d(c, d[0], 3, padding=1, bias=False), activation_layer(act, True))
        self.lang_proj = nn.ModuleList([nn.Linear(text_dim, width) for width in d[:3]])
        self.ups = nn.ModuleList([
            Up(d[0] + s3, d[1], decoder_norm, act), Up(d[1] + s2, d[2], decoder_norm, act),
            Up(d[2] + s1, d[3], decoder_norm, act),
        ])
        self.decs = nn.ModuleList([
            nn.Sequential(
                ConvBlock(a, [b, b, b], batchnorm=batchnorm, activation=act),
                IdentityBlock(b, [b, b, b], batchnorm=batchnorm, activation=act),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            )
            for a, b in zip(d[3:6], d[4:7])
        ])
        widths = [d[1], d[2], d[3], d[4], d[5], d[6]]
        if len(lateral_channels) != 6:
            raise ValueError(f"the semantic stream takes 6 lateral features, got {len(lateral_channels)}")
        self.lateral = nn.ModuleList([LateralFusion(w, lc, act) for w, lc in zip(widths, lateral_channels)])
        self.head = nn.Conv2d(d[6], out_channels, 1)

    def forward(self, clip_x: Tensor, clip_skips: Sequence[Tensor], lateral: Sequence[Tensor], text: Tensor,
                size: tuple[int, int]) -> Tensor:
        x = self.conv_in(clip_x.float())
        skips = [s.float() for s in clip_skips]
        for i in range(3):
            x = x * self.lang_proj[i](text).unsqueeze(-1).unsqueeze(-1)  # multiplicative language fusion
            x = self.ups[i](x, skips[2 - i])
            x = self.lateral[i](x, lateral[i])
        for i in range(3):
            x = self.decs[i](x)
            x = self.lateral[3 + i](x, lateral[3 + i])
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


class TwoStreamNet(nn.Module):
    """Spatial (heightmap) + semantic (CLIP + language) streams, laterally connected, fused at the output.

    ``fusion="add"`` sums the two streams' logits (CLIPort's attention); ``"conv"`` concatenates them and mixes
    them with an activation + a 1x1 conv (CLIPort's transport). ``activation`` is used by both streams and the
    mixing ("relu" or "leaky_relu").
    """

    def __init__(self, out_channels: int, fusion: str, spatial_width: int, clip_channels: int,
                 skip_channels: Sequence[int], text_dim: int, batchnorm: bool = False,
                 decoder_norm: bool = True, activation: str = "relu") -> None:
        super().__init__()
        if fusion not in ("add", "conv"):
            raise ValueError(f"stream fusion must be 'add' or 'conv', got {fusion!r}")
        self.spatial = SpatialStream(6, out_channels, spatial_width, batchnorm, activation)
        self.semantic = LanguageUNet(clip_channels, skip_channels, text_dim, self.spatial.lateral_channels,
                                     out_channels, batchnorm, decoder_norm, activation)
        self.fusion = fusion
        self.mix = nn.Conv2d(2 * out_channels, out_channels, 1, bias=False) if fusion == "conv" else None
        self.mix_act = activation_layer(activation) if fusion == "conv" else None

    def forward(self, x_spatial: Tensor, clip_features: tuple[Tensor, list[Tensor]], text: Tensor) -> Tensor:
        size = (x_spatial.shape[-2], x_spatial.shape[-1])
        out_spatial, lateral = self.spatial(x_spatial)
        out_semantic = self.semantic(clip_features[0], clip_features[1], lateral, text, size)
        if self.mix is None:
            return out_spatial + out_semantic
        return self.mix(self.mix_act(torch.cat([out_spatial, out_semantic], dim=1)))


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the bottom/right so both sides are multiples of ``multiple`` (CLIP's stride)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, [0, pw, 0, ph]) if ph or pw else x


class CLIPortNet(nn.Module):
    """Attention (pick) and transport (place) of CLIPort, language-conditioned (see the module docstring).

    Args:
        spatial_width: base width of the Transporter ResNets (64 in the paper).
        clip_model / clip_pretrained / clip_overrides / train_clip: see ``CLIPEncoders``.
        allow_random_init: random CLIP (with a loud warning) when ``clip_pretrained``'s weights are not cached.
        n_rotations: place yaw bins (36 = 10 degrees in the paper).
        crop_size: side of the query crop around the pick (64 in the paper; a multiple of 32).
        transport_dim: channels of the key and query embeddings (3 in the paper).
        batchnorm: batch norm in the ResNet blocks (off in the paper's config).
        decoder_norm: batch norm in the semantic U-Net up-steps (on in the paper's code).
        correlation: "auto", "conv" or "fft" (see ``transporter.correlate``).
        init: "he" (``transporter.he_init_``: the streams keep their signal scale at initialisation, and the
            correlation is averaged rather than summed over the k*k*D kernel entries so that the place logits
            start at the features' scale) or "torch" (PyTorch's default init and the raw sum, as the original).
        activation: "relu" (CLIPort) or "leaky_relu" (ASkDAgger: LeakyReLU, slope 0.01) in every trainable
            stream; parameter-free, so the state_dict keys are the same under both.
    """

    def __init__(self, spatial_width: int = 64, clip_model: str = "RN50", clip_pretrained: str | None = None,
                 clip_overrides: Mapping[str, Any] | None = None, train_clip: bool = False, n_rotations: int = 36,
                 crop_size: int = 64, transport_dim: int = 3, batchnorm: bool = False, decoder_norm: bool = True,
                 correlation: str = "auto", init: str = "he", activation: str = "relu",
                 allow_random_init: bool = False) -> None:
        super().__init__()
        check_activation(activation)
        if init not in ("he", "torch"):
            raise ValueError(f"init must be 'he' or 'torch', got {init!r}")
        if crop_size % CLIP_STRIDE or crop_size <= 0:
            raise ValueError(f"crop_size must be a positive multiple of {CLIP_STRIDE}, got {crop_size}")
        if n_rotations < 1:
            raise ValueError(f"n_rotations must be >= 1, got {n_rotations}")
        if correlation not in ("auto", "conv", "fft"):
            raise ValueError(f"correlation must be 'auto', 'conv' or 'fft', got {correlation!r}")
        self.clip = CLIPEncoders(clip_model, clip_pretrained, clip_overrides, train_clip, allow_random_init)
        kwargs = dict(spatial_width=spatial_width, clip_channels=self.clip.out_channels,
                      skip_channels=self.clip.skip_channels, text_dim=self.clip.text_dim,
                      batchnorm=batchnorm, decoder_norm=decoder_norm, activation=activation)
        self.attention = TwoStreamNet(1, "add", **kwargs)
        self.key = TwoStreamNet(transport_dim, "conv", **kwargs)
        self.query = TwoStreamNet(transport_dim, "conv", **kwargs)
        if init == "he":
            for net in (self.attention, self.key, self.query):
                he_init_(net, activation)
        self.n_rotations = n_rotations
        self.crop_size = crop_size
        self.correlation = correlation
        self.correlation_scale = 1.0 / (crop_size * crop_size * transport_dim) if init == "he" else 1.0

    def encode_text(self, instructions: Sequence[str]) -> Tensor:
        return self.clip.encode_text(instructions)

    def _embed(self, net: TwoStreamNet, raw: Tensor, text: Tensor) -> Tensor:
        """Run one two-stream net on raw 6-channel input (padded internally to CLIP's stride)."""
        h, w = raw.shape[-2:]
        padded = _pad_to_multiple(raw, CLIP_STRIDE)
        features = self.clip.image_features(normalize_clip(padded))
        return net(normalize_spatial(padded), features, text)[..., :h, :w]

    def pick_logits(self, inp: Tensor, text: Tensor) -> Tensor:
        """Pick logits (B, H, W) of raw inputs (B, 6, H, W): the input is padded to a square, as CLIPort does."""
        h, w = inp.shape[-2:]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square = F.pad(inp, [left, side - w - left, top, side - h - top])
        logits = self._embed(self.attention, square, text)
        return logits[:, 0, top:top + h, left:left + w]

    def query_kernels(self, padded: Tensor, pivots: Tensor, text: Tensor) -> Tensor:
        """Query embeddings (B, R, D, k, k) of the crops around ``pivots`` (padded coordinates), rotated R times."""
        b = padded.shape[0]
        k, r = self.crop_size, self.n_rotations
        crops = rotated_crops(padded, pivots, rotation_angles(r, padded.device), k)  # (B, R, 6, k, k)
        kernels = self._embed(self.query, crops.flatten(0, 1), text.repeat_interleave(r, dim=0))
        return kernels.reshape(b, r, -1, k, k)

    def place_logits(self, inp: Tensor, pick_pixels: Tensor, text: Tensor) -> Tensor:
        """Place logits (B, R, H, W) for raw inputs (B, 6, H, W) and pick pixels (B, 2) (row, col).

        Entry (r, u, v) scores placing at pixel (u, v) after turning the picked object by yaw bin r.
        """
        h, w = inp.shape[-2:]
        pad = self.crop_size // 2
        padded = F.pad(inp, [pad, pad, pad, pad])
        key = self._embed(self.key, padded, text)
        kernels = self.query_kernels(padded, pick_pixels.float() + pad, text)
        return correlate(key, kernels, (h, w), self.correlation) * self.correlation_scale
