"""Record scripted-teacher demonstrations into an episode store.

    python scripts/record_demos.py --task transfer_cube --episodes 50 --out data/transfer_cube
    python scripts/record_demos.py --task insertion --episodes 5 --out data/ins --cameras "" --keep-failures

Only successful episodes are kept unless ``--keep-failures``. Re-running appends episodes with new ids and
new seeds; an interrupted run keeps every finished episode and leaves no half-written file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--image-size must look like 240x320 (HxW), got {text!r}") from err
    return height, width


def parse_cameras(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="task name, e.g. transfer_cube, insertion")
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes to record")
    parser.add_argument("--out", required=True, help="episode store directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (continues on re-runs)")
    parser.add_argument("--cameras", type=parse_cameras, default=None,
                        help='comma-separated cameras, "" for none (default: the env default)')
    parser.add_argument("--image-size", type=parse_image_size, default=None, help="HxW, e.g. 240x320")
    parser.add_argument("--keep-failures", action="store_true", help="also keep unsuccessful episodes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lit_imit.data.episodes import EpisodeStore
    from lit_imit.data.recording import record_teacher_episodes
    from lit_imit.envs import task_spec

    try:
        task_spec(args.task)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    store = EpisodeStore(args.out)
    start = time.perf_counter()
    try:
        report = record_teacher_episodes(
            args.task, args.episodes, store, cameras=args.cameras, image_size=args.image_size, seed=args.seed,
            keep_failures=args.keep_failures, progress=True,
        )
    except KeyboardInterrupt:
        print(f"interrupted: {len(store)} complete episodes are in {args.out}", file=sys.stderr)
        return 130
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    minutes = (time.perf_counter() - start) / 60
    print(
        f"teacher success rate {report.success_rate:.3f} ({report.successes}/{report.attempts}); wrote "
        f"{len(report.ids)} episodes (ids {report.ids[0]}..{report.ids[-1]}) to {args.out}; "
        f"{len(report.ids) / max(minutes, 1e-9):.1f} episodes/min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
