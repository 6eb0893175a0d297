"""Datasets in and out: LeRobotDataset v3.0 both ways, robomimic HDF5 in.

    python scripts/convert.py lerobot-import /data/aloha_sim_lerobot data/aloha_imported
    python scripts/convert.py lerobot-export data/transfer_cube /data/transfer_cube_lerobot \
        --repo-id me/transfer_cube --fps 50
    python scripts/convert.py robomimic-import /data/robomimic/lift/ph/image.hdf5 data/lift

Imports add every episode to DST (created if missing, or an existing store of ours) under fresh ids and only
read the source. An export writes a new directory that ``LeRobotDataset(repo_id, root=OUT)`` loads; it needs
no ``lerobot`` package here (pyarrow and the ffmpeg of imageio-ffmpeg). See
:mod:`lit_imit.data.lerobot_format` and :mod:`lit_imit.data.robomimic_format` for the key mapping.
"""

from __future__ import annotations

import argparse
import sys

from lit_imit.data.episodes import EpisodeError, EpisodeStore


def _span(ids: list[int]) -> str:
    return f" (ids {ids[0]}-{ids[-1]})" if ids else ""


def lerobot_import(args: argparse.Namespace) -> str:
    from lit_imit.data.lerobot_format import import_lerobot

    ids = import_lerobot(args.source, EpisodeStore(args.dest), task=args.task)
    return f"imported {len(ids)} episodes from {args.source} into {args.dest}{_span(ids)}"


def lerobot_export(args: argparse.Namespace) -> str:
    from lit_imit.data.lerobot_format import export_lerobot

    out = export_lerobot(args.store, args.out, args.repo_id, fps=args.fps, episode_ids=args.episodes,
                         vcodec=args.vcodec, pix_fmt=args.pix_fmt, crf=args.crf, g=args.g, robot_type=args.robot_type,
                         task=args.task)
    return f"exported {args.store} to {out}; load it with LeRobotDataset({args.repo_id!r}, root={str(out)!r})"


def robomimic_import(args: argparse.Namespace) -> str:
    from lit_imit.data.robomimic_format import import_robomimic

    state_keys = args.state_keys.split(",") if args.state_keys else None
    ids = import_robomimic(args.source, EpisodeStore(args.dest), state_keys=state_keys,
                           env_state_key=args.env_state_key or None, task=args.task)
    return f"imported {len(ids)} demos from {args.source} into {args.dest}{_span(ids)}"


def id_list(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated episode ids, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser("lerobot-import", help="a local LeRobotDataset v3.0 directory into an episode store")
    sub.add_argument("source", help="dataset root (meta/info.json, data/, videos/); only read")
    sub.add_argument("dest", help="episode store to add the episodes to")
    sub.add_argument("--task", help="task attr of every episode (default: its LeRobot task text)")
    sub.set_defaults(run=lerobot_import)

    sub = commands.add_parser("lerobot-export", help="an episode store as a LeRobotDataset v3.0 directory")
    sub.add_argument("store", help="episode store (or an original ACT directory); only read")
    sub.add_argument("out", help="new directory to write (must not exist)")
    sub.add_argument("--repo-id", required=True, help="owner/name, the repo_id to load it with")
    sub.add_argument("--fps", type=int, help="control rate (default: the episodes' fps attr)")
    sub.add_argument("--episodes", type=id_list, help="comma-separated episode ids (default: all, in id order)")
    sub.add_argument("--vcodec", default="libsvtav1", help="libsvtav1 (LeRobot's default, AV1), h264 or hevc")
    sub.add_argument("--pix-fmt", default="yuv420p", help="yuv420p (default) or yuv444p (h264 only)")
    sub.add_argument("--crf", type=int, default=30, help="quality, lower is better (default 30, LeRobot's; "
                     "'--vcodec h264 --pix-fmt yuv444p --crf 0' is near-lossless)")
    sub.add_argument("--g", type=int, default=2, help="keyframe interval in frames (default 2, LeRobot's)")
    sub.add_argument("--robot-type", help="info.json robot_type")
    sub.add_argument("--task", help="task text of episodes that have neither an instruction nor a task attr")
    sub.set_defaults(run=lerobot_export)

    sub = commands.add_parser("robomimic-import", help="a robomimic HDF5 file (data/demo_N/{obs,actions}) into a store")
    sub.add_argument("source", help="robomimic .hdf5 file; only read")
    sub.add_argument("dest", help="episode store to add the demos to")
    sub.add_argument("--state-keys", help="comma-separated low-dim obs keys concatenated into qpos, in this order "
                     "(default: every low-dim key but --env-state-key, sorted)")
    sub.add_argument("--env-state-key", default="object", help="obs key stored as env_state (default: object; "
                     "'' for none)")
    sub.add_argument("--task", help="task attr of every episode (default: env_name of data.attrs['env_args'])")
    sub.set_defaults(run=robomimic_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        message = args.run(args)
    except (EpisodeError, OSError) as err:  # bad input, named in the message
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
