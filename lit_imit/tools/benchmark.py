"""Throughput figures, one JSON object per line: {"name", "value", "unit", ...settings}.

    python scripts/benchmark.py                      # every row
    python scripts/benchmark.py --only env_steps,loader_samples
    python scripts/benchmark.py --list

A benchmark, not a test: numbers depend on the machine (and on whatever else runs on it). Each row
states the settings that produced it. ``--threads`` pins torch's intra-op threads (2 on the reference box).
The rows live in :mod:`lit_imit.benchmarks`.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from lit_imit.benchmarks import ROWS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated row names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=10, help="timed optimisation steps per training row")
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in ROWS.items():
            print(f"{name:28s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(ROWS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"error: unknown rows {unknown}; known: {list(ROWS)}", file=sys.stderr)
        return 2
    for name in names:
        for result in ROWS[name](args):
            result.setdefault("threads", torch.get_num_threads())
            result["value"] = round(float(result["value"]), 4)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
