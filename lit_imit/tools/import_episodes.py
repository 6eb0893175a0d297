"""Copy another tool's episodes (e.g. an original ACT dataset) into an episode store of ours.

    python scripts/import_episodes.py /data/sim_transfer_cube_scripted data/transfer_cube_act

Training reads such a directory as it is (``data.init_args.data_dir`` may point at it) and writes nothing
into it, so it cannot grow there. Importing copies every ``episode_<n>.hdf5`` into ``DST`` (created if
missing, or an existing store of ours) under fresh ids; the source is only read. Each copy records
``imported_from``. See :func:`lit_imit.data.episodes.import_episodes`.
"""

from __future__ import annotations

import argparse
import sys

from lit_imit.data.episodes import EpisodeError, EpisodeStore, import_episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="directory of episode_<n>.hdf5 files (read only)")
    parser.add_argument("dest", help="episode store to add them to")
    args = parser.parse_args(argv)
    try:
        ids = import_episodes(args.source, EpisodeStore(args.dest))
    except (EpisodeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    span = f" (ids {ids[0]}-{ids[-1]})" if ids else ""
    print(f"imported {len(ids)} episodes from {args.source} into {args.dest}{span}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
