"""VINNModule: Visual Imitation through Nearest Neighbours (Pari et al., 2021) as act-plus-plus runs it.

VINN separates the representation from the behaviour:

* **Training is self-supervised.** A ResNet-18 per camera (act-plus-plus trains one per camera) learns image
  features with BYOL (Grill et al., 2020; :mod:`lit_imit.nets.byol`) on the camera frames of the training
  batches: two random views per frame, online prediction against the moving-average target, the target
  updated after every optimiser step (tau from ``tau`` towards 1 on BYOL's cosine schedule). No action enters
  the loss.
* **The behaviour is a memory.** Every ``bank_stride``-th frame of every *training* episode is stored with
  its features (the cameras' 512-d vectors side by side), its normalised state and where its action chunk
  starts; the actions of every step are stored once, so chunks of any length cost nothing extra. All of it
  lives in registered buffers (features in ``bank_dtype``, float16 by default: ~20 MB for 20k frames of one
  camera), so a checkpoint alone runs the policy.
* **Acting** looks up the nearest stored frames (:mod:`lit_imit.nets.knn`): distance = L2 of the features +
  ``state_weight`` x L2 of the normalised state; the action chunk is the softmax(-distance / ``temperature``)
  weighted average of the k nearest frames' chunks, executed like ACT's (``lit_imit.modules.chunking``: open
  loop for ``n_action_steps`` or temporal ensembling).
* **k is chosen on the validation episodes**: every k = 1..``max_k`` is scored by the mean squared error of
  its predicted chunks against the true ones (normalised actions, the whole chunk), as act-plus-plus's
  ``vinn_select_k.py`` sweeps k; with ``state_weight_candidates`` the state weight is chosen jointly. The
  choice lives in buffers (``chosen_k``, ``chosen_state_weight``) and is logged as ``vinn/k``.

When the memory is built: from the encoder at the current global step (``memory_step`` records which), at
the end of every training epoch in the module's own ``on_train_epoch_end`` (Lightning calls it after the
non-monitoring callbacks and before the checkpoint callback, so every ``last.ckpt`` and best checkpoint holds
the memory of its own encoder); a callback that acts before that hook (``RolloutEvaluation``) triggers the
same rebuild at its first ``select_action``; a checkpoint written at any other point of fit rebuilds it first
(``on_save_checkpoint``). Outside fit the memory is used as loaded; ``refresh_memory(datamodule)`` builds it
by hand. Each rebuild encodes every stored frame once (one ResNet-18 forward per frame and camera), so a
config keeps its epochs few.

``predict``'s uncertainty is the disagreement of the ``uncertainty_neighbours`` nearest frames: the standard
deviation over them of each normalised first action, averaged over action dimensions. It deliberately does
not use the softmax weights or k: with k = 1 (act-plus-plus's choice for scripted transfer cube) or with
distances far apart the weighted spread is always ~0 and could not gate anything. Under chunking the
uncertainty of the chunk being executed is reported at each of its steps, as ACT does.

Differences from act-plus-plus: the state term uses normalised state (its raw-qpos weights of 5-10 do not
carry over), k is scored on whole chunks rather than single actions, and the BYOL augmentations leave out the
horizontal flip (a mirrored bimanual scene swaps the arms).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from lit_imit.data.episodes import Episode
from lit_imit.modules.base import PolicyModule, Prediction, single_step, state_sizes, weighted_mean
from lit_imit.modules.chunking import ChunkExecutor
from lit_imit.nets.byol import BYOL, RESNET18_FEATURES, ResNet18Encoder, byol_view, cosine_tau, pixels_from_uint8
from lit_imit.nets.knn import (
    gather_chunks,
    nearest,
    neighbour_distances,
    neighbour_spread,
    softmax_weights,
    sweep_k_errors,
    weighted_chunk,
)

log = logging.getLogger(__name__)

VINN_MIN_STD = 1e-2  # std floor of the normalisation, as ACT: constant dimensions stay finite
BANK_DTYPES = {"float16": torch.float16, "float32": torch.float32}
TAU_SCHEDULES = ("cosine", "constant")
#: the memory's variable-length buffers (their size is only known once built, or from a checkpoint)
MEMORY_BUFFERS = ("memory_features", "memory_states", "memory_actions", "memory_start", "memory_last")
#: what a rebuilt memory changes in a checkpoint's state dict
MEMORY_STATE = (*MEMORY_BUFFERS, "memory_step", "chosen_k", "chosen_state_weight")
VALIDATION_VIEW_SEED = 12345  # validation draws the same BYOL views every time: its loss is comparable
SWEEP_ENTRIES = 2_000_000  # neighbour-chunk entries scored at once in the k sweep (bounds its memory)


class VINNModule(PolicyModule):
    """VINN: BYOL image features + nearest-neighbour action chunks (see the module docstring)."""

    def __init__(
        self,
        cameras: Sequence[str] = ("top",),
        state_keys: Sequence[str] = ("qpos",),
        state_dim: int | list[int] = 14,
        action_dim: int = 14,
        chunk_size: int = 100,
        n_action_steps: int = 100,
        temporal_ensemble_coeff: float | None = None,
        k: int = 1,
        select_k: bool = True,
        max_k: int = 400,
        state_weight: float = 1.0,
        state_weight_candidates: list[float] | None = None,
        temperature: float = 1.0,
        uncertainty_neighbours: int = 8,
        bank_stride: int = 1,
        bank_dtype: str = "float16",
        select_stride: int = 1,
        encode_batch_size: int = 64,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        tau: float = 0.99,
        tau_schedule: str = "cosine",
        max_steps: int | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        pretrained_backbone: str | None = None,
        allow_random_init: bool = False,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
    ) -> None:
        """
        Args:
            cameras: camera names (``images/<name>``), one BYOL ResNet-18 each; at least one.
            state_keys / state_dim: low-dimensional observation keys (normalised, concatenated) and their sizes.
            chunk_size: actions averaged per query; n_action_steps / temporal_ensemble_coeff: how the chunk is
                executed (``lit_imit.modules.chunking``, as ACT).
            k: neighbours averaged; the starting value, replaced by the sweep's choice when ``select_k``.
            select_k: choose k in 1..``max_k`` on the validation episodes whenever the memory is rebuilt.
            state_weight: weight of the normalised state's L2 distance (0: images only);
                state_weight_candidates: weights the sweep chooses among, with k (None: keep ``state_weight``).
            temperature: of the softmax(-distance / temperature) weights (1 in VINN and act-plus-plus).
            uncertainty_neighbours: nearest frames whose first actions' spread is ``predict``'s uncertainty.
            bank_stride: store every n-th frame of each training episode (the actions of every step are kept).
            bank_dtype: ``float16`` or ``float32`` features in the memory (distances are computed in float32).
            select_stride: score every n-th frame of the validation episodes in the k sweep.
            encode_batch_size: frames per encoder forward when the memory is built.
            projection_dim / hidden_dim: BYOL's projector and predictor sizes (256 / 4096 in the paper).
            tau / tau_schedule: the target's moving-average rate; ``cosine`` raises it to 1 at the last step
                (``max_steps``, default the trainer's), ``constant`` keeps it.
            crop_scale, brightness, contrast, saturation, jitter_prob, grayscale_prob: the BYOL views.
            pretrained_backbone: None (random init), ``"imagenet"`` (torchvision's cached file; act-plus-plus
                starts from ImageNet) or a path to a ResNet-18 state dict; allow_random_init: fall back to
                random init with a warning when ``"imagenet"`` is not cached.
            lr / weight_decay: Adam (AdamW when weight_decay > 0) on the online networks.
        """
        super().__init__()
        cameras, state_keys = list(cameras), list(state_keys)
        state_dims = state_sizes(state_keys, state_dim)
        _check_settings(cameras, k, max_k, bank_stride, select_stride, bank_dtype, tau_schedule, temperature,
                        uncertainty_neighbours)
        self._execution = ChunkExecutor(chunk_size, n_action_steps, temporal_ensemble_coeff)
        self.save_hyperparameters()
        self.cameras, self.state_keys = cameras, state_keys
        self.byol = nn.ModuleDict({
            cam: BYOL(ResNet18Encoder(pretrained_backbone, allow_random_init), RESNET18_FEATURES, projection_dim,
                      hidden_dim)
            for cam in cameras
        })
        self.register_policy_stats(state_keys, state_dims, action_dim)
        self._register_memory(RESNET18_FEATURES * len(cameras), sum(state_dims), action_dim, BANK_DTYPES[bank_dtype])
        self.register_buffer("chosen_k", torch.tensor(int(k), dtype=torch.long))
        self.register_buffer("chosen_state_weight", torch.tensor(float(state_weight)))
        self._target_step: int | None = None  # the global step of the last target update
        self.last_selection: dict[str, Any] | None = None  # what the latest k sweep found

    def _register_memory(self, feature_dim: int, state_dim: int, action_dim: int, dtype: torch.dtype) -> None:
        """Empty memory buffers; ``memory_step`` -1 says nothing was built yet."""
        self.register_buffer("memory_features", torch.zeros(0, feature_dim, dtype=dtype))
        self.register_buffer("memory_states", torch.zeros(0, state_dim))
        self.register_buffer("memory_actions", torch.zeros(0, action_dim))
        self.register_buffer("memory_start", torch.zeros(0, dtype=torch.long))
        self.register_buffer("memory_last", torch.zeros(0, dtype=torch.long))
        self.register_buffer("memory_step", torch.tensor(-1, dtype=torch.long))

    def data_requirements(self) -> dict[str, tuple[str, Any, str]]:
        """The same cameras, state keys and action size; training batches need no chunk (BYOL reads frames)."""
        return {
            "cameras": ("cameras", list(self.cameras), "=="),
            "state_keys": ("state_keys", list(self.state_keys), "=="),
            "chunk_size": ("chunk_size", 1, ">="),
            "action_dim": ("action_dim", int(self.hparams.action_dim), "=="),
        }

    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """As the base class, then floor the std at 0.01 (as ACT): constant dimensions stay finite."""
        super().load_stats(stats)
        for key in self.normalized_keys:
            self.normalizer.stat(key, "std").clamp_(min=VINN_MIN_STD)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize the memory buffers to the saved memory before it is copied in (their length is the data's)."""
        for name in MEMORY_BUFFERS:
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor):
                current = getattr(self, name)
                setattr(self, name, current.new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- batches -------------------------------------------------------------------------------------
    def _images(self, batch: Mapping[str, Tensor], camera: str) -> Tensor:
        key = f"images/{camera}"
        if key not in batch:
            raise KeyError(f"batch has no {key!r} (keys: {sorted(batch)})")
        return single_step(batch[key], key, 4)

    def _normalized_state(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The state keys, each normalised, side by side: (B, sum D)."""
        missing = [k for k in self.state_keys if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batch)})")
        parts = [self.normalizer.mean_std(key, single_step(batch[key], key, 2).float())
                 for key in self.state_keys]
        return torch.cat(parts, dim=-1)

    # ---- training: BYOL --------------------------------------------------------------------------------
    def _view(self, pixels: Tensor) -> Tensor:
        hp = self.hparams
        return byol_view(pixels, hp.crop_scale, hp.brightness, hp.contrast, hp.saturation, hp.jitter_prob,
                         hp.grayscale_prob)

    def compute_loss(self, batch: Mapping[str, Tensor], weighted: bool = True) -> dict[str, Tensor]:
        """{"loss"}: BYOL's symmetric loss per frame, summed over cameras (and ``byol_<cam>`` per camera when
        there are several), batch means importance-weighted when asked."""
        weight = batch.get("weight") if weighted else None
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        for cam in self.cameras:
            pixels = pixels_from_uint8(self._images(batch, cam))
            per_sample = self.byol[cam](self._view(pixels), self._view(pixels))
            total = per_sample if total is None else total + per_sample
            if len(self.cameras) > 1:
                terms[f"byol_{cam}"] = weighted_mean(per_sample, weight)
        assert total is not None
        return {"loss": weighted_mean(total, weight), **terms}

    def evaluation_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Unweighted, with the views drawn from a fixed seed (the global random streams are left untouched), so
        validation losses of different epochs score the same views."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VALIDATION_VIEW_SEED)
            return self.compute_loss(batch, weighted=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (AdamW with weight decay) on the online encoders, projectors and predictors only."""
        params = [p for net in self.byol.values() for p in net.online_parameters()]
        if self.hparams.weight_decay > 0:
            return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return torch.optim.Adam(params, lr=self.hparams.lr)

    def tau_at(self, step: int) -> float:
        """The target's moving-average rate after optimiser step ``step``."""
        if self.hparams.tau_schedule == "constant":
            return float(self.hparams.tau)
        return cosine_tau(float(self.hparams.tau), step, self._total_steps())

    def _total_steps(self) -> int:
        """K of the cosine schedule: ``max_steps``, else the trainer's step budget (0 when unknown: constant)."""
        if self.hparams.max_steps:
            return int(self.hparams.max_steps)
        trainer = self._trainer
        if trainer is None:
            return 0
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        total = trainer.estimated_stepping_batches
        return int(total) if total != float("inf") else 0

    def on_train_start(self) -> None:
        self._target_step = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """One target update per optimiser step (none for a batch that only accumulated gradients)."""
        if self.global_step == self._target_step:
            return
        self._target_step = self.global_step
        tau = self.tau_at(self.global_step)
        for net in self.byol.values():
            net.update_target(tau)
        self.log("train/tau", tau, batch_size=1)

    # ---- the memory --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _encoding_mode(self) -> Iterator[None]:
        """Eval mode without autograd for building the memory, outside any ``inference_mode`` a caller holds
        (buffers made as inference tensors could not be loaded into later); the previous mode is restored."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(False), torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def encode_images(self, images: Mapping[str, Tensor]) -> Tensor:
        """uint8 (N, H, W, 3) frames per camera -> (N, 512 x cameras) float32 features, in batches."""
        n = len(images[self.cameras[0]])
        size = int(self.hparams.encode_batch_size)
        parts = []
        for start in range(0, n, size):
            per_camera = [self.byol[cam].features(pixels_from_uint8(images[cam][start:start + size].to(self.device)))
                          for cam in self.cameras]
            parts.append(torch.cat(per_camera, dim=-1).float())
        return torch.cat(parts) if parts else torch.zeros(0, self.memory_features.shape[1], device=self.device)

    def _episode_keys(self) -> list[str]:
        """What the memory reads of an episode."""
        return [*self.state_keys, *(f"images/{cam}" for cam in self.cameras), "action"]

    def _frames_of(self, episode: Episode, stride: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every ``stride``-th frame of an episode: its features (n, F), normalised states (n, S), and the
        episode's raw actions of every step (T, A) with the frames' steps (n,)."""
        actions = torch.as_tensor(episode.arrays["action"], dtype=torch.float32, device=self.device)
        steps = torch.arange(0, len(actions), stride)
        rows = steps.numpy()
        images = {cam: torch.as_tensor(episode.obs(f"images/{cam}")[rows]) for cam in self.cameras}
        states = {key: torch.as_tensor(episode.obs(key)[rows], device=self.device) for key in self.state_keys}
        return self.encode_images(images), self._normalized_state(states), actions, steps.to(self.device)

    def set_memory(self, features: Tensor, states: Tensor, actions: Tensor, start: Tensor, last: Tensor) -> None:
        """Replace the memory: per stored frame its features (N, F), normalised state (N, S), the index of its
        step in ``actions`` (N,) and of its episode's last step (N,); ``actions`` (T, A) raw, every step."""
        n = len(features)
        if not (len(states) == len(start) == len(last) == n):
            raise ValueError(f"memory entries disagree: {n} features, {len(states)} states, {len(start)} starts, "
                             f"{len(last)} ends")
        if features.shape[1:] != self.memory_features.shape[1:] or states.shape[1:] != self.memory_states.shape[1:]:
            raise ValueError(f"memory features {tuple(features.shape)} / states {tuple(states.shape)} do not match "
                             f"{tuple(self.memory_features.shape[1:])} / {tuple(self.memory_states.shape[1:])}")
        if n and (int(start.min()) < 0 or int(last.max()) >= len(actions) or bool((start > last).any())):
            raise ValueError("memory chunk indices must satisfy 0 <= start <= last < len(actions)")
        device = self.memory_features.device
        self.memory_features = features.detach().to(device, self.memory_features.dtype).clone()
        self.memory_states = states.detach().to(device, torch.float32).clone()
        self.memory_actions = actions.detach().to(device, torch.float32).clone()
        self.memory_start = start.detach().to(device, torch.long).clone()
        self.memory_last = last.detach().to(device, torch.long).clone()

    def build_memory(self, episodes: Iterable[Episode]) -> int:
        """Store every ``bank_stride``-th frame of ``episodes`` (the training episodes) with the current encoders;
        returns the number of stored frames. Needs the normalisation statistics."""
        if not bool(self.stats_initialized):
            raise RuntimeError("VINNModule needs the dataset statistics before it can build its memory")
        features, states, actions, start, last = [], [], [], [], []
        offset = 0
        with self._encoding_mode():
            for episode in episodes:
                f, s, a, steps = self._frames_of(episode, int(self.hparams.bank_stride))
                features.append(f)
                states.append(s)
                actions.append(a)
                start.append(offset + steps)
                last.append(torch.full_like(steps, offset + len(a) - 1))
                offset += len(a)
            if not features:
                raise ValueError("no training episodes to build VINN's memory from")
            self.set_memory(torch.cat(features), torch.cat(states), torch.cat(actions), torch.cat(start),
                            torch.cat(last))
            self.memory_step.fill_(self.global_step)
        return len(self.memory_features)

    def select_k(self, episodes: Iterable[Episode]) -> dict[str, Any] | None:
        """Choose k (and, with ``state_weight_candidates``, the state weight) by the mean squared error of the
        predicted chunks on every ``select_stride``-th frame of ``episodes`` (the validation episodes), in
        normalised action units; stores the choice in ``chosen_k`` / ``chosen_state_weight`` and returns
        ``{"k", "state_weight", "val_action_mse", "mse_by_k"}`` (None when there is nothing to score)."""
        self._require_memory()
        with self._encoding_mode():
            queries = self._validation_queries(episodes)
            if queries is None:
                return None
            errors, candidates = self._sweep(*queries)
            row, col = divmod(int(torch.argmin(errors)), errors.shape[1])
            self.chosen_k.fill_(col + 1)
            self.chosen_state_weight.fill_(float(candidates[row]))
        self.last_selection = {"k": col + 1, "state_weight": float(candidates[row]),
                               "val_action_mse": float(errors[row, col]), "mse_by_k": errors[row].tolist(),
                               "queries": int(len(queries[0]))}
        return self.last_selection

    def _validation_queries(self, episodes: Iterable[Episode]) -> tuple[Tensor, Tensor, Tensor] | None:
        """Features, normalised states and true normalised chunks (Q, C, A) of the validation frames."""
        visual, states, targets = [], [], []
        chunk = int(self.hparams.chunk_size)
        for episode in episodes:
            f, s, a, steps = self._frames_of(episode, int(self.hparams.select_stride))
            normalized = self.normalizer.mean_std("action", a)
            targets.append(gather_chunks(normalized, steps, torch.full_like(steps, len(a) - 1), chunk))
            visual.append(f)
            states.append(s)
        if not visual:
            return None
        return torch.cat(visual), torch.cat(states), torch.cat(targets)

    def _sweep(self, visual: Tensor, states: Tensor, targets: Tensor) -> tuple[Tensor, list[float]]:
        """Mean squared error (candidates, K) of every k = 1..K for every state-weight candidate."""
        hp = self.hparams
        candidates = [float(w) for w in (hp.state_weight_candidates or [hp.state_weight])]
        k_max = min(int(hp.max_k), len(self.memory_features))
        memory_actions = self.normalizer.mean_std("action", self.memory_actions)
        errors = torch.zeros(len(candidates), k_max, dtype=torch.float64, device=self.device)
        per_query = k_max * targets.shape[1] * targets.shape[2]
        batch = max(1, SWEEP_ENTRIES // per_query)
        for first in range(0, len(visual), batch):
            rows = slice(first, first + batch)
            for i, weight in enumerate(candidates):
                distances = neighbour_distances(visual[rows], self.memory_features, states[rows], self.memory_states,
                                                weight)
                dist, index = nearest(distances, k_max)
                chunks = gather_chunks(memory_actions, self.memory_start[index], self.memory_last[index],
                                       int(hp.chunk_size))
                errors[i] += sweep_k_errors(dist, chunks, targets[rows], float(hp.temperature))
        return errors / len(visual), candidates

    def refresh_memory(self, datamodule: Any) -> dict[str, Any] | None:
        """Build the memory from ``datamodule``'s training episodes, then (``select_k``) choose k on its validation
        episodes; the DataModule must offer ``read_episodes(split, keys)`` (``EpisodeDataModule`` does)."""
        if not hasattr(datamodule, "read_episodes"):
            raise TypeError(f"VINNModule builds its memory from the training episodes, which "
                            f"{type(datamodule).__name__} does not offer (read_episodes); use EpisodeDataModule")
        keys = self._episode_keys()
        size = self.build_memory(episode for _, episode in datamodule.read_episodes("train", keys))
        selection = None
        if self.hparams.select_k:
            selection = self.select_k(episode for _, episode in datamodule.read_episodes("val", keys))
            if selection is None:
                log.warning("VINN: no validation episodes to choose k on; k stays %d", int(self.chosen_k))
        self._report_memory(size, selection)
        return selection

    @rank_zero_only
    def _report_memory(self, size: int, selection: dict[str, Any] | None) -> None:
        line = f"VINN memory: {size} frames, encoders of step {int(self.memory_step)}; k = {int(self.chosen_k)}"
        if selection is not None:
            curve = selection["mse_by_k"]
            line += (f" (validation action MSE {selection['val_action_mse']:.4f} over {selection['queries']} frames; "
                     f"k=1: {curve[0]:.4f}), state weight {selection['state_weight']:g}")
        log.info(line)

    def _fitting_datamodule(self) -> Any:
        """The DataModule while ``fit`` runs (None otherwise: tests and deployments use the memory as loaded)."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None
        return getattr(trainer, "datamodule", None)

    def refresh_memory_if_stale(self) -> bool:
        """During fit, rebuild the memory (and k) when the encoders changed since it was built; True if rebuilt."""
        datamodule = self._fitting_datamodule()
        if datamodule is None or int(self.memory_step) == self.global_step:
            return False
        self.refresh_memory(datamodule)
        return True

    def on_train_epoch_end(self) -> None:
        """Rebuild the memory for this epoch's checkpoint (see the module docstring) and log the choice."""
        self.refresh_memory_if_stale()
        logged = {"vinn/memory_size": float(len(self.memory_features)), "vinn/k": float(self.chosen_k),
                  "vinn/state_weight": float(self.chosen_state_weight)}
        if self.last_selection is not None:
            logged["vinn/val_action_mse"] = self.last_selection["val_action_mse"]
        for name, value in logged.items():  # every rank built the same memory: the mean over ranks is the value
            self.log(name, value, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written while the memory is stale gets a fresh one (its state dict was already taken)."""
        super().on_save_checkpoint(checkpoint)
        if self.refresh_memory_if_stale() and "state_dict" in checkpoint:
            for name in MEMORY_STATE:
                checkpoint["state_dict"][name] = getattr(self, name)

    def _require_memory(self) -> None:
        if len(self.memory_features) == 0:
            raise RuntimeError("VINNModule has no memory of training frames: fit builds it at the end of every "
                               "training epoch (refresh_memory(datamodule) builds it by hand)")

    # ---- acting -----------------------------------------------------------------------------------------
    def _query(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Raw action chunks (N, C, A) of the k nearest stored frames, weighted, and their uncertainty (N,)."""
        visual = self.encode_images({cam: self._images(batch, cam) for cam in self.cameras})
        state = self._normalized_state(batch)
        distances = neighbour_distances(visual, self.memory_features, state, self.memory_states,
                                        float(self.chosen_state_weight))
        k = int(self.chosen_k)
        spread_n = int(self.hparams.uncertainty_neighbours)
        dist, index = nearest(distances, max(k, spread_n))
        near = index[:, :k]
        weights = softmax_weights(dist[:, :k], float(self.hparams.temperature))
        chunks = gather_chunks(self.memory_actions, self.memory_start[near], self.memory_last[near],
                               int(self.hparams.chunk_size))
        first = self.normalizer.mean_std("action", self.memory_actions[self.memory_start[index[:, :spread_n]]])
        return weighted_chunk(weights, chunks), neighbour_spread(first)

    def _step(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """One control step for N envs: raw actions (N, A) and the uncertainty of the chunk each executes (N,)."""
        self.refresh_memory_if_stale()
        self._require_memory()
        with self.policy_mode():
            batch = self.obs_to_tensors(self.policy_inputs(obs))
            n = batch[self.state_keys[0]].shape[0]
            action, uncertainty = self._execution.step(
                n, self.device,
                lambda rows: self._query(batch if rows is None else {key: value[rows] for key, value in batch.items()}))
            return action, uncertainty.clone()

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """Clear the action queues / ensembling buffers (of all envs, or only of ``env_ids``)."""
        self._execution.reset(env_ids)

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One control step for a batch of envs: raw actions (N, A)."""
        return self._step(obs)[0]

    def predict(self, obs: Mapping[str, Any]) -> Prediction:
        """The step of ``select_action`` plus the neighbours' disagreement per env (module docstring)."""
        action, uncertainty = self._step(obs)
        return Prediction(action=action, uncertainty=uncertainty)

    def predict_chunk(self, obs: Mapping[str, Any]) -> Tensor:
        """Raw action chunk (N, C, A) for the current observation (no queues involved)."""
        self._require_memory()
        with self.policy_mode():
            return self._query(self.obs_to_tensors(self.policy_inputs(obs)))[0]

    def plan_normalized(self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The first ``n_action_steps`` of the neighbours' chunk, normalised: (N, n_action_steps, A) (deterministic;
        temporal ensembling, if configured, is not applied)."""
        self._require_memory()
        chunk = self._query(obs)[0]
        return self.normalizer.mean_std("action", chunk)[:, : self.hparams.n_action_steps]


def _check_settings(cameras: list[str], k: int, max_k: int, bank_stride: int, select_stride: int, bank_dtype: str,
                    tau_schedule: str, temperature: float, uncertainty_neighbours: int) -> None:
    """Refuse settings that cannot work, naming them."""
    if not cameras:
        raise ValueError("VINNModule needs at least one camera: its neighbours are looked up by image features")
    if k < 1 or max_k < 1:
        raise ValueError(f"k ({k}) and max_k ({max_k}) must be >= 1")
    if bank_stride < 1 or select_stride < 1:
        raise ValueError(f"bank_stride ({bank_stride}) and select_stride ({select_stride}) must be >= 1")
    if bank_dtype not in BANK_DTYPES:
        raise ValueError(f"bank_dtype must be one of {sorted(BANK_DTYPES)}, got {bank_dtype!r}")
    if tau_schedule not in TAU_SCHEDULES:
        raise ValueError(f"tau_schedule must be one of {TAU_SCHEDULES}, got {tau_schedule!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if uncertainty_neighbours < 2:
        raise ValueError(f"uncertainty_neighbours must be >= 2 to measure a spread, got {uncertainty_neighbours}")
