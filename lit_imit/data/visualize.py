"""Looking at recorded episodes: the camera streams as one video, commanded vs measured joints as a plot.

Used by ``scripts/visualize_episodes.py``; a file without ``observations/qpos`` or ``action`` is an
:class:`lit_imit.data.episodes.EpisodeError` naming the missing key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lit_imit.data.episodes import read_episode

__all__ = ["camera_video", "default_output_dir", "joint_labels", "plot_joints", "visualize"]


def camera_video(images: dict[str, np.ndarray]) -> np.ndarray:
    """Cameras side by side (heights padded to the tallest): (T, H, sum W, 3)."""
    height = max(v.shape[1] for v in images.values())
    padded = [np.pad(v, ((0, 0), (0, height - v.shape[1]), (0, 0), (0, 0))) for v in images.values()]
    return np.concatenate(padded, axis=2)


def joint_labels(task: str | None, dims: int) -> list[str]:
    """Name and unit of each joint dimension when the task table knows them (ALOHA, the myCobot 320),
    else ``joint <j>``."""
    from lit_imit.envs import TASKS  # the task table (importing it registers the tasks, builds no env)

    labels = TASKS[task].joint_labels if task in TASKS else ()
    return list(labels) if len(labels) == dims else [f"joint {j}" for j in range(dims)]


def plot_joints(qpos: np.ndarray, action: np.ndarray, path: Path, title: str,
                labels: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = action.shape[1]
    cols = 7 if dims % 7 == 0 else min(dims, 6)
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), sharex=True, squeeze=False)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= dims:
            ax.axis("off")
            continue
        if j < qpos.shape[1]:
            ax.plot(qpos[:, j], label="qpos (measured)", lw=1.2)
        ax.plot(action[:, j], label="action (commanded)", lw=1.0, ls="--")
        ax.set_title(labels[j] if labels else f"joint {j}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: what the joint plot needs; checked before anything is written
PLOT_KEYS = ("observations/qpos", "action")


def default_output_dir(path: Path) -> Path:
    """``visualizations/<dataset>/`` in the working directory: looking at a dataset never writes into it
    (a store shared with a training run, or another tool's read-only directory)."""
    return Path("visualizations") / path.resolve().parent.name


def visualize(path: Path, out: Path | None = None, fps: int = 50) -> list[Path]:
    """Write ``<name>.mp4`` (when the episode has cameras) and ``<name>_joints.png`` into ``out`` (default:
    :func:`default_output_dir`); returns the paths written."""
    read_episode(path, keys=PLOT_KEYS)  # a missing key is an EpisodeError naming it, before any output
    episode = read_episode(path)
    out = out or default_output_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    images = {k.split("/")[-1]: v for k, v in episode.arrays.items() if k.startswith("observations/images/")}
    if images:
        import imageio.v2 as imageio

        video_path = out / f"{path.stem}.mp4"
        imageio.mimwrite(video_path, camera_video(images), fps=fps, macro_block_size=1)
        written.append(video_path)
    plot_path = out / f"{path.stem}_joints.png"
    title = f"{path.name}: task={episode.attrs.get('task')} success={episode.attrs.get('success')}"
    action = episode.arrays["action"]
    plot_joints(episode.obs("qpos"), action, plot_path, title,
                labels=joint_labels(episode.attrs.get("task"), action.shape[1]))
    written.append(plot_path)
    return written
