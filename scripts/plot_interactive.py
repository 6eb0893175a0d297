"""Plots of interactive runs (DAgger / ASkDAgger) from their TensorBoard logs.

    python scripts/plot_interactive.py lightning_logs/version_0 lightning_logs/version_1 --out plots/

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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lit_imit.plotting import Series, load_scalars, plot_demo_types, plot_gating, plot_success, run_label


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdirs", nargs="+", help="TensorBoard log directories, one per run")
    parser.add_argument("--out", required=True, help="directory for the PNG files")
    parser.add_argument("--labels", nargs="*", help="run labels (default: directory names)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    runs: dict[str, dict[str, Series]] = {}
    for i, logdir in enumerate(args.logdirs):
        try:
            scalars = load_scalars(logdir)
        except FileNotFoundError as err:
            parser.error(str(err))
        if "interactive/n_demos" not in scalars:
            parser.error(f"{logdir} has no interactive/ scalars: was InteractiveAggregation in the run?")
        runs[run_label(logdir, args.labels, i)] = scalars
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_success(runs, out), plot_gating(runs, out), plot_demo_types(runs, out)]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
