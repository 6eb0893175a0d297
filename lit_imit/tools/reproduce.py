"""Regenerate the results table: run recipes end to end and append their rows to results/results.jsonl.

    python scripts/reproduce.py --list                         # recipes, expected wall time, targets
    python scripts/reproduce.py act_transfer_cube_state        # demos -> fit -> 50 held-out episodes -> a row
    python scripts/reproduce.py --preset paper                 # the GPU recipes (480x640, full-size ACT)
    python scripts/reproduce.py --render                       # re-render results/RESULTS.md and the README table
    python scripts/reproduce.py --retest runs/RECIPE/TIME --test-seed 2000000   # test a finished run again
    python scripts/reproduce.py --retest runs/RECIPE/TIME --sampler ddpm:100    # ... with another Diffusion sampler
    python scripts/reproduce.py --resume runs/RECIPE/TIME       # continue a stopped run from its last epoch, then test
    python scripts/reproduce.py residual_ppo_transfer_cube_state --base-ckpt runs/.../epoch0003.ckpt  # residual RL
    python scripts/reproduce.py askdagger_transfer_cube_state --mode askdagger --seed 0     # one interactive run
    python scripts/reproduce.py askdagger_transfer_cube_state --mode all --seed 0 1 2      # the grid, seed by seed
    python scripts/reproduce.py spirl_rl_pointmaze --base-ckpt checkpoints/skills/maze_spirl_prior/last.ckpt
    python scripts/reproduce.py skild_rl_pointmaze --base-ckpt PRIOR.ckpt POSTERIOR.ckpt DISCRIMINATOR.ckpt

Each recipe runs from nothing in ``runs/<recipe>/<timestamp>/`` (its own demos, logs and checkpoints; none of
them are committed); failed runs get rows too, and so does a run stopped by Ctrl-C, ``kill`` (SIGTERM) or a
closed terminal (SIGHUP): its row says where it stopped, and its ``fit`` process is stopped with it (a
``kill -9`` leaves nothing to write a row with). ``--resume RUN_DIR`` continues such a run from the
``last.ckpt`` of its last finished epoch, exactly, and tests it: a recipe longer than one sitting runs in
parts. See ``lit_imit/recipes.py``.

An interactive recipe (preset ``interactive``) runs once per ``--mode`` and ``--seed`` (every combination,
seed by seed) in ``runs/<recipe>/<mode>-seed<s>-<timestamp>/``; its row has the counters and the curve of
held-out success (``lit_imit/interactive_recipes.py``); ``scripts/plot_interactive.py --results`` draws them.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from functools import partial
from pathlib import Path

from lit_imit.interactive_recipes import MAX_SEED, MODE_ORDER, grid, run_interactive
from lit_imit.recipes import (RECIPES, REPO_ROOT, TEST_SEED, list_recipes, recipe, resume_run, retest_run,
                              run_recipe)
from lit_imit.results import render_files
from lit_imit.signals import StopSignal, stop_signals_as_interrupt

DEFAULT_RESULTS = REPO_ROOT / "results" / "results.jsonl"
#: the earlier-stage configs of the recipes trained in stages: a change to one retires older rows from the headline
RECIPE_STAGES = {name: rec.stages for name, rec in RECIPES.items() if rec.stages}


def parse_sampler(text: str) -> tuple[str, int]:
    kind, _, steps = text.partition(":")
    if kind not in ("ddpm", "ddim") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected ddpm:STEPS or ddim:STEPS, got {text!r}")
    return kind, int(steps)


def parse_seed(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is an integer in 0..{MAX_SEED}, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", help="recipe names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--preset", choices=sorted({r.preset for r in RECIPES.values()}),
                        help="run every recipe of this preset")
    parser.add_argument("--episodes", type=int, default=50, help="held-out test episodes (>= 50 for a quoted rate)")
    parser.add_argument("--test-seed", type=int, default=TEST_SEED, help="first held-out seed")
    parser.add_argument("--work-dir", default="runs", help="where run directories go")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS))
    parser.add_argument("--markdown", default=None,
                        help="the rendered table (default: RESULTS.md beside the results file)")
    parser.add_argument("--readme", default=None,
                        help="README whose results block is re-rendered ('' to leave it alone; default: the "
                             "repository's README with the repository's results file, none with another one)")
    parser.add_argument("--render", action="store_true", help="only re-render the table from the results file")
    parser.add_argument("--retest", metavar="RUN_DIR", help="test a finished run's chosen checkpoint again (no training)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a run that was stopped in its final fit from its last.ckpt (same commit, "
                             "overrides and test seeds as its first row), then test it")
    parser.add_argument("--checkpoint", choices=["chosen", "last"], default="chosen",
                        help="with --retest: the checkpoint chosen by validation rollouts, or the last one")
    parser.add_argument("--sampler", type=parse_sampler, default=None, metavar="KIND:STEPS",
                        help="with --retest: a Diffusion policy samples with this scheduler, e.g. ddpm:100 or ddim:10")
    parser.add_argument("--action-steps", type=int, default=None, metavar="N",
                        help="with --retest: a Diffusion policy executes N actions of each denoised window (Ta)")
    parser.add_argument("--initial-noise", choices=["fresh", "episode", "zero"], default=None,
                        help="with --retest: where a Diffusion policy's denoising starts (a new draw per query, one "
                             "per episode, or zeros)")
    parser.add_argument("--base-ckpt", nargs="+", default=None, metavar="PATH",
                        help="residual-RL recipes: the BC checkpoint to refine (the one a run of its base recipe "
                             "chose); skill-space RL recipes: the skill prior's checkpoint; SkiLD: the prior's, the "
                             "posterior's and the discriminator's, in that order")
    parser.add_argument("--mode", nargs="+", choices=[*MODE_ORDER, "all"], metavar="MODE",
                        help=f"interactive recipes: the modes to run ({', '.join(MODE_ORDER)}, or all)")
    parser.add_argument("--seed", nargs="+", type=parse_seed, metavar="N",
                        help=f"interactive recipes: the seeds to run (0..{MAX_SEED}), e.g. --seed 0 1 2")
    parser.add_argument("--curve-episodes", type=int, default=None, metavar="N",
                        help="interactive recipes: held-out episodes at each intermediate point of the curve "
                             "(default: the recipe's; the last point gets --episodes)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra fit argument, e.g. --override=--trainer.max_steps=20 (repeatable)")
    return with_render_targets(parser.parse_args(argv))


def with_render_targets(args: argparse.Namespace) -> argparse.Namespace:
    """Where the table is rendered: beside the results file, and into the README only from the repository's own
    results file, so that a run written elsewhere (``--results /tmp/r.jsonl``) never rewrites the shipped table."""
    results = Path(args.results).resolve()
    if args.markdown is None:
        args.markdown = str(results.parent / "RESULTS.md")
    if args.readme is None:
        args.readme = str(REPO_ROOT / "README.md") if results == DEFAULT_RESULTS.resolve() else ""
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.list:
        print(list_recipes())
        return 0
    names = list(args.recipes)
    if args.preset:
        names += [r.name for r in RECIPES.values() if r.preset == args.preset and r.name not in names]
    if not names and not args.render and not args.retest and not args.resume:
        print("name recipes to run, --preset, --retest, --resume, --render or --list", file=sys.stderr)
        return 2
    if args.resume and (names or args.retest):
        print("--resume continues one run: no recipe names or --retest with it", file=sys.stderr)
        return 2
    if (args.sampler or args.action_steps is not None or args.initial_noise) and not args.retest:
        print("--sampler, --action-steps and --initial-noise go with --retest", file=sys.stderr)
        return 2
    problem = check_interactive_args(args, names)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    command = "python " + shlex.join(["scripts/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
    if args.resume:
        try:
            with stop_signals_as_interrupt():
                row = resume_run(args.resume, args.results, command=command)
        except KeyboardInterrupt as err:  # stopped again: its row is written, and it can be resumed again
            print(f"{err if isinstance(err, StopSignal) else 'stopped by SIGINT'}: the row is in {args.results}; "
                  f"--resume {args.resume} continues it", file=sys.stderr)
            render_files(args.results, args.markdown, args.readme or None, RECIPE_STAGES)
            return 130
        print(f"{row['recipe']} (resumed at step {row['resumed_at_step']}): {summary_line(row)}")
        render_files(args.results, args.markdown, args.readme or None, RECIPE_STAGES)
        return 0
    if args.retest:
        with stop_signals_as_interrupt():
            row = retest_run(args.retest, args.results, episodes=args.episodes, test_seed=args.test_seed,
                             sampler=args.sampler, command=command, checkpoint=args.checkpoint,
                             curve_episodes=args.curve_episodes, action_steps=args.action_steps,
                             initial_noise=args.initial_noise)
        print(f"{row['recipe']} (retest): {summary_line(row)}")
        render_files(args.results, args.markdown, args.readme or None, RECIPE_STAGES)
        return 0
    failed = 0
    try:
        with stop_signals_as_interrupt():  # SIGTERM / SIGHUP as Ctrl-C: the stopped recipe still gets its row
            for name, run in runs(args, names, command):
                try:
                    print(f"{name}: {summary_line(run())}")
                except Exception as err:  # the row is written; go on with the next run
                    failed += 1
                    print(f"{name}: FAILED ({type(err).__name__}: {str(err)[:500]})", file=sys.stderr)
    except KeyboardInterrupt as err:  # the interrupted recipe's row is written; the others do not run
        why = err if isinstance(err, StopSignal) else "stopped by SIGINT"
        print(f"{why}: the interrupted recipe's row is in {args.results}", file=sys.stderr)
        render_files(args.results, args.markdown, args.readme or None, RECIPE_STAGES)
        return 130
    render_files(args.results, args.markdown, args.readme or None, RECIPE_STAGES)
    print(f"rendered {args.markdown}" + (f" and the table in {args.readme}" if args.readme else ""))
    return 1 if failed else 0


def check_interactive_args(args: argparse.Namespace, names: list[str]) -> str | None:
    """Why ``--mode``/``--seed`` do not fit the recipes named (None when they do)."""
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        return f"unknown recipe {unknown[0]!r}; known: {', '.join(sorted(RECIPES))}"
    interactive = [n for n in names if recipe(n).interactive]
    learning = [n for n in names if not recipe(n).interactive]
    if interactive and (not args.mode or not args.seed):
        return (f"{', '.join(interactive)}: an interactive recipe runs per mode and seed: give --mode "
                f"({' '.join(MODE_ORDER)} or all) and --seed (e.g. --seed 0 1 2)")
    if learning and (args.mode or args.seed):
        return f"--mode and --seed are for interactive recipes; {', '.join(learning)} is a learning recipe"
    if args.curve_episodes is not None and args.curve_episodes < 1:
        return f"--curve-episodes must be >= 1, got {args.curve_episodes}"
    return None


def runs(args: argparse.Namespace, names: list[str], command: str):
    """(label, run) for every run asked for: a learning recipe once, an interactive one per (mode, seed)."""
    for name in names:
        rec = recipe(name)
        if not rec.interactive:
            yield name, partial(run_recipe, rec, args.work_dir, args.results, episodes=args.episodes,
                                test_seed=args.test_seed, extra_overrides=args.override, command=command,
                                base_ckpt=args.base_ckpt if rec.base_recipe else None)
            continue
        modes = list(MODE_ORDER) if "all" in args.mode else args.mode
        for mode, seed in grid(modes, args.seed):
            yield f"{name} {mode} seed {seed}", partial(
                run_interactive, rec, mode, seed, args.work_dir, args.results, episodes=args.episodes,
                curve_episodes=args.curve_episodes, test_seed=args.test_seed, extra_overrides=args.override,
                command=command)


def summary_line(row: dict) -> str:
    """One line of a finished run: its held-out success (and an interactive run's counters)."""
    line = (f"{row['successes']}/{row['episodes']} = {row['success_rate']:.3f} "
            f"(95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f}), {row['train_steps']} steps, "
            f"{row['wall_minutes']:.1f} min")
    for task, t in (row.get("extra_tests") or {}).items():
        line += f"; {task}: {t['successes']}/{t['episodes']} = {t['success_rate']:.3f}"
    if row.get("mode"):
        line += (f"; {row['interactive_episodes']} interactive episodes, {row['annotations']} annotations "
                 f"({row['annotated_steps']} steps), {row['validations']} validations, {row['relabels']} relabels")
    return line


if __name__ == "__main__":
    sys.exit(main())
