"""SkillPriorModule: SPiRL's skill prior, FIST's goal-conditioned prior and distance, SkiLD's posterior
and discriminator, as stages of one LightningModule that share a skill embedding.

One module holds every part of the family, and the ``stage`` chosen in the config says which parts train
on what (the others are frozen, so DDP never sees unused trainable parameters):

==================  =========================================  ==============================================
stage               trains                                     loss (per sample, batch-mean)
==================  =========================================  ==============================================
``skill_prior``     skill_encoder, decoder, prior              SPiRL: 0.5 MSE(a, a_hat) + beta KL(q || N(0,I))
                                                               + NLL of the detached z ~ q under p(z | s_t)
``goal_conditioned`` skill_encoder, decoder, goal_prior        FIST: same, prior p(z | s_t, s_{t+H})
``posterior``       posterior                                  SkiLD: NLL of z ~ q(z | a, s) (frozen encoder)
                                                               under q_hat(z | s_t), fitted on demonstrations
``discriminator``   discriminator                              SkiLD: BCE of D(s_t), demos 1 / play 0
``contrastive``     distance                                   FIST: InfoNCE, positive s_{t+H}, in-batch
                                                               negatives, bilinear score f(s)^T W f(s')
==================  =========================================  ==============================================

Means are over elements, as SPiRL's losses are (reconstruction over batch x time x action dims, KL and
NLL over batch x latent dims), which is the scale its ``kl_div_weight`` (5e-4 kitchen) is tuned for.

Parts come from earlier checkpoints declaratively: ``init_from: [{ckpt: path, parts: [skill_encoder,
decoder], freeze: true}]`` copies those parts (and, by default, the normalisation statistics the parts were
trained with) and freezes them. A frozen part is never trained, whatever the stage.

Execution (``select_action``), for a batch of envs; a skill z is chosen every ``replan_every`` steps and
decoded closed-loop (pi(a | s, z) at every step; the open-loop decoder executes its H actions):

* ``prior`` (SPiRL without RL): z = mean of p(z | s);
* ``posterior``: z = mean of SkiLD's q_hat(z | s);
* ``skild`` (SkiLD's imitation mode, no RL): z = mean of the normalised q_hat^D(s) p^(1-D(s)), the Gaussian
  minimising D(s) KL(pi || q_hat) + (1 - D(s)) KL(pi || p) -- SkiLD's policy regulariser, which follows
  the posterior where the state looks like the demonstrations and the prior elsewhere;
* ``fist`` (semi-parametric): the nearest demonstration state in the contrastive feature space (raw L2
  when ``use_distance`` is false), goal = that demonstration's state H steps later (clipped to its end),
  z = mean of p(z | s, goal); FIST re-plans every 2 steps.

Normalisation: states are mean/std normalised with the play data's statistics and clipped to
+-``state_clip`` (the kitchen's joint velocities and object poses have very different scales), or left raw with
``normalize_states: false``, as SPiRL, FIST and SkiLD feed D4RL's states. Raw states keep a dimension that the
play data never moves at its physical scale (FIST's unseen top-burner knob sits at the clip bound when
normalised), but on our kitchen data the skills then execute worse in closed loop
(configs/skills/kitchen_fist_finetune.yaml has the measurements), so normalising stays the default. Actions stay
raw (both envs take actions in [-1, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_imit.checkpoints import load_checkpoint
from lit_imit.data.episodes import EpisodeStore
from lit_imit.data.skills import STD_FLOOR, load_states_actions
from lit_imit.modules.base import PolicyModule, Prediction, require_all_rows, weighted_mean
from lit_imit.nets.normalizer import STAT_NAMES, buffer_name, rename_legacy_stat_keys
from lit_imit.nets.skills import (
    ClosedLoopDecoder,
    ContrastiveDistance,
    GaussianMLP,
    OpenLoopDecoder,
    SkillEncoder,
    StateDiscriminator,
    gaussian_kl,
    gaussian_nll,
    standard_normal_kl,
    weighted_product,
)

STAGES = ("skill_prior", "goal_conditioned", "posterior", "discriminator", "contrastive")
PARTS = ("skill_encoder", "decoder", "prior", "goal_prior", "posterior", "discriminator", "distance")
POLICIES = ("prior", "posterior", "skild", "fist")
STAGE_PARTS = {
    "skill_prior": ("skill_encoder", "decoder", "prior"),
    "goal_conditioned": ("skill_encoder", "decoder", "goal_prior"),
    "posterior": ("posterior",),
    "discriminator": ("discriminator",),
    "contrastive": ("distance",),
}
DEFAULT_POLICY = {"skill_prior": "prior", "goal_conditioned": "fist", "posterior": "posterior",
                  "discriminator": "skild", "contrastive": "fist"}
POLICY_PARTS = {"prior": ("decoder", "prior"), "posterior": ("decoder", "posterior"),
                "skild": ("decoder", "prior", "posterior", "discriminator"), "fist": ("decoder", "goal_prior")}


def check_init_from(init_from: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Validate ``init_from`` entries: {ckpt: str, parts: [names], freeze: bool = true, stats: bool}."""
    entries = []
    for i, entry in enumerate(init_from or []):
        if not isinstance(entry, Mapping) or "ckpt" not in entry or "parts" not in entry:
            raise ValueError(f"init_from[{i}] must be a mapping with 'ckpt' and 'parts', got {entry!r}")
        unknown = set(entry) - {"ckpt", "parts", "freeze", "stats"}
        if unknown:
            raise ValueError(f"init_from[{i}] has unknown keys {sorted(unknown)} (use ckpt, parts, freeze, stats)")
        parts = list(entry["parts"])
        bad = [p for p in parts if p not in PARTS]
        if bad or not parts:
            raise ValueError(f"init_from[{i}] names unknown parts {bad or parts}; parts are {list(PARTS)}")
        entries.append({"ckpt": str(entry["ckpt"]), "parts": parts, "freeze": bool(entry.get("freeze", True)),
                        "stats": bool(entry.get("stats", i == 0))})
    return entries


class SkillPriorModule(PolicyModule):
    """SPiRL / FIST / SkiLD on flat states (PointMaze, FrankaKitchen)."""

    def __init__(
        self,
        stage: str = "skill_prior",
        state_dim: int = 59,
        action_dim: int = 9,
        horizon: int = 10,
        latent_dim: int = 10,
        hidden_dim: int = 128,
        n_layers: int = 5,
        encoder_hidden: int = 128,
        prior_hidden: int = 128,
        prior_layers: int = 6,
        decoder: str = "closed_loop",
        kl_weight: float = 5e-4,
        contrastive_hidden: int = 128,
        contrastive_dim: int = 32,
        discriminator_hidden: int = 32,
        discriminator_layers: int = 3,
        lr: float = 1e-3,
        optimizer: str = "radam",
        weight_decay: float = 0.0,
        init_from: list[dict[str, Any]] | None = None,
        policy: str | None = None,
        replan_every: int | None = None,
        lookup_dir: str | None = None,
        state_key: str = "state",
        use_distance: bool = True,
        action_low: float = -1.0,
        action_high: float = 1.0,
        state_clip: float = 10.0,
        normalize_states: bool = True,
        raw_still_dims: bool = False,
        n_uncertainty_samples: int = 8,
    ) -> None:
        """
        Args:
            stage: what trains (see the module docstring): skill_prior, goal_conditioned, posterior,
                discriminator or contrastive.
            horizon / latent_dim: H actions per skill and the size of z (10 and 10 in all three papers).
            hidden_dim / n_layers: width and depth of the decoder MLP (SPiRL's nz_mid, n_processing_layers).
            encoder_hidden: width of the skill encoder's LSTM (nz_mid_lstm).
            prior_hidden / prior_layers: width and hidden layers of the prior, goal-conditioned prior and
                posterior MLPs (nz_mid_prior, num_prior_net_layers).
            decoder: "closed_loop" (pi(a | s, z), SPiRL-cl / FIST / SkiLD) or "open_loop" (LSTM over H).
            kl_weight: beta of the KL(q || N(0, I)) term.
            init_from: parts to load from earlier checkpoints, e.g.
                ``[{ckpt: runs/prior.ckpt, parts: [skill_encoder, decoder, prior], freeze: true}]``;
                ``stats`` (default true for the first entry) also copies the normalisation statistics.
            policy: execution mode of ``select_action`` (prior, posterior, skild, fist); default by stage.
            replan_every: steps between skill choices (default H; FIST uses 2).
            lookup_dir: episode store of the demonstrations FIST looks goals up in (copied into the module
                at setup, so the checkpoint runs without it).
            state_key: the observation key of the flat state the networks read: in the episode files (the
                data module's windows and FIST's ``lookup_dir``) and from the env when acting. "state" is the
                skill envs' full state; the kitchen envs also offer "positions", D4RL's layout without the
                velocities (what SPiRL, FIST and SkiLD train on).
            use_distance: FIST's nearest neighbour in the contrastive feature space (else raw L2).
            action_low / action_high: executed actions are clipped to this box.
            state_clip: normalised states are clipped to +-state_clip. A dimension that never moves in the
                play data (the top burner knob of a no-topknob split) has a tiny std, and the demonstrations
                put it at ~100 sigma: unclipped, that blows up the prior's NLL and the fine-tuning diverges.
            normalize_states: false feeds raw states to every network (SPiRL's / FIST's / SkiLD's choice; see the
                module docstring); true (the default here) normalises with the play statistics.
            raw_still_dims: dimensions the play data never moves (std at the statistics' floor) are only centred,
                not divided by that floor, so one the demonstrations move (FIST's top-burner knob: -1.2 rad, ~100
                floor-sigmas) enters at its physical scale, beside the play skills' states, instead of at the
                clip bound, where every state after the new sub-task is far from anything the play data taught.
            n_uncertainty_samples: skills sampled by ``predict`` to measure the action spread.
        """
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if decoder not in ("closed_loop", "open_loop"):
            raise ValueError(f"decoder must be 'closed_loop' or 'open_loop', got {decoder!r}")
        if optimizer not in ("radam", "adam"):
            raise ValueError(f"optimizer must be 'radam' or 'adam', got {optimizer!r}")
        policy = policy or DEFAULT_POLICY[stage]
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        replan_every = replan_every or horizon
        if not 1 <= replan_every <= horizon:
            raise ValueError(f"replan_every must be in [1, horizon={horizon}], got {replan_every}")
        if state_clip <= 0:
            raise ValueError(f"state_clip must be > 0, got {state_clip}")
        if decoder == "open_loop" and stage == "goal_conditioned":
            raise ValueError("FIST's goal-conditioned prior is built on the closed-loop decoder (SPiRL-cl)")
        for name, value in (("state_dim", state_dim), ("action_dim", action_dim), ("horizon", horizon),
                            ("latent_dim", latent_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        init_entries = check_init_from(init_from)
        self.save_hyperparameters()
        self.stage, self.policy, self.replan_every = stage, policy, replan_every
        closed = decoder == "closed_loop"
        self.skill_encoder = SkillEncoder(action_dim, state_dim, latent_dim, encoder_hidden, closed_loop=closed)
        self.decoder = (ClosedLoopDecoder(state_dim, latent_dim, action_dim, hidden_dim, n_layers) if closed
                        else OpenLoopDecoder(latent_dim, action_dim, horizon, hidden_dim))
        self.prior = GaussianMLP(state_dim, latent_dim, prior_hidden, prior_layers)
        self.goal_prior = GaussianMLP(2 * state_dim, latent_dim, prior_hidden, prior_layers)
        self.posterior = GaussianMLP(state_dim, latent_dim, prior_hidden, prior_layers)
        self.discriminator = StateDiscriminator(state_dim, discriminator_hidden, discriminator_layers)
        self.distance = ContrastiveDistance(state_dim, contrastive_hidden, contrastive_dim)
        self.register_stats_buffers("state", state_dim)
        # FIST's demonstrations (raw states) and, per row, the row of its goal H steps later
        self.register_buffer("lookup_states", torch.zeros(0, state_dim))
        self.register_buffer("lookup_goal_index", torch.zeros(0, dtype=torch.long))
        self.loaded_parts: dict[str, str] = {}
        self.frozen_parts: set[str] = set()
        for entry in init_entries:
            self._init_parts(entry)
        for part in PARTS:  # only the stage's parts that were not frozen train
            trainable = part in STAGE_PARTS[stage] and part not in self.frozen_parts
            getattr(self, part).requires_grad_(trainable)
        self.trainable_parts = [p for p in PARTS if p in STAGE_PARTS[stage] and p not in self.frozen_parts]
        self._plan: dict[str, Tensor] | None = None
        self._step = 0
        self._lookup_features: Tensor | None = None
        self._warned_stats = False

    # ---- loading parts from earlier stages ------------------------------------------------------------
    def _init_parts(self, entry: dict[str, Any]) -> None:
        path = Path(entry["ckpt"])
        if not path.is_file():
            raise FileNotFoundError(f"init_from checkpoint {path} does not exist")
        ckpt = load_checkpoint(path)
        state = ckpt.get("state_dict", ckpt)
        for part in entry["parts"]:
            prefix = f"{part}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise KeyError(f"{path} has no weights for part {part!r}")
            try:
                getattr(self, part).load_state_dict(sub)
            except RuntimeError as err:
                raise ValueError(f"part {part!r} of {path} does not fit this model's config (state_dim, "
                                 f"action_dim, latent_dim, widths must match): {err}") from err
            self.loaded_parts[part] = str(path)
            if entry["freeze"]:
                self.frozen_parts.add(part)
        if entry["stats"]:
            state = dict(state)
            rename_legacy_stat_keys(state, "", self.normalizer.keys)  # a checkpoint from before the Normalizer
            for name in STAT_NAMES:
                key = f"normalizer.{buffer_name('state', name)}"
                if key not in state:
                    raise KeyError(f"{path} has no normalisation statistics ({key})")
                self.normalizer.stat("state", name).copy_(state[key])
            self.stats_initialized.fill_(bool(state.get("normalizer.initialized", torch.tensor(True))))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Resize the FIST lookup buffers to the checkpoint's before loading (their size is data-dependent)."""
        for name in ("lookup_states", "lookup_goal_index"):
            if name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[name], device=getattr(self, name).device))
        self._lookup_features = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- data hand-over -------------------------------------------------------------------------------
    def data_requirements(self) -> dict[str, tuple[str, Any, str]]:
        """Windows of exactly ``horizon`` actions of ``action_dim`` (the skill length the networks are built
        for), their states read from ``state_key``."""
        hp = self.hparams
        return {"horizon": ("horizon", int(hp.horizon), "=="),
                "action_dim": ("action_dim", int(hp.action_dim), "=="),
                "state_key": ("state_key", hp.state_key, "==")}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.lookup_dir and len(self.lookup_states) == 0:
            self.set_lookup_demos(self._read_lookup_dir(self.hparams.lookup_dir))

    def _read_lookup_dir(self, root: str) -> list[np.ndarray]:
        store = EpisodeStore(root, create=False)
        ids = store.ids()
        if not ids:
            raise FileNotFoundError(f"lookup_dir {root} holds no demonstrations")
        return [load_states_actions(str(store.path(i)), self.hparams.state_key)[0] for i in ids]

    def set_lookup_demos(self, demos: Sequence[np.ndarray | Tensor]) -> None:
        """Store FIST's demonstrations: each (T, S) raw states; goal of row t = row min(t + H, T - 1)."""
        states, goals, offset = [], [], 0
        for demo in demos:
            demo = torch.as_tensor(np.asarray(demo), dtype=torch.float32)
            if demo.ndim != 2 or demo.shape[1] != self.hparams.state_dim or len(demo) == 0:
                raise ValueError(f"lookup demonstrations must be (T, {self.hparams.state_dim}) states, got "
                                 f"{tuple(demo.shape)}")
            t = torch.arange(len(demo))
            goals.append(offset + torch.clamp(t + self.hparams.horizon, max=len(demo) - 1))
            states.append(demo)
            offset += len(demo)
        if not states:
            raise ValueError("FIST needs at least one demonstration to look goals up in")
        self.lookup_states = torch.cat(states).to(self.normalizer.stat("state", "mean").device)
        self.lookup_goal_index = torch.cat(goals).to(self.lookup_states.device)
        self._lookup_features = None

    # ---- losses -----------------------------------------------------------------------------------------
    def normalize_state(self, states: Tensor) -> Tensor:
        """Mean/std normalisation with the play statistics, clipped to +-state_clip (the still dimensions only
        centred with ``raw_still_dims``); raw states (float) when ``normalize_states`` is false."""
        if not self.hparams.get("normalize_states", True):
            return states.float()
        clip = self.hparams.state_clip
        if not self.hparams.get("raw_still_dims", False):
            return self.normalizer.mean_std("state", states.float()).clamp(-clip, clip)
        std = self.normalizer.stat("state", "std")
        std = torch.where(std <= STD_FLOOR * (1 + 1e-4), torch.ones_like(std), std)  # the floor, in float32
        return ((states.float() - self.normalizer.stat("state", "mean")) / std).clamp(-clip, clip)

    def _states(self, batch: Mapping[str, Tensor]) -> Tensor:
        states = batch["state"]
        if states.ndim != 3 or states.shape[1] != self.hparams.horizon + 1:
            raise ValueError(f"batch['state'] must be (B, H+1={self.hparams.horizon + 1}, S), got "
                             f"{tuple(states.shape)}")
        return self.normalize_state(states)

    def _actions(self, batch: Mapping[str, Tensor]) -> Tensor:
        actions = batch["action"]
        if actions.ndim != 3 or actions.shape[1] != self.hparams.horizon:
            raise ValueError(f"batch['action'] must be (B, H={self.hparams.horizon}, A), got {tuple(actions.shape)}")
        return actions.float()

    def _encode(self, states: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        h = self.hparams.horizon
        return self.skill_encoder(actions, states[:, :h] if self.skill_encoder.closed_loop else None)

    def _decode_sequence(self, states: Tensor, z: Tensor) -> Tensor:
        """Reconstructed actions (B, H, A) of a skill: closed-loop on the true states, or open-loop."""
        if isinstance(self.decoder, ClosedLoopDecoder):
            return self.decoder(states[:, : self.hparams.horizon], z.unsqueeze(1))
        return self.decoder(z)

    def _reconstruction_error(self, states: Tensor, actions: Tensor, z: Tensor) -> Tensor:
        """Per sample: half the mean squared error of the decoded skill (SPiRL's unit-variance Gaussian NLL
        up to its constant, a mean over steps and action dimensions as SPiRL's losses take it)."""
        return 0.5 * (self._decode_sequence(states, z) - actions).pow(2).mean(dim=(1, 2))

    def evaluation_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The stage's losses, and for the stages that train the skill VAE how much the decoder reads z: the
        reconstruction error with the posterior's mean (``recon_mean_z``) and with z = 0 (``recon_zero_z``).
        Close values mean a collapsed posterior: the decoder ignores the skill and plays the state's average
        action, and no prior or high-level policy can steer it."""
        losses = self.compute_loss(batch, weighted=False)
        if self.stage in ("skill_prior", "goal_conditioned"):
            states, actions = self._states(batch), self._actions(batch)
            mean, _ = self._encode(states, actions)
            losses["recon_mean_z"] = self._reconstruction_error(states, actions, mean).mean()
            losses["recon_zero_z"] = self._reconstruction_error(states, actions, torch.zeros_like(mean)).mean()
        return losses

    def vae_losses(self, states: Tensor, actions: Tensor, prior_input: Tensor,
                   prior_net: torch.nn.Module) -> dict[str, Tensor]:
        """Per-sample reconstruction, KL to N(0, I) and prior NLL of the detached posterior sample."""
        mean, log_std = self._encode(states, actions)
        z = mean + log_std.exp() * torch.randn_like(mean)
        recon = self._reconstruction_error(states, actions, z)
        kl = standard_normal_kl(mean, log_std).mean(dim=-1)
        p_mean, p_log_std = prior_net(prior_input)
        prior_nll = gaussian_nll(z.detach(), p_mean, p_log_std).mean(dim=-1)
        with torch.no_grad():
            prior_kl = gaussian_kl(mean, log_std, p_mean, p_log_std).mean(dim=-1)
        return {"loss": recon + self.hparams.kl_weight * kl + prior_nll, "recon": recon, "kl": kl,
                "prior_nll": prior_nll, "prior_kl": prior_kl}

    def compute_loss(self, batch: Mapping[str, Tensor], weighted: bool = True) -> dict[str, Tensor]:
        """The stage's loss terms as batch means ({"loss", ...}), importance-weighted when asked."""
        weight = batch.get("weight") if weighted else None
        states = self._states(batch)
        stage = self.stage
        if stage == "skill_prior":
            terms = self.vae_losses(states, self._actions(batch), states[:, 0], self.prior)
        elif stage == "goal_conditioned":
            goal_input = torch.cat([states[:, 0], states[:, -1]], dim=-1)
            terms = self.vae_losses(states, self._actions(batch), goal_input, self.goal_prior)
        elif stage == "posterior":
            with torch.no_grad():
                mean, log_std = self._encode(states, self._actions(batch))
                z = mean + log_std.exp() * torch.randn_like(mean)
            q_mean, q_log_std = self.posterior(states[:, 0])
            nll = gaussian_nll(z, q_mean, q_log_std).mean(dim=-1)
            with torch.no_grad():
                kl = gaussian_kl(mean, log_std, q_mean, q_log_std).mean(dim=-1)
            terms = {"loss": nll, "posterior_nll": nll, "posterior_kl": kl}
        elif stage == "discriminator":
            logits = self.discriminator(states[:, 0])
            labels = batch["label"].float()
            bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            accuracy = ((logits > 0).float() == labels).float()
            terms = {"loss": bce, "bce": bce, "accuracy": accuracy, "demo_fraction": labels}
        else:  # contrastive
            logits = self.distance.logits(states[:, 0], states[:, -1])
            targets = torch.arange(len(logits), device=logits.device)
            ce = F.cross_entropy(logits, targets, reduction="none")
            accuracy = (logits.argmax(dim=1) == targets).float()
            terms = {"loss": ce, "infonce": ce, "accuracy": accuracy}
        return {name: weighted_mean(value, weight) for name, value in terms.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """RAdam (SPiRL, lr 1e-3) or Adam (FIST's contrastive model) over the trainable parts only."""
        if self.stage == "posterior" and "skill_encoder" not in self.frozen_parts:
            # checked when training starts, not at construction: a trained posterior rebuilt from its
            # checkpoint (lit_imit.policies.load_policy) needs no earlier stage's file
            raise ValueError("the posterior stage fits q(z|s) to a trained skill embedding: load it frozen, e.g. "
                             "init_from: [{ckpt: prior.ckpt, parts: [skill_encoder, decoder, prior], freeze: true}]")
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"stage {self.stage!r} has nothing to train: its parts {STAGE_PARTS[self.stage]} are all "
                             f"frozen by init_from (an evaluation-only config runs with `test`, not `fit`)")
        cls = torch.optim.RAdam if self.hparams.optimizer == "radam" else torch.optim.Adam
        return cls(params, lr=self.hparams.lr, betas=(0.9, 0.999), weight_decay=self.hparams.weight_decay)

    # ---- the policy contract ---------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """New episodes: forget the current skills and the step counter (and re-encode FIST's demos).

        The skills are replanned for all rows together, so ``env_ids`` must name every row (or be None).
        """
        require_all_rows(self, env_ids, None if self._plan is None else int(self._plan["z"].shape[0]))
        self._plan = None
        self._step = 0
        self._lookup_features = None

    def _check_ready(self) -> None:
        if not bool(self.stats_initialized) and not self._warned_stats:
            rank_zero_warn("SkillPriorModule runs the policy with identity normalisation: no stats were loaded")
            self._warned_stats = True
        if self.policy == "fist" and len(self.lookup_states) == 0:
            raise RuntimeError("the FIST policy needs demonstrations: set lookup_dir or call set_lookup_demos()")

    def _features(self, states: Tensor) -> Tensor:
        if self.hparams.use_distance:
            return self.distance.features(states)
        return states

    def fist_goals(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised goal states (N, S) and the demo rows matched for normalised states (N, S)."""
        if self._lookup_features is None:
            demo = self.normalize_state(self.lookup_states)
            self._lookup_features = self._features(demo)
        rows = torch.cdist(self._features(states), self._lookup_features).argmin(dim=1)
        goals = self.lookup_states[self.lookup_goal_index[rows]]
        return self.normalize_state(goals), rows

    def skill_distribution(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """The high-level policy's Gaussian over z (N, nz) for normalised states, per ``policy``."""
        if self.policy == "prior":
            return self.prior(states)
        if self.policy == "posterior":
            return self.posterior(states)
        if self.policy == "skild":
            p_mean, p_log_std = self.prior(states)
            q_mean, q_log_std = self.posterior(states)
            d = torch.sigmoid(self.discriminator(states)).unsqueeze(-1)
            return weighted_product(q_mean, q_log_std, d, p_mean, p_log_std, 1.0 - d)
        goals, _ = self.fist_goals(states)
        return self.goal_prior(torch.cat([states, goals], dim=-1))

    def _low_level(self, states: Tensor, z: Tensor, plan: dict[str, Tensor]) -> Tensor:
        if isinstance(self.decoder, ClosedLoopDecoder):
            return self.decoder(states, z)
        offset = self._step % self.replan_every
        return plan["actions"][:, offset]

    def _step_actions(self, obs: Mapping[str, Any], n_samples: int = 0) -> tuple[Tensor, Tensor | None]:
        self._check_ready()
        key = self.hparams.state_key
        if key not in obs:
            raise KeyError(f"observations need a {key!r} entry (got {sorted(obs)}); set model.init_args.state_key")
        states = self.normalize_state(self.obs_to_tensors({key: obs[key]})[key])
        n = states.shape[0]
        if self._plan is None or self._plan["z"].shape[0] != n or self._step % self.replan_every == 0:
            mean, log_std = self.skill_distribution(states)
            plan = {"z": mean, "log_std": log_std}
            if not isinstance(self.decoder, ClosedLoopDecoder):
                plan["actions"] = self.decoder(mean)
            self._plan = plan
        action = self._low_level(states, self._plan["z"], self._plan)
        uncertainty = None
        if n_samples > 0:
            eps = torch.randn(n_samples, *self._plan["z"].shape, device=states.device)
            zs = self._plan["z"] + self._plan["log_std"].exp() * eps  # (K, N, nz)
            if isinstance(self.decoder, ClosedLoopDecoder):
                sampled = self.decoder(states.expand(n_samples, -1, -1), zs)
            else:
                sampled = self.decoder(zs.reshape(-1, zs.shape[-1])).reshape(n_samples, n, self.hparams.horizon, -1)
                sampled = sampled[:, :, self._step % self.replan_every]
            uncertainty = sampled.std(dim=0).mean(dim=-1)
        self._step += 1
        low, high = self.hparams.action_low, self.hparams.action_high
        return action.clamp(low, high), uncertainty

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One control step for N envs: (N, A) raw actions."""
        with self.policy_mode():
            action, _ = self._step_actions(obs)
        return action

    def predict(self, obs: Mapping[str, Any]) -> Prediction:
        """The same step plus the spread of actions decoded from skills sampled around the chosen one."""
        with self.policy_mode():
            action, uncertainty = self._step_actions(obs, n_samples=max(2, self.hparams.n_uncertainty_samples))
        return Prediction(action=action, uncertainty=uncertainty)
