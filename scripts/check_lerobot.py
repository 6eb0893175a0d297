"""Check ``scripts/convert.py``'s LeRobot format against LeRobot itself, both ways (optional; not in the tests).

LeRobot pins its own torch, so it lives in a separate virtual environment; this script runs in ours and calls
that environment's python for the LeRobot half (the same file, with a ``--lerobot-side`` subcommand that
imports nothing from lit_imit)::

    python3.11 -m venv /tmp/lerobot-venv && /tmp/lerobot-venv/bin/pip install "lerobot==0.4.4"
    python scripts/check_lerobot.py --lerobot-python /tmp/lerobot-venv/bin/python

1. export: a store of ours (3 episodes, two cameras, two tasks) is exported twice, with the default settings
   (AV1; episodes one after another in one video per camera) and near-lossless with a file per episode, and
   each is loaded with ``LeRobotDataset(repo_id, root=...)``; every frame is read through ``__getitem__`` and compared
   with the store: state, action, environment state and timestamps exactly, the task text, and the camera
   frames within AV1's tolerance. Then, as ``lerobot-train`` would, an ACT policy and its normaliser are built
   from the dataset's features and ``meta/stats.json`` and take one training step on action chunks
   (``delta_timestamps``, with ``action_is_pad`` past an episode's end).
2. import: LeRobot writes a dataset with its own API (``LeRobotDataset.create``, ``add_frame``,
   ``save_episode``, ``finalize``; a video camera and a state key, small file-size limits so that episodes
   spread over several data and video files); ``import_lerobot`` reads it, and its values are compared with the
   frames LeRobot was given (state and action exactly, images within the codec's tolerance) and with what
   LeRobot's own decoder returns for the same video frames.

Videos are decoded in LeRobot with ``video_backend="pyav"``: its default, torchcodec, needs FFmpeg's shared
libraries on the system, which a pip install does not bring.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ID = "lit-imit/check"
HW = (96, 128)
FPS = 30


def smooth_frames(length: int, seed: int) -> np.ndarray:
    """Moving gradients with a frame counter block: a lossy codec keeps them (noise it would not)."""
    yy, xx = np.mgrid[0:HW[0], 0:HW[1]]
    base = np.stack([xx * 255 / HW[1], yy * 255 / HW[0], (xx + yy) * 255 / sum(HW)], -1)
    frames = np.stack([np.clip(base + 3 * t + 20 * seed, 0, 255) for t in range(length)]).astype(np.uint8)
    frames[:, :16, :16] = (np.arange(length) * 7 % 256)[:, None, None, None].astype(np.uint8)
    return frames


# ---- LeRobot's side (runs under the lerobot venv's python; imports nothing of ours) ------------------------
def lerobot_load(root: Path, expected: Path) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    want = np.load(expected, allow_pickle=True)
    ds = LeRobotDataset(REPO_ID, root=root, video_backend="pyav")
    report = {"num_episodes": ds.num_episodes, "num_frames": ds.num_frames, "fps": ds.fps,
              "features": sorted(ds.features), "camera_keys": ds.meta.camera_keys}
    errors = {"observation.images.top": [], "observation.images.wrist": []}
    worst = dict.fromkeys(errors, 0)
    exact = True
    for i in range(len(ds)):
        item = ds[i]
        for key in ("observation.state", "action", "observation.environment_state", "timestamp"):
            exact &= bool(np.array_equal(item[key].numpy(), want[key][i]))
        exact &= item["task"] == str(want["task"][i]) and int(item["episode_index"]) == int(want["episode_index"][i])
        for key in errors:
            got = item[key]  # (3, H, W) float in [0, 1]
            assert got.shape == (3, *HW), got.shape
            frame = (got.permute(1, 2, 0).numpy() * 255).round()
            errors[key].append(float(np.abs(frame - want[key][i]).mean()))
            worst[key] = max(worst[key], int(np.abs(frame - want[key][i]).max()))
    report["values_exact"] = exact
    report["image_mean_abs_error"] = {k: [round(min(v), 3), round(float(np.mean(v)), 3), round(max(v), 3)]
                                      for k, v in errors.items()}
    report["image_max_abs_error"] = worst
    chunked = LeRobotDataset(REPO_ID, root=root, video_backend="pyav",
                             delta_timestamps={"action": [k / FPS for k in range(10)]})
    item = chunked[len(chunked) - 1]  # the last frame of the last episode: 9 of its 10 action steps are padding
    report["chunk_action_shape"] = list(item["action"].shape)
    report["chunk_action_is_pad"] = item["action_is_pad"].tolist()
    report["chunk_first_matches"] = bool(np.array_equal(chunked[0]["action"].numpy(), want["action"][0:10]))
    # one ACT training step as lerobot-train takes it: policy and normaliser built from the dataset's
    # features and meta/stats.json
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    config = ACTConfig(device="cpu", pretrained_backbone_weights=None, chunk_size=10, n_action_steps=10,
                       dim_model=64, n_heads=2, dim_feedforward=128, n_encoder_layers=1, n_decoder_layers=1,
                       latent_dim=8)
    policy = make_policy(config, ds_meta=chunked.meta)
    preprocess, _ = make_pre_post_processors(config, dataset_stats=chunked.meta.stats)
    batch = next(iter(torch.utils.data.DataLoader(chunked, batch_size=4, shuffle=True, num_workers=0)))
    report["batch_shapes"] = {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
    loss, _ = policy.forward(preprocess(batch))
    loss.backward()
    report["act_inputs"] = sorted(config.input_features)
    report["act_train_step_loss"] = round(float(loss), 4)
    return report


def lerobot_write(root: Path, values: Path) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": [f"joint_{i}" for i in range(6)]},
        "observation.images.cam": {"dtype": "video", "shape": (*HW, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (6,), "names": [f"joint_{i}" for i in range(6)]},
    }
    ds = LeRobotDataset.create(REPO_ID, fps=FPS, features=features, root=root, use_videos=True)
    ds.meta.update_chunk_settings(data_files_size_in_mb=0.001, video_files_size_in_mb=0.01)
    rng = np.random.default_rng(7)
    saved = {"observation.state": [], "action": [], "observation.images.cam": [], "task": [], "episode": []}
    for episode, (length, task) in enumerate([(20, "pick the cube"), (14, "place the cube"), (25, "pick the cube"),
                                              (9, "place the cube")]):
        frames = smooth_frames(length, seed=episode)
        for t in range(length):
            state = rng.normal(size=6).astype(np.float32)
            action = rng.normal(size=6).astype(np.float32)
            ds.add_frame({"observation.state": state, "action": action, "observation.images.cam": frames[t],
                          "task": task})
            for key, value in (("observation.state", state), ("action", action),
                               ("observation.images.cam", frames[t]), ("task", task), ("episode", episode)):
                saved[key].append(value)
        ds.save_episode()
    ds.finalize()
    np.savez(values, **{k: np.array(v) for k, v in saved.items()})
    # what LeRobot's own decoder returns for those frames, to compare our decoding with
    loaded = LeRobotDataset(REPO_ID, root=root, video_backend="pyav")
    decoded = np.stack([(loaded[i]["observation.images.cam"].permute(1, 2, 0).numpy() * 255).round()
                        for i in range(len(loaded))]).astype(np.uint8)
    np.save(values.with_name("lerobot_decoded.npy"), decoded)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return {"episodes": loaded.num_episodes, "frames": len(loaded), "files": files}


# ---- our side -----------------------------------------------------------------------------------------------
def run_lerobot(python: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([python, __file__, "--lerobot-side", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"LeRobot side failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_export(work: Path, python: str, name: str, **export_kwargs) -> dict:
    from lit_imit.data import EpisodeStore
    from lit_imit.data.lerobot_format import export_lerobot

    store = EpisodeStore(work / f"store_{name}")
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("observation.state", "action", "observation.environment_state",
                                             "timestamp", "task", "episode_index", "observation.images.top",
                                             "observation.images.wrist")}
    for episode, (length, instruction) in enumerate([(30, "transfer the cube"), (24, None), (35, "transfer the cube")]):
        arrays = {"observations/qpos": rng.normal(size=(length, 14)).astype(np.float32),
                  "observations/env_state": rng.normal(size=(length, 7)).astype(np.float32),
                  "action": rng.normal(size=(length, 14)).astype(np.float32),
                  "observations/images/top": smooth_frames(length, seed=episode),
                  "observations/images/wrist": smooth_frames(length, seed=episode + 5)}
        store.add(arrays, {"task": "transfer_cube", "instruction": instruction, "source": "teacher"})
        rows["observation.state"] += list(arrays["observations/qpos"])
        rows["observation.environment_state"] += list(arrays["observations/env_state"])
        rows["action"] += list(arrays["action"])
        rows["timestamp"] += list((np.arange(length) / FPS).astype(np.float32))
        rows["task"] += [instruction or "transfer_cube"] * length
        rows["episode_index"] += [episode] * length
        rows["observation.images.top"] += list(arrays["observations/images/top"])
        rows["observation.images.wrist"] += list(arrays["observations/images/wrist"])
    root = export_lerobot(store, work / f"exported_{name}", REPO_ID, fps=FPS, **export_kwargs)
    np.savez(work / f"expected_{name}.npz", **{k: np.array(v) for k, v in rows.items()})
    report = run_lerobot(python, "load", str(root), str(work / f"expected_{name}.npz"))
    report["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return report


def check_import(work: Path, python: str) -> dict:
    from lit_imit.data import EpisodeStore
    from lit_imit.data.lerobot_format import import_lerobot

    root = work / "written_by_lerobot"
    report = run_lerobot(python, "write", str(root), str(work / "values.npz"))
    values = np.load(work / "values.npz")
    decoded_by_lerobot = np.load(work / "lerobot_decoded.npy")
    store = EpisodeStore(work / "imported")
    ids = import_lerobot(root, store)
    state = np.concatenate([store.read(i).arrays["observations/qpos"] for i in ids])
    action = np.concatenate([store.read(i).arrays["action"] for i in ids])
    images = np.concatenate([store.read(i).arrays["observations/images/cam"] for i in ids]).astype(int)
    tasks = [store.info(i)["attrs"]["instruction"] for i in ids]
    report.update({
        "imported_episodes": len(ids), "imported_frames": int(len(state)),
        "state_exact": bool(np.array_equal(state, values["observation.state"])),
        "action_exact": bool(np.array_equal(action, values["action"])),
        "tasks": tasks,
        "image_vs_original_mean_max": [round(float(np.abs(images - values["observation.images.cam"]).mean()), 3),
                                       int(np.abs(images - values["observation.images.cam"]).max())],
        "image_vs_lerobot_decoder_mean_max": [round(float(np.abs(images - decoded_by_lerobot).mean()), 3),
                                              int(np.abs(images - decoded_by_lerobot).max())],
    })
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--lerobot-side"]:
        what, root, path = argv[1:4]
        report = (lerobot_load if what == "load" else lerobot_write)(Path(root), Path(path))
        print(json.dumps(report))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", required=True, help="python of a venv with lerobot==0.4.4")
    parser.add_argument("--workdir", help="where to write the datasets (default: a temporary directory)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="check_lerobot_"))
    work.mkdir(parents=True, exist_ok=True)
    exports = {
        "default (AV1 yuv420p crf 30, one file per camera)": check_export(work, args.lerobot_python, "default"),
        "h264 yuv444p crf 0, a file per episode": check_export(
            work, args.lerobot_python, "small_files", vcodec="h264", pix_fmt="yuv444p", crf=0,
            data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6),
    }
    for name, exported in exports.items():
        print(f"our export [{name}], loaded by LeRobotDataset:")
        for key, value in exported.items():
            print(f"  {key}: {json.dumps(value)}")
    imported = check_import(work, args.lerobot_python)
    print("written by LeRobot, imported by import_lerobot:")
    for key, value in imported.items():
        print(f"  {key}: {json.dumps(value)}")
    ok = all(e["values_exact"] and e["chunk_first_matches"] and e["act_train_step_loss"] > 0
             and max(v[1] for v in e["image_mean_abs_error"].values()) < 3 for e in exports.values())
    ok = (ok
          and imported["state_exact"] and imported["action_exact"]
          and imported["imported_frames"] == imported["frames"]
          and imported["image_vs_original_mean_max"][0] < 3)
    print("OK" if ok else "MISMATCH", f"(datasets under {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
