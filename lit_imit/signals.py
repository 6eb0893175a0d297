"""Stop signals: ``kill`` (SIGTERM) and a closed terminal (SIGHUP) end a run the way Ctrl-C does.

Python turns SIGINT into ``KeyboardInterrupt``, and every run that drives a robot or records data already
handles that: it stops the arm and writes the steps executed so far. SIGTERM (``kill``, systemd, a job
scheduler) and SIGHUP (the ssh session or terminal went away) would instead end the process on the spot:
no stop command to the arm, no episode written. Inside :func:`stop_signals_as_interrupt` all three raise
:class:`StopSignal`, a ``KeyboardInterrupt``, so the existing Ctrl-C paths handle them too.

An interrupt can also land between sending a command to the robot and logging it, so the log would miss
the last command the robot actually executed. :func:`uninterrupted` marks such stretches: a stop signal
arriving inside is held and raised when the stretch ends. Clean-up that stops the arm is marked with
``stopping=True``: once a stop is under way, a second signal is ignored there, so it cannot cut the stop
command short (a first signal is held and raised afterwards, like anywhere else).

Signals are delivered to the main thread only; in other threads both context managers do nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

#: the signals that mean "stop now, cleanly" (SIGHUP does not exist on Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignal(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) turned into a KeyboardInterrupt; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _State:
    """Per process: installed handlers, how deep inside ``uninterrupted`` the main thread is, a signal held
    back there, and whether a stop was already raised."""

    installed = 0
    depth = 0
    stopping = 0
    pending: int | None = None
    stop_requested = False


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop(signum: int) -> StopSignal:
    _State.stop_requested = True
    return StopSignal(signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.stopping and _State.stop_requested:
        log.warning("%s while stopping: ignored, the stop goes on", signal.Signals(signum).name)
        return
    if _State.depth:
        if _State.pending is None:
            _State.pending = signum
        return
    raise _stop(signum)


class stop_signals_as_interrupt:  # noqa: N801 -- used like a function: ``with stop_signals_as_interrupt():``
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`StopSignal` (a KeyboardInterrupt).

    Nests; the previous handlers come back on exit. Outside the main thread it does nothing.
    """

    def __enter__(self) -> "stop_signals_as_interrupt":
        self._previous: dict[int, object] = {}
        if _in_main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, _handle)
            _State.installed += 1
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous:
            _State.installed -= 1
            if not _State.installed:  # the run is over: the next one starts afresh
                _State.pending, _State.stop_requested = None, False


class uninterrupted:  # noqa: N801 -- used like a function: ``with uninterrupted():``
    """Hold stop signals back until the block ends (then raise :class:`StopSignal`), e.g. between sending a
    command and logging it. With ``stopping=True`` (the block stops the arm) signals are ignored once a
    stop is under way.

    Works for signals handled by :func:`stop_signals_as_interrupt`; Python's default SIGINT handler
    raises at once wherever it lands.
    """

    def __init__(self, stopping: bool = False) -> None:
        self.stopping = stopping
        self._active = False

    def __enter__(self) -> "uninterrupted":
        self._active = _in_main_thread()
        if self._active:
            _State.depth += 1
            _State.stopping += int(self.stopping)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._active:
            return
        _State.depth -= 1
        _State.stopping -= int(self.stopping)
        if _State.depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise _stop(signum)  # also replaces an error raised inside: the stop request wins
