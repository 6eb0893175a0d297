"""Replay recorded myCobot 320 episodes in the MuJoCo twin and report how closely the twin followed them.

    python scripts/replay_in_twin.py data/robot_move_cube/episode_000003.hdf5
    python scripts/replay_in_twin.py data/robot_move_cube/*.hdf5 --json
    python scripts/replay_in_twin.py data/mycobot_move_cube/episode_000000.hdf5 --video replay.mp4

Each episode's actions run open loop in the twin from its first recorded pose, with the adapter's clamps;
the joint tracking error (twin minus recorded, degrees) is reported per joint (RMS) and at worst. For twin
recordings the layout comes from the episode's seed and the replayed outcome is reported too. A tracking
error above ``--max-error-deg`` makes the exit status 1, so this can gate a dataset before training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lit_imit.data.episodes import EpisodeError
from lit_imit.robots.replay import replay_episode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("episodes", nargs="+", help="episode files (.hdf5)")
    parser.add_argument("--seed", type=int, default=None, help="layout seed (default: a twin episode's own)")
    parser.add_argument("--max-error-deg", type=float, default=5.0,
                        help="worst joint tracking error tolerated before the episode is flagged")
    parser.add_argument("--video", default=None, help="mp4 of the twin replaying the first episode")
    parser.add_argument("--json", action="store_true", help="one JSON object per episode instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    flagged = 0
    for k, path in enumerate(args.episodes):
        want_video = args.video is not None and k == 0
        try:
            report = replay_episode(path, seed=args.seed, record_frames=want_video)
        except (EpisodeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            flagged += 1
            continue
        ok = report.max_error_deg <= args.max_error_deg
        flagged += int(not ok)
        if want_video and report.frames:
            import imageio.v2 as imageio

            imageio.mimwrite(args.video, report.frames, fps=int(round(report.twin_fps)), macro_block_size=1)
        if args.json:
            print(json.dumps({**report.to_dict(), "within_tolerance": ok}))
        else:
            outcome = "" if report.success is None else f", replayed success {report.success}"
            print(f"{path}: {report.steps} steps, joint error RMS {report.rms_error_deg} deg, worst "
                  f"{report.max_error_deg:.2f} deg, {report.clamped_steps} clamped steps{outcome}"
                  f"{'' if ok else '  <-- above --max-error-deg'}")
    return 1 if flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
