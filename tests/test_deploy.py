"""scripts/deploy.py: a tiny ACT checkpoint driven on the MuJoCo twin and on the emulated myCobot 320.

Nothing is trained: the checkpoint holds random weights with filled normalisation statistics, which is
enough to check loading, preprocessing, the control loop, the safety clamps and the episode logs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_imit.data import EpisodeStore
from lit_imit.envs.mycobot import JOINT_LIMITS
from lit_imit.modules.act import ACTModule
from lit_imit.tools import deploy

TINY = dict(cameras=["top"], state_dim=7, action_dim=7, chunk_size=10, n_action_steps=10, dim_model=32, n_heads=2,
            dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=4,
            dropout=0.0, n_uncertainty_samples=2, pretrained_backbone=None)
MAX_DELTA = np.deg2rad(5.0)


def tiny_act(seed: int = 0, action_std: float = 1.0) -> ACTModule:
    """Random tiny ACT whose actions are wild (mean 0, std ``action_std`` rad): the clamps must act."""
    torch.manual_seed(seed)
    module = ACTModule(**TINY)
    stats = {key: {"mean": np.zeros(7), "std": np.full(7, std), "min": -np.ones(7), "max": np.ones(7)}
             for key, std in (("qpos", 1.0), ("action", action_std))}
    module.load_stats(stats)
    return module


def save_checkpoint(module: ACTModule, path) -> None:
    """What Lightning writes for inference purposes: state_dict + hyper_parameters (plain types)."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 0}, path)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "tiny.ckpt"
    save_checkpoint(tiny_act(), path)
    return path


def check_clamped(episode) -> None:
    """Executed joint targets stay in the limits and within 5 degrees of the measured joints."""
    qpos, action = episode.arrays["observations/qpos"], episode.arrays["action"]
    assert np.all(np.abs(action[:, :6]) <= JOINT_LIMITS + 1e-4)
    assert np.all(np.abs(action[:, :6] - qpos[:, :6]) <= MAX_DELTA + 2e-4), np.abs(action[:, :6] - qpos[:, :6]).max()
    assert np.all((action[:, 6] >= 0) & (action[:, 6] <= 1))


# ---------------------------------------------------------------------------------------------- loading
def test_load_policy_round_trip_and_temporal_ensemble_override(ckpt):
    original = tiny_act()
    module = deploy.load_policy(ckpt)
    assert isinstance(module, ACTModule) and not module.training
    for key, value in original.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value)
    te = deploy.load_policy(ckpt, overrides={"temporal_ensemble_coeff": 0.01, "n_action_steps": 1})
    assert te.hparams.temporal_ensemble_coeff == 0.01 and te._execution.ensembler is not None
    with pytest.raises(deploy.DeployError, match="no hyper-parameter 'nonsense'"):
        deploy.load_policy(ckpt, overrides={"nonsense": 1})


@pytest.mark.slow
def test_load_policy_reads_a_trainer_checkpoint(tmp_path):
    """A checkpoint written by pl.Trainer (optimizer states, loops...) loads with weights_only=True."""
    import lightning.pytorch as pl

    from lit_imit.benchmarking import act_batch

    module = tiny_act()
    batch = act_batch(2, ["top"], (32, 32), 7, 7, 10)
    data = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    loaded = deploy.load_policy(tmp_path / "trained.ckpt")
    torch.testing.assert_close(loaded.normalizer.stat("action", "std"), module.normalizer.stat("action", "std"))


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(deploy.DeployError, match="does not exist"):
        deploy.load_policy(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(deploy.DeployError, match="cannot read checkpoint"):
        deploy.load_policy(tmp_path / "junk.ckpt")
    module = ACTModule(**TINY)  # never given dataset statistics
    save_checkpoint(module, tmp_path / "nostats.ckpt")
    with pytest.raises(deploy.DeployError, match="no normalisation statistics"):
        deploy.load_policy(tmp_path / "nostats.ckpt")


# ---------------------------------------------------------------------------------------------- images
def test_preprocess_masks_crops_and_resizes_back():
    frame = np.full((40, 60, 3), 200, np.uint8)
    frame[:, :30] = 50
    mask = np.ones((40, 60), bool)
    mask[:10] = False
    pre = deploy.ImagePreprocess(crop=(0, 0, 20, 30), mask=mask)
    out = pre.image(frame)
    assert out.shape == (40, 60, 3)  # back to the frame size
    assert out[:15].max() == 0 and abs(int(out[-1, -1, 0]) - 50) <= 1  # masked rows black, crop from the left half
    assert deploy.ImagePreprocess(size=(24, 32)).image(frame).shape == (24, 32, 3)
    with pytest.raises(deploy.DeployError, match="leaves the 40x60"):
        deploy.ImagePreprocess(crop=(30, 0, 20, 10)).image(frame)
    with pytest.raises(deploy.DeployError, match="does not fit"):
        deploy.ImagePreprocess(mask=np.ones((10, 10), bool)).image(frame)
    with pytest.raises(deploy.DeployError, match="y0,x0,h,w"):
        deploy.parse_crop("1,2,3")


# ---------------------------------------------------------------------------------------------- twin
def test_deploy_on_twin_logs_clamped_steps(ckpt, tmp_path, capsys):
    out = tmp_path / "logs"
    rc = deploy.main(["--ckpt", str(ckpt), "--robot", "twin", "--steps", "20", "--out", str(out),
                      "--twin-size", "48x64", "--crop", "8,8,32,48", "--temporal-ensemble", "0.01", "--device", "cpu",
                      "--precision", "bf16-mixed"])
    assert rc == 0
    assert "twin success rate 0.000 (0/1)" in capsys.readouterr().out
    store = EpisodeStore(out)
    assert store.ids() == [0] and store.verify() == []
    episode = store.read(0)
    assert len(episode) == 20
    assert episode.arrays["observations/images/top"].shape == (20, 48, 64, 3)
    assert episode.attrs["source"] == "novice" and episode.attrs["success"] is False
    assert episode.attrs["crop"] == [8, 8, 32, 48] and episode.attrs["temporal_ensemble"] == 0.01
    assert episode.attrs["precision"] == "bf16-mixed"
    check_clamped(episode)
    moved = np.abs(np.diff(episode.arrays["observations/qpos"][:, :6], axis=0)).max()
    assert moved > np.deg2rad(1.0), "the wild policy should move the arm"


# ---------------------------------------------------------------------------------------------- robot
class PatternCamera:
    """A duck-typed camera serving a fixed RGB frame."""

    def __init__(self, h=48, w=64):
        self.frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)

    def connect(self):
        pass

    def read(self):
        return self.frame

    def disconnect(self):
        pass


FAST = dict(reply_timeout_s=0.05, min_command_interval_s=0.0, home_speed=100, home_timeout_s=3.0)


def test_deploy_on_emulated_robot_respects_the_clamps(ckpt, tmp_path):
    pytest.importorskip("pymycobot")
    from lit_imit.robots import MyCobot320Robot
    from lit_imit.robots.emulator import MyCobot320Emulator

    module = deploy.load_policy(ckpt)
    runner = deploy.PolicyRunner(module, deploy.ImagePreprocess(), ["qpos", "images/top"])
    store = EpisodeStore(tmp_path / "robot")
    with MyCobot320Emulator(max_joint_speed_deg_s=400.0) as emu:
        with MyCobot320Robot(emu.port, fps=20, cameras={"top": PatternCamera()}, **FAST) as robot:
            result = deploy.run_robot(runner, robot, store, steps=20, fps=20, policy_timeout_s=2.0,
                                      attrs={"ckpt": str(ckpt)})
        sent = np.asarray(emu.sent_angles())
        assert emu.limit_violations == []
    assert result["error"] is None and result["aborted"] is None and result["steps"] == 20
    limits = np.rad2deg(JOINT_LIMITS)
    assert np.all(np.abs(sent) <= limits + 1e-6)
    episode = store.read(result["episode_id"])
    assert len(episode) == 20 and episode.attrs["robot"] == "mycobot320" and episode.attrs["source"] == "novice"
    assert episode.arrays["observations/images/top"].shape == (20, 48, 64, 3)
    check_clamped(episode)


def test_deploy_on_robot_writes_the_steps_before_a_fault(ckpt, tmp_path):
    pytest.importorskip("pymycobot")
    from lit_imit.robots import MyCobot320Robot
    from lit_imit.robots.emulator import MyCobot320Emulator

    runner = deploy.PolicyRunner(deploy.load_policy(ckpt), deploy.ImagePreprocess(), ["qpos", "images/top"])
    calls = {"n": 0}
    emulator = MyCobot320Emulator()

    def policy(obs):
        calls["n"] += 1
        if calls["n"] == 8:  # the controller goes silent mid-episode
            emulator.inject("silent", count=-1)
        return runner(obs)

    store = EpisodeStore(tmp_path / "robot")
    with emulator:
        with MyCobot320Robot(emulator.port, fps=20, cameras={"top": PatternCamera()}, **FAST) as robot:
            result = deploy.run_robot(_Callable(policy, runner), robot, store, steps=50, fps=20, policy_timeout_s=2.0)
    assert result["error"] is not None and "communication_error" in result["aborted"]
    episode = store.read(result["episode_id"])
    assert 1 <= len(episode) < 50
    assert episode.attrs["success"] is False and "RobotCommunicationError" in episode.attrs["aborted"]


def test_deploy_cli_refuses_a_robot_without_the_policy_cameras(ckpt, tmp_path, capsys):
    """The warm-up observation is checked before the first action: a missing camera moves nothing."""
    pytest.importorskip("pymycobot")
    from lit_imit.robots.emulator import MyCobot320Emulator

    with MyCobot320Emulator() as emu:
        rc = deploy.main(["--ckpt", str(ckpt), "--robot", "mycobot320", "--port", emu.port, "--home", "none",
                          "--steps", "5", "--out", str(tmp_path / "logs"), "--device", "cpu"])
        assert emu.sent_angles() == [] and emu.commands("stop")
    assert rc == 2 and "images/top" in capsys.readouterr().err
    assert EpisodeStore(tmp_path / "logs").ids() == []


class _Callable:
    """A runner stand-in: ``fn`` decides each action, ``runner`` provides reset/last_input."""

    def __init__(self, fn, runner):
        self.fn, self.runner = fn, runner

    def __call__(self, obs):
        return self.fn(obs)

    def reset(self):
        self.runner.reset()

    @property
    def last_input(self):
        return self.runner.last_input


# ---------------------------------------------------------------------------------------------- robot recording
# (lit_imit/robots/recording.py and scripts/record_demos.py --robot: recording demonstrations on the real arm)
def _robot(emu, **kw):
    from lit_imit.robots import MyCobot320Robot

    return MyCobot320Robot(emu.port, **{**FAST, "fps": 50, "home_deg": None, **kw})


def test_waypoint_files_are_validated(tmp_path):
    from lit_imit.robots.recording import WaypointError, load_waypoints, parse_waypoints, plan_waypoints

    path = tmp_path / "wp.yaml"
    path.write_text("units: deg\nwaypoints:\n"
                    "  - {joints: [10, 0, 0, 0, 0, 0], gripper: closed, duration: 1.0, hold: 0.5}\n")
    (wp,) = load_waypoints(path)
    assert wp.joints_deg[0] == 10 and wp.gripper == 0.0 and wp.hold_s == 0.5
    plan = plan_waypoints([wp], np.zeros(7, np.float32), fps=10)
    assert plan.shape == (15, 7)  # 10 steps of motion + 5 of hold
    np.testing.assert_allclose(np.rad2deg(plan[4, 0]), 5.0, atol=1e-4)  # linear in joint space
    np.testing.assert_allclose(plan[-6:, 0], np.deg2rad(10.0), atol=1e-6)
    for bad, message in [({"waypoints": []}, "non-empty"),
                         ({"waypoints": [{"joints": [0, 0, 0, 0, 0], "duration": 1}]}, "six finite"),
                         ({"waypoints": [{"joints": [0, 0, 170, 0, 0, 0], "duration": 1}]}, "J3 = 170"),
                         ({"waypoints": [{"joints": [0] * 6, "gripper": 2, "duration": 1}]}, "gripper"),
                         ({"waypoints": [{"joints": [0] * 6, "duration": 0}]}, "duration"),
                         ({"waypoints": [{"joints": [0] * 6, "duration": 1, "speed": 3}]}, "unknown keys")]:
        with pytest.raises(WaypointError, match=message):
            parse_waypoints(bad)
    with pytest.raises(WaypointError, match="J1 would move 10.00 deg per step"):
        plan_waypoints([wp], np.zeros(7), fps=1, max_delta_deg=5.0)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(WaypointError, match="broken.json"):
        load_waypoints(tmp_path / "broken.json")


def test_waypoint_recording_on_the_emulator(tmp_path):
    pytest.importorskip("pymycobot")
    from lit_imit.robots.emulator import MyCobot320Emulator
    from lit_imit.robots.recording import parse_waypoints, record_waypoints

    waypoints = parse_waypoints({"waypoints": [
        {"joints": [10, -5, 20, 0, 5, 0], "gripper": "open", "duration": 0.3},
        {"joints": [10, -5, 20, 0, 5, 0], "gripper": "closed", "duration": 0.2, "hold": 0.1}]})
    store = EpisodeStore(tmp_path / "demos")
    with MyCobot320Emulator(max_joint_speed_deg_s=400.0) as emu:
        with _robot(emu, cameras={"top": PatternCamera()}) as robot:
            result = record_waypoints(robot, waypoints, store, image_size=(24, 32))
        assert emu.limit_violations == []
        np.testing.assert_allclose(emu.joints_deg, [10, -5, 20, 0, 5, 0], atol=0.05)
        assert emu.commands("set_gripper_value")[-1].data[0] == 0  # closed at the end
    assert result.success and result.aborted is None and result.steps == 30
    episode = store.read(result.episode_id)
    assert episode.attrs["source"] == "robot" and episode.attrs["mode"] == "waypoints" and episode.attrs["sim"] is False
    assert episode.arrays["observations/images/top"].shape == (30, 24, 32, 3)
    assert episode.arrays["action"].shape == (30, 7) and episode.arrays["action"][-1, 6] == 0.0
    assert np.all(np.diff(episode.arrays["observations/timestamp"]) > 0)
    check_clamped(episode)


def test_waypoint_recording_keeps_the_steps_before_a_silent_robot(tmp_path):
    pytest.importorskip("pymycobot")
    import threading

    from lit_imit.robots.emulator import MyCobot320Emulator
    from lit_imit.robots.recording import parse_waypoints, record_waypoints

    waypoints = parse_waypoints({"waypoints": [{"joints": [20, 0, 0, 0, 0, 0], "duration": 2.0}]})
    store = EpisodeStore(tmp_path / "demos")
    with MyCobot320Emulator() as emu:
        with _robot(emu) as robot:
            threading.Timer(0.4, lambda: emu.inject("silent", count=-1)).start()
            result = record_waypoints(robot, waypoints, store)
    assert result.error is not None and not result.success
    episode = store.read(result.episode_id)
    assert 5 <= len(episode) < 100 and len(episode) == result.steps
    assert episode.attrs["success"] is False and "communication_error" in episode.attrs["aborted"]


def test_handguided_recording_releases_samples_and_locks(tmp_path):
    pytest.importorskip("pymycobot")
    import threading

    from lit_imit.robots.emulator import MyCobot320Emulator
    from lit_imit.robots.recording import record_handguided

    store = EpisodeStore(tmp_path / "demos")
    stop = threading.Event()
    with MyCobot320Emulator() as emu:
        with _robot(emu) as robot:
            samples = {"n": 0}

            def gripper():  # the person moves the arm by hand and closes the gripper halfway through
                samples["n"] += 1
                assert emu.servos_released
                emu.set_joints([samples["n"] * 1.0, 0, 0, 0, 0, 0])
                if samples["n"] == 20:
                    stop.set()
                return 0.0 if samples["n"] > 10 else None

            result = record_handguided(robot, store, fps=50, stop=stop, gripper_fn=gripper)
        assert not emu.servos_released and emu.commands("release_all_servos")
    assert result.success and result.aborted is None and result.steps == 19
    episode = store.read(result.episode_id)
    qpos, action = episode.arrays["observations/qpos"], episode.arrays["action"]
    np.testing.assert_allclose(action[:-1], qpos[1:])  # the action at t is the measured pose at t+1
    np.testing.assert_allclose(np.rad2deg(qpos[:, 0]), np.arange(1, 20), atol=0.01)
    assert qpos[0, 6] == 1.0 and action[-1, 6] == 0.0
    assert episode.attrs["mode"] == "handguide"


def test_handguided_recording_survives_a_pulled_cable(tmp_path):
    pytest.importorskip("pymycobot")
    from lit_imit.robots.emulator import MyCobot320Emulator
    from lit_imit.robots.recording import record_handguided

    store = EpisodeStore(tmp_path / "demos")
    with MyCobot320Emulator() as emu:
        robot = _robot(emu)
        robot.connect()
        calls = {"n": 0}

        def gripper():
            calls["n"] += 1
            if calls["n"] == 12:
                emu.disconnect()
            return None

        result = record_handguided(robot, store, fps=50, max_steps=100, gripper_fn=gripper)
        robot.disconnect()
    assert result.error is not None and "RobotCommunicationError" in result.aborted
    episode = store.read(result.episode_id)
    assert len(episode) == 10 and episode.attrs["success"] is False and episode.attrs["aborted"]


def test_record_demos_cli_on_the_emulated_robot(tmp_path, capsys):
    pytest.importorskip("pymycobot")
    from lit_imit.robots.emulator import MyCobot320Emulator
    from lit_imit.tools import record_demos

    waypoints = tmp_path / "wp.json"
    waypoints.write_text('{"waypoints": [{"joints": [22, 4, -90, 4, 90, 22], "gripper": 0.5, "duration": 0.4}]}')
    out = tmp_path / "demos"
    with MyCobot320Emulator(max_joint_speed_deg_s=400.0) as emu:
        rc = record_demos.main(["--robot", "mycobot320", "--port", emu.port, "--mode", "waypoints", "--waypoints",
                                str(waypoints), "--episodes", "2", "--fps", "25", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    store = EpisodeStore(out)
    assert store.ids() == [0, 1] and store.verify() == []
    assert all(store.info(i)["attrs"]["source"] == "robot" for i in store.ids())
    assert record_demos.main(["--robot", "mycobot320", "--mode", "waypoints", "--out", str(out)]) == 2
    assert "needs --waypoints" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- damaged checkpoints
def _damaged_checkpoints(tmp_path, ckpt) -> dict:
    import datetime

    data = ckpt.read_bytes()
    files = {"truncated": data[: len(data) // 2], "random": np.random.default_rng(0).bytes(4096), "empty": b""}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.ckpt"
        paths[name].write_bytes(content)
    paths["objects"] = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "saved": datetime.date(2024, 1, 1)}, paths["objects"])
    return paths


def test_damaged_checkpoints_get_one_line_naming_file_and_cause(ckpt, tmp_path, capsys):
    causes = {"truncated": "truncated or corrupt", "random": "not a PyTorch checkpoint", "empty": "empty (0 bytes)",
              "objects": "holds a Python object (datetime.date)"}
    for name, path in _damaged_checkpoints(tmp_path, ckpt).items():
        with pytest.raises(deploy.DeployError) as info:
            deploy.load_policy(path)
        message = str(info.value)
        assert message.startswith(f"cannot read checkpoint {path}: ") and causes[name] in message, message
        assert "\n" not in message and "weights_only=False" not in message
        assert deploy.main(["--ckpt", str(path), "--robot", "twin", "--out", str(tmp_path / "logs")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and "weights_only=False" not in err, err


# ---------------------------------------------------------------------------------------------- stop signals
def _wait_for(condition, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _check_stopped_and_logged(emu_frames: list[str], sent: list, episode) -> None:
    """The arm got a stop after its last move, and the log holds every command sent, in order."""
    last_move = len(emu_frames) - 1 - emu_frames[::-1].index("send_angles")
    assert "stop" in emu_frames[last_move:], "the arm was not told to stop"
    assert len(episode) == len(sent) >= 3, (len(episode), len(sent))
    np.testing.assert_allclose(np.rad2deg(episode.arrays["action"][:, :6]), sent, atol=1e-3)
    assert episode.attrs["success"] is False and "interrupted" in episode.attrs["aborted"]


def test_ctrl_c_while_a_command_is_on_the_wire_still_logs_it(tmp_path):
    """SIGINT lands while send_angles waits for the controller's reply: the robot got the command, so the
    episode must have the step (it used to lose it)."""
    pytest.importorskip("pymycobot")
    import os
    import signal
    import threading

    from lit_imit.robots import MyCobot320Robot, run_loop
    from lit_imit.robots.emulator import MyCobot320Emulator
    from lit_imit.robots.recording import RobotEpisodeRecorder

    store = EpisodeStore(tmp_path / "demos")
    with MyCobot320Emulator(reply_delay_s=0.1) as emu:
        with MyCobot320Robot(emu.port, fps=10, home_deg=None, min_command_interval_s=0.0) as robot:
            recorder = RobotEpisodeRecorder(store, {"source": "robot"})

            def interrupt_mid_command():  # the 3rd move was received; its reply is 0.1 s away
                _wait_for(lambda: len(emu.sent_angles()) >= 3, 60, "three moves")
                os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=interrupt_mid_command, daemon=True).start()
            stats = run_loop(robot, lambda obs: obs["qpos"] + 0.01, 500, on_step=recorder.on_step, fps=10,
                             policy_timeout_s=None)
            episode_id = recorder.save(False, aborted=stats.stop_reason)
        frames, sent = [f.name for f in emu.received], emu.sent_angles()
    assert stats.stop_reason == "interrupted"
    _check_stopped_and_logged(frames, sent, store.read(episode_id))


def _signal_mid_run(emu, argv: list[str], signum: int) -> tuple[int, str]:
    """Start a script on the emulated robot, send ``signum`` while its 3rd move is on the wire."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    # the repo root on the path for ``tests.deploy_policy`` (the scripts themselves need only the package)
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MUJOCO_GL": "egl", "PYTHONPATH": python_path}
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: len(emu.sent_angles()) >= 3 or proc.poll() is not None, 600, "three moves")
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_deploy_on_sigterm_or_sighup_stops_the_arm_and_writes_every_step(tmp_path, signame):
    pytest.importorskip("pymycobot")
    import signal

    from lit_imit.robots.emulator import MyCobot320Emulator

    from tests.deploy_policy import save_nudge_checkpoint

    save_nudge_checkpoint(tmp_path / "nudge.ckpt")  # state-only: the emulated robot has no camera
    out_dir = tmp_path / "logs"
    with MyCobot320Emulator(max_joint_speed_deg_s=400.0, reply_delay_s=0.05) as emu:
        rc, out = _signal_mid_run(emu, ["scripts/deploy.py", "--ckpt", str(tmp_path / "nudge.ckpt"), "--policy-class",
                                        "tests.deploy_policy:NudgePolicy", "--robot", "mycobot320", "--port", emu.port,
                                        "--home", "none", "--steps", "2000", "--fps", "10", "--out", str(out_dir),
                                        "--device", "cpu"], getattr(signal, signame))
        frames, sent = [f.name for f in emu.received], emu.sent_angles()
    assert rc == 130, out
    store = EpisodeStore(out_dir)
    (episode_id,) = store.ids()
    _check_stopped_and_logged(frames, sent, store.read(episode_id))


def test_robot_recording_on_sigterm_stops_the_arm_and_writes_every_step(tmp_path):
    pytest.importorskip("pymycobot")
    import signal

    from lit_imit.robots.emulator import MyCobot320Emulator

    waypoints = tmp_path / "wp.json"
    waypoints.write_text('{"waypoints": [{"joints": [40, 10, -30, 0, 20, 0], "duration": 60}]}')
    out_dir = tmp_path / "demos"
    with MyCobot320Emulator(max_joint_speed_deg_s=400.0, reply_delay_s=0.05) as emu:
        rc, out = _signal_mid_run(emu, ["scripts/record_demos.py", "--robot", "mycobot320", "--port", emu.port,
                                        "--mode", "waypoints", "--waypoints", str(waypoints), "--home", "none",
                                        "--fps", "10", "--out", str(out_dir)], signal.SIGTERM)
        frames, sent = [f.name for f in emu.received], emu.sent_angles()
    assert rc == 130, out
    store = EpisodeStore(out_dir)
    (episode_id,) = store.ids()
    _check_stopped_and_logged(frames, sent, store.read(episode_id))


def test_hand_keys_toggle_the_gripper_and_q_ends_the_demonstration():
    import io
    import time

    from lit_imit.robots.session import Console, HandKeys

    console = Console(stream=io.StringIO("\n\nq\n"))
    keys = HandKeys(console)
    deadline = time.monotonic() + 5.0
    while console.lines.qsize() < 4 and time.monotonic() < deadline:  # three lines and the end of input
        time.sleep(0.01)
    assert keys() == 1.0 and keys.stop.is_set()  # Enter closed, Enter opened, then q (and end of input)
    with pytest.raises(EOFError):
        console.ask("more? ")
