"""RolloutEvaluation: the policy's real metric is its success in the simulator, not its loss.

Every ``every_n_epochs`` epochs (at the end of the training epoch, so ``ModelCheckpoint`` can monitor
``rollout/success_rate``) and in ``test``, the module runs ``n_episodes`` seeded episodes with
``select_action``. Under DDP each rank runs its share (episode i on rank i % world_size), the results are
gathered and every rank logs the same numbers: the success rate with its Wilson 95% interval
(``success_ci_low`` / ``success_ci_high``), the mean return, max reward and episode length, under
``rollout/`` in fit and ``test/`` in test. One line saying the same goes to the log (rank 0). The first
episode is saved as an mp4 under the log dir and a strip of its frames goes to TensorBoard.

With ``num_workers`` > 0 the envs live in worker processes (``lit_imit.envs.vector.ProcessEnvPool``) and the
rows of a wave are stepped on all cores at once; the policy still runs here on batches of ``n_envs`` rows and
the episodes are the same as in-process ones.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl

from callbacks.ema import ema_weights_if_any
from lit_imit.data.episodes import obs_path, read_attrs
from lit_imit.distributed import all_gather_objects, is_distributed
from lit_imit.envs import task_spec
from lit_imit.envs.vector import close_envs, open_envs, worker_count
from lit_imit.evaluation import EpisodeResult, evaluate_module, policy_env_kwargs, summarize
from lit_imit.tensorboard import write_video

log = logging.getLogger(__name__)

#: frames of a rollout video in TensorBoard (an animated GIF; the mp4 on disk keeps every frame)
TENSORBOARD_VIDEO_FRAMES = 100


def gather_results(results: list[EpisodeResult]) -> list[EpisodeResult]:
    """All ranks' results in episode order, identical on every rank (video frames stay local)."""
    if is_distributed():
        frames = {r.index: r.frames for r in results if r.frames}
        parts = all_gather_objects([replace(r, frames=[]) for r in results])
        results = [replace(r, frames=frames.get(r.index, [])) for part in parts for r in part]
    return sorted(results, key=lambda r: r.index)


class RolloutEvaluation(pl.Callback):
    """Seeded simulator rollouts during fit (every N epochs) and in test.

    Args:
        task: task name or gymnasium id (``lit_imit.envs.TASKS``); default: the DataModule's ``task``.
        n_episodes: episodes per evaluation (over all ranks).
        n_envs: envs stepped in lock-step per rank (the policy sees batches of this size).
        num_workers: where those envs run. 0 (default): in the training process, stepped one after the
            other (one core). N > 0: in min(N, n_envs) worker processes per rank (row r on worker r % N,
            several envs per worker when n_envs > N), each wave's rows stepped in parallel; same episodes
            as 0. ``"auto"`` (or -1): the CPUs this process may use, shared among the ranks of this node.
            Workers start (spawn) at the first evaluation, build their envs themselves and are stopped in
            ``teardown``; a worker that fails or dies stops the evaluation with ``EnvWorkerError``. Set
            n_envs >= num_workers, or workers sit idle.
        every_n_epochs: evaluation period in fit; 0 = only in test.
        seed: episode i uses seed ``seed + i`` (fixed across evaluations, so numbers are comparable).
        env_kwargs: passed to the env (image_size, render_mode...). ``cameras`` and ``env_state`` default to
            what the policy reads (``lit_imit.evaluation.policy_env_kwargs``), so they need not be repeated.
        max_steps: cap on steps per episode (default: the env's time limit).
        video: film the first episode: an mp4 in the run's ``videos/`` and an animated ``<prefix>/video`` in
            TensorBoard's image tab, each frame scaled up to >= 240 pixels high and captioned with the step,
            the reward and the success so far (``lit_imit.video``).
        video_camera: camera to film (default: the first camera of the observation, else env.render()).
        video_fps: frame rate of the mp4.
        log_prefix: metrics go to ``<log_prefix>/success_rate`` etc.; a second evaluation callback (say on
            the unseen-colour variant of a task) needs its own prefix, e.g. ``rollout_unseen``. In ``test`` the
            default prefix becomes ``test`` and another one ``test/<log_prefix>`` (``test_prefix``).
        score_scale: also log ``<log_prefix>/score`` = mean return x this (100 for Ravens tasks, whose
            return is the partial credit in [0, 1]: CLIPort reports that score x 100).
    """

    def __init__(
        self,
        task: str | None = None,
        n_episodes: int = 10,
        n_envs: int = 1,
        num_workers: int | Literal["auto"] = 0,
        every_n_epochs: int = 1,
        seed: int = 100_000,
        env_kwargs: dict[str, Any] | None = None,
        max_steps: int | None = None,
        video: bool = True,
        video_camera: str | None = None,
        video_fps: int = 50,
        log_prefix: str = "rollout",
        score_scale: float | None = None,
    ) -> None:
        if task is not None:
            task_spec(task)
        self.task = task
        self.n_episodes = n_episodes
        self.n_envs = max(1, n_envs)
        worker_count(num_workers, 1)  # an invalid value fails here, at config time
        self.num_workers = num_workers
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.env_kwargs = dict(env_kwargs or {})
        self.max_steps = max_steps
        self.video = video
        self._video_camera = video_camera
        self.video_fps = video_fps
        if not log_prefix or "/" in log_prefix:
            raise ValueError(f"log_prefix must be a non-empty name without '/', got {log_prefix!r}")
        self.log_prefix = log_prefix
        self.score_scale = score_scale
        self._envs: Any = None  # a list of envs, or a ProcessEnvPool
        self.last_summary: dict[str, float] | None = None

    # ---- envs are built lazily in each process (DDP relaunches the CLI per rank) ------------------
    def envs(self, local_world_size: int = 1) -> Any:
        """The rollout's envs: a list (in-process) or a ``ProcessEnvPool`` (``num_workers`` > 0)."""
        if self._envs is None:
            self._envs = open_envs(self.task, self.n_envs, self.worker_count(local_world_size), self.env_kwargs)
        return self._envs

    def worker_count(self, local_world_size: int = 1) -> int:
        """Worker processes for this rank: 0 = in-process; "auto" splits this node's CPUs among its ranks."""
        return worker_count(self.num_workers, self.n_envs, local_world_size)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        close_envs(self._envs)
        self._envs = None

    # ---- hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fill what the config left out from the policy and its data: the task, cameras, env_state."""
        if self.task is None:
            task = getattr(getattr(trainer, "datamodule", None), "task", None)
            if task is None:
                raise ValueError("RolloutEvaluation has no task: set its init_args.task or data.init_args.task")
            self.task = task
        self.env_kwargs = policy_env_kwargs(pl_module, self.env_kwargs)

    @property
    def video_camera(self) -> str | None:
        """The camera filmed: the one asked for, else the observation's first camera (None: env.render())."""
        return self._video_camera or next(iter(self.env_kwargs.get("cameras", ["top"]) or []), None)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_view(getattr(trainer, "datamodule", None))

    def check_view(self, datamodule: Any) -> None:
        """The rollout renders what the policy was trained on, else a clear error at start: frames of the same
        size, from cameras with the same fields of view (``camera_fovy``).

        A policy trained on 96x128 frames and rolled out at 48x64, or trained on a narrowed top camera and rolled
        out with the MJCF's, runs without complaint and fails for a reason nobody sees; the first training
        episode's stored frames and attrs tell what it was trained on.
        """
        dataset = getattr(datamodule, "train_set", None)
        if dataset is None or not getattr(dataset, "image_keys", None) or not dataset.paths:
            return
        self._check_camera_fovy(dataset.paths[0], [key.split("/", 1)[1] for key in dataset.image_keys])
        size = self.env_kwargs.get("image_size")
        if size is None:
            return
        import h5py

        with h5py.File(dataset.paths[0], "r") as f:
            for key in dataset.image_keys:
                if obs_path(key) in f:
                    stored = tuple(int(v) for v in f[obs_path(key)].shape[1:3])
                    if stored != tuple(int(v) for v in size):
                        raise ValueError(
                            f"RolloutEvaluation env_kwargs.image_size={list(size)} but the training frames of "
                            f"{key!r} are {list(stored)} ({dataset.paths[0]}): set the callback's "
                            f"env_kwargs.image_size (and data.init_args.image_size) to the same size"
                        )

    def _check_camera_fovy(self, episode: str, cameras: list[str]) -> None:
        """The fields of view the episode was recorded with (its ``camera_fovy`` attr; none: the MJCF's) are the
        ones this callback renders the policy's cameras with."""
        def of(fovy: Any) -> dict[str, float]:
            return {cam: float(v) for cam, v in (fovy or {}).items() if cam in cameras}

        trained, rolled = of(read_attrs(episode).get("camera_fovy")), of(self.env_kwargs.get("camera_fovy"))
        if rolled != trained:
            raise ValueError(
                f"RolloutEvaluation env_kwargs.camera_fovy={rolled or None} but the training frames were rendered "
                f"with camera_fovy={trained or None} ({episode}; None: the MJCF's own fields of view): give the "
                f"callback's env_kwargs the camera_fovy that data.init_args.env_kwargs recorded with"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            summary = self.run(trainer, pl_module, tag=f"epoch_{trainer.current_epoch:04d}", prefix=self.log_prefix,
                               step=trainer.global_step)
            if trainer.is_global_zero:
                log.info("epoch %d, step %d: %s", trainer.current_epoch, trainer.global_step,
                         self.describe(summary, self.log_prefix))

    @property
    def test_prefix(self) -> str:
        """Where ``test`` logs: ``test/success_rate``..., or ``test/<log_prefix>/...`` for a second callback."""
        return "test" if self.log_prefix == "rollout" else f"test/{self.log_prefix}"

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The test's rollouts, logged at the step the tested weights were trained to (``trained_steps`` of a
        module loaded from a checkpoint or policy directory), as its held-out losses are."""
        step = getattr(pl_module, "trained_steps", None)
        step = trainer.global_step if step is None else int(step)
        summary = self.run(trainer, pl_module, tag="test", prefix=self.test_prefix, step=step)
        if trainer.is_global_zero:
            log.info("weights of step %d: %s", step, self.describe(summary, self.test_prefix))

    def describe(self, summary: dict[str, float], prefix: str | None = None) -> str:
        """One line: the success rate with its Wilson 95% interval, the episodes and the mean rewards."""
        return (
            f"{prefix or self.log_prefix} success rate {summary['success_rate']:.3f} "
            f"(95% CI {summary['success_ci_low']:.3f}-{summary['success_ci_high']:.3f}, "
            f"{int(summary['episodes'])} episodes of {self.task} from seed {self.seed}), mean return "
            f"{summary['return']:.2f}, mean max reward {summary['max_reward']:.2f}"
            + (f", score {summary['score']:.1f}" if "score" in summary else "")
        )

    # ---- evaluation -------------------------------------------------------------------------------
    @staticmethod
    def _local_world_size(trainer: pl.Trainer) -> int:
        """Ranks on this node (they share its CPUs)."""
        return max(1, trainer.world_size // max(1, getattr(trainer, "num_nodes", 1)))

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str, prefix: str | None = None,
            step: int | None = None) -> dict[str, float]:
        """Roll out, log ``<prefix>/<metric>`` (default ``log_prefix``) and save the video (frames at ``step``,
        default the trainer's); returns the summary."""
        prefix = prefix or self.log_prefix
        rank, world = trainer.global_rank, trainer.world_size
        indices = list(range(rank, self.n_episodes, world))
        with ema_weights_if_any(trainer, pl_module):
            results = evaluate_module(
                pl_module, self.envs(self._local_world_size(trainer)), indices, self.seed,
                record_video_of=0 if self.video else None, video_camera=self.video_camera,
                max_steps=self.max_steps,
            )
        results = gather_results(results)
        summary = summarize(results)
        keys = ["success_rate", "success_ci_low", "success_ci_high", "return", "max_reward", "episode_length"]
        if self.score_scale is not None:
            summary["score"] = summary["return"] * float(self.score_scale)
            keys.append("score")
        self.last_summary = summary
        # Trainer.log_dir broadcasts from rank 0 under DDP: every rank asks, or rank 0 waits for the others forever.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir) if self.video else None
        for key in keys:
            pl_module.log(f"{prefix}/{key}", summary[key], on_epoch=True, sync_dist=False, rank_zero_only=False)
        if trainer.is_global_zero and log_dir is not None:
            self._save_video(trainer, log_dir, results, tag, prefix, trainer.global_step if step is None else step)
        return summary

    def _save_video(self, trainer: pl.Trainer, log_dir: Path, results: list[EpisodeResult], tag: str, prefix: str,
                    step: int) -> None:
        frames = next((r.frames for r in results if r.frames), [])
        if not frames:
            return
        video_dir = log_dir / "videos"
        video_dir.mkdir(parents=True, exist_ok=True)
        name = tag if self.log_prefix == "rollout" else f"{self.log_prefix}_{tag}"
        path = video_dir / f"{name}.mp4"
        try:
            import imageio.v2 as imageio

            imageio.mimwrite(path, frames, fps=self.video_fps, macro_block_size=1)
        except (ImportError, OSError, ValueError) as err:  # video is a convenience: never fail training on it
            log.warning("could not write %s: %s", path, err)
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "_get_file_writer"):  # TensorBoard
            every = -(-len(frames) // TENSORBOARD_VIDEO_FRAMES)  # at most that many frames, played at real speed
            write_video(experiment, f"{prefix}/video", frames[::every], step, self.video_fps / every)
