"""record_demos.py and visualize_episodes.py as a user runs them."""

from __future__ import annotations

import subprocess
import sys

import h5py
import pytest

from lit_imit.data import EpisodeStore, write_episode
from tests.conftest import ROOT, make_episode_arrays


def run_script(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_visualize_writes_video_and_joint_plot(tmp_path):
    path = tmp_path / "episode_000000.hdf5"
    write_episode(path, make_episode_arrays(20, cameras=("top", "angle")), {"task": "transfer_cube"})
    out = run_script("scripts/visualize_episodes.py", str(path), "--out", str(tmp_path / "viz"))
    assert out.returncode == 0, out.stderr
    video, plot = tmp_path / "viz" / "episode_000000.mp4", tmp_path / "viz" / "episode_000000_joints.png"
    assert video.stat().st_size > 1000 and plot.stat().st_size > 10000
    import imageio.v2 as imageio

    frames = imageio.mimread(video)
    assert len(frames) == 20 and frames[0].shape == (24, 64, 3)  # two 24x32 cameras side by side


def test_visualize_writes_outside_the_dataset_unless_told(tmp_path, monkeypatch):
    from lit_imit.data.visualize import visualize

    data = tmp_path / "transfer_cube_demos"
    data.mkdir()
    path = data / "episode_000000.hdf5"
    write_episode(path, make_episode_arrays(10), {"task": "transfer_cube"})
    before = sorted(p.name for p in data.iterdir())
    monkeypatch.chdir(tmp_path)
    written = visualize(path)
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written into the dataset
    assert written and all(p.parent.resolve() == tmp_path / "visualizations" / "transfer_cube_demos"
                           for p in written)


def test_joint_panels_are_named_with_units_where_the_task_says():
    from lit_imit.data.visualize import joint_labels

    aloha = joint_labels("transfer_cube", 14)
    assert aloha[0] == "left waist (rad)" and aloha[6] == "left gripper (0 closed, 1 open)"
    assert aloha[13] == "right gripper (0 closed, 1 open)"
    assert joint_labels("mycobot_move_cube", 7)[0] == "J1 (rad)"
    assert joint_labels("transfer_cube", 3) == ["joint 0", "joint 1", "joint 2"]  # layout differs: no guess
    assert joint_labels(None, 2) == ["joint 0", "joint 1"]


def test_visualize_names_a_corrupt_file(tmp_path, capsys):
    from lit_imit.tools import visualize_episodes

    bad = tmp_path / "episode_000001.hdf5"
    bad.write_bytes(b"garbage" * 100)
    assert visualize_episodes.main([str(bad)]) == 1
    assert "episode_000001.hdf5" in capsys.readouterr().err


def test_record_demos_rejects_unknown_task_and_bad_size(tmp_path, capsys):
    from lit_imit.tools import record_demos

    assert record_demos.main(["--task", "transfer-cubes", "--episodes", "1", "--out", str(tmp_path)]) == 2
    assert "unknown task 'transfer-cubes'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        record_demos.main(["--task", "transfer_cube", "--episodes", "1", "--out", str(tmp_path), "--image-size", "big"])
    assert "240x320" in capsys.readouterr().err


@pytest.mark.parametrize("flag,expected", [(["--no-fast-render"], {"fast_render": False}),
                                           (["--fast-render"], {"fast_render": True}), ([], {})])
def test_record_demos_fast_render_flag_reaches_the_env(tmp_path, monkeypatch, flag, expected):
    """--no-fast-render records the ALOHA images with the full look (as the paper configs roll out);
    without the flag nothing is passed and the env keeps its default."""
    from lit_imit.tools import record_demos

    calls = []

    def fake_record(*args, **kwargs):
        calls.append(kwargs["env_kwargs"])
        raise KeyboardInterrupt  # stop right there: only the arguments matter

    monkeypatch.setattr(record_demos, "record_teacher_episodes", fake_record)
    argv = ["--task", "transfer_cube", "--episodes", "1", "--out", str(tmp_path / "store"), *flag]
    assert record_demos.main(argv) == 130
    assert calls == [expected]


@pytest.mark.slow
def test_record_demos_appends_new_ids_with_cameras_and_act_layout(tmp_path):
    out_dir = tmp_path / "store"
    existing = EpisodeStore(out_dir)
    existing.add(make_episode_arrays(5, hw=(48, 64)), {"task": "transfer_cube", "source": "teacher", "seed": 0})
    out = run_script("scripts/record_demos.py", "--task", "transfer_cube", "--episodes", "1", "--out", str(out_dir),
                     "--cameras", "top,angle", "--image-size", "48x64", "--seed", "0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "teacher success rate" in out.stdout
    store = EpisodeStore(out_dir)
    assert store.ids() == [0, 1] and store.verify() == []
    with h5py.File(store.path(1)) as f:
        assert f["observations/qpos"].shape == (400, 14) and f["action"].shape == (400, 14)
        assert f["observations/images/top"].shape == (400, 48, 64, 3)
        assert f["observations/images/angle"].shape == (400, 48, 64, 3)
        assert f.attrs["success"] and f.attrs["source"] == "teacher" and f.attrs["seed"] == 1
        assert f.attrs["task"] == "transfer_cube"


def test_lerobot_benchmark_explains_where_it_runs(capsys, monkeypatch):
    """The LeRobot comparison runs in LeRobot's own venv; without lerobot it says so instead of a traceback."""
    import importlib.util
    import sys

    if importlib.util.find_spec("lerobot") is not None:
        pytest.skip("lerobot is installed here")
    from scripts.benchmark_lerobot import main

    monkeypatch.setattr(sys, "argv", ["benchmark_lerobot.py", "--steps", "1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "lerobot is not installed" in capsys.readouterr().err
