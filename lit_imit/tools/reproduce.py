"""Regenerate the results table: run recipes end to end and append their rows to results/results.jsonl.

    python scripts/reproduce.py --list                         # recipes, expected wall time, targets
    python scripts/reproduce.py act_transfer_cube_state        # demos -> fit -> 50 held-out episodes -> a row
    python scripts/reproduce.py --preset paper                 # the GPU recipes (480x640, full-size ACT)
    python scripts/reproduce.py --render                       # re-render results/RESULTS.md and the README table
    python scripts/reproduce.py --retest runs/RECIPE/TIME --test-seed 2000000   # test a finished run again
    python scripts/reproduce.py --retest runs/RECIPE/TIME --sampler ddpm:100    # ... with another Diffusion sampler
    python scripts/reproduce.py residual_ppo_transfer_cube_state --base-ckpt runs/.../epoch0003.ckpt  # residual RL

Each recipe runs from nothing in ``runs/<recipe>/<timestamp>/`` (its own demos, logs and checkpoints; none of
them are committed); failed runs get rows too, and so does a run stopped by Ctrl-C, ``kill`` (SIGTERM) or a
closed terminal (SIGHUP): its row says where it stopped, and its ``fit`` process is stopped with it (a
``kill -9`` leaves nothing to write a row with). See ``lit_imit/recipes.py``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from lit_imit.recipes import RECIPES, REPO_ROOT, TEST_SEED, list_recipes, recipe, retest_run, run_recipe
from lit_imit.results import render_files
from lit_imit.signals import StopSignal, stop_signals_as_interrupt


def parse_sampler(text: str) -> tuple[str, int]:
    kind, _, steps = text.partition(":")
    if kind not in ("ddpm", "ddim") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected ddpm:STEPS or ddim:STEPS, got {text!r}")
    return kind, int(steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", help="recipe names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--preset", choices=sorted({r.preset for r in RECIPES.values()}),
                        help="run every recipe of this preset")
    parser.add_argument("--episodes", type=int, default=50, help="held-out test episodes (>= 50 for a quoted rate)")
    parser.add_argument("--test-seed", type=int, default=TEST_SEED, help="first held-out seed")
    parser.add_argument("--work-dir", default="runs", help="where run directories go")
    parser.add_argument("--results", default=str(REPO_ROOT / "results" / "results.jsonl"))
    parser.add_argument("--markdown", default=str(REPO_ROOT / "results" / "RESULTS.md"))
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"),
                        help="README whose results block is re-rendered ('' to leave it alone)")
    parser.add_argument("--render", action="store_true", help="only re-render the table from the results file")
    parser.add_argument("--retest", metavar="RUN_DIR", help="test a finished run's chosen checkpoint again (no training)")
    parser.add_argument("--checkpoint", choices=["chosen", "last"], default="chosen",
                        help="with --retest: the checkpoint chosen by validation rollouts, or the last one")
    parser.add_argument("--sampler", type=parse_sampler, default=None, metavar="KIND:STEPS",
                        help="with --retest: a Diffusion policy samples with this scheduler, e.g. ddpm:100 or ddim:10")
    parser.add_argument("--base-ckpt", default=None, metavar="PATH",
                        help="residual-RL recipes: the BC checkpoint to refine (the one a run of its base recipe chose)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra fit argument, e.g. --override=--trainer.max_steps=20 (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.list:
        print(list_recipes())
        return 0
    names = list(args.recipes)
    if args.preset:
        names += [r.name for r in RECIPES.values() if r.preset == args.preset and r.name not in names]
    if not names and not args.render and not args.retest:
        print("name recipes to run, --preset, --retest, --render or --list", file=sys.stderr)
        return 2
    if args.sampler and not args.retest:
        print("--sampler goes with --retest", file=sys.stderr)
        return 2
    command = "python " + shlex.join(["scripts/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
    if args.retest:
        with stop_signals_as_interrupt():
            row = retest_run(args.retest, args.results, episodes=args.episodes, test_seed=args.test_seed,
                             sampler=args.sampler, command=command, checkpoint=args.checkpoint)
        print(f"{row['recipe']} (retest): {row['successes']}/{row['episodes']} = {row['success_rate']:.3f} "
              f"(95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f}), {row['train_steps']} steps, "
              f"{row['wall_minutes']:.1f} min")
        render_files(args.results, args.markdown, args.readme or None)
        return 0
    failed = 0
    try:
        with stop_signals_as_interrupt():  # SIGTERM / SIGHUP as Ctrl-C: the stopped recipe still gets its row
            for name in names:
                rec = recipe(name)
                try:
                    row = run_recipe(rec, args.work_dir, args.results, episodes=args.episodes,
                                     test_seed=args.test_seed, extra_overrides=args.override, command=command,
                                     base_ckpt=args.base_ckpt if rec.base_recipe else None)
                    print(f"{name}: {row['successes']}/{row['episodes']} = {row['success_rate']:.3f} "
                          f"(95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f}), {row['train_steps']} steps, "
                          f"{row['wall_minutes']:.1f} min")
                except Exception as err:  # the row is written; go on with the next recipe
                    failed += 1
                    print(f"{name}: FAILED ({type(err).__name__}: {str(err)[:500]})", file=sys.stderr)
    except KeyboardInterrupt as err:  # the interrupted recipe's row is written; the others do not run
        why = err if isinstance(err, StopSignal) else "stopped by SIGINT"
        print(f"{why}: the interrupted recipe's row is in {args.results}", file=sys.stderr)
        render_files(args.results, args.markdown, args.readme or None)
        return 130
    render_files(args.results, args.markdown, args.readme or None)
    print(f"rendered {args.markdown}" + (f" and the table in {args.readme}" if args.readme else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
