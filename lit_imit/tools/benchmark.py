"""Throughput figures, one JSON object per line: {"name", "value", "unit", ...settings}.

    python scripts/benchmark.py                      # every row
    python scripts/benchmark.py --only env_steps,loader_samples
    python scripts/benchmark.py --list
    python scripts/benchmark.py --only act_fit --fit-store data/act_fit --fit-image-size 480x640   # a real fit

A benchmark, not a test: numbers depend on the machine (and on whatever else runs on it). Each row
states the settings that produced it. ``--threads`` pins torch's intra-op threads (2 on the reference box).
The rows live in :mod:`lit_imit.benchmarks`.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from lit_imit.allocator import keep_freed_memory
from lit_imit.benchmarks import ROWS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated row names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=10, help="timed optimisation steps per training row")
    parser.add_argument("--keep-freed-memory", default="true", choices=("true", "false"),
                        help="glibc keeps freed memory in the process, as `python -m lit_imit fit` does by "
                             "default (its --keep_freed_memory; lit_imit.allocator); false: glibc's defaults")
    fit = parser.add_argument_group("act_fit", "a real `python -m lit_imit fit` of ACT on recorded episodes")
    fit.add_argument("--fit-store", help="episode store to train on: recorded there when empty, reused otherwise "
                     "(default: recorded into a temporary directory)")
    fit.add_argument("--fit-episodes", type=int, default=10, help="teacher episodes to record (400 steps each)")
    fit.add_argument("--fit-image-size", default="480x640", help="HEIGHTxWIDTH of the top camera (LeRobot's shape)")
    fit.add_argument("--fit-steps", type=int, default=60, help="optimizer steps of the fit (the last timed one)")
    fit.add_argument("--fit-skip", type=int, default=10, help="steps left out as start-up: the rate is timed "
                     "from the end of this step to the end of --fit-steps")
    fit.add_argument("--fit-checkpoint-every", type=int, default=20, help="a checkpoint every N steps")
    fit.add_argument("--fit-workers", type=int, default=2, help="DataLoader worker processes")
    fit.add_argument("--fit-precision", default="32,bf16-mixed", help="comma-separated Trainer precisions")
    fit.add_argument("--fit-model", default=None, help="JSON object of ACTModule arguments over LeRobot's shape "
                     "(e.g. a tiny ACT for a smoke run); given to lerobot-train as --policy.KEY=VALUE too, so "
                     "with --fit-lerobot-python use the names both share (dim_model, n_heads, chunk_size...)")
    fit.add_argument("--fit-lerobot-python", default=None, help="python of LeRobot's venv: also run lerobot-train "
                     "(scripts/benchmark_lerobot.py --fit) on the episodes exported next to the store")
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in ROWS.items():
            print(f"{name:28s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.keep_freed_memory == "true" and keep_freed_memory()
    names = list(ROWS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"error: unknown rows {unknown}; known: {list(ROWS)}", file=sys.stderr)
        return 2
    for name in names:
        for result in ROWS[name](args):
            result.setdefault("threads", torch.get_num_threads())
            result.setdefault("keep_freed_memory", kept)
            result["value"] = round(float(result["value"]), 4)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
