"""Recipes: named, rerunnable experiments — teacher demos -> ``fit`` -> held-out test -> a results row.

A recipe is a shipped config plus the few command-line overrides that size it for a machine. Running one
(:func:`run_recipe`, ``scripts/reproduce.py``) starts from nothing in a fresh run directory: the config's
DataModule records the teacher demos (seeds 0+), ``python -m lit_imit fit`` trains and picks its checkpoint
by rollout success on the validation seeds of the config's ``RolloutEvaluation`` (100000+), and the chosen
checkpoint is then tested on ``episodes`` fresh seeds (1000000+ by default) that neither training nor
selection ever saw. The test runs the same rollout code as the callback (``lit_imit.evaluation``). A recipe's
``extra_tests`` run the same checkpoint on further tasks (CLIPort's unseen-colours split) on their own episodes;
``test_env_kwargs`` set env arguments of every held-out test (a Ravens test split).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml

from lit_imit.checkpoints import load_checkpoint
from lit_imit.data.episodes import EpisodeStore
from lit_imit.envs.vector import close_envs, open_envs, worker_count
from lit_imit.evaluation import evaluate_module, policy_env_kwargs, summarize
from lit_imit.policies import load_policy
from lit_imit.results import REPO_ROOT, BusyWatch, append_row, demo_keys, git_commit, machine_description

log = logging.getLogger(__name__)

TEST_SEED = 1_000_000  # held-out seeds: recording uses 0+, checkpoint selection 100000+
SELECTION_SEED = 100_000


@dataclass(frozen=True)
class Recipe:
    """One experiment: a config, its overrides, what it is expected to cost and reach."""

    name: str
    method: str
    task: str
    config: str  # relative to the repository root
    obs: str  # what the policy sees, for the table
    demos: int
    expected_minutes: float  # wall time on the 2-core CPU machine (or the device named in ``device_hint``)
    target: float | None = None  # held-out success the recipe should reach
    overrides: tuple[str, ...] = ()  # extra ``fit`` arguments
    gpu_overrides: tuple[str, ...] = ()  # added when a CUDA device is present (precision, batch, workers)
    preset: str = "cpu"  # "cpu" recipes run on the 2-core machine; "paper" ones need a GPU
    reference: str = ""
    notes: str = ""
    test_n_envs: int = 10
    test_workers: int = 2  # env worker processes for the held-out test (0 = in-process)
    extra: dict[str, Any] = field(default_factory=dict)
    #: residual RL: the recipe whose chosen checkpoint is the frozen base (``run_recipe(..., base_ckpt=...)``);
    #: skill-space RL: the config(s) that train the skill stages
    base_recipe: str | None = None
    #: the model argument that takes that checkpoint; a tuple when the recipe starts from several (SkiLD: the
    #: prior's, the posterior's and the discriminator's), which take one checkpoint each, in this order
    base_arg: str | tuple[str, ...] = "base_ckpt"
    #: interactive recipes: held-out episodes at each intermediate point of the curve (the last point gets
    #: ``episodes``)
    curve_episodes: int = 20
    #: tasks the chosen checkpoint is also tested on, each on its own ``episodes`` seeds from the test seed
    #: (e.g. CLIPort's unseen-colours split of the task it trained on); the row's ``extra_tests`` holds them
    extra_tests: tuple[str, ...] = ()
    #: env arguments of the held-out tests (the main one and ``extra_tests``), over the run's rollout settings
    #: (e.g. ``{"split": "test"}``: a Ravens task's unseen colours only appear off the train split)
    test_env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: configs fitted first, in order, in the run directory (each logged to ``stage_<config name>.log``), for a
    #: method trained in stages whose later configs load the earlier checkpoints by relative path (FIST: the
    #: goal-conditioned prior, the distance model, its fine-tuning); the recipe's ``config`` then fits last and
    #: is the one tested. Overrides go to that last fit only.
    stages: tuple[str, ...] = ()

    @property
    def base_args(self) -> tuple[str, ...]:
        """The model arguments of the base checkpoints, in the order ``--base-ckpt`` gives them."""
        return (self.base_arg,) if isinstance(self.base_arg, str) else tuple(self.base_arg)

    @property
    def interactive(self) -> bool:
        """An interactive experiment: one run per (mode, seed) (:mod:`lit_imit.interactive_recipes`)."""
        return self.preset == "interactive"


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


register(Recipe(
    name="bc_transfer_cube_state", method="bc", task="transfer_cube",
    config="configs/quickstart.yaml", obs="qpos + cube pose (state)", demos=50,
    expected_minutes=5, target=0.90, reference="the quickstart: >= 0.9 in <= 5 minutes",
    notes="MLP 3x512, chunk 20 (10 executed per query), L1, lr 1e-3, batch 256, 6000 steps; its only "
          "validation rollout is at the end, so the checkpoint is not chosen",
))
register(Recipe(
    name="act_transfer_cube_state", method="act", task="transfer_cube",
    config="configs/act/transfer_cube_state.yaml", obs="qpos + cube pose (state)", demos=50,
    expected_minutes=15, target=0.96,
    reference="floor: a state MLP reaches 50/50 from 50 demos",
    notes="ACT sized for the CPU (d128, ff 256, 4 encoder / 1 decoder layers, no dropout, no CVAE), chunk 20, "
          "temporal ensembling, lr 1e-3 cosine, batch 32, 6000 steps on one torch thread; validation rollouts "
          "at 3000 and 6000 steps",
))
register(Recipe(
    name="diffusion_transfer_cube_state", method="diffusion", task="transfer_cube",
    config="configs/diffusion/transfer_cube_state.yaml", obs="qpos + cube pose (state)", demos=50,
    expected_minutes=15, target=0.96,
    notes="9000 steps at lr 1e-3: 47/50 held-out, 50/50 on fresh seeds, 14.3 min (the 12000-step lr-5e-4 "
          "config before it: 0.90 / 0.86)",
))
register(Recipe(
    name="diffusion_insertion_state", method="diffusion", task="insertion",
    config="configs/diffusion/insertion_state.yaml", obs="qpos + peg/socket poses (state)", demos=200,
    expected_minutes=90, target=0.80,
    notes="200 demos and noise on the conditioning states (state_noise_std 0.05): 0.74 held-out, 0.58 and 0.72 on "
          "two fresh seed sets, 79 min beside another run (50 demos without noise: 0.46 / 0.48 in 99 min; either "
          "change alone 54 of 100)",
))
register(Recipe(
    name="act_insertion_state", method="act", task="insertion",
    config="configs/act/insertion_state.yaml", obs="qpos + peg/socket poses (state)", demos=200,
    expected_minutes=30, target=0.80, reference="no target in the plan: the Diffusion insertion state row's 0.80",
    notes="act_transfer_cube_state's settings on insertion with 200 demos and 18000 steps (50 demos: 0.62 at 6000 "
          "steps, 0.68 at 18000; 200 demos: 0.78 at 6000, 0.82 at 18000)",
))
register(Recipe(
    name="act_transfer_cube_image", method="act", task="transfer_cube",
    config="configs/act/transfer_cube_cpu.yaml", obs="qpos + top camera 96x128 (fast render)", demos=50,
    expected_minutes=100, target=0.80, reference="ACT paper 0.90 (480x640, 50 demos)",
    notes="a small ACT on a stride-16 ResNet-18 from random init, with a cube-pose token estimated from the image "
          "(trained on the recorded env_state), 18000 steps of batch 8 on one thread; 42/50 held-out and 44/50 on "
          "fresh seeds in 99 min beside another run (config header: eighteen runs)",
))
register(Recipe(
    name="diffusion_transfer_cube_image", method="diffusion", task="transfer_cube",
    config="configs/diffusion/transfer_cube_cpu.yaml", obs="qpos + top camera 96x128 (fast render)", demos=50,
    expected_minutes=45, target=0.60,
    notes="the state recipe's Diffusion with a narrow ResNet-18 per camera (vision_width 16), To 1, batch 32, "
          "12000 steps, and a cube-pose estimate from the keypoints in its conditioning (aux_state_keys); 34/50 "
          "held-out in 37 min beside another run (without the estimate: 2/50; config header)",
))
register(Recipe(
    name="act_insertion_image", method="act", task="insertion",
    config="configs/act/insertion_cpu.yaml", obs="qpos + top camera 96x128 (fast render)", demos=50,
    expected_minutes=100, target=0.40, reference="ACT paper 0.50 (480x640, 50 demos)",
    notes="act_transfer_cube_image's settings on insertion, the pose token estimating the peg and socket poses, "
          "18000 steps: 12/50 held-out and 8/50 on fresh seeds in 91 min beside another run (12000 steps: 7/50 and "
          "5/50; first run, 6000 steps without the token: 0/50)",
))
register(Recipe(
    name="act_transfer_cube_image_3cams", method="act", task="transfer_cube",
    config="configs/act/transfer_cube_3cams_cpu.yaml",
    obs="qpos + top, left_wrist, right_wrist cameras 96x128 (fast render)", demos=50,
    expected_minutes=70, target=0.80, reference="ACT paper 0.90 (top camera, 480x640, 50 demos)",
    notes="act-plus-plus's three sim cameras through one shared ResNet-18, 2500 steps: the training compute of the "
          "one-camera model's 6000 steps (a step measured 2.4x that of one camera: 0.66-0.69 vs 0.28 s; env steps "
          "with rendering 2.4x slower). First run 0/50 in 71 min beside one other run (fit 56, test 15), where "
          "the one-camera run of this model had 5/50",
))
register(Recipe(
    name="vinn_transfer_cube_image", method="vinn", task="transfer_cube",
    config="configs/vinn/transfer_cube.yaml", obs="qpos + top camera 96x128 (fast render)", demos=50,
    expected_minutes=55, reference="VINN (Pari et al. 2021) as act-plus-plus runs it; the same demos as "
                                   "act_transfer_cube_image",
    notes="first run 5/50 (0.10) in 106 min on a box shared with three other runs (BYOL's 1500 steps took ~85 of "
          "the fit's 89 min, the test 16); the expected wall time is the projection for a box shared with at most "
          "one run: BYOL ResNet-18 from random init, batch 16, 1500 steps at 1.43 CPU-s each on one thread, the "
          "memory of every 2nd training frame rebuilt at both epoch ends (~2 min each), k in 1..400 and the state "
          "weight chosen on 5 validation episodes, 20 validation rollouts, 50 held-out and recording the 50 demos",
))
register(Recipe(
    name="act_transfer_cube_paper", method="act", task="transfer_cube",
    config="configs/act/transfer_cube.yaml", obs="qpos + top camera 480x640 (shadows)", demos=50,
    expected_minutes=9, target=0.80, preset="paper", reference="ACT paper 0.90",
    overrides=(
        # the paper's images, network, demos and 80/20 split; three named departures, for a ~5-minute budget
        # from scratch: no ImageNet file can be fetched on a lent machine, so the ResNet-18 starts from random
        # init with trainable GroupNorm (frozen batch norm of random init is no normalisation at all), and
        # batch 32 trains at lr 1e-4 (the paper's 1e-5 is for batch 8, 14k steps and pretrained features)
        # with a warm-up cosine over 6000 steps
        "--trainer.max_time", "00:00:04:30", "--trainer.max_steps", "6000",
        "--model.init_args.pretrained_backbone", "null", "--model.init_args.backbone_norm", "group",
        "--model.init_args.lr", "1e-4", "--model.init_args.lr_backbone", "1e-4",
        "--model.init_args.lr_schedule", "cosine", "--model.init_args.warmup_steps", "300",
        "--model.init_args.max_steps", "6000",
        "--trainer.callbacks.init_args.n_envs", "10",
    ),
    gpu_overrides=(
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
        "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "12",
    ),
    test_n_envs=25, test_workers=12,
    notes="one H100/H200: bf16, batch 32, up to 6000 steps or 4.5 minutes of training, whichever ends first; no "
          "validation rollouts fit that budget, so the last checkpoint is tested (no selection); the test's 25 "
          "envs step in 12 worker processes with the policy on the GPU",
))


register(Recipe(
    name="cliport_put_block_in_bowl", method="cliport", task="put-block-in-bowl-seen-colors",
    config="configs/cliport/put_block_in_bowl_cpu.yaml",
    obs="top-down colour + height map 160x80 (6.25 mm pixels) + instruction", demos=100,
    expected_minutes=125, target=0.50,
    reference="ASkDAgger's CLIPort ~0.96 seen / 0.47 unseen (GPU, 300 demos)",
    extra_tests=("put-block-in-bowl-unseen-colors",), test_env_kwargs={"split": "test"},
    notes="CLIPort sized for the CPU (see the config's header): Transporter width 8, a random-init "
          "frozen CLIP (ResNet width 8, one block per stage; text encoder width 256, 4 layers), 6.25 mm pixels, 1 "
          "place rotation (the oracle never turns a block here), batch 1, lr 5e-4, SE(2) augmentation, 24000 "
          "steps on one torch thread; 20 validation rollouts every 3000 steps; both held-out splits on the test "
          "split (Ravens' unseen colours only appear off train); 24000 steps: 0.58 seen / 0.34 unseen in 154 min on a shared box (~2 h alone)",
))


register(Recipe(
    name="residual_ppo_transfer_cube_state", method="residual_ppo", task="transfer_cube",
    config="configs/residual/transfer_cube.yaml", obs="qpos + cube pose (state)", demos=50,
    expected_minutes=600, preset="residual", base_recipe="diffusion_transfer_cube_state",
    reference="Ankile et al. 2024 (ResiP): residual PPO lifts BC from ~5-50% to >95% on their assembly tasks",
    notes="not run yet: PPO on a per-step residual over the frozen Diffusion state policy (the checkpoint a "
          "diffusion_transfer_cube_state run chose, --base-ckpt); the row also tests the base alone on the same "
          "seeds (base_success_rate) and counts the RL env steps; the wall time is a guess",
))
register(Recipe(
    name="spirl_rl_pointmaze", method="spirl_rl", task="pointmaze-medium-topright",
    config="configs/skills/maze_spirl_rl.yaml", obs="ball position + velocity (state)", demos=0,
    expected_minutes=300, preset="skills", base_recipe="configs/skills/maze_spirl_prior.yaml", base_arg="prior_ckpt",
    reference="Pertsch et al. 2020 (SPiRL): skill-prior-regularised SAC solves its maze, flat SAC does not",
    notes="not run yet: SAC over the skills of a frozen SPiRL prior (--base-ckpt: the prior's checkpoint), KL to "
          "the prior at target 1; 100 epochs = 1e6 env steps, ~1e5 updates at ~80 ms of CPU each on this 2-core "
          "box, ~15 min of collection: ~2.5 CPU-hours (a projection; more wall time while other jobs run)",
))
register(Recipe(
    name="spirl_rl_pointmaze_bottom", method="spirl_rl", task="pointmaze-medium-bottom",
    config="configs/skills/maze_spirl_rl.yaml", obs="ball position + velocity (state)", demos=0,
    overrides=("--data.init_args.task=pointmaze-medium-bottom",
               "--trainer.callbacks.init_args.task=pointmaze-medium-bottom",
               "--trainer.max_epochs=15"),
    expected_minutes=20, preset="skills", base_recipe="configs/skills/maze_spirl_prior.yaml", base_arg="prior_ckpt",
    reference="Pertsch et al. 2021 (SkiLD): with demonstrations of the target task SkiLD learns it faster than "
              "SPiRL, whose prior knows only the play data",
    notes="SkiLD's baseline on skild_rl_pointmaze's task (start (1, 5) -> goal (6, 2) through the passage the "
          "prior's play data lacks), same prior checkpoint, SPiRL's maze settings (maze_spirl_rl.yaml); 15 epochs "
          "(up to 1.5e5 env steps). Measured: validation 0.10 / 0.20 / 1.00 after 5 / 10 / 15 epochs (SkiLD: 1.00 "
          "from the first evaluation), held-out 50/50, 15 min",
))
register(Recipe(
    name="fist_kitchen", method="fist", task="kitchen-mktl",
    config="configs/skills/kitchen_fist_finetune.yaml", obs="robot + object positions (30)", demos=10,
    stages=("configs/skills/kitchen_fist_prior.yaml", "configs/skills/kitchen_fist_contrastive.yaml",
            "configs/skills/kitchen_fist_contrastive_finetune.yaml"),
    overrides=("--checkpoint.dirpath=null",),  # the run's own version directory, where the test looks
    expected_minutes=30, preset="skills",
    reference="Hakhamaneshi et al. 2022 (FIST): 3.6 +- 0.16 of 4 sub-tasks (microwave, kettle, top burner, light) "
              "with play data that never turns the top burner",
    notes="all four FIST stages from nothing in the run directory: 200 scripted no-topknob play episodes -> "
          "goal-conditioned skill prior -> contrastive distance -> its fine-tuning on 10 target demos -> few-shot "
          "fine-tuning of the skill VAE, then semi-parametric rollouts; the row's subtasks_completed is the mean "
          "count out of 4; the fine-tuning checkpoint with the best validation count is tested. Measured: 2.60 of "
          "4 held-out and 2.64 on fresh seeds (2.28 / 2.22 at training seed 2000) with the decoder and the "
          "goal-conditioned prior 256 wide and the dimensions the play data never moves only centred "
          "(raw_still_dims); scaled there, 2.48 / 2.64 (2.00 / 2.00 at seed 2000), the light never done; at SPiRL's "
          "width 128 2.00 / 2.00; 512 wide 2.40 / 2.40; the 59-value state 1.68; fine-tuning on the demos alone "
          "1.54 / 1.56 (10 epochs), 1.02 (50). scripts/skill_probe.py shows where sub-tasks are lost",
))
register(Recipe(
    name="sac_pointmaze", method="sac", task="pointmaze-medium-topright",
    config="configs/skills/maze_sac.yaml", obs="ball position + velocity (state)", demos=0,
    expected_minutes=1800, preset="skills",
    reference="SPiRL's flat SAC baseline",
    notes="not run yet: 1e6 env steps and as many updates at ~100 ms of CPU each on this box: ~28 CPU-hours "
          "(a projection)",
))
register(Recipe(
    name="spirl_rl_kitchen", method="spirl_rl", task="kitchen-mbls",
    config="configs/skills/kitchen_spirl_rl.yaml", obs="robot + object state (59)", demos=0,
    expected_minutes=1500, preset="skills", base_recipe="configs/skills/kitchen_spirl_prior.yaml",
    base_arg="prior_ckpt",
    reference="Pertsch et al. 2020 (SPiRL): most of its 4 kitchen sub-tasks, flat SAC almost none",
    notes="not run yet: KL target 5; 150 epochs = 1.5e6 env steps at ~40 ms each (~17 CPU-hours of simulation) "
          "and 1.5e5 updates at ~0.2 s: ~25 CPU-hours (a projection)",
))
register(Recipe(
    name="sac_kitchen", method="sac", task="kitchen-mbls",
    config="configs/skills/kitchen_sac.yaml", obs="robot + object state (59)", demos=0,
    expected_minutes=3700, preset="skills", reference="SPiRL's flat SAC baseline",
    notes="not run yet: 1.5e6 env steps (~17 CPU-hours) and as many updates at ~0.1 s: ~60 CPU-hours (a projection)",
))


# SkiLD: demonstration-guided RL over the skills of three offline stages (prior, posterior, discriminator)
SKILD_STAGE_ARGS = ("prior_ckpt", "posterior_ckpt", "discriminator_ckpt")
register(Recipe(
    name="skild_rl_pointmaze", method="skild_rl", task="pointmaze-medium-bottom",
    config="configs/skills/maze_skild_rl.yaml", obs="ball position + velocity (state)", demos=10,
    expected_minutes=85, preset="skills", base_arg=SKILD_STAGE_ARGS,
    base_recipe="configs/skills/maze_spirl_prior.yaml -> maze_skild_posterior.yaml -> maze_skild_discriminator.yaml",
    reference="Pertsch et al. 2021 (SkiLD): demonstration-guided skill RL solves its maze faster than SPiRL and "
              "skill-space BC",
    notes="SAC over the skills of a frozen SPiRL prior, pulled towards the demonstration posterior where the "
          "frozen discriminator says demo-like and towards the prior elsewhere (targets 10 / 1), reward 0.9 env + "
          "0.1 discriminator; --base-ckpt takes the three stage checkpoints in order (the runner does not train "
          "them). Measured: validation 1.00 from the first evaluation (50k env steps), held-out 50/50, 84 min for "
          "the 100 epochs with three other runs on the 2 cores",
))
register(Recipe(
    name="skild_rl_kitchen", method="skild_rl", task="kitchen-mktl",
    config="configs/skills/kitchen_skild_rl.yaml", obs="robot + object state (59)", demos=10,
    expected_minutes=180, preset="skills", base_arg=SKILD_STAGE_ARGS,
    base_recipe="configs/skills/kitchen_spirl_prior.yaml -> kitchen_skild_posterior.yaml -> "
                "kitchen_skild_discriminator.yaml",
    reference="Pertsch et al. 2021 (SkiLD): most of its kitchen sub-tasks from demonstrations where SPiRL stalls",
    notes="not run yet: alpha = alpha_q = 0.1 fixed (SkiLD's kitchen code), reward 0.9 env + 0.1 discriminator; "
          "--base-ckpt takes the three stage checkpoints in order. Projection from a measured 40-decision run at the "
          "config's sizes (random stage weights, 2 shared cores): ~18 ms per update, ~340 env steps/s, 47 ms per "
          "decision: 1.5e5 decisions ~ 2 h, + evaluation. kitchen_spirl_rl.yaml's header quotes ~40 ms per kitchen "
          "step; if a trained policy's contacts make it that slow, ~18 h",
))


register(Recipe(
    name="residual_ppo_insertion_state", method="residual_ppo", task="insertion",
    config="configs/residual/insertion.yaml", obs="qpos + peg/socket poses (state)", demos=200,
    expected_minutes=50, preset="residual", base_recipe="diffusion_insertion_state",
    reference="Ankile et al. 2024 (ResiP): residual PPO lifts BC from ~5-50% to >95% on their assembly tasks",
    notes="over the checkpoint a diffusion_insertion_state run with 200 demos chose (--base-ckpt; held-out 0.12): "
          "0.34 against the base's 0.12 on the same seeds (+22), 0.30 against 0.04 on fresh seeds, 768k env steps "
          "in 49 min; over a 0.36 Diffusion base +16, over the 0.74 one -2, over ACT bases +0 to +10 "
          "(configs/residual/insertion.yaml's header)",
))


register(Recipe(
    name="askdagger_transfer_cube_state", method="act", task="transfer_cube",
    config="configs/act/askdagger_transfer_cube_state.yaml", obs="qpos + cube pose (state)", demos=10,
    expected_minutes=35, preset="interactive", curve_episodes=20,
    reference="ASkDAgger (Luijkx et al., TMLR 2025): the active-DAgger success level with 3-5x fewer annotations",
    notes="per (mode, seed): 10 teacher demos, 1500 BC steps, then 100 interactive episodes of 50 ACT steps each "
          "(decision = one 50-step chunk); held-out success every 10 episodes on 20 seeds, at the end on 50; the "
          "wall time is projected from measured CPU time per round (see the config's header)",
))

register(Recipe(
    name="askdagger_transfer_cube_state_shift", method="act", task="transfer_cube",
    config="configs/act/askdagger_transfer_cube_state_shift.yaml", obs="qpos + cube pose (state)", demos=10,
    expected_minutes=35, preset="interactive", curve_episodes=20,
    reference="ASkDAgger's domain-shift experiment (train_interactive_domain_shift.py): how each mode recovers",
    notes="askdagger_transfer_cube_state with a domain shift after 50 of the 100 interactive episodes: the cube "
          "spawns 18 cm further back (spawn_offset [0, 0.18]); curve points from 50 episodes on are tested in the "
          "shifted region (each point's domain is in the row); the wall time is the unshifted recipe's projection",
))

register(Recipe(
    name="askdagger_insertion_state", method="act", task="insertion",
    config="configs/act/askdagger_insertion_state.yaml", obs="qpos + peg/socket poses (state)", demos=10,
    expected_minutes=21, preset="interactive", curve_episodes=20,
    reference="ASkDAgger (Luijkx et al., TMLR 2025): the active-DAgger success level with 3-5x fewer annotations",
    notes="askdagger_transfer_cube_state on insertion (the second task of the comparison): 10 teacher demos, 1500 "
          "BC steps, then 100 interactive episodes of 50-step ACT chunks; held-out success every 10 episodes on 20 "
          "seeds, at the end on 50; measured 17-26 min a run with three at once on the 2-core box",
))


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def list_recipes(preset: str | None = None) -> str:
    rows = [r for r in RECIPES.values() if preset is None or r.preset == preset]
    width = max(len(r.name) for r in rows)
    pw = max(len("preset"), *(len(r.preset) for r in rows))
    lines = [f"{'recipe':<{width}}  {'preset':<{pw}}  expected  target  config"]
    for r in rows:
        target = f"{r.target:.2f}" if r.target is not None else "  —  "
        per_run = "  (per mode and seed)" if r.interactive else ""
        lines.append(f"{r.name:<{width}}  {r.preset:<{pw}}  {r.expected_minutes:>5.0f} min  {target:>6}  {r.config}"
                     + per_run)
    return "\n".join(lines)


# ---- the run directory and its artefacts --------------------------------------------------------------
def rollout_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``RolloutEvaluation`` arguments of a saved run config (task, env_kwargs, max_steps, seed)."""
    for cb in (config.get("trainer", {}) or {}).get("callbacks", []) or []:
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).endswith("RolloutEvaluation"):
            return dict(cb.get("init_args", {}) or {})
    raise ValueError("the run's config has no RolloutEvaluation callback: nothing says how to roll it out")


def rollout_task(config: Mapping[str, Any]) -> str | None:
    """The task a run is rolled out on: the RolloutEvaluation callback's ``task``, else the data's."""
    return rollout_settings(config).get("task") or ((config.get("data") or {}).get("init_args") or {}).get("task")


def find_run_config(run_dir: Path) -> Path:
    configs = sorted(run_dir.glob("lightning_logs/version_*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise FileNotFoundError(f"no lightning_logs/version_*/config.yaml under {run_dir}: did fit start?")
    return configs[-1]


def checkpoints_dir(version_dir: Path) -> Path:
    """Where the fit logged in ``version_dir`` wrote its checkpoints: the ``checkpoint.dirpath`` of its saved
    config (a resumed fit writes into the directory of the part it resumed, see :func:`resume_run`; a relative
    path is relative to the run directory, the fit's working directory), else ``version_dir/checkpoints``."""
    config_path = version_dir / "config.yaml"
    if config_path.is_file():
        dirpath = ((yaml.safe_load(config_path.read_text()) or {}).get("checkpoint") or {}).get("dirpath")
        if dirpath:
            path = Path(dirpath)
            return path if path.is_absolute() else version_dir.parent.parent / path
    return version_dir / "checkpoints"


def select_checkpoint(version_dir: Path) -> Path:
    """The checkpoint ``ModelCheckpoint`` chose by validation-rollout success, else ``last.ckpt``.

    The choice is read from ``last.ckpt`` (the callback's ``best_model_path``), which stays right when
    best files were copied, touched or left over from an earlier run in the same directory; without it, the
    newest best file. The files are looked for where the fit wrote them (:func:`checkpoints_dir`)."""
    directory = checkpoints_dir(version_dir)
    ckpts = sorted(directory.glob("*.ckpt"))
    last = [p for p in ckpts if p.name.startswith("last")]
    if last:
        state = load_checkpoint(last[0])
        for key, value in (state.get("callbacks") or {}).items():
            best = value.get("best_model_path") if str(key).startswith("ModelCheckpoint") else None
            if not best:
                continue
            # the run's own directory first: a relative best_model_path is relative to the run's working directory,
            # and read from ours it could name another run's file (or the run dir may have been moved)
            if (directory / Path(best).name).is_file():
                return directory / Path(best).name
            if Path(best).is_absolute() and Path(best).is_file():  # a checkpoint dirpath outside the run
                return Path(best)
    best = [p for p in ckpts if not p.name.startswith("last")]
    if best:
        return max(best, key=lambda p: p.stat().st_mtime)
    if not last:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    return last[0]


def last_checkpoint(version_dir: Path) -> Path:
    """``last.ckpt``: the end of training."""
    path = checkpoints_dir(version_dir) / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"no last.ckpt in {path.parent}")
    return path


def load_policy_from_run(config: Mapping[str, Any], ckpt: Path) -> Any:
    """The module class named by the run's config, loaded from ``ckpt`` (EMA weights where EMA ran) by the one
    checkpoint loader, :func:`lit_imit.policies.load_policy`; on the GPU where there is one (a paper-size policy
    on the CPU costs half a second per control step, which would make the held-out test the longest part of a
    GPU run)."""
    device = "cuda" if _cuda_available() else "cpu"
    return load_policy(ckpt, device=device, policy_class=config["model"]["class_path"])


def heldout_test(
    module: Any, task: str, env_kwargs: Mapping[str, Any], episodes: int, seed: int, n_envs: int = 10,
    max_steps: int | None = None, num_workers: int = 0,
) -> dict[str, float]:
    """Success of ``module`` on ``episodes`` seeded episodes (seed + i), the rollout callback's code path.

    ``num_workers`` > 0 steps the envs in that many worker processes (``ProcessEnvPool``), as
    ``RolloutEvaluation(num_workers=...)`` does; results are identical to the in-process run.
    """
    with heldout_envs(task, env_kwargs, min(n_envs, episodes), num_workers) as envs:
        return heldout_on(module, envs, episodes, seed, max_steps)


@contextmanager
def heldout_envs(task: str, env_kwargs: Mapping[str, Any], n_envs: int, num_workers: int = 0) -> Iterator[Any]:
    """The envs of a held-out test, opened once for several policies (an interactive run's checkpoints)."""
    n_envs = max(1, n_envs)
    envs = open_envs(task, n_envs, worker_count(num_workers, n_envs), dict(env_kwargs))
    try:
        yield envs
    finally:
        close_envs(envs)


def heldout_on(module: Any, envs: Any, episodes: int, seed: int, max_steps: int | None = None) -> dict[str, float]:
    """:func:`heldout_test` on envs already open: the summary (success rate, Wilson interval...) and the count."""
    results = evaluate_module(module, envs, list(range(episodes)), seed, max_steps=max_steps)
    summary = summarize(results)
    summary["successes"] = float(sum(r.success for r in results))
    return summary


def _obs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the policy saw: the data's settings, or the model's where the data took them from the model."""
    data = (config.get("data") or {}).get("init_args") or {}
    model = (config.get("model") or {}).get("init_args") or {}

    def setting(name: str) -> Any:
        return data.get(name) if data.get(name) is not None else model.get(name)

    return {"cameras": setting("cameras"), "state_keys": setting("state_keys"), "image_size": data.get("image_size")}


# ---- running -----------------------------------------------------------------------------------------
def run_recipe(
    rec: Recipe,
    work_dir: str | Path,
    results_path: str | Path | None,
    episodes: int = 50,
    test_seed: int = TEST_SEED,
    extra_overrides: Sequence[str] = (),
    command: str = "",
    python: str = sys.executable,
    base_ckpt: str | Path | Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Demos -> fit -> held-out test in ``work_dir/<recipe>/<timestamp>``; appends and returns the row.

    A residual-RL recipe (``base_recipe``) starts from ``base_ckpt``, the BC checkpoint a run of its base
    recipe chose, and needs no demos. A failure (fit exits non-zero, no checkpoint, a crash in the test)
    still writes a row, with ``success_rate`` None and the error, then re-raises.
    """
    if rec.interactive:
        raise ValueError(f"recipe {rec.name!r} is an interactive experiment: run it per mode and seed "
                         "(lit_imit.interactive_recipes.run_interactive; reproduce.py --mode MODE --seed N)")
    base_overrides = _base_overrides(rec, base_ckpt)
    run_dir = Path(work_dir).resolve() / rec.name / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    start = time.perf_counter()
    row = _new_row(rec, run_dir, episodes, test_seed, command or f"python scripts/reproduce.py {rec.name}")
    row["overrides"] = [*rec.overrides, *(rec.gpu_overrides if _cuda_available() else ()), *extra_overrides]
    row["extra_overrides"] = list(extra_overrides)
    if base_overrides:
        paths = base_overrides[1::2]
        row["base_ckpt"] = paths[0] if len(paths) == 1 else paths

    def work() -> None:
        for stage in rec.stages:
            fit_run(rec, run_dir, REPO_ROOT / stage, row, start, python=python, stage=True)
        fit_run(rec, run_dir, REPO_ROOT / rec.config, row, start, base_overrides, extra_overrides, python)
        heldout_test_of_run(rec, run_dir, row, episodes, test_seed)

    return _recorded(row, work, start, results_path)


def fit_run(rec: Recipe, run_dir: Path, config: Path, row: dict[str, Any], start: float, first: Sequence[str] = (),
            extra: Sequence[str] = (), python: str = sys.executable, stage: bool = False,
            resume: tuple[Path, Path] | None = None) -> None:
    """``python -m lit_imit fit --config CONFIG`` in ``run_dir`` with ``first``, the recipe's overrides (and its
    GPU ones on a CUDA machine), then ``extra``; logged to ``fit.log``, ``row["fit_minutes"]`` counted from
    ``start``. A ``stage`` (one of ``rec.stages``) fits its config as shipped, logged to
    ``stage_<config name>.log``. ``resume`` = (last.ckpt, its directory) continues a stopped fit from that
    checkpoint, writing into the same directory (so the best checkpoint so far and its score stay in the race)
    and appending to the log. A non-zero exit raises with the end of the log."""
    overrides = [] if stage else [*first, *rec.overrides, *(rec.gpu_overrides if _cuda_available() else ()), *extra]
    if resume is not None:
        overrides += ["--ckpt_path", str(resume[0]), f"--checkpoint.dirpath={resume[1]}"]
    fit_cmd = [python, "-m", "lit_imit", "fit", "--config", str(config), *overrides]
    log_path = run_dir / (f"stage_{config.stem}.log" if stage else "fit.log")
    log.info("[%s] fit: %s (in %s)", rec.name, shlex.join(fit_cmd), run_dir)
    with open(log_path, "a" if resume is not None else "w") as out:
        if resume is not None:
            out.write(f"\n==== resumed from {resume[0]} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ====\n")
            out.flush()
        proc = run_child(fit_cmd, cwd=run_dir, stdout=out)
    row["fit_minutes"] = round((time.perf_counter() - start) / 60, 2)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"fit exited with status {proc.returncode}; end of {log_path}:\n{tail}")


def resume_run(run_dir: str | Path, results_path: str | Path, command: str = "",
               python: str = sys.executable) -> dict[str, Any]:
    """Continue a recipe run that was stopped in its final fit (Ctrl-C, ``kill``, a closed session, a machine
    shut down) from the ``last.ckpt`` written at its last epoch end, then test it; appends and returns its row.

    The fit resumes exactly (weights, optimiser, schedule, data order, random streams and the best checkpoint
    so far: see docs/architecture.md, "DDP and exact resume") with the overrides of the run's first row, and
    its held-out test uses that row's episodes and seeds. The row's ``wall_minutes`` adds up every part of the
    run (``parts_wall_minutes``); ``resumed_at_step`` says where this part started. Refused, with the reason,
    for a run without a row in ``results_path``, one already tested, one started at another commit (the code
    and configs must be the run's own: check that commit out, e.g. in a ``git worktree``) or one stopped
    before its final fit (in a stage: stages are short, run the recipe again), and while another process resumes
    the same run."""
    run_dir = Path(run_dir).resolve()
    with _sole_resume(run_dir):
        return _resume_run(run_dir, results_path, command, python)


@contextmanager
def _sole_resume(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.resume.lock`` (``flock``) while a run is resumed: two resumes of one run would train into
    the same checkpoint directory and each replace the other's best and last checkpoints."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    with open(run_dir / ".resume.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{run_dir} is being resumed by another process") from None
        yield


def _resume_run(run_dir: Path, results_path: str | Path, command: str, python: str) -> dict[str, Any]:
    from lit_imit.results import read_rows

    rec = recipe(run_dir.parent.name)
    if rec.interactive:
        raise ValueError(f"{run_dir}: an interactive run is not resumed from a checkpoint (its curve is measured "
                         "along the way): run its mode and seed again (scripts/reproduce.py --mode MODE --seed N)")
    parts = [r for r in read_rows(results_path) if r.get("run_dir") == str(run_dir) and not r.get("retest_of")]
    if not parts:
        raise ValueError(f"{results_path} has no row of {run_dir}: resuming needs the row its run wrote when it "
                         "stopped (its overrides, seeds and commit)")
    first = parts[0]
    if parts[-1].get("success_rate") is not None:
        raise ValueError(f"{run_dir} finished and was tested ({parts[-1]['successes']}/{parts[-1]['episodes']}): "
                         "test it again with --retest")
    commit = git_commit(REPO_ROOT)
    if first["commit"] != commit:
        raise ValueError(f"{run_dir} was started at commit {first['commit']}, this checkout is at {commit}: resume it "
                         f"from a checkout of {first['commit'].removesuffix('-dirty')} (git worktree add DIR "
                         f"{first['commit'].removesuffix('-dirty')}) so that its code and configs stay the run's own")
    if commit.endswith("-dirty"):
        log.warning("[%s] the checkout has uncommitted changes: nothing shows that the run's code is unchanged",
                    rec.name)
    if not (run_dir / "fit.log").is_file():
        raise ValueError(f"{run_dir} stopped before its final fit began (recording demos or in a stage): run the "
                         f"recipe again (python scripts/reproduce.py {rec.name})")
    resume = resume_point(run_dir, len(rec.stages))
    start = time.perf_counter()
    test_seed = int(str(first["eval_seeds"]).split("-")[0])
    row = _new_row(rec, run_dir, int(first["episodes"]), test_seed,
                   command or f"python scripts/reproduce.py --resume {run_dir}")
    row.update({key: first[key] for key in ("overrides", "extra_overrides", "base_ckpt") if key in first})
    row["first_command"] = first["command"]
    row["resumed_at_step"] = int(load_checkpoint(resume[0]).get("global_step", 0)) if resume else 0
    earlier = [float((r.get("parts_wall_minutes") or [r.get("wall_minutes") or 0.0])[-1]) for r in parts]
    base_overrides = _base_overrides(rec, first.get("base_ckpt"))

    def work() -> None:
        fit_run(rec, run_dir, REPO_ROOT / rec.config, row, start, base_overrides, first.get("extra_overrides", ()),
                python, resume=resume)
        heldout_test_of_run(rec, run_dir, row, int(first["episodes"]), test_seed)

    return _recorded(row, work, start, results_path, earlier=earlier,
                     shared_before=[name for r in parts for name in r.get("shared_with", [])])


def resume_point(run_dir: Path, n_stages: int) -> tuple[Path, Path] | None:
    """(last.ckpt, its directory) of the newest part of a run's final fit that wrote one; None when the final fit
    never finished an epoch (it then starts again). Every fit of a run logs to the next
    ``lightning_logs/version_<n>``: the ``n_stages`` first are the recipe's stages (all finished once the final
    fit began), the rest the final fit's parts."""
    versions = sorted(run_dir.glob("lightning_logs/version_*"), key=lambda p: int(p.name.split("_")[-1]))
    for version in reversed(versions[n_stages:]):
        last = checkpoints_dir(version) / "last.ckpt"
        if last.is_file():
            return last, last.parent
    return None


def _base_overrides(rec: Recipe, base_ckpt: str | Path | Sequence[str | Path] | None) -> list[str]:
    """``--model.init_args.<base_arg> PATH`` for each frozen checkpoint a recipe starts from (residual RL's BC base,
    skill-space RL's skill prior, SkiLD's three stages, in ``rec.base_args``' order; an error without them); []
    otherwise. ``base_ckpt`` is one path or a sequence of them."""
    paths = [] if base_ckpt is None else [base_ckpt] if isinstance(base_ckpt, (str, Path)) else list(base_ckpt)
    if rec.base_recipe is None:
        if paths:
            raise ValueError(f"recipe {rec.name!r} starts from scratch: it takes no base checkpoint")
        return []
    args = rec.base_args
    if len(paths) != len(args) or not all(Path(p).is_file() for p in paths):
        wanted = (f"the one a {rec.base_recipe} run chose (--base-ckpt PATH" if len(args) == 1 else
                  f"{len(args)} checkpoints, for {', '.join(args)} in that order, from {rec.base_recipe} (--base-ckpt "
                  + " ".join(a.upper() for a in args))
        raise ValueError(f"recipe {rec.name!r} starts from frozen checkpoints: give {wanted}; got {base_ckpt})")
    return [item for arg, path in zip(args, paths) for item in (f"--model.init_args.{arg}", str(Path(path).resolve()))]


def _new_row(rec: Recipe, run_dir: Path, episodes: int, test_seed: int, command: str) -> dict[str, Any]:
    """A row with the recipe's facts and empty results (a failed run is written like this, plus its error)."""
    return {
        "recipe": rec.name, "method": rec.method, "task": rec.task, "obs": rec.obs, "demos": rec.demos,
        "train_steps": None, "wall_minutes": None, "device": machine_description(), "successes": None,
        "episodes": episodes, "success_rate": None, "ci_low": None, "ci_high": None,
        "eval_seeds": f"{test_seed}-{test_seed + episodes - 1}", "commit": git_commit(REPO_ROOT),
        "command": command, "target": rec.target, "config": rec.config, "preset": rec.preset,
        "run_dir": str(run_dir),
    }


def _recorded(row: dict[str, Any], work: Any, start: float, results_path: str | Path | None,
              earlier: Sequence[float] = (), shared_before: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``work`` (which fills ``row``), then append the row with its wall time, also when ``work`` fails
    or is interrupted (with the error), and re-raise. A resumed run passes its ``earlier`` parts' wall minutes
    and the runs that shared the machine with them (``shared_before``)."""
    watch = BusyWatch()
    try:
        with watch:
            work()
    except BaseException as err:
        row["error"] = f"{type(err).__name__}: {err}"[:4000]
        _timed(row, start, watch, earlier, shared_before)
        if results_path is not None:
            append_row(results_path, row)
        raise
    _timed(row, start, watch, earlier, shared_before)
    return append_row(results_path, row) if results_path is not None else row


def _timed(row: dict[str, Any], start: float, watch: BusyWatch, earlier: Sequence[float] = (),
           shared_before: Sequence[str] = ()) -> None:
    """The row's wall time (every part of a resumed run added up), and the other runs that shared the machine
    meanwhile (``shared_with``, empty on a quiet box)."""
    now = round((time.perf_counter() - start) / 60, 2)
    row["wall_minutes"] = round(sum(earlier) + now, 2)
    if earlier:
        row["parts_wall_minutes"] = [*earlier, now]
    row["shared_with"] = sorted(watch.seen | set(shared_before))


def heldout_test_of_run(rec: Recipe, run_dir: Path, row: dict[str, Any], episodes: int, test_seed: int,
                        sampler: tuple[str, int] | None = None, checkpoint: str = "chosen",
                        action_steps: int | None = None, initial_noise: str | None = None) -> None:
    """The held-out test of a finished fit: the checkpoint it chose, rolled out on ``episodes`` seeds from
    ``test_seed`` with the run's own rollout settings; fills ``row`` (checkpoint, steps, seeds, success).
    ``sampler`` (kind, steps) swaps a Diffusion policy's inference sampler for this test only, and
    ``action_steps`` the number of actions it executes from each denoised window (Ta), ``initial_noise`` where
    its denoising starts ('fresh' | 'episode' | 'zero'); ``checkpoint="last"`` tests the end of training
    instead of the chosen checkpoint (neither saw the test seeds)."""
    if checkpoint not in ("chosen", "last"):
        raise ValueError(f"checkpoint must be 'chosen' or 'last', got {checkpoint!r}")
    config_path = find_run_config(run_dir)
    config = yaml.safe_load(config_path.read_text())
    ckpt = select_checkpoint(config_path.parent) if checkpoint == "chosen" else last_checkpoint(config_path.parent)
    row["checkpoint_choice"] = checkpoint
    row.update(_obs_from_config(config))
    row["checkpoint"] = str(ckpt)
    meta = load_checkpoint(ckpt)
    row["train_steps"] = int(meta.get("global_step", 0))
    del meta
    settings = rollout_settings(config)
    row["selection_seeds"] = f"{settings.get('seed', SELECTION_SEED)}+ ({settings.get('n_episodes')} episodes)"
    if ((config.get("data") or {}).get("init_args") or {}).get("data_dir"):
        row["demos"] = _count_episodes(run_dir, config)
    module = load_policy_from_run(config, ckpt)
    if sampler is not None:
        _diffusion_setting(module, "use_sampler", "--sampler")(*sampler)
        row["sampler"] = f"{sampler[0]}-{sampler[1]}"
    if action_steps is not None:
        _diffusion_setting(module, "use_action_steps", "--action-steps")(action_steps)
        row["action_steps"] = int(action_steps)
    if initial_noise is not None:
        _diffusion_setting(module, "use_initial_noise", "--initial-noise")(initial_noise)
        row["initial_noise"] = initial_noise
    test_start = time.perf_counter()
    task = rollout_task(config)
    if task is None:
        raise ValueError(f"{config_path}: neither the RolloutEvaluation callback nor the data names a task")
    if task != rec.task:  # e.g. a data module reading play episodes of another task than the one tested
        raise ValueError(f"{config_path}: the run rolls out {task!r}, but recipe {rec.name!r} is about "
                         f"{rec.task!r}: name the task in the RolloutEvaluation callback's init_args")
    env_kwargs = policy_env_kwargs(module, {**(settings.get("env_kwargs") or {}), **rec.test_env_kwargs})
    summary = heldout_test(
        module, task, env_kwargs, episodes, test_seed,
        n_envs=rec.test_n_envs, max_steps=settings.get("max_steps"), num_workers=rec.test_workers,
    )
    row.update({
        "successes": int(summary["successes"]), "success_rate": summary["success_rate"],
        "ci_low": round(summary["success_ci_low"], 4), "ci_high": round(summary["success_ci_high"], 4),
        "mean_return": summary["return"], "mean_max_reward": summary["max_reward"],
        "env_kwargs": env_kwargs,
    })
    if str(task).startswith("kitchen-") and "play" not in str(task):
        # a kitchen target task pays +1 per sub-task completed: the mean return is the mean count out of 4
        row["subtasks_completed"] = summary["return"]
    if rec.extra_tests:  # the same policy on other tasks (another split), each on its own episodes
        row["extra_tests"] = {}
        for extra_task in rec.extra_tests:
            extra = heldout_test(module, extra_task, env_kwargs, episodes, test_seed, n_envs=rec.test_n_envs,
                                 max_steps=settings.get("max_steps"), num_workers=rec.test_workers)
            row["extra_tests"][extra_task] = {
                "successes": int(extra["successes"]), "episodes": episodes, "success_rate": extra["success_rate"],
                "ci_low": round(extra["success_ci_low"], 4), "ci_high": round(extra["success_ci_high"], 4),
                "mean_return": extra["return"], "eval_seeds": f"{test_seed}-{test_seed + episodes - 1}",
            }
    if hasattr(module, "residual_in_evaluation"):  # residual RL: the base alone, on the same seeds
        module.residual_in_evaluation = False
        base = heldout_test(module, task, env_kwargs, episodes, test_seed, n_envs=rec.test_n_envs,
                            max_steps=settings.get("max_steps"), num_workers=rec.test_workers)
        row.update({"base_success_rate": base["success_rate"], "base_successes": int(base["successes"]),
                    "base_ci_low": round(base["success_ci_low"], 4), "base_ci_high": round(base["success_ci_high"], 4)})
    if hasattr(module, "env_steps"):  # RL: the env steps it trained on
        row["env_steps"] = int(module.env_steps)
    row["test_minutes"] = round((time.perf_counter() - test_start) / 60, 2)


def _diffusion_setting(module: Any, method: str, flag: str) -> Callable[..., None]:
    """The module's inference-setting method ``method`` (e.g. ``use_sampler``), or an error naming the ``flag``
    that asked for it on a policy without one."""
    if not hasattr(module, method):
        raise ValueError(f"{type(module).__name__} has no {method.removeprefix('use_').replace('_', ' ')} to "
                         f"change ({flag} is for Diffusion)")
    return getattr(module, method)


def retest_run(run_dir: str | Path, results_path: str | Path | None, episodes: int = 50, test_seed: int = TEST_SEED,
               sampler: tuple[str, int] | None = None, command: str = "", checkpoint: str = "chosen",
               curve_episodes: int | None = None, action_steps: int | None = None,
               initial_noise: str | None = None) -> dict[str, Any]:
    """Test a finished recipe run again (its chosen checkpoint, nothing retrained) and append the row.

    Fresh ``test_seed``s re-check a figure; ``sampler`` compares inference samplers on one Diffusion checkpoint
    (e.g. DDPM-100 against the DDIM-10 the run was tested with), ``action_steps`` its executed actions per
    query, ``initial_noise`` where its denoising starts. The row's ``retest_of`` names the run and its
    ``wall_minutes`` is the test's own time. A failure writes a row with the error, as ``run_recipe`` does.
    The run of an interactive recipe gets its whole curve evaluated again
    (:func:`lit_imit.interactive_recipes.retest_interactive`, ``curve_episodes`` per intermediate point).
    """
    from lit_imit.interactive_recipes import RUN_FILE, retest_interactive

    run_dir = Path(run_dir).resolve()
    if (run_dir / RUN_FILE).is_file():
        if sampler is not None or checkpoint != "chosen" or action_steps is not None or initial_noise is not None:
            raise ValueError("an interactive run is re-tested at every checkpoint: no sampler, action steps, "
                             "initial noise or checkpoint choice")
        return retest_interactive(run_dir, results_path, episodes, test_seed, curve_episodes, command)
    rec = recipe(run_dir.parent.name)
    start = time.perf_counter()
    row = _new_row(rec, run_dir, episodes, test_seed, command or f"python scripts/reproduce.py --retest {run_dir}")
    row["retest_of"] = str(run_dir)
    def test() -> None:
        heldout_test_of_run(rec, run_dir, row, episodes, test_seed, sampler, checkpoint, action_steps,
                            initial_noise)

    return _recorded(row, test, start, results_path)


def run_child(cmd: list[str], cwd: Path, stdout: Any, grace_seconds: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` to the end; if this process is interrupted meanwhile (Ctrl-C, or SIGTERM / SIGHUP turned
    into one), the child gets SIGTERM (Lightning stops cleanly and its worker processes with it) and, after
    ``grace_seconds``, SIGKILL, and the interrupt goes on. ``subprocess.run`` would SIGKILL it at once.

    If this process dies without a chance to do that (``kill -9``), Linux sends the child SIGTERM
    (``PR_SET_PDEATHSIG``), so no orphaned training keeps the cores busy and writes into the run directory.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT, preexec_fn=_terminate_with_parent)
    try:
        return subprocess.CompletedProcess(cmd, proc.wait())
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _terminate_with_parent() -> None:
    """In the child between fork and exec: ask the kernel for SIGTERM when the parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _count_episodes(run_dir: Path, config: Mapping[str, Any]) -> int:
    """Demonstrations in the run's store (the demo store where the data also reads play episodes)."""
    data_dir = Path(config["data"]["init_args"][demo_keys(config)[0]])
    return len(EpisodeStore(data_dir if data_dir.is_absolute() else run_dir / data_dir))
