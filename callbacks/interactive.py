"""InteractiveAggregation: DAgger / ASkDAgger as a Lightning callback (see docs/architecture.md).

One training epoch is one round of gradient steps on the current dataset (``trainer.limit_train_batches``
or the DataModule's ``samples_per_epoch``). At the end of the epoch the novice, with the weights it has
now, runs ``episodes_per_round`` interactive episodes (:mod:`lit_imit.interactive.loop`): each decision is
gated (SAG), the teacher's feedback becomes demonstrations (FIER: validated, relabeled, teacher segments),
they are written to the DataModule's episode store and appended to its training split, and sampling
priorities are recomputed (PIER). The next epoch trains on the grown dataset (the CLI reloads
dataloaders every epoch and checkpoints after this hook, so a checkpoint always holds the aggregated data).

Start: after BC pre-training on the DataModule's initial teacher demos (those are offline entries for
PIER), or from scratch (``seed_episodes``): before the first epoch, gated episodes of the untrained novice
seed the dataset (every decision is queried until SAG has enough labels, so the teacher does the work).

Parallel episodes and DDP: every episode of a round gates with its own fork of the shared gate (the history
at the start of the round, extended by the episode's own decisions) and uses env seed ``seed + i`` and its
own torch generator, so its outcome does not depend on where or next to what it runs
(:mod:`lit_imit.rounds`). Episode ``i`` runs on rank ``i % world_size``; within a rank, the episodes run one
after the other in the training process (``num_workers`` 0) or side by side in env worker processes.
Afterwards the decision records of all episodes are gathered and appended to the shared gate in episode
order, so every rank ends the round with the same gate, counters, episode list and priorities. Demonstrations stay off the wire: rank 0 keeps its own
in memory, the other ranks write theirs to ``<data_dir>/.interactive_staging``, and rank 0 adds all of
them to the store in episode order (ids continue after the largest on disk) and broadcasts the ids.

Resume: the gate (history and RNG), counters and decision log are this callback's state; the episode list,
PIER metadata and priorities are the DataModule's. The CLI writes ``last.ckpt`` after every epoch, after
this callback's round, so resuming from it collects nothing twice. Only a run killed during a round, or
one resumed from an older checkpoint, leaves episodes on disk unused; it collects them again under new ids.

Domain shifts (``domain_shifts``, :class:`~lit_imit.interactive.DomainSchedule`): after the given numbers of
interactive episodes the rounds' env is rebuilt with other settings (e.g. the ALOHA cube's ``spawn_offset``),
as ASkDAgger's domain-shift experiment does, to show how each mode recovers. A switch falls between rounds;
the domain is logged (``interactive/domain``), written into each collected demo's attributes and kept in the
checkpoint, which an interactive recipe's curve reads to test each checkpoint in the domain it faced. The
initial teacher demos and any ``RolloutEvaluation`` during fit stay in the base env.

A fresh start (no ``--ckpt_path``) on a store that already holds interactively collected episodes is
refused: it would silently train on another run's rounds. Resume that run, use a new data directory, or set
``data.init_args.reuse_interactive_store: true``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl

from callbacks.ema import ema_weights_if_any
from callbacks.rollout import RolloutEvaluation
from lit_imit.data.episodes import read_episode, write_episode
from lit_imit.distributed import all_gather_objects, broadcast_object
from lit_imit.evaluation import policy_env_kwargs
from lit_imit.envs import make_env, make_judge, task_spec
from lit_imit.envs.vector import worker_count
from lit_imit.interactive import (
    MODES,
    PIER,
    SAG,
    DomainSchedule,
    EpisodeOutcome,
    InteractiveConfig,
    Label,
    SegmentJudge,
    annotated_steps,
    gating_metrics,
    info_relabel,
    pier_inputs,
    round_summary,
)
from lit_imit.rounds import EpisodeJob, RoundRunner, RoundSetting

log = logging.getLogger(__name__)

STATE_FORMAT = 1


def default_judge(task: str) -> SegmentJudge:
    """The judge the task table names for ``task`` (``make_judge``): action agreement with the ALOHA teacher,
    or the ASkDAgger step-reward test for Ravens pick-and-place; a clear error for a task without one."""
    return make_judge(task)


def refuse_collected_store(dm: Any) -> None:
    """A fresh run must not silently train on the rounds another run collected into its store."""
    ids = dm.collected_episode_ids()
    if ids:
        shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
        raise RuntimeError(
            f"{dm.data_dir} already holds {len(ids)} episodes collected by interactive rounds (ids {shown}) and this "
            "run starts fresh (no --ckpt_path). Resume the run that collected them with "
            "--ckpt_path <its logs>/version_N/checkpoints/last.ckpt, or point data.init_args.data_dir to a new "
            "directory; set data.init_args.reuse_interactive_store: true to train on them anyway"
        )


def fresh_counts() -> dict[str, int]:
    """The run's counters (checkpointed): demos by kind, the teacher's time (``annotated_steps``: the env steps
    of its annotations), decisions, queries and the interactive episodes with their task successes."""
    return {"demos": 0, "annotations": 0, "validations": 0, "relabels": 0, "annotated_steps": 0, "decisions": 0,
            "queries": 0, "episodes": 0, "successes": 0}


class InteractiveAggregation(pl.Callback):
    """DAgger, ActiveDAgger and ASkDAgger (SAG + FIER + PIER) rounds between training epochs.

    Args:
        task: task name or gymnasium id (``lit_imit.envs.TASKS``); its teacher gives the feedback. Default:
            the DataModule's ``task`` (a config says it once).
        mode: ``dagger``, ``active_dagger``, ``askdagger``, ``askdagger_no_pier`` or ``askdagger_no_fier``.
        episodes_per_round: interactive episodes after each round of training (over all ranks).
        seed_episodes: gated novice episodes before the first epoch (required when the DataModule starts
            empty, i.e. training from scratch).
        warmup_epochs: epochs of plain behaviour cloning before the first round.
        every_n_epochs: a round every this many epochs after the warm-up.
        decision_steps: env steps per decision; default: the module's ``n_action_steps`` (one executed ACT
            chunk; 1 with temporal ensembling or for modules without chunks, e.g. one pick-place).
        max_steps: episode cap (default: the task's time limit).
        env_kwargs: passed to the env (image_size must match the DataModule's); the cameras and
            ``env_state`` the policy reads are added unless given (:func:`policy_env_kwargs`).
        seed: episode ``i`` (counted over the whole run) uses env seed ``seed + i``.
        sag_mode, target, p_rand, n_min, n_rep, u_normalization, impute: SAG (Luijkx et al., TMLR 2025); the
            defaults are askdagger_cliport's training config (sensitivity 0.9, n_min 15, p_rand 0.2).
        pier_lambda, pier_base, pier_beta0, pier_beta_steps, pier_bias_compensation, pier_weight_normalization:
            PIER (same paper); the exponent alpha is the DataModule's ``priority_alpha`` (it does the sampling).
            ``pier_bias_compensation=False`` (the reference's ``bias_compensation`` flag) keeps the prioritized
            draws without importance weights: on ACT transfer cube from state the weights (w from 1 down to
            ~1/200 at alpha 1.5) cost more than the correction gave (the README's interactive section).
            ``pier_weight_normalization="mean"`` keeps the correction and scales the weights to mean 1 over the
            draws instead of max 1 (the reference's), which Adam otherwise meets as a 30-500x drop of the
            gradients within the first rounds (:class:`~lit_imit.interactive.PIER`).
        dagger_beta: DAgger mode: probability that the teacher drives a decision instead of the novice.
        judge: the teacher's verdict on a segment (default: :func:`default_judge` of the task).
        metrics_window: decisions (failures / successes) the logged gating rates look back over.
        store_failed_teacher: also store teacher segments the judge rejects (the reference drops them).
        num_workers: where a rank's episodes of a round run: 0 (default) one after the other in the training
            process; N > 0 in min(N, episodes) env worker processes at once (each rebuilds the novice from its
            current weights on the CPU, once per round); ``"auto"``: the CPUs this process may use, shared
            among the ranks of this node. Same outcomes either way (on the CPU).
        domain_shifts: switches of the rounds' env, each ``{after_episodes: N, env_kwargs: {...}}``: from N
            interactive episodes on (seed episodes included; N must fall between rounds), the env is built with
            these arguments over ``env_kwargs`` (each shift over the base, not over the previous shift). What the
            policy observes (cameras, image_size, env_state) cannot shift.
    """

    def __init__(
        self,
        task: str | None = None,
        mode: str = "askdagger",
        episodes_per_round: int = 4,
        seed_episodes: int = 0,
        warmup_epochs: int = 0,
        every_n_epochs: int = 1,
        decision_steps: int | None = None,
        max_steps: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        seed: int = 10_000,
        sag_mode: str = "sensitivity",
        target: float = 0.9,
        p_rand: float = 0.2,
        n_min: int = 15,
        n_rep: int = 10,
        u_normalization: bool = True,
        impute: bool = True,
        pier_lambda: float = 0.5,
        pier_base: float = 10.0,
        pier_beta0: float = 1.0,
        pier_beta_steps: int = 100,
        pier_bias_compensation: bool = True,
        pier_weight_normalization: str = "max",
        dagger_beta: float = 0.0,
        judge: SegmentJudge | None = None,
        metrics_window: int = 50,
        store_failed_teacher: bool = False,
        num_workers: int | str = 0,
        domain_shifts: list[dict[str, Any]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        if episodes_per_round < 1 or seed_episodes < 0 or warmup_epochs < 0 or every_n_epochs < 1:
            raise ValueError("need episodes_per_round >= 1, seed_episodes >= 0, warmup_epochs >= 0 and "
                             "every_n_epochs >= 1")
        self.mode = mode
        self.spec = MODES[mode]
        self.episodes_per_round = int(episodes_per_round)
        self.seed_episodes = int(seed_episodes)
        self.warmup_epochs = int(warmup_epochs)
        self.every_n_epochs = int(every_n_epochs)
        self.decision_steps = decision_steps
        self.max_steps = max_steps
        self.env_kwargs = dict(env_kwargs or {})
        self.seed = int(seed)
        self.sag_kwargs = dict(mode=sag_mode, target=target, p_rand=p_rand, n_min=n_min, n_rep=n_rep,
                               u_normalization=u_normalization, impute=impute)
        self.gate = SAG(**self.sag_kwargs, seed=self.seed)
        self.pier_kwargs = dict(lam=pier_lambda, base=pier_base, beta0=pier_beta0, beta_steps=pier_beta_steps,
                                bias_compensation=pier_bias_compensation,
                                weight_normalization=pier_weight_normalization)
        PIER(**self.pier_kwargs)  # validate now, not after the first round
        self.dagger_beta = float(dagger_beta)
        self.judge = judge
        self.task: str | None = None
        if task is not None:
            self._adopt_task(task)
        self.relabel = info_relabel()
        self.metrics_window = int(metrics_window)
        self.store_failed_teacher = bool(store_failed_teacher)
        self._reset_progress()
        worker_count(num_workers, 1)  # an invalid value fails here, at config time
        self.num_workers = num_workers
        self.domains = DomainSchedule(domain_shifts)
        self.domains.check_round_boundaries(self.seed_episodes, self.episodes_per_round)
        self._runner: RoundRunner | None = None
        self._config: InteractiveConfig | None = None

    def _reset_progress(self) -> None:
        self.seeded = False
        self.episodes_done = 0
        self.rounds_done = 0
        self.n_interactive = 0  # episodes that yielded at least one demo (PIER's beta annealing)
        self.counts = fresh_counts()
        self.decision_log: dict[str, list[bool]] = {"failed": [], "queried": []}
        self.last_round: dict[str, float] = {}

    def _adopt_task(self, task: str) -> None:
        """The task's env id, time limit (unless ``max_steps`` was given) and judge (unless given)."""
        spec = task_spec(task)  # an unknown task fails here, naming the known ones
        self.task = task
        self.sim_id = spec.env_id
        self.max_steps = int(self.max_steps) if self.max_steps is not None else int(spec.max_episode_steps)
        if self.judge is None:
            self.judge = default_judge(task)

    # ---- set-up ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if self.task is None:
            task = getattr(dm, "task", None)
            if task is None:
                raise ValueError("InteractiveAggregation has no task: set its init_args.task or data.init_args.task")
            self._adopt_task(task)
        self.env_kwargs = policy_env_kwargs(pl_module, self.env_kwargs)
        for name in ("add_demos", "add_episodes", "set_priorities", "episode_step_counts", "staging_path",
                     "collected_episode_ids", "train_ids", "episode_meta"):
            if not hasattr(dm, name):
                raise TypeError(f"InteractiveAggregation needs an EpisodeDataModule-like datamodule (missing {name!r})")
        if self.spec.pier and getattr(dm, "sampling", None) != "prioritized":
            raise ValueError(f"mode {self.mode!r} uses PIER: set data.init_args.sampling: prioritized")
        if not callable(getattr(pl_module, "predict", None)):
            raise TypeError(f"{type(pl_module).__name__} has no predict(): it cannot report uncertainty for gating")
        self._config = InteractiveConfig(mode=self.mode, decision_steps=self._decision_steps(pl_module),
                                         max_steps=self.max_steps, dagger_beta=self.dagger_beta,
                                         store_failed_teacher=self.store_failed_teacher)
        self._check_domains()

    def _check_domains(self) -> None:
        """Each shifted env built once now: a misspelt argument fails at set-up, not hours later at the switch."""
        for domain in range(1, len(self.domains) + 1):
            try:
                make_env(self.task, **self.domains.env_kwargs(self.env_kwargs, domain)).close()
            except (TypeError, ValueError) as err:
                raise ValueError(f"domain_shifts[{domain - 1}].env_kwargs {self.domains.overrides(domain)} do not "
                                 f"build a {self.task} env: {err}") from err

    def _decision_steps(self, pl_module: pl.LightningModule) -> int:
        """One executed chunk for chunking modules, else one step (see the class docstring)."""
        if self.decision_steps is not None:
            return int(self.decision_steps)
        hp = getattr(pl_module, "hparams", {}) or {}
        if hp.get("n_action_steps") and hp.get("temporal_ensemble_coeff") is None:
            return int(hp["n_action_steps"])
        return 1

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._runner is not None:
            self._runner.close()
        self._runner = None

    # ---- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Seed the dataset before the first dataloader is built (skipped on resume). A fresh start on a store
        with another run's rounds is refused here, once the checkpoint (if any) has been restored."""
        if self.seeded:
            return
        dm = trainer.datamodule
        if getattr(dm, "store", None) is not None:
            dm.store.require_writable()  # rounds add episodes: refuse another tool's directory now, not after a round
        if trainer.ckpt_path is None and not getattr(dm, "reuse_interactive_store", False):
            refuse_collected_store(dm)
        if self.seed_episodes > 0:
            self._round(trainer, pl_module, version=0, n_episodes=self.seed_episodes)
            if not bool(getattr(pl_module, "stats_initialized", True)) and getattr(dm, "stats", None) is not None:
                pl_module.load_stats(dm.stats)  # from scratch: module.setup ran before there were data
        elif not dm.train_ids:
            raise ValueError("the DataModule has no training episodes: set seed_episodes to start from scratch")
        self.seeded = True

    def round_due(self, epoch: int) -> bool:
        trained = epoch + 1
        return trained > self.warmup_epochs and (trained - self.warmup_epochs) % self.every_n_epochs == 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.round_due(trainer.current_epoch):
            return
        self._round(trainer, pl_module, version=trainer.current_epoch + 1, n_episodes=self.episodes_per_round)
        for name, value in self.metrics().items():  # NaN where undefined (e.g. no failure seen yet)
            value = value if math.isfinite(value) else math.nan
            pl_module.log(f"interactive/{name}", value, on_step=False, on_epoch=True, sync_dist=False,
                          rank_zero_only=False)

    # ---- one round --------------------------------------------------------------------------------
    def _round(self, trainer: pl.Trainer, pl_module: pl.LightningModule, version: int, n_episodes: int) -> None:
        start = time.perf_counter()
        domain = self.domains.domain(self.episodes_done)
        outcomes = self._rollouts(trainer, pl_module, version, n_episodes, domain)
        seconds = max(all_gather_objects(time.perf_counter() - start))
        outcomes, arrays = self._exchange(trainer, outcomes)
        dm = trainer.datamodule
        demos = [demo for outcome in outcomes for demo in outcome.demos]
        self._add_demos(trainer, outcomes, arrays, domain)
        self._absorb(outcomes, version)
        if self.spec.pier:
            self._prioritize(dm)
        self.last_round = {**round_summary(outcomes), "seconds": float(seconds), "version": float(version),
                           "domain": float(domain)}
        self.episodes_done += n_episodes
        self.rounds_done += 1
        if trainer.is_global_zero:
            log.info("interactive round %d (model version %d): %d episodes, %d demos, %.1f s", self.rounds_done,
                     version, n_episodes, len(demos), seconds)

    @contextmanager
    def _policy_context(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
        """Eval mode and the EMA weights when an EMA callback is present; training mode restored after."""
        averaged = ema_weights_if_any(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with averaged:
                yield
        finally:
            pl_module.train(was_training)
            pl_module.reset()

    def _rollouts(self, trainer: pl.Trainer, pl_module: pl.LightningModule, version: int,
                  n_episodes: int, domain: int) -> list[EpisodeOutcome]:
        """This rank's episodes of the round (``i % world_size == rank``), each gating with its own fork of the
        shared gate, in the env of ``domain``."""
        assert self._config is not None, "setup() did not run"
        rank, world = trainer.global_rank, trainer.world_size
        indices = [self.episodes_done + i for i in range(rank, n_episodes, world)]
        jobs = [EpisodeJob(index, version, self.gate.fork([self.seed, index]) if self.spec.gated else None)
                for index in indices]
        setting = RoundSetting(self.task, self.judge, self._config, self.relabel, self.seed)
        with self._policy_context(trainer, pl_module):
            return self._round_runner(trainer, len(jobs), domain).run(pl_module, jobs, setting)

    def _round_runner(self, trainer: pl.Trainer, jobs: int, domain: int) -> RoundRunner:
        """Built in each process on first use (DDP relaunches the CLI per rank); workers live until teardown, or
        until a domain shift asks for an env with other settings (then the runner is built again)."""
        env_kwargs = self.domains.env_kwargs(self.env_kwargs, domain)
        if self._runner is not None and self._runner.env_kwargs != env_kwargs:
            self._runner.close()
            self._runner = None
        if self._runner is None:
            if domain and trainer.is_global_zero:
                log.info("interactive rounds in domain %d from %d episodes on: env %s", domain, self.episodes_done,
                         self.domains.overrides(domain))
            local_world = RolloutEvaluation._local_world_size(trainer)
            workers = worker_count(self.num_workers, max(jobs, 1), local_world)
            self._runner = RoundRunner(self.task, env_kwargs, workers)
        return self._runner

    @staticmethod
    def _staged_name(episode: int, k: int) -> str:
        return f"episode{episode:08d}_demo{k:04d}.hdf5"

    def _exchange(self, trainer: pl.Trainer,
                  outcomes: list[EpisodeOutcome]) -> tuple[list[EpisodeOutcome], dict[tuple[int, int], dict]]:
        """All ranks' outcomes in episode order (arrays stripped); rank 0 also gets every demo's arrays
        (its own from memory, the others' through the DataModule's staging files written here)."""

        arrays: dict[tuple[int, int], dict] = {}
        for outcome in outcomes:
            for k, demo in enumerate(outcome.demos):
                if trainer.is_global_zero:
                    arrays[(outcome.index, k)] = demo.arrays
                else:
                    write_episode(trainer.datamodule.staging_path(self._staged_name(outcome.index, k)), demo.arrays, {})
                demo.arrays = {}
        gathered = [o for part in all_gather_objects(outcomes) for o in part]
        return sorted(gathered, key=lambda o: o.index), arrays

    def _add_demos(self, trainer: pl.Trainer, outcomes: list[EpisodeOutcome],
                   arrays: dict[tuple[int, int], dict], domain: int) -> None:
        """Rank 0 writes the demos to the store in episode order; every rank appends the same ids. With domain
        shifts each file's attributes say the domain it was collected in."""
        dm = trainer.datamodule
        demos = [(outcome, k, demo) for outcome in outcomes for k, demo in enumerate(outcome.demos)]
        meta = [demo.meta() for _, _, demo in demos]
        ids: list[int] = []
        if trainer.is_global_zero:
            staged = []
            pairs = []
            for outcome, k, demo in demos:
                data = arrays.get((outcome.index, k))
                if data is None:
                    staged.append(dm.staging_path(self._staged_name(outcome.index, k)))
                    data = read_episode(staged[-1]).arrays
                attrs = demo.attrs(self.task, self.sim_id, outcome.seed)
                if len(self.domains):
                    attrs["domain"] = domain
                pairs.append((data, attrs))
            ids = dm.add_demos(pairs, meta)
            for path in staged:
                os.unlink(path)  # a hand-over file, not an episode
        ids = [int(i) for i in broadcast_object(ids)]
        if not trainer.is_global_zero and ids:
            dm.add_episodes(ids, meta)

    def _absorb(self, outcomes: Sequence[EpisodeOutcome], version: int) -> None:
        """Shared gate, decision log and counters from the gathered records (identical on every rank)."""
        for outcome in outcomes:
            for d in outcome.decisions:
                if self.spec.gated:
                    self.gate.record(d.uncertainty, d.label, version)
                    for _ in range(d.n_relabeled):
                        self.gate.record(math.nan, Label.UNKNOWN_RELABELING, version)
                if d.judged:  # the novice's decision was executed or foreseen, hence judged
                    self.decision_log["failed"].append(bool(d.failed))
                    self.decision_log["queried"].append(bool(d.query))
            self.counts["decisions"] += len(outcome.decisions)
            self.counts["queries"] += sum(d.query for d in outcome.decisions)
            self.counts["episodes"] += 1
            self.counts["successes"] += int(outcome.success)
            self.counts["demos"] += len(outcome.demos)
            self.counts["annotations"] += sum(d.source == "teacher" for d in outcome.demos)
            self.counts["validations"] += sum(d.source == "validated" for d in outcome.demos)
            self.counts["relabels"] += sum(d.source == "relabeled" for d in outcome.demos)
            self.counts["annotated_steps"] += annotated_steps(outcome.demos)
            self.n_interactive += int(bool(outcome.demos))

    def pier(self, dm: Any) -> PIER:
        return PIER(alpha=float(getattr(dm, "priority_alpha", 1.0)), **self.pier_kwargs)

    def _prioritize(self, dm: Any) -> None:
        """PIER priorities of every training episode and this round's beta; the DataModule turns them into
        PIER's sampling probabilities and importance weights (with the episodes' step counts)."""
        ids = list(dm.train_ids)
        if not ids:
            return
        u, r, k = pier_inputs([dm.episode_meta.get(i) for i in ids])
        pier = self.pier(dm)
        dm.set_priorities({i: float(p) for i, p in zip(ids, pier.priorities(u, r, k))}, pier.beta(self.n_interactive),
                          pier.weight_normalization)

    # ---- metrics ----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """What is logged under ``interactive/`` after a round. ``threshold`` is the mean SAG threshold the
        round's decisions used (NaN while SAG still queries everything); the rates are decision-level over
        the last ``metrics_window`` decisions (``novice_success``: plans judged valid; ``system_success``:
        valid or caught by a query); ``episode_success`` is the task success of the round's episodes with
        the teacher's help. With domain shifts, ``domain`` is the domain the round ran in."""
        rates = gating_metrics(self.decision_log["failed"], self.decision_log["queried"], self.metrics_window)
        last = self.last_round
        shifted = {"domain": last.get("domain", math.nan)} if len(self.domains) else {}
        return {
            **shifted,
            "threshold": last.get("threshold", math.nan),
            "target": float(self.sag_kwargs["target"]),
            f"target_{self.sag_kwargs['mode']}": float(self.sag_kwargs["target"]),  # the rate SAG aims at
            "sensitivity": rates["sensitivity"],
            "specificity": rates["specificity"],
            "query_rate": rates["query_rate"],
            "novice_success": rates["novice_success"],
            "system_success": rates["system_success"],
            "episode_success": last.get("episode_success", math.nan),
            "round_query_rate": (last["queries"] / last["decisions"]) if last.get("decisions") else math.nan,
            "n_annotations": float(self.counts["annotations"]),
            "n_relabels": float(self.counts["relabels"]),
            "n_validations": float(self.counts["validations"]),
            "n_annotated_steps": float(self.counts["annotated_steps"]),
            "n_demos": float(self.counts["demos"]),
            "n_episodes": float(self.counts["episodes"]),
            "n_decisions": float(self.counts["decisions"]),
            "n_queries": float(self.counts["queries"]),
            "round_seconds": last.get("seconds", math.nan),
            "teacher_steps": last.get("teacher_steps", math.nan),
            "novice_steps": last.get("novice_steps", math.nan),
        }

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python only (checkpoints load with weights_only=True)."""
        return {
            "format": STATE_FORMAT,
            "mode": self.mode,
            "gate": self.gate.state_dict(),
            "seeded": bool(self.seeded),
            "episodes_done": int(self.episodes_done),
            "rounds_done": int(self.rounds_done),
            "n_interactive": int(self.n_interactive),
            "counts": {k: int(v) for k, v in self.counts.items()},
            "decision_log": {k: [bool(x) for x in v] for k, v in self.decision_log.items()},
            "last_round": {k: float(v) for k, v in self.last_round.items()},
            "domain": self.domains.state(self.episodes_done),  # the domain of the next round (the curve's test env)
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown InteractiveAggregation state format {state_dict.get('format')!r}")
        if state_dict["mode"] != self.mode:
            raise ValueError(f"the checkpoint was collected in mode {state_dict['mode']!r}, "
                             f"the config says {self.mode!r}")
        self.gate.load_state_dict(state_dict["gate"])
        self.seeded = bool(state_dict["seeded"])
        self.episodes_done = int(state_dict["episodes_done"])
        self.domains.check_state(state_dict.get("domain"), self.episodes_done)
        self.rounds_done = int(state_dict["rounds_done"])
        self.n_interactive = int(state_dict["n_interactive"])
        self.counts = {**fresh_counts(), **{k: int(v) for k, v in state_dict["counts"].items()}}
        self.decision_log = {k: [bool(x) for x in v] for k, v in state_dict["decision_log"].items()}
        self.last_round = {k: float(v) for k, v in state_dict["last_round"].items()}

