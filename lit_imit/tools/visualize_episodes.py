"""Look at recorded episodes: an mp4 of the camera streams and a plot of commanded vs measured joints.

    python scripts/visualize_episodes.py data/transfer_cube/episode_000000.hdf5 [--out DIR]

Writes ``<name>.mp4`` (cameras side by side) and ``<name>_joints.png`` (one panel per joint, named with
its unit: the commanded action against the measured qpos) into ``visualizations/<dataset>/`` in the working
directory, or into ``--out`` (``--out`` next to the file writes into the dataset: only when told). A file without
``observations/qpos`` or ``action`` is an error naming the missing key (exit status 1), not an empty result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_imit.data.episodes import EpisodeError
from lit_imit.data.visualize import visualize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="episode files")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: visualizations/<dataset>/ here)")
    parser.add_argument("--fps", type=int, default=50)
    args = parser.parse_args(argv)

    status = 0
    for path in args.files:
        try:
            for written in visualize(path, args.out, args.fps):
                print(written)
        except EpisodeError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
