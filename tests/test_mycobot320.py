"""The real-robot adapter against the firmware emulator on a pseudo-terminal (real pymycobot, real pyserial).

Timing: the robots here use ``reply_timeout_s=0.05`` so an unanswered command costs ~0.15 s (pymycobot
tries three times) instead of pymycobot's 1.5 s.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

pytest.importorskip("pymycobot")
pytest.importorskip("serial")

from lit_imit.robots import (  # noqa: E402
    CameraConfig,
    CameraError,
    MyCobot320Robot,
    OpenCVCamera,
    PolicyTimeoutError,
    RateLimiter,
    RobotCommunicationError,
    RobotError,
    UnsafeActionError,
    run_loop,
)
from lit_imit.robots.emulator import MyCobot320Emulator, encode_frame  # noqa: E402

FAST = dict(reply_timeout_s=0.05, min_command_interval_s=0.0, home_speed=100, home_timeout_s=3.0)


@pytest.fixture
def emu():
    with MyCobot320Emulator(joints_deg=[10.0, -5.0, 3.0, 0.0, 2.0, -4.0]) as e:
        yield e


def make_robot(emu, **kw) -> MyCobot320Robot:
    return MyCobot320Robot(emu.port, **{**FAST, **kw})


class FrameCamera:
    """A camera object (the duck-typed camera interface) serving a fixed RGB pattern."""

    def __init__(self, h=48, w=64):
        self.frame = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3).astype(np.uint8)
        self.connected = False

    def connect(self):
        self.connected = True

    def read(self):
        return self.frame

    def disconnect(self):
        self.connected = False


# ---------------------------------------------------------------------------------------------- connect
def test_connect_powers_on_sets_fresh_mode_and_homes(emu):
    assert not emu.powered and emu.fresh_mode == 0
    home = [5.0, 10.0, -10.0, 0.0, 0.0, 0.0]
    with make_robot(emu, home_deg=home) as robot:
        assert robot.is_connected
        assert emu.powered and emu.fresh_mode == 1
        np.testing.assert_allclose(emu.joints_deg, home, atol=robot.home_tolerance_deg)
        assert emu.gripper_target == 100  # gripper commanded open, so its tracked value is known
        names = [f.name for f in emu.received]
        assert names.index("power_on") < names.index("set_fresh_mode") < names.index("send_angles")
        send = emu.commands("send_angles")[0]
        assert send.data[12] == robot.home_speed  # the speed byte follows the 12 angle bytes
    assert not robot.is_connected
    assert emu.commands("stop"), "disconnect should stop the arm"
    assert not emu.servos_released and emu.powered, "disconnect must not release the servos or cut power"
    assert emu.limit_violations == []


def test_connect_clears_a_controller_error(emu):
    emu.set_error(3)
    with make_robot(emu):
        assert emu.error_code == 0
        assert emu.commands("clear_error_information")


def test_connect_refuses_a_persistent_controller_error():
    with MyCobot320Emulator(error_code=17, sticky_error=True) as emu:
        with pytest.raises(RobotError, match="collision"):
            make_robot(emu).connect()
        assert emu.commands("send_angles") == [], "must not move with an error pending"


def test_connect_to_a_silent_controller_fails_fast_and_clearly(emu):
    emu.inject("silent", count=-1)
    robot = make_robot(emu)
    t0 = time.monotonic()
    with pytest.raises(RobotCommunicationError, match="did not answer power_on"):
        robot.connect()
    assert time.monotonic() - t0 < 2.0
    assert not robot.is_connected


def test_missing_port_names_the_port():
    with pytest.raises(RobotCommunicationError, match="/dev/does-not-exist"):
        MyCobot320Robot("/dev/does-not-exist", **FAST).connect()


def test_homing_timeout_stops_the_arm():
    # 2 deg/s at speed 100: 30 degrees cannot be covered in 0.3 s
    with MyCobot320Emulator(joints_deg=[30.0, 0, 0, 0, 0, 0], max_joint_speed_deg_s=2.0) as emu:
        with pytest.raises(RobotError, match="did not reach home"):
            make_robot(emu, home_timeout_s=0.3).connect()
        assert emu.commands("stop")


def test_not_connected_is_a_clear_error(emu):
    robot = make_robot(emu)
    with pytest.raises(RobotError, match="not connected"):
        robot.get_observation()
    with pytest.raises(RobotError, match="not connected"):
        robot.send_action(np.zeros(7))


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="exceed the hardware limits"):
        MyCobot320Robot("x", soft_joint_limits_deg=[(-170, 170)] + [(-90, 90)] * 5)
    with pytest.raises(ValueError, match="arm_speed"):
        MyCobot320Robot("x", arm_speed=0)
    with pytest.raises(ValueError, match="home_deg"):
        MyCobot320Robot("x", home_deg=[0, 0, 0, 0, 0, 179], soft_joint_limits_deg=[(-90, 90)] * 6)
    with pytest.raises(ValueError, match="max_delta_deg"):
        MyCobot320Robot("x", max_delta_deg=[1, 2, 3])
    with pytest.raises(ValueError, match="camera name"):
        MyCobot320Robot("x", cameras={"a/b": 0})


# ---------------------------------------------------------------------------------------------- observe
def test_observation_matches_emulator_state(emu):
    cam = FrameCamera()
    with make_robot(emu, cameras={"wrist": cam}) as robot:
        assert cam.connected
        pose = [12.34, -56.78, 90.12, -33.3, 1.5, 170.25]
        emu.set_joints(pose)
        obs = robot.get_observation()
        assert set(obs) == {"qpos", "images/wrist"}
        assert obs["qpos"].dtype == np.float32 and obs["qpos"].shape == (7,)
        np.testing.assert_allclose(np.rad2deg(obs["qpos"][:6]), pose, atol=0.006)
        assert obs["qpos"][6] == pytest.approx(1.0)  # open
        assert obs["images/wrist"].dtype == np.uint8 and obs["images/wrist"].shape == (48, 64, 3)
        assert robot.observation_features == {"qpos": (7,), "images/wrist": (None, None, 3)}
    assert not cam.connected


# ---------------------------------------------------------------------------------------------- act
def test_send_action_clamps_to_max_delta_and_soft_limits(emu):
    with make_robot(emu, max_delta_deg=5.0) as robot:
        far = np.array([3.0, -0.5, 0.0, 0.0, 0.0, 0.01, 1.0])  # J1 = 171.9 deg > 168
        sent = robot.send_action(far)
        wire = emu.sent_angles()[-1]
        np.testing.assert_allclose(wire, [5.0, -5.0, 0.0, 0.0, 0.0, np.rad2deg(0.01)], atol=0.006)
        np.testing.assert_allclose(np.rad2deg(sent[:6]), wire, atol=1e-5)  # exactly the wire value (float32)
        assert robot.stats["delta_clamped"] == 1 and robot.stats["limit_clamped"] == 1

        emu.set_joints([166.0, 0, 0, 0, 0, 0])
        time.sleep(robot.measurement_max_age_s + 0.01)  # force a fresh reading for the step cap
        sent = robot.send_action(far)
        assert emu.sent_angles()[-1][0] == 168.0  # limit, not 166 + 5
        assert np.rad2deg(sent[0]) == pytest.approx(168.0)
    assert emu.limit_violations == []


def test_step_cap_uses_the_measured_not_the_commanded_position(emu):
    # the arm is too slow to follow: commands must not run away from where it actually is
    with MyCobot320Emulator(max_joint_speed_deg_s=1.0) as slow:
        with make_robot(slow, max_delta_deg=2.0, home_deg=None) as robot:
            for _ in range(5):
                obs = robot.get_observation()
                robot.send_action(np.r_[np.deg2rad([30.0, 0, 0, 0, 0, 0]), 1.0])
            measured = slow.joints_deg[0]
            assert slow.sent_angles()[-1][0] <= measured + 2.0 + 0.01
            assert np.rad2deg(obs["qpos"][0]) < 5.0


def test_soft_limits_are_configurable(emu):
    limits = [(-30, 30), (-20, 20), (-145, 145), (-145, 145), (-168, 168), (-180, 180)]
    with make_robot(emu, soft_joint_limits_deg=limits, max_delta_deg=None) as robot:
        sent = robot.send_action(np.r_[np.deg2rad([90, -90, 10, 0, 0, 0]), 1.0])
        np.testing.assert_allclose(np.rad2deg(sent[:6]), [30, -20, 10, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_rejected_and_nothing_is_sent(emu, bad):
    with make_robot(emu) as robot:
        before = len(emu.commands("send_angles")), len(emu.commands("set_gripper_value"))
        action = np.zeros(7)
        action[2] = bad
        with pytest.raises(UnsafeActionError, match=r"non-finite.*j3"):
            robot.send_action(action)
        action = np.zeros(7)
        action[6] = bad
        with pytest.raises(UnsafeActionError, match="gripper"):
            robot.send_action(action)
        assert (len(emu.commands("send_angles")), len(emu.commands("set_gripper_value"))) == before


def test_wrong_action_shape_is_rejected(emu):
    with make_robot(emu) as robot:
        with pytest.raises(UnsafeActionError, match=r"shape \(7,\)"):
            robot.send_action(np.zeros(6))
        sent = robot.send_action(np.zeros((1, 7)))  # a batch of one, as select_action returns it
        assert sent.shape == (7,)


def test_gripper_is_tracked_and_sent_only_on_change(emu):
    with make_robot(emu) as robot:
        n0 = len(emu.commands("set_gripper_value"))
        sent = robot.send_action(np.r_[np.zeros(6), 0.3])
        assert sent[6] == pytest.approx(0.3) and emu.gripper_target == 30
        robot.send_action(np.r_[np.zeros(6), 0.302])  # rounds to the same command: not sent again
        assert len(emu.commands("set_gripper_value")) == n0 + 1
        assert robot.get_observation()["qpos"][6] == pytest.approx(0.3)
        sent = robot.send_action(np.r_[np.zeros(6), 1.7])  # clamped to fully open
        assert sent[6] == pytest.approx(1.0) and emu.gripper_target == 100
        sent = robot.send_action(np.r_[np.zeros(6), -0.2])
        assert sent[6] == 0.0 and emu.gripper_target == 0
        assert robot.get_observation()["qpos"][6] == 0.0
        assert len(emu.commands("set_gripper_value")) == n0 + 3


def test_release_and_lock_servos_and_a_lone_gripper_command(emu):
    """Hand-guiding needs the servos released and locked again through focus_all_servos (FOCUS_SERVO 0x57 with
    id 0, the frame pymycobot sends), not through power_on; the gripper moves alone; a NaN is refused."""
    with make_robot(emu) as robot:
        robot.release_servos()
        assert emu.servos_released
        n_power = len(emu.commands("power_on"))
        assert robot.lock_servos() is True
        assert not emu.servos_released
        assert len(emu.commands("focus_servo")) == 1 and len(emu.commands("power_on")) == n_power
        robot.set_gripper(0.42)
        assert emu.gripper_target == 42 and robot.gripper_command == 42
        with pytest.raises(UnsafeActionError, match="finite"):
            robot.set_gripper(float("nan"))
        assert emu.gripper_target == 42


def test_release_servos_unanswered_is_an_error(emu):
    with make_robot(emu, max_consecutive_failures=100) as robot:
        emu.inject("silent", "release_all_servos", count=10)
        with pytest.raises(RobotError, match="release_all_servos"):
            robot.release_servos()


def test_frames_are_spaced_on_the_bus(emu):
    with make_robot(emu, min_command_interval_s=0.02) as robot:
        start = len(emu.received)
        for g in (0.0, 1.0, 0.0):
            robot.get_observation()
            robot.send_action(np.r_[np.zeros(6), g])
        times = [f.time for f in emu.received[start:]]
        assert len(times) == 9  # read, arm, gripper per step
        assert min(np.diff(times)) >= 0.019


# ---------------------------------------------------------------------------------------------- faults
# pymycobot itself re-sends a command whose reply is missing or carries another id (3 tries) and only
# then returns -1; a frame with the right id but bad content reaches the adapter on the first try.
@pytest.mark.parametrize("fault,count", [("wrong_id", 3), ("garbage", 3), ("silent", 3), ("empty", 1),
                                         ("short", 1), ("out_of_range", 1)])
def test_a_bad_read_is_retried(emu, fault, count):
    # a 0.2 s reply timeout: at FAST's 0.05 s a busy machine (a training beside the suite) delays the good reply
    # after the fault past the timeout about one run in three, and the count of invalid reads becomes 2
    with make_robot(emu, reply_timeout_s=0.2) as robot:
        emu.set_joints([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        emu.inject(fault, "get_angles", count=count)
        obs = robot.get_observation()
        assert not robot.last_observation_stale
        np.testing.assert_allclose(np.rad2deg(obs["qpos"][:6]), [1, 2, 3, 4, 5, 6], atol=0.006)
        assert robot.consecutive_failures == 0 and robot.stats["invalid_reads"] == 1


def test_persistent_bad_reads_reuse_then_raise_after_n(emu):
    with make_robot(emu, read_attempts=3, max_consecutive_failures=5) as robot:
        good = robot.get_observation()["qpos"]
        emu.inject("out_of_range", "get_angles", count=-1)
        obs = robot.get_observation()  # 3 failures: the last good reading is reused and flagged
        assert robot.last_observation_stale
        np.testing.assert_array_equal(obs["qpos"], good)
        with pytest.raises(RobotCommunicationError, match=r"5 invalid or missing replies in a row.*J1 = 300"):
            robot.get_observation()


def test_silent_robot_mid_episode_stops_and_keeps_recorded_steps(emu):
    recorded = []

    def on_step(step):
        recorded.append(step)
        if step.index == 2:
            emu.inject("silent", count=-1)  # the controller stops answering

    with make_robot(emu) as robot:
        t0 = time.monotonic()
        with pytest.raises(RobotCommunicationError, match="in a row") as info:
            run_loop(robot, lambda obs: obs["qpos"], steps=20, on_step=on_step, fps=50)
        assert time.monotonic() - t0 < 3.0
        assert [s.index for s in recorded] == [0, 1, 2]
        assert info.value.loop_stats.steps == 3
        assert info.value.loop_stats.stop_reason == "communication_error"
        stop_frames = emu.commands("stop")
        assert stop_frames and stop_frames[-1].time > recorded[-1].timestamp, "stop() must be attempted"
        emu.clear_faults()


def test_disconnect_mid_episode_stops_safely_and_keeps_recorded_steps(emu, caplog):
    recorded = []

    def on_step(step):
        recorded.append((step.observation["qpos"].copy(), step.action_sent.copy()))
        if len(recorded) == 4:
            emu.disconnect()  # cable pulled

    robot = make_robot(emu)
    robot.connect()
    with caplog.at_level(logging.ERROR):
        with pytest.raises(RobotCommunicationError, match="serial link") as info:
            run_loop(robot, lambda obs: obs["qpos"] + 0.01, steps=50, on_step=on_step, fps=50)
    assert len(recorded) == 4 and info.value.loop_stats.steps == 4
    assert all(q.shape == (7,) and a.shape == (7,) for q, a in recorded)
    assert "emergency stop" in caplog.text  # the operator is told the stop could not be sent
    robot.disconnect()  # must not raise on a dead link
    assert not robot.is_connected


def test_policy_stall_stops_the_arm(emu):
    calls = []

    def policy(obs):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(0.6)
        return obs["qpos"]

    recorded = []
    with make_robot(emu) as robot:
        with pytest.raises(PolicyTimeoutError) as info:
            run_loop(robot, policy, steps=10, on_step=recorded.append, fps=50, policy_timeout_s=0.2)
        assert len(recorded) == 2 and info.value.loop_stats.stop_reason == "policy_timeout"
        assert emu.commands("stop")
        n = len(emu.commands("send_angles"))
        time.sleep(0.5)  # the stalled call finishing later must not move the arm
        assert len(emu.commands("send_angles")) == n


def test_keyboard_interrupt_stops_the_arm_and_returns(emu):
    def policy(obs):
        if policy.n == 2:
            raise KeyboardInterrupt
        policy.n += 1
        return obs["qpos"]

    policy.n = 0
    recorded = []
    with make_robot(emu) as robot:
        n_stop = len(emu.commands("stop"))
        stats = run_loop(robot, policy, steps=10, on_step=recorded.append, fps=50)
        assert stats.stop_reason == "interrupted" and stats.steps == 2 and len(recorded) == 2
        assert len(emu.commands("stop")) == n_stop + 1
        assert emu.powered and not emu.servos_released


def test_unsafe_action_in_loop_stops_and_raises(emu):
    recorded = []
    with make_robot(emu) as robot:
        with pytest.raises(UnsafeActionError):
            run_loop(robot, lambda obs: np.full(7, np.nan), steps=5, on_step=recorded.append, fps=50)
        assert recorded == [] and emu.commands("stop")


# ---------------------------------------------------------------------------------------------- timing
def test_loop_runs_at_rate_and_counts_overruns(emu):
    def policy(obs):
        policy.n += 1
        if policy.n == 4:
            time.sleep(0.08)  # longer than the 50 ms period
        return obs["qpos"]

    policy.n = 0
    recorded = []
    with make_robot(emu) as robot:
        stats = run_loop(robot, policy, steps=8, on_step=recorded.append, fps=20)
    assert stats.stop_reason == "completed" and stats.steps == 8
    assert stats.overruns == 1
    gaps = np.diff([s.timestamp for s in recorded])
    on_time = np.delete(gaps, 3)  # the gap after the slow step
    np.testing.assert_allclose(on_time, 0.05, atol=0.02)
    assert gaps[3] >= 0.08


def test_rate_limiter_reanchors_after_overrun():
    rate = RateLimiter(100)
    rate.start()
    t0 = time.monotonic()
    overran = []
    for i in range(6):
        if i == 2:
            time.sleep(0.03)
        overran.append(rate.sleep())
    elapsed = time.monotonic() - t0
    assert overran == [False, False, True, False, False, False] and rate.overruns == 1
    # 2 on-time ticks + the slow step + 3 ticks after re-anchoring, no catch-up burst
    assert 0.058 <= elapsed <= 0.12


# ---------------------------------------------------------------------------------------------- cameras
class FakeCapture:
    """Stands in for cv2.VideoCapture: BGR frames, a configurable size, can start failing."""

    def __init__(self, h=24, w=32, fail_after=None, opened=True):
        self.h, self.w, self.fail_after, self.opened = h, w, fail_after, opened
        self.props, self.n, self.released = {}, 0, False

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value

    def read(self):
        time.sleep(0.002)
        self.n += 1
        if self.fail_after is not None and self.n > self.fail_after:
            return False, None
        frame = np.zeros((self.h, self.w, 3), np.uint8)
        frame[..., 0] = 200  # blue in BGR
        return True, frame

    def release(self):
        self.released = True


def test_opencv_camera_delivers_rgb_and_checks_resolution():
    cap = FakeCapture()
    cam = OpenCVCamera("top", CameraConfig(device=0, width=32, height=24), capture_factory=lambda d: cap)
    cam.connect()
    frame = cam.read()
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
    assert (frame[..., 2] == 200).all() and (frame[..., 0] == 0).all()  # BGR -> RGB
    assert cap.props[3] == 32 and cap.props[4] == 24
    cam.disconnect()
    assert cap.released

    wrong = OpenCVCamera("top", CameraConfig(device=0, width=640, height=480), capture_factory=lambda d: FakeCapture())
    with pytest.raises(CameraError, match=r"\(24, 32, 3\).*\(480, 640, 3\)"):
        wrong.connect()


def test_opencv_camera_failures_are_clear():
    closed = OpenCVCamera("side", CameraConfig(device="/dev/video9"), capture_factory=lambda d: FakeCapture(opened=False))
    with pytest.raises(CameraError, match="could not open device '/dev/video9'"):
        closed.connect()
    dying = OpenCVCamera("side", CameraConfig(device=1, width=32, height=24, timeout_s=0.5),
                         capture_factory=lambda d: FakeCapture(fail_after=3))
    dying.connect()
    time.sleep(0.1)
    with pytest.raises(CameraError, match="failed to deliver"):
        dying.read()
    dying.disconnect()


def test_opencv_missing_gives_install_hint():
    try:
        import cv2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="opencv-python-headless"):
            OpenCVCamera("top", CameraConfig(device=0)).connect()
    else:
        pytest.skip("OpenCV is installed")


# ---------------------------------------------------------------------------------------------- emulator
def test_emulator_frames_and_queue_mode():
    assert encode_frame(0x20) == bytes([0xFE, 0xFE, 0x02, 0x20, 0xFA])
    buf = bytearray(b"\x00\xfe\x13" + encode_frame(0x16, b"\x01") + b"\xfe\xfe\x05\x99" + encode_frame(0x12))
    frames = list(MyCobot320Emulator._split_frames(buf))
    assert frames == [(0x16, b"\x01"), (0x12, b"")]  # the stray bytes and the broken frame are skipped

    from pymycobot import MyCobot320

    with MyCobot320Emulator(powered=True, max_joint_speed_deg_s=100.0) as emu:
        mc = MyCobot320(emu.port, 115200, timeout=0.05)
        try:
            assert mc.set_fresh_mode(0) == 1
            mc.send_angles([10, 0, 0, 0, 0, 0], 100)
            mc.send_angles([-10, 0, 0, 0, 0, 0], 100)  # queued behind the first move
            time.sleep(0.05)
            assert emu.targets_deg[0] == 10.0
            time.sleep(0.4)
            assert emu.joints_deg[0] == pytest.approx(-10.0)
            mc.set_fresh_mode(1)
            mc.send_angles([20, 0, 0, 0, 0, 0], 100)
            mc.send_angles([0, 0, 0, 0, 0, 0], 100)  # replaces the first in fresh mode
            assert emu.targets_deg[0] == 0.0
        finally:
            mc.close()
