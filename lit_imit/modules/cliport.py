"""CLIPortModule: language-conditioned pick-and-place (Shridhar et al., CoRL 2021) on ``nets.cliport.CLIPortNet``.

Training (one sample = one pick-place decision, ``lit_imit.data.cliport``):

* input: the fused colour map and height map of the observation as CLIPort's 6-channel heightmap, normalised
  inside the network with CLIPort's fixed constants (no dataset statistics);
* augmentation (``augment``, on by default as in CLIPort): a random rigid SE(2) transform of the whole
  heightmap about its centre, yaw ~ N(0, ``theta_sigma`` degrees), shift ~ N(0, min(H, W)/6) pixels,
  redrawn (up to 10 times) until both pick and place pixels stay inside the map. The pick and place
  pixels move with the scene; the relative place yaw label does not change (turning the scene turns the
  object and its target alike). CLIPort's README warns it hurts tasks with directional words;
* losses: cross-entropy of the pick logits over all H x W pixels against the demo pick pixel, and of the
  place logits over all n_rotations x H x W entries against (yaw bin, place pixel), the place computed with
  the demo pick (teacher forcing). Per-sample losses are weighted by ``batch["weight"]`` (PIER). The
  default is the per-sample cross-entropy (cliport-batchify's ``F.cross_entropy``); ``cliport_loss_scale``
  divides each term by its number of elements as the original code does (its mean over all elements);
* one Adam over all trainable weights at lr 1e-4. CLIPort steps two Adams, one per module; the attention
  and transport share no trainable weight (the shared CLIP is frozen), so the updates are identical;
* ``downsample`` (a CPU option, off in the paper): the network sees the maps pooled by d and predicts d x d
  blocks; labels are divided by d, executed pixels are the blocks' centres.

Execution, for a batch of N environments (``select_action`` / ``predict``): the pick is the argmax of the
pick logits, the place is the argmax over (rotation, pixel) of the place logits given that pick; poses are
the pixel centres at the height map's height, the pick yaw is 0 and the place yaw the bin's angle, returned
as (N, 14) = pick (xyz + xyzw) + place, the flat action the Ravens envs take.

Uncertainty (``predict``, ASkDAgger: Luijkx et al., TMLR 2025): one scalar per heatmap, u_pick from the pick softmax (over H x W)
and u_place from the place softmax (over H x W x R), by ``uncertainty_measure`` (ASkDAgger's ``measure``):

* ``"entropy"`` (ASkDAgger's default): the Shannon entropy of the flattened softmax, in nats;
* ``"confidence"``: 1 - max p (ASkDAgger's name; "least confidence"), in [0, 1 - 1/n];
* ``"margin"``: 1 - (p(1) - p(2)), the two largest probabilities of the flattened map, in [0, 1];

combined as u = 1/2 (u_pick / M_pick + u_place / M_place):

* ``uncertainty_normalizer="running_max"`` (ASkDAgger's default): M are running maxima of the measures seen
  by ``predict`` (kept in buffers, saved in checkpoints); within a batch, envs are taken in order, as the
  decisions would arrive one at a time, so each is normalised by the maximum up to and including itself.
  The buffers keep the names ``entropy_max_pick`` / ``entropy_max_place`` (older checkpoints load) but hold
  the running maxima of whichever measure is selected; zero them when switching measures on a live module;
* ``"max_entropy"``: M are the largest possible values of the measure: for the entropy log(H W) and
  log(H W R), so u is in [0, 1] and equals 1 for uniform heatmaps; confidence and margin already lie in
  [0, 1], so M = 1 for them (u = 1 for uniform maps under margin, 1 - 1/n under confidence).

The module is stateless between decisions (``reset`` has nothing to clear).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_imit.envs.ravens import geometry as geo
from lit_imit.modules.base import PolicyModule, Prediction, weighted_mean
from lit_imit.nets.cliport import CLIPortNet
from lit_imit.nets.pointwise import subsample_strided_pointwise_convs
from lit_imit.nets.transporter import bin_to_yaw, rotate_images, transform_pixels, yaw_to_bin

#: a small CLIP for CPU runs and tests (random init only): ResNet with one block per stage, 1-layer text encoder
TINY_CLIP = {"embed_dim": 64, "vision_cfg": {"width": 8, "layers": [1, 1, 1, 1]},
             "text_cfg": {"width": 64, "heads": 2, "layers": 1}}
UNCERTAINTY_NORMALIZERS = ("running_max", "max_entropy")
#: ASkDAgger's single-prediction uncertainty measures of a heatmap (``uncertainty_quantification.py``)
UNCERTAINTY_MEASURES = ("entropy", "confidence", "margin")


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of the softmax over all entries of each row of (B, ...) logits."""
    logp = F.log_softmax(logits.flatten(1).float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def _top_probabilities(logits: Tensor, k: int) -> Tensor:
    """The k largest softmax probabilities (B, k) over all entries of each row of (B, ...) logits, computed
    from the top logits and the log-normaliser so that the full probability map is never materialised."""
    flat = logits.flatten(1).float()
    top = flat.topk(min(k, flat.shape[1]), dim=1).values
    probs = (top - torch.logsumexp(flat, dim=1, keepdim=True)).exp()
    return F.pad(probs, [0, k - probs.shape[1]])  # a map with fewer than k entries: the missing ones are 0


def confidence(logits: Tensor) -> Tensor:
    """ASkDAgger's "confidence" uncertainty, 1 - max p, of the softmax over each row of (B, ...) logits: 0 for
    a one-hot map, 1 - 1/n for a uniform one over n entries."""
    return 1.0 - _top_probabilities(logits, 1)[:, 0]


def margin(logits: Tensor) -> Tensor:
    """ASkDAgger's "margin" uncertainty, 1 - (p(1) - p(2)) with the two largest probabilities of the softmax
    over each row of (B, ...) logits: 0 for a one-hot map, 1 when the best two entries tie."""
    top = _top_probabilities(logits, 2)
    return 1.0 - (top[:, 0] - top[:, 1])


def heatmap_uncertainty(logits: Tensor, measure: str = "entropy") -> Tensor:
    """(B,) uncertainty of each heatmap of (B, ...) logits by one of ``UNCERTAINTY_MEASURES``."""
    if measure == "entropy":
        return entropy(logits)
    if measure == "confidence":
        return confidence(logits)
    if measure == "margin":
        return margin(logits)
    raise ValueError(f"uncertainty measure must be one of {UNCERTAINTY_MEASURES}, got {measure!r}")


def heightmap_batch(color: Tensor, height: Tensor) -> Tensor:
    """(B, H, W, 3) colour (0..255) + (B, H, W) heights -> CLIPort's raw (B, 6, H, W) float input."""
    if color.shape[:3] != height.shape[:3]:
        raise ValueError(f"colour {tuple(color.shape)} and height {tuple(height.shape)} maps disagree")
    h = height.float().unsqueeze(1)
    return torch.cat([color.float().permute(0, 3, 1, 2), h, h, h], dim=1)


def instructions_list(value: Any, n: int) -> list[str]:
    """Instructions of a batch as a list of N strings: accepts a list/tuple, a numpy string array (what
    ``stack_obs`` makes of per-env strings), bytes, or one string for every env."""
    if isinstance(value, (str, bytes)):
        value = [value] * n
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    texts = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    if len(texts) != n:
        raise ValueError(f"{len(texts)} instructions for a batch of {n} observations")
    return texts


def pixels_to_poses(pixels: Tensor, height: Tensor, yaw: Tensor, bounds: np.ndarray = geo.BOUNDS,
                    pixel_size: float = geo.PIXEL_SIZE) -> Tensor:
    """(N, 7) poses (xyz + xyzw) at the centres of pixels (N, 2) (row = y, col = x), z from the height
    maps (N, H, W), rotated by ``yaw`` (N,) about z: ``geometry.pix_to_xyz`` + ``yaw_to_quat``, batched."""
    rows, cols = pixels[:, 0].long(), pixels[:, 1].long()
    x = bounds[0, 0] + (cols.double() + 0.5) * pixel_size
    y = bounds[1, 0] + (rows.double() + 0.5) * pixel_size
    z = bounds[2, 0] + height[torch.arange(len(pixels), device=height.device), rows, cols].double()
    half = yaw.double() / 2
    zeros = torch.zeros_like(x)
    return torch.stack([x, y, z, zeros, zeros, torch.sin(half), torch.cos(half)], dim=1).float()


class CLIPortModule(PolicyModule):
    """CLIPort two-stream pick-and-place policy (see the module docstring).

    Args:
        spatial_width: base width of the Transporter ResNet streams (64 in the paper; 8-16 for CPU tests).
        clip_model: open_clip ResNet CLIP (RN50 in the paper).
        clip_pretrained: open_clip tag (e.g. "openai", from open_clip's caches; never downloaded) or a local
            checkpoint; None = random init. A tag whose weights are not cached stops the run with
            ``PretrainedWeightsUnavailable`` (which says where to put them); a missing file is always an error.
        allow_random_init: a tag whose weights are not cached gives a random CLIP with a loud warning instead
            of an error (CPU smoke runs; never the paper's setting).
        clip_overrides: changes to the open_clip config (e.g. ``TINY_CLIP``) for a small network (random init).
        train_clip: also train CLIP (frozen in the paper).
        n_rotations / crop_size / transport_dim: transport settings (36 / 64 / 3 in the paper).
        batchnorm / decoder_norm: batch norm in the ResNet blocks (off in the paper) / in the U-Net (on).
        correlation: transport correlation method ("auto": grouped conv on CUDA, FFT on CPU).
        init: "he" (He init, identity residual blocks, averaged correlation) or "torch" (the original's
            PyTorch default init and summed correlation); see ``nets.cliport``.
        lr: Adam learning rate (1e-4 in the paper).
        augment / theta_sigma: random SE(2) augmentation and its yaw std in degrees (60 in CLIPort).
        cliport_loss_scale: divide the losses by their element counts as the original code does.
        uncertainty_measure: per-heatmap uncertainty of ``predict``: "entropy" (ASkDAgger's default),
            "confidence" (1 - max p) or "margin" (1 - (p(1) - p(2))); see the module docstring.
        uncertainty_normalizer: "running_max" (ASkDAgger) or "max_entropy" (the measure's largest value:
            log of the heatmap size for the entropy, 1 for confidence and margin).
        accuracy_radius_px: a pick/place prediction within this many (full-resolution) pixels of the demo's
            counts as correct in the logged accuracies (5 px = 1.6 cm).
        downsample: run the network on heightmaps pooled by this factor (colour averaged, height max-pooled)
            and map its pixels back to full-resolution centres: a CPU option, 1 (off) in the paper. At 4 a
            pixel is 12.5 mm, enough for the 5 cm tolerance of put-block-in-bowl; the crop then covers
            ``crop_size * downsample`` full-resolution pixels.
        channels_last: run the convolutions in channels-last layout: the same numbers, faster (a training step
            of the CPU-sized network, configs/cliport/quick.yaml's, took 2.3-2.5 s instead of 5.0-5.9 s at batch
            8 on one thread; tensor cores want it on GPUs). Its narrow strided 1x1 shortcuts run as subsample +
            stride-1 convolution (``lit_imit.nets.pointwise``), since oneDNN's strided kernel kills the process
            in their backward in this layout.
        activation: "relu" (CLIPort) or "leaky_relu" (ASkDAgger, against vanishing gradients in interactive
            training; slope 0.01) in every trainable stream; CLIP is untouched. Checkpoints load under either
            (activations have no weights), but a model trained with one should be run with the same one.
    """

    def __init__(
        self,
        spatial_width: int = 64,
        clip_model: str = "RN50",
        clip_pretrained: str | None = None,
        clip_overrides: dict[str, Any] | None = None,
        train_clip: bool = False,
        n_rotations: int = 36,
        crop_size: int = 64,
        transport_dim: int = 3,
        batchnorm: bool = False,
        decoder_norm: bool = True,
        correlation: str = "auto",
        init: str = "he",
        lr: float = 1e-4,
        augment: bool = True,
        theta_sigma: float = 60.0,
        cliport_loss_scale: bool = False,
        uncertainty_normalizer: str = "running_max",
        accuracy_radius_px: float = 5.0,
        downsample: int = 1,
        channels_last: bool = True,
        activation: str = "relu",
        uncertainty_measure: str = "entropy",
        allow_random_init: bool = False,
    ) -> None:
        super().__init__()
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        if uncertainty_normalizer not in UNCERTAINTY_NORMALIZERS:
            raise ValueError(
                f"uncertainty_normalizer must be one of {UNCERTAINTY_NORMALIZERS}, got {uncertainty_normalizer!r}"
            )
        if uncertainty_measure not in UNCERTAINTY_MEASURES:
            raise ValueError(
                f"uncertainty_measure must be one of {UNCERTAINTY_MEASURES}, got {uncertainty_measure!r}"
            )
        self.save_hyperparameters()
        self.net = CLIPortNet(
            spatial_width=spatial_width, clip_model=clip_model, clip_pretrained=clip_pretrained,
            clip_overrides=clip_overrides, train_clip=train_clip, n_rotations=n_rotations, crop_size=crop_size,
            transport_dim=transport_dim, batchnorm=batchnorm, decoder_norm=decoder_norm, correlation=correlation,
            init=init, activation=activation, allow_random_init=allow_random_init,
        )
        if channels_last:  # narrow strided 1x1 shortcuts crash oneDNN's CPU backward in that layout (nets.pointwise)
            subsample_strided_pointwise_convs(self.net)
            self.net.to(memory_format=torch.channels_last)
        # running maxima of the selected uncertainty measure (named for the entropy, the default, so that
        # checkpoints from before ``uncertainty_measure`` existed still load)
        self.register_buffer("entropy_max_pick", torch.zeros(()))
        self.register_buffer("entropy_max_place", torch.zeros(()))
        #: raw entropies of the last ``predict`` call: {"pick": (N,), "place": (N,)}
        self.last_entropies: dict[str, Tensor] = {}
        #: raw (unnormalised) ``uncertainty_measure`` of the last ``predict`` call: {"pick": (N,), "place": (N,)}
        self.last_measures: dict[str, Tensor] = {}

    # ---- inputs ----------------------------------------------------------------------------------------
    def _inputs(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, list[str]]:
        """Network input (B, 6, H/d, W/d), full-resolution heights (B, H, W) and instructions of a batch or
        of env observations (numpy or tensors, batched or a single observation)."""
        color, height = (batch[k] if isinstance(batch[k], Tensor) else torch.as_tensor(np.asarray(batch[k]))
                         for k in ("color", "height"))
        if color.ndim == 3:  # a single observation
            color, height = color.unsqueeze(0), height.unsqueeze(0)
        color, height = color.to(self.device), height.to(self.device, torch.float32)
        texts = instructions_list(batch["instruction"], color.shape[0])
        inp = heightmap_batch(color, height)
        d = self.hparams.downsample
        if d > 1:  # colour averaged, heights max-pooled so that object tops survive
            rgb = F.avg_pool2d(inp[:, :3], d, ceil_mode=True)
            inp = torch.cat([rgb, F.max_pool2d(inp[:, 3:], d, ceil_mode=True)], dim=1)
        if self.hparams.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        return inp, height, texts

    def _to_full(self, pixels: Tensor, hw: tuple[int, int]) -> Tensor:
        """Network pixels -> the centre full-resolution pixel of each (identity without downsampling)."""
        d = self.hparams.downsample
        if d == 1:
            return pixels
        full = pixels * d + d // 2
        return torch.minimum(full, torch.tensor(hw, device=pixels.device) - 1)

    # ---- augmentation ----------------------------------------------------------------------------------
    def perturb(self, inp: Tensor, pick: Tensor, place: Tensor, tries: int = 10) -> tuple[Tensor, Tensor, Tensor]:
        """CLIPort's random SE(2) perturbation of a batch (see the module docstring); draws from torch's RNG."""
        b, _, h, w = inp.shape
        device = inp.device
        pivots = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=device).expand(b, 2)
        limit = torch.tensor([h, w], device=device)
        angles = torch.zeros(b, device=device)
        shifts = torch.zeros(b, 2, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for _ in range(tries):
            theta = torch.randn(b, device=device) * math.radians(self.hparams.theta_sigma)
            shift = torch.randn(b, 2, device=device) * (min(h, w) / 6)
            ok = torch.ones(b, dtype=torch.bool, device=device)
            for pix in (pick, place):
                moved = transform_pixels(pix, theta, pivots, shift).round()
                ok &= ((moved >= 0) & (moved < limit)).all(dim=1)
            take = ok & ~done
            angles = torch.where(take, theta, angles)
            shifts = torch.where(take.unsqueeze(1), shift, shifts)
            done |= ok
            if bool(done.all()):
                break
        out = rotate_images(inp, angles, pivots, shifts, mode="nearest")
        new_pick = transform_pixels(pick, angles, pivots, shifts).round().long()
        new_place = transform_pixels(place, angles, pivots, shifts).round().long()
        return out, new_pick, new_place

    # ---- training --------------------------------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, Any], weighted: bool = True, augment: bool = False) -> dict[str, Tensor]:
        """Losses and accuracies of a batch of decisions (per-sample terms, batch means)."""
        hp = self.hparams
        inp, _, texts = self._inputs(batch)
        d = hp.downsample
        pick = batch["pick_pixel"].to(self.device).long() // d
        place = batch["place_pixel"].to(self.device).long() // d
        if augment:
            inp, pick, place = self.perturb(inp, pick, place)
        b, _, h, w = inp.shape
        rot = yaw_to_bin(batch["place_theta"].to(self.device).float(), hp.n_rotations)
        text = self.net.encode_text(texts)
        pick_logits = self.net.pick_logits(inp, text).flatten(1)
        place_logits = self.net.place_logits(inp, pick, text).flatten(1)
        pick_target = pick[:, 0] * w + pick[:, 1]
        place_target = (rot * h + place[:, 0]) * w + place[:, 1]
        pick_ce = F.cross_entropy(pick_logits.float(), pick_target, reduction="none")
        place_ce = F.cross_entropy(place_logits.float(), place_target, reduction="none")
        if hp.cliport_loss_scale:
            pick_ce, place_ce = pick_ce / (h * w), place_ce / (hp.n_rotations * h * w)
        weight = batch.get("weight") if weighted else None
        weight = weight.to(self.device) if weight is not None else None
        with torch.no_grad():
            pick_hat = torch.stack([pick_logits.argmax(1) // w, pick_logits.argmax(1) % w], dim=1)
            place_idx = place_logits.argmax(1)
            rot_hat, pix = place_idx // (h * w), place_idx % (h * w)
            place_hat = torch.stack([pix // w, pix % w], dim=1)
            pick_dist = (pick_hat - pick).float().norm(dim=1) * d  # in full-resolution pixels
            place_dist = (place_hat - place).float().norm(dim=1) * d
        radius = hp.accuracy_radius_px
        return {
            "loss": weighted_mean(pick_ce + place_ce, weight),
            "pick_loss": weighted_mean(pick_ce, weight),
            "place_loss": weighted_mean(place_ce, weight),
            "pick_acc": (pick_dist <= radius).float().mean(),
            "place_acc": (place_dist <= radius).float().mean(),
            "rotation_acc": (rot_hat == rot).float().mean(),
            "pick_dist_px": pick_dist.mean(),
            "place_dist_px": place_dist.mean(),
        }

    def training_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Importance-weighted losses, on randomly shifted and rotated scenes when ``augment`` is on."""
        return self.compute_loss(batch, weighted=True, augment=self.hparams.augment)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)

    # ---- the policy contract ---------------------------------------------------------------------------
    def decide(self, obs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Pick/place decisions and heatmap uncertainties for a batch of observations (no mode switching here).

        Returns ``action`` (N, 14), ``pick_pixel`` / ``place_pixel`` (N, 2) full-resolution pixels,
        ``rotation`` (N,) bins, ``pick_entropy`` / ``place_entropy`` (N,) nats over the network's heatmaps,
        ``pick_measure`` / ``place_measure`` (N,) the ``uncertainty_measure`` of the same heatmaps and
        ``support`` (their sizes).
        """
        r = self.hparams.n_rotations
        inp, height, texts = self._inputs(obs)
        n, _, h, w = inp.shape
        text = self.net.encode_text(texts)
        pick_logits = self.net.pick_logits(inp, text)
        idx = pick_logits.flatten(1).argmax(1)
        pick = torch.stack([idx // w, idx % w], dim=1)
        place_logits = self.net.place_logits(inp, pick, text)
        idx = place_logits.flatten(1).argmax(1)
        rotation, pix = idx // (h * w), idx % (h * w)
        place = torch.stack([pix // w, pix % w], dim=1)
        full_hw = (height.shape[1], height.shape[2])
        pick, place = self._to_full(pick, full_hw), self._to_full(place, full_hw)
        zeros = torch.zeros(n, device=inp.device)
        action = torch.cat([
            pixels_to_poses(pick, height, zeros), pixels_to_poses(place, height, bin_to_yaw(rotation, r)),
        ], dim=1)
        measure = self.hparams.uncertainty_measure
        pick_entropy, place_entropy = entropy(pick_logits), entropy(place_logits)
        if measure == "entropy":
            pick_measure, place_measure = pick_entropy, place_entropy
        else:
            pick_measure = heatmap_uncertainty(pick_logits, measure)
            place_measure = heatmap_uncertainty(place_logits, measure)
        return {"action": action, "pick_pixel": pick, "place_pixel": place, "rotation": rotation,
                "pick_entropy": pick_entropy, "place_entropy": place_entropy,
                "pick_measure": pick_measure, "place_measure": place_measure,
                "support": torch.tensor([h * w, h * w * r], dtype=torch.float64)}

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """(N, 14) pick + place poses for a batch of observations (``color``, ``height``, ``instruction``)."""
        with self.policy_mode():
            return self.decide(obs)["action"]

    def measure_bounds(self, support: Tensor) -> tuple[float, float]:
        """Largest possible pick and place values of the ``uncertainty_measure`` on heatmaps of ``support``
        entries: log(n) for the entropy; 1 for confidence and margin, which already lie in [0, 1]."""
        if self.hparams.uncertainty_measure == "entropy":
            return math.log(float(support[0])), math.log(float(support[1]))
        return 1.0, 1.0

    def normalized_uncertainty(self, pick_u: Tensor, place_u: Tensor, support: Tensor) -> Tensor:
        """u = 1/2 (u_pick / M_pick + u_place / M_place) per env, from the raw per-heatmap measures (see the
        module docstring); under "running_max" this also advances the running maxima."""
        if self.hparams.uncertainty_normalizer == "max_entropy":
            m_pick, m_place = self.measure_bounds(support)
            return 0.5 * (pick_u / m_pick + place_u / m_place)
        prev_pick = self.entropy_max_pick.to(pick_u.dtype)
        prev_place = self.entropy_max_place.to(place_u.dtype)
        m_pick = torch.cummax(torch.maximum(pick_u, prev_pick), dim=0).values
        m_place = torch.cummax(torch.maximum(place_u, prev_place), dim=0).values
        self.entropy_max_pick.copy_(m_pick[-1])
        self.entropy_max_place.copy_(m_place[-1])
        return 0.5 * (pick_u / m_pick.clamp_min(1e-12) + place_u / m_place.clamp_min(1e-12))

    def predict(self, obs: Mapping[str, Any]) -> Prediction:
        """The decision of ``select_action`` plus the normalised heatmap uncertainty per env; the raw measures
        are kept in ``last_measures`` (and the entropies in ``last_entropies``)."""
        with self.policy_mode():
            out = self.decide(obs)
            u = self.normalized_uncertainty(out["pick_measure"], out["place_measure"], out["support"])
            self.last_entropies = {"pick": out["pick_entropy"].clone(), "place": out["place_entropy"].clone()}
            self.last_measures = {"pick": out["pick_measure"].clone(), "place": out["place_measure"].clone()}
        return Prediction(action=out["action"], uncertainty=u)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """Init args of a tiny CLIPortModule for CPU tests (random init)."""
    config: dict[str, Any] = {"spatial_width": 8, "clip_overrides": TINY_CLIP, "augment": False}
    config.update(overrides)
    return config


def pixels_of(action: Tensor | np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Heightmap pick and place pixels of (N, 14) actions (the inverse of the poses ``select_action`` returns)."""
    flat = np.asarray(action.detach().cpu() if isinstance(action, Tensor) else action, np.float64).reshape(-1, 14)
    return [geo.xyz_to_pix(a[:3]) for a in flat], [geo.xyz_to_pix(a[7:10]) for a in flat]


__all__ = [
    "CLIPortModule", "TINY_CLIP", "UNCERTAINTY_MEASURES", "confidence", "entropy", "heatmap_uncertainty",
    "heightmap_batch", "instructions_list", "margin", "pixels_of", "pixels_to_poses", "tiny_config",
]
