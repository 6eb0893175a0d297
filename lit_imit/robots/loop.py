"""The control loop: a policy drives a robot at a fixed rate, with a safe stop whenever the loop ends early.

``run_loop`` drives a policy at a fixed rate, hands every executed step to a callback as soon as it
exists, and stops the arm (``stop()``; power stays on, no servo is released, so the arm holds its pose)
when the loop ends abnormally: Ctrl-C, a communication error, a policy that produces no action within
its timeout, or any other exception. Why a separate module: the loop is the one place that decides when
the arm must stop, so it stays readable apart from the wire protocol of any one robot.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lit_imit.robots.errors import PolicyTimeoutError, RobotCommunicationError
from lit_imit.robots.mycobot320 import MyCobot320Robot, _as_action, _positive
from lit_imit.signals import stop_signals_as_interrupt, uninterrupted

log = logging.getLogger(__name__)

__all__ = ["LoopStats", "LoopStep", "RateLimiter", "run_loop"]


class RateLimiter:
    """Fixed-period pacing. ``sleep()`` waits for the next tick; a step that took longer is an overrun.

    An overrun re-anchors the schedule at "now" instead of trying to catch up with a burst of short
    periods (which would make the arm jerk). Overruns are counted and logged at most once a second.
    """

    def __init__(self, fps: float, *, tolerance_s: float = 0.001, name: str = "control loop") -> None:
        self.period = 1.0 / _positive("fps", fps)
        self.tolerance_s = tolerance_s
        self.name = name
        self.overruns = 0
        self.ticks = 0
        self._next: float | None = None
        self._last_log = -math.inf

    def start(self) -> None:
        self._next = time.monotonic() + self.period

    def sleep(self) -> bool:
        """Wait until the next tick; return True if this step overran its period."""
        if self._next is None:
            self.start()
        now = time.monotonic()
        self.ticks += 1
        if now > self._next + self.tolerance_s:
            self.overruns += 1
            late = now - self._next
            if now - self._last_log >= 1.0:
                self._last_log = now
                log.warning("%s overran its %.1f ms period by %.1f ms (%d overruns so far)",
                            self.name, self.period * 1e3, late * 1e3, self.overruns)
            self._next = now + self.period
            return True
        _precise_sleep_until(self._next)
        self._next += self.period
        return False


def _precise_sleep_until(deadline: float) -> None:
    """Coarse sleep, then short sleeps for the last 2 ms (time.sleep alone overshoots by up to ~1 ms)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(left - 0.002 if left > 0.003 else min(left, 0.0002))


@dataclass
class LoopStep:
    """One executed control step, handed to ``on_step`` as soon as the action was sent."""

    index: int
    timestamp: float  # time.monotonic() when the observation was taken
    observation: dict[str, np.ndarray]
    action: np.ndarray  # what the policy asked for
    action_sent: np.ndarray  # what the robot was told to do (record this one)
    stale: bool  # the observation reused an earlier joint reading


@dataclass
class LoopStats:
    steps: int = 0
    overruns: int = 0
    stop_reason: str = "running"  # completed | interrupted | policy_timeout | communication_error | error
    period_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list)  # work time per step, before the wait

    @property
    def max_step_s(self) -> float:
        return max(self.step_times_s, default=0.0)


class _PolicyWorker:
    """Runs the policy on a daemon thread so a stalled policy can be abandoned (and cannot block exit)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="policy", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, obs = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(self._fn(obs))
                except BaseException as e:  # handed to the caller, KeyboardInterrupt included
                    fut.set_exception(e)

    def __call__(self, obs: Any, timeout: float) -> Any:
        fut: Future = Future()
        self._jobs.put((fut, obs))
        try:
            return fut.result(timeout=timeout)
        except FutureTimeoutError:
            fut.cancel()
            raise PolicyTimeoutError(f"the policy produced no action within {timeout}s; the arm was stopped") from None

    def close(self) -> None:
        self._jobs.put(None)


def run_loop(
    robot: MyCobot320Robot,
    policy_fn: Callable[[dict[str, np.ndarray]], Any],
    steps: int,
    on_step: Callable[[LoopStep], None] | None = None,
    *,
    fps: float | None = None,
    policy_timeout_s: float | None = 1.0,
) -> LoopStats:
    """Run ``policy_fn`` on ``robot`` for ``steps`` steps at ``fps`` (default ``robot.fps``).

    Each step: observe, ask the policy (at most ``policy_timeout_s``; None = wait forever, inline),
    send, hand the ``LoopStep`` to ``on_step``, wait for the next tick. ``on_step`` runs before anything
    else of the next step can fail, so a recorder sees every executed step even when the loop dies.

    Ending: after ``steps`` steps returns stats with ``stop_reason="completed"``; on Ctrl-C, SIGTERM or
    SIGHUP (see :mod:`lit_imit.signals`) stops the arm and returns with ``"interrupted"``; a signal that
    arrives while a command is being sent waits until ``on_step`` has logged it. Any failure
    (communication, policy timeout or error, unsafe action, ``on_step`` error) stops the arm and
    re-raises, with the stats attached as ``exc.loop_stats``::

        try:
            stats = run_loop(robot, policy, 400, on_step=recorder.add)
        finally:
            recorder.save()          # whatever was executed is kept
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    rate = RateLimiter(fps or robot.fps)
    stats = LoopStats(period_s=rate.period)
    worker = _PolicyWorker(policy_fn) if policy_timeout_s is not None else None
    with stop_signals_as_interrupt():  # SIGTERM / SIGHUP stop the arm like Ctrl-C
        try:
            rate.start()
            for index in range(steps):
                t0 = time.monotonic()
                obs = robot.get_observation()
                stale = robot.last_observation_stale
                action = worker(obs, policy_timeout_s) if worker is not None else policy_fn(obs)
                with uninterrupted():  # a command that went out is logged: a stop signal waits for on_step
                    sent = robot.send_action(action)
                    stats.steps += 1
                    stats.step_times_s.append(time.monotonic() - t0)
                    if on_step is not None:
                        asked = np.asarray(_as_action(action), dtype=np.float32)
                        on_step(LoopStep(index, t0, obs, asked, sent, stale))
                if index + 1 < steps:
                    rate.sleep()
            stats.stop_reason = "completed"
            return stats
        except KeyboardInterrupt as e:
            stats.stop_reason = "interrupted"
            log.warning("interrupted (%s) after %d steps; stopping the arm", e or "Ctrl-C", stats.steps)
            robot.safe_stop()
            return stats
        except BaseException as e:
            stats.stop_reason = (
                "policy_timeout" if isinstance(e, PolicyTimeoutError)
                else "communication_error" if isinstance(e, RobotCommunicationError)
                else "error"
            )
            log.error("control loop stopped after %d steps (%s: %s); stopping the arm", stats.steps,
                      type(e).__name__, e)
            robot.safe_stop()
            try:
                e.loop_stats = stats  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise
        finally:
            stats.overruns = rate.overruns
            if worker is not None:
                worker.close()
