"""SkiLDRLModule: SkiLD's demonstration-guided RL in skill space (Pertsch et al., "Demonstration-Guided
Reinforcement Learning with Learned Skills", CoRL 2021).

SkiLD is SPiRL's downstream SAC (``lit_imit.modules.skill_sac``, which this module extends: the same decisions
of H env steps, replay buffer, critics, epochs and exact resume) with the demonstrations of the target task
guiding it through the three offline stages of ``SkillPriorModule``:

* ``prior_ckpt`` (stage ``skill_prior``): the skill embedding, the closed-loop decoder that executes a skill z
  and the task-agnostic skill prior p(z | s), all from play data;
* ``posterior_ckpt`` (stage ``posterior``): the skill posterior q(z | s) fitted on the demonstrations;
* ``discriminator_ckpt`` (stage ``discriminator``): D(s), demonstration states against play states.

Each later stage holds frozen copies of the earlier ones' parts; this module checks that the three files chain
(the decoder, the embedding, the prior and the state statistics are the same in all, the posterior the same in
the last two) and embeds the result, so its checkpoints run without them.

The high-level policy pi(z | s) pays alpha (1 - D) KL(pi || p) + alpha_q D KL(pi || q): it follows the
posterior where the state looks like the demonstrations and the prior elsewhere, each temperature tuned towards
its own target divergence; the reward is (1 - kappa) r_env + kappa (log D - log(1 - D)), relabelled with the
current discriminator whenever a batch is drawn (the maths: ``lit_imit.rl.skild``). With ``discriminator_every``
> 0 a trainable copy of D keeps learning online, demonstration states (``demo_dir``, read once and kept in the
module) against the replay buffer's states, one step every that many updates, as SkiLD's imitation code does;
with ``kappa: 1`` (no env reward) that is GAIL in skill space. pi starts as a copy of the posterior network
(``init_policy_from``), so it starts by following the demonstrations' skills.

Per step TensorBoard gets ``q_loss``, ``policy_loss``, ``alpha``, ``alpha_q``, their losses, ``kl_prior``,
``kl_posterior``, ``d_mean`` (mean D of the batch's states), ``disc_reward``, ``env_reward``, ``reward`` (the
mixed one), ``q1``, ``q2``, ``q_target`` and, on the updates that train D, ``disc_loss``, ``disc_d_demo`` and
``disc_d_policy``; the rest is ``SkillSACModule``'s.

Exact resume: everything ``SkillSACModule`` saves, plus log alpha_q, the online discriminator and the
demonstration states (buffers), and the five optimisers (actor, critics, alpha, alpha_q, discriminator).

Defaults are SkiLD's maze settings in its public code (clvrai/skild: ``skild/rl/agents/skild_agent.py``,
``gail_agent.py``, ``skild/configs/demo_rl/{maze,kitchen}/conf.py``, ``imitation/maze/conf.py``): batch 128, 2000
warm-up decisions, target divergences 10 (prior) and 1 (posterior), discriminator reward weight 0.1
(``lambda_gail`` 0.9 weighs the env's reward), the pretrained discriminator frozen (``freeze_discriminator``),
in imitation trained online at lr 3e-4 with one update per 5 policy updates on average
(``discriminator_updates`` 0.2); the rest is SPiRL's (lr 3e-4, gamma 0.99, tau 5e-3, KL clamped at 100,
skills squashed to +-2). Departures: the next state's divergence in the soft target is weighted by D(s') (SkiLD
weighs it by D(s) of the transition's first state); the online discriminator trains every N-th update rather
than with probability 1/N (deterministic, for exact resume); warm-up samples pi as it starts (SPiRL and SkiLD
warm up with their initialised policy); the KLs are analytic (as ``SkillSACModule``'s).
"""

from __future__ import annotations

import contextvars
import copy
import math
from typing import Any, Mapping

import torch
from torch import Tensor

from lit_imit.checkpoints import load_checkpoint
from lit_imit.data.episodes import EpisodeStore
from lit_imit.data.skills import load_states_actions
from lit_imit.modules.base import PolicyModule
from lit_imit.modules.skill_sac import SkillSACModule, _Epoch, acting_spec
from lit_imit.policies import build_policy, load_policy
from lit_imit.rl.sac import prior_divergence, rsample, squash
from lit_imit.rl.skild import SkiLDSettings, SkillSample, blended_divergence, discriminator_loss, skild_update

#: the stage checkpoints SkiLD starts from, as (argument, the SkillPriorModule stage that writes it)
STAGE_ARGS = (("prior_ckpt", "skill_prior"), ("posterior_ckpt", "posterior"), ("discriminator_ckpt", "discriminator"))
#: parts every later stage copies frozen from the prior's stage
SHARED_PARTS = ("skill_encoder", "decoder", "prior", "normalizer")
POLICY_SOURCES = ("posterior", "prior", "scratch")


def read_demo_states(root: str, state_key: str) -> Tensor:
    """Every state (T, S) of every episode in the demonstration store ``root``, concatenated."""
    store = EpisodeStore(root, create=False)
    ids = store.ids()
    if not ids:
        raise FileNotFoundError(f"demo_dir {root} holds no demonstrations")
    return torch.cat([torch.from_numpy(load_states_actions(str(store.path(i)), state_key)[0]) for i in ids])


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def load_stage(arg: str, path: str, stage: str) -> PolicyModule:
    """The ``SkillPriorModule`` of one stage checkpoint, which must be of ``stage``.

    A later stage's hyper-parameters name the earlier checkpoints it copied parts from (``init_from``); its own
    file already holds those parts, so it is rebuilt without reading them (as an acting-only ``skill_prior``
    module: the stage only decides what trains)."""
    saved = (load_checkpoint(path).get("hyper_parameters") or {}).get("stage")
    if saved != stage:
        raise ValueError(f"{arg} {path} is not a SkillPriorModule checkpoint of stage {stage!r} (its stage: "
                         f"{saved!r}); SkiLD's stages come from configs/skills/*_spirl_prior.yaml, "
                         f"*_skild_posterior.yaml and *_skild_discriminator.yaml, in that order")
    overrides = {"stage": "skill_prior", "init_from": None, "lookup_dir": None}
    return contextvars.Context().run(load_policy, path, overrides=overrides)


def chain_stages(stages: Mapping[str, PolicyModule], paths: Mapping[str, str]) -> PolicyModule:
    """The discriminator stage's module, which holds every part, once the three stages are checked to chain:
    the frozen parts a later stage took from an earlier one must be that one's. A posterior fitted on another
    skill embedding, or a discriminator stage that did not load this posterior, would make the decoded skills and
    the KLs meaningless."""
    (prior_arg, _), (posterior_arg, _), (disc_arg, _) = STAGE_ARGS
    checks = [(posterior_arg, prior_arg, part) for part in SHARED_PARTS]
    checks += [(disc_arg, prior_arg, part) for part in SHARED_PARTS] + [(disc_arg, posterior_arg, "posterior")]
    for later, earlier, part in checks:
        if not _same_weights(getattr(stages[later], part), getattr(stages[earlier], part)):
            raise ValueError(f"the SkiLD stages do not chain: the {part} of {later} {paths[later]} is not the one "
                             f"of {earlier} {paths[earlier]}; train prior -> posterior -> discriminator in order, "
                             f"each with init_from the previous checkpoint")
    return stages[disc_arg]


class SkiLDRLModule(SkillSACModule):
    """SkiLD's demonstration-guided SAC over skills (see the module docstring).

    Args:
        prior_ckpt, posterior_ckpt, discriminator_ckpt: the three ``SkillPriorModule`` stage checkpoints.
        skills_policy: filled in from them when the module is first built and saved with it; leave it out.
        demo_dir: the demonstrations' episode store, read at fit when the discriminator trains online.
        state_key: the observation key the policy reads.
        kappa: weight of the discriminator reward (1 - kappa weighs the env's); 1 is pure imitation (no env reward).
        target_divergence, target_divergence_q: the KL to the prior (where D is low) and to the posterior (where
            D is high) that alpha and alpha_q steer towards (SkiLD maze: 10 and 1).
        tune_alpha, tune_alpha_q: tune each temperature, or keep it at its initial value (SkiLD kitchen: fixed
            0.1 each).
        init_alpha, init_alpha_q: the temperatures' start.
        init_policy_from: pi starts as a copy of the ``posterior`` or the ``prior`` network, or re-initialised
            (``scratch``).
        discriminator_every: one online discriminator step every this many updates (0: D stays frozen).
        lr_discriminator: its Adam learning rate (SkiLD: 3e-4).
        The rest as ``SkillSACModule``'s (SkiLD: batch 128, 2000 warm-up decisions, critics 2 x 256 -> 3 here).
    """

    OPTIMIZER_NAMES = ("actor", "critic", "alpha", "alpha_q", "discriminator")

    def __init__(
        self,
        prior_ckpt: str | None = None,
        posterior_ckpt: str | None = None,
        discriminator_ckpt: str | None = None,
        skills_policy: dict[str, Any] | None = None,
        demo_dir: str | None = None,
        state_key: str = "state",
        kappa: float = 0.1,
        target_divergence: float = 10.0,
        target_divergence_q: float = 1.0,
        tune_alpha: bool = True,
        tune_alpha_q: bool = True,
        init_alpha: float = 1.0,
        init_alpha_q: float = 1.0,
        init_policy_from: str = "posterior",
        discriminator_every: int = 0,
        lr_discriminator: float = 3e-4,
        max_divergence: float = 100.0,
        skill_range: float = 2.0,
        critic_hidden: int = 256,
        critic_layers: int = 3,
        lr_policy: float = 3e-4,
        lr_critic: float = 3e-4,
        lr_alpha: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 5e-3,
        batch_size: int = 128,
        replay_capacity: int = 100_000,
        warmup_decisions: int = 2000,
        updates_per_decision: float = 1.0,
        seed: int = 0,
    ) -> None:
        # past SkillSACModule.__init__, which builds SPiRL's single prior; the learner is built below as it builds
        # it (``super`` here also lets save_hyperparameters find this __init__'s arguments)
        super(SkillSACModule, self).__init__()
        self._check_args(kappa, init_alpha, init_alpha_q, init_policy_from, discriminator_every, skill_range,
                         batch_size, warmup_decisions, updates_per_decision)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.method = "skild_rl"
        self.skills = self._frozen_skills(prior_ckpt, posterior_ckpt, discriminator_ckpt, skills_policy)
        self.hparams["skills_policy"] = acting_spec(self.skills)
        hp = self.skills.hparams
        self.state_dim, self.decision_dim, self.horizon = int(hp.state_dim), int(hp.latent_dim), int(hp.horizon)
        self.action_dim, self.scale = int(hp.action_dim), float(skill_range)
        self.policy = self._initial_policy(init_policy_from)
        self.discriminator = copy.deepcopy(self.skills.discriminator).requires_grad_(discriminator_every > 0)
        self.register_buffer("demo_states", torch.zeros(0, self.state_dim))
        self.penalty_target = float(target_divergence)
        self._build_learner(critic_hidden, critic_layers, init_alpha, replay_capacity)
        self.log_alpha_q = torch.nn.Parameter(torch.tensor(math.log(init_alpha_q)))

    @staticmethod
    def _check_args(kappa: float, init_alpha: float, init_alpha_q: float, init_policy_from: str,
                    discriminator_every: int, skill_range: float, batch_size: int, warmup_decisions: int,
                    updates_per_decision: float) -> None:
        if not 0.0 <= kappa <= 1.0:
            raise ValueError(f"kappa weighs the discriminator reward against the env's: it must be in [0, 1], got "
                             f"{kappa}")
        if init_policy_from not in POLICY_SOURCES:
            raise ValueError(f"init_policy_from must be one of {POLICY_SOURCES}, got {init_policy_from!r}")
        if min(init_alpha, init_alpha_q, skill_range) <= 0 or batch_size < 1 or min(
                discriminator_every, warmup_decisions, updates_per_decision) < 0:
            raise ValueError("init_alpha, init_alpha_q and skill_range must be > 0, batch_size >= 1, "
                             "discriminator_every, warmup_decisions and updates_per_decision >= 0")

    # ---- building -----------------------------------------------------------------------------------------
    @staticmethod
    def _frozen_skills(prior_ckpt: str | None, posterior_ckpt: str | None, discriminator_ckpt: str | None,
                       skills_policy: dict[str, Any] | None) -> PolicyModule:
        """The prior, posterior and discriminator in one frozen ``SkillPriorModule`` acting as SkiLD's imitation
        policy: from its spec (weights loaded later with this module's) or the three stage checkpoints. Built in
        fresh ``contextvars`` contexts, as ``SkillSACModule`` builds its prior (the CLI's hparams stay ours)."""
        if skills_policy is not None:
            skills = contextvars.Context().run(build_policy, skills_policy)
        else:
            paths = {"prior_ckpt": prior_ckpt, "posterior_ckpt": posterior_ckpt,
                     "discriminator_ckpt": discriminator_ckpt}
            missing = [arg for arg, path in paths.items() if not path]
            if missing:
                raise ValueError(f"SkiLD needs its three stage checkpoints; set model.init_args.{', '.join(missing)} "
                                 "(configs/skills/*_spirl_prior.yaml -> *_skild_posterior.yaml -> "
                                 "*_skild_discriminator.yaml)")
            stages = {arg: load_stage(arg, paths[arg], stage) for arg, stage in STAGE_ARGS}
            skills = chain_stages(stages, paths)
        skills.policy = "skild"
        skills.requires_grad_(False)
        return skills.eval()

    def _initial_policy(self, source: str) -> torch.nn.Module:
        """pi(u | s): a trainable copy of the posterior's (SkiLD) or the prior's network, or one re-initialised."""
        policy = copy.deepcopy(self.skills.prior if source == "prior" else self.skills.posterior)
        if source == "scratch":
            for layer in policy.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return policy.requires_grad_(True)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Resize the demonstration states to the checkpoint's before loading (their count is data-dependent)."""
        if "demo_states" in state_dict:
            self.demo_states = torch.zeros_like(state_dict["demo_states"], device=self.demo_states.device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def settings(self) -> SkiLDSettings:
        hp = self.hparams
        return SkiLDSettings(gamma=hp.gamma, tau=hp.tau, target_divergence=hp.target_divergence,
                             target_divergence_q=hp.target_divergence_q, kappa=hp.kappa, tune_alpha=hp.tune_alpha,
                             tune_alpha_q=hp.tune_alpha_q)

    # ---- the agent that lit_imit.rl.skild updates --------------------------------------------------------------
    def skill_sample(self, states: Tensor, generator: torch.Generator | None) -> SkillSample:
        """A reparameterised squashed skill per raw state and pi's KL to the prior and to the posterior there."""
        x = self.critic_input(states)
        mean, log_std = self.policy(x)
        u = rsample(mean, log_std, generator)
        clamp = self.hparams.max_divergence
        with torch.no_grad():
            prior, posterior = self.skills.prior(x), self.skills.posterior(x)
        return SkillSample(squash(u, self.scale), prior_divergence(mean, log_std, *prior, clamp),
                           prior_divergence(mean, log_std, *posterior, clamp))

    def discriminator_logits(self, states: Tensor) -> Tensor:
        """The (online) discriminator's logits for raw states, normalised as it was trained."""
        return self.discriminator(self.critic_input(states))

    def policy_sample(self, states: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """SkillSACModule's contract: a skill per raw state and what pi pays for it, the D-blended divergence."""
        sample = self.skill_sample(states, generator)
        with torch.no_grad():
            d = torch.sigmoid(self.discriminator_logits(states))
        alpha, alpha_q = self.log_alpha.detach().exp(), self.log_alpha_q.detach().exp()
        return sample.skills, blended_divergence(sample.kl_prior, sample.kl_posterior, d, alpha, alpha_q)

    def _choose(self, states: Tensor, generator: torch.Generator | None, mode: str) -> Tensor:
        """Warm-up samples pi as it starts (the posterior's copy), as SkiLD warms up with its initialised policy."""
        return super()._choose(states, generator, "sample" if mode == "warmup" else mode)

    # ---- training ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.discriminator_every > 0 and len(self.demo_states) == 0:
            if not self.hparams.demo_dir:
                raise ValueError("the online discriminator (discriminator_every > 0) trains on the demonstrations: "
                                 "set model.init_args.demo_dir to their episode store")
            states = read_demo_states(self.hparams.demo_dir, self.hparams.state_key)
            if states.shape[1] != self.state_dim:
                raise ValueError(f"the demonstrations in {self.hparams.demo_dir} have {states.shape[1]}-D states, the "
                                 f"skills {self.state_dim}-D")
            self.demo_states = states.to(self.demo_states.device)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam (0.9, 0.999) each for pi, the critics, log alpha, log alpha_q and the online discriminator."""
        hp = self.hparams

        def adam(params: Any, lr: float) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))

        return [adam(self.policy.parameters(), hp.lr_policy), adam(self.critic.parameters(), hp.lr_critic),
                adam([self.log_alpha], hp.lr_alpha), adam([self.log_alpha_q], hp.lr_alpha),
                adam(self.discriminator.parameters(), hp.lr_discriminator)]

    def _update(self, epoch: _Epoch) -> dict[str, float]:
        """SkiLD's update on a replay batch, then, every ``discriminator_every``-th update, one discriminator step."""
        sample = self.replay.sample(self.hparams.batch_size, epoch.replay_draws, self.device)
        terms = skild_update(self, sample, self.settings, self._step_optimizer, epoch.policy_noise)
        every = int(self.hparams.discriminator_every)
        if every > 0 and (int(self.updates) + 1) % every == 0:
            terms.update(self._update_discriminator(epoch))
        return terms

    def _update_discriminator(self, epoch: _Epoch) -> dict[str, float]:
        """One BCE step of D: a batch of demonstration states (1) against a batch of replay states (0)."""
        n = self.hparams.batch_size
        policy_states = self.replay.sample(n, epoch.replay_draws, self.device).states
        rows = torch.randint(0, len(self.demo_states), (n,), generator=epoch.replay_draws)
        demo_logits = self.discriminator_logits(self.demo_states[rows.to(self.demo_states.device)])
        policy_logits = self.discriminator_logits(policy_states)
        loss = discriminator_loss(demo_logits, policy_logits)
        self._step_optimizer("discriminator", loss)
        return {"disc_loss": float(loss.detach()), "disc_d_demo": float(torch.sigmoid(demo_logits.detach()).mean()),
                "disc_d_policy": float(torch.sigmoid(policy_logits.detach()).mean())}
