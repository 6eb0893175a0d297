"""Plots of interactive runs (DAgger / ASkDAgger): from their TensorBoard logs, or the mode comparison from
the rows of the results file.

    python scripts/plot_interactive.py lightning_logs/version_0 lightning_logs/version_1 --out plots/
    python scripts/plot_interactive.py --results results/results.jsonl --out results/

Each LOGDIR is one run (every event file below it is read, so a resumed run logging into several
sub-directories can be given as their parent); its label is the directory name unless ``--labels`` says
otherwise. Three PNG files are written to ``--out``:

- ``success_vs_demos.png``: success (novice and system decision-level success, success of the interactive
  episodes, and ``rollout/success_rate`` when a RolloutEvaluation ran) and the query rate, against the
  number of demonstrations collected so far (``interactive/n_demos``) — the x axis of the ASkDAgger plots;
- ``gating.png``: sensitivity and specificity against interactive episodes, with SAG's target on the rate
  the run's SAG mode aims at (``interactive/target_<mode>``);
- ``demo_types.png``: cumulative teacher annotations, validated and relabeled demos against interactive
  episodes, and the final counts per run as stacked bars.

With ``--results``, the rows of interactive recipe runs (``scripts/reproduce.py RECIPE --mode M --seed N``;
the latest finished row per recipe, mode and seed) give, per recipe (``--recipe`` to pick one):

- ``interactive_<recipe>.png``: held-out success against teacher annotations, one line per mode through the
  seed means at the evaluation points, the seeds' min-max success shaded (and their annotation range as bars);
  success and annotations against interactive episodes beside it;
- ``interactive_<recipe>.md``: a line per mode (seeds, counters, final success, the annotations needed to
  first reach the success level, how many times fewer than active DAgger) and every run's counters.

The level is ``--level``, else the mean final success of the recipe's active-DAgger runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lit_imit.plotting import Series, load_scalars, plot_demo_types, plot_gating, plot_mode_comparison, plot_success, run_label
from lit_imit.results import interactive_summary, interactive_summary_table, latest_interactive_runs, read_rows


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdirs", nargs="*", help="TensorBoard log directories, one per run")
    parser.add_argument("--out", required=True, help="directory for the PNG (and, with --results, Markdown) files")
    parser.add_argument("--labels", nargs="*", help="run labels (default: directory names)")
    parser.add_argument("--results", help="a results file (results/results.jsonl): plot its interactive recipe runs")
    parser.add_argument("--recipe", help="with --results: only this interactive recipe")
    parser.add_argument("--level", type=float, default=None,
                        help="with --results: the success level (default: the active-DAgger runs' mean final success)")
    args = parser.parse_args(argv)
    if bool(args.logdirs) == bool(args.results):
        parser.error("give TensorBoard log directories or --results FILE (one of the two)")

    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out)
    written = from_results(parser, args, out) if args.results else from_logs(parser, args, out)
    for path in written:
        print(path)
    return written


def from_logs(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path) -> list[Path]:
    runs: dict[str, dict[str, Series]] = {}
    for i, logdir in enumerate(args.logdirs):
        try:
            scalars = load_scalars(logdir)
        except FileNotFoundError as err:
            parser.error(str(err))
        if "interactive/n_demos" not in scalars:
            parser.error(f"{logdir} has no interactive/ scalars: was InteractiveAggregation in the run?")
        runs[run_label(logdir, args.labels, i)] = scalars
    out.mkdir(parents=True, exist_ok=True)
    return [plot_success(runs, out), plot_gating(runs, out), plot_demo_types(runs, out)]


def from_results(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path) -> list[Path]:
    if not Path(args.results).is_file():
        parser.error(f"no results file {args.results}")
    rows = read_rows(args.results)
    runs = latest_interactive_runs(rows, args.recipe)
    if not runs:
        which = f"recipe {args.recipe!r}" if args.recipe else "any interactive recipe"
        parser.error(f"{args.results} has no finished run of {which} (rows with mode, success_rate and curve)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted({r["recipe"] for r in runs}):
        mine = [r for r in runs if r["recipe"] == name]
        level, _ = interactive_summary(mine, args.level)
        written.append(plot_mode_comparison(mine, out, name, level))
        table = out / f"interactive_{name}.md"
        table.write_text(f"# {name}\n\n" + interactive_summary_table(mine, args.level) + "\n" + run_table(mine),
                         encoding="utf-8")
        written.append(table)
    return written


def run_table(runs: Sequence[dict]) -> str:
    """Every run plotted: its counters and final held-out success."""
    lines = ["| mode | seed | interactive episodes | annotations | annotated steps | validations | relabels | "
             "held-out success (95% CI) | run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['mode']} | {r['seed']} | {r['interactive_episodes']} | {r['annotations']} | "
                     f"{r.get('annotated_steps')} | {r['validations']} | {r['relabels']} | {r['success_rate']:.2f} "
                     f"({r['successes']}/{r['episodes']}, CI {r['ci_low']:.2f}–{r['ci_high']:.2f}) | "
                     f"`{Path(str(r['run_dir'])).name}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
