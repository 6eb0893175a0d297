"""A demonstration session on the real arm: several episodes, by taught waypoints or by hand-guiding.

``scripts/record_demos.py --robot ...`` parses its flags and calls :func:`record_session`; everything that
touches the robot, the operator's console and the store lives here, so the session can be driven by other
front-ends (and tested against the firmware emulator) without the command line.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any, Iterator, Mapping, Sequence

from lit_imit.data.episodes import EpisodeStore
from lit_imit.robots.recording import RecordingResult, Waypoint, move_to, record_handguided, record_waypoints

__all__ = ["Console", "HandKeys", "record_session"]


class Console:
    """Lines typed on stdin, read by one background thread, for prompts and hand-guiding keys alike.

    A single reader keeps prompts and key presses from competing for stdin (a second reader would
    swallow the answer to a prompt).
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = sys.stdin if stream is None else stream
        self.lines: queue.Queue = queue.Queue()
        self.closed = False  # the end of input was read: prompts fail instead of waiting forever
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.put(line.strip())
        self.lines.put(None)  # end of input

    def ask(self, prompt: str) -> str:
        """Print ``prompt`` and wait for the next line (EOFError once the input is closed)."""
        print(prompt, end="", flush=True)
        line = None if self.closed else self.lines.get()
        if line is None:
            self.closed = True
            raise EOFError("stdin closed")
        return line

    def pending(self) -> list[str]:
        """The lines typed since the last call, without waiting (a closed input reads as "q")."""
        out = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return out
            if line is None:
                self.closed = True
            out.append("q" if line is None else line)


class HandKeys:
    """During hand-guiding: Enter toggles the gripper, q + Enter ends the demonstration.

    Called once per recorded sample, it returns the gripper command (1 open, 0 closed).
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.stop = threading.Event()
        self.gripper = 1.0

    def __call__(self) -> float:
        for line in self.console.pending():
            if line.lower() == "q":
                self.stop.set()
            else:
                self.gripper = 0.0 if self.gripper > 0.5 else 1.0
                print(f"gripper -> {'open' if self.gripper > 0.5 else 'closed'}", flush=True)
        return self.gripper


def record_session(robot: Any, store: EpisodeStore, *, episodes: int, fps: float, task: str,
                   waypoints: Sequence[Waypoint] | None = None, home: Sequence[float] | None = None,
                   ask_success: bool = False, max_steps: int = 6000, image_size: tuple[int, int] | None = None,
                   attrs: Mapping[str, Any] | None = None,
                   console: Console | None = None) -> Iterator[RecordingResult]:
    """Record ``episodes`` demonstrations with ``robot`` (already connected: iterate inside ``with robot``),
    yielding each episode's result as soon as it is written, so a caller interrupted mid-session still knows
    what was recorded.

    With ``waypoints`` the arm replays the taught poses; without, the operator guides it by hand (keys
    from ``console``). Between episodes the arm returns to ``home`` when given. ``ask_success`` asks the
    operator after each episode whether it succeeded. The session ends after the first episode that ends in
    a fault (``result.error``) or is aborted (``result.aborted``); every episode's steps are written either way.
    """
    if console is None and (ask_success or waypoints is None):
        console = Console()
    judge = None
    if ask_success:
        def judge() -> bool:
            return console.ask("did the demonstration succeed? [Y/n] ").lower() in ("", "y", "yes")
    for episode in range(episodes):
        if episode and home is not None:
            move_to(robot, home, 1.0, duration_s=3.0, fps=fps)
        if waypoints is not None:
            result = record_waypoints(robot, waypoints, store, fps=fps, task=task, judge=judge,
                                      image_size=image_size, attrs=attrs)
        else:
            keys = HandKeys(console)
            result = record_handguided(
                robot, store, fps=fps, max_steps=max_steps, stop=keys.stop, gripper_fn=keys, task=task,
                judge=judge, image_size=image_size,
                ready=lambda: console.ask("hold the arm (it goes limp when released), then press Enter; "
                                          "then Enter toggles the gripper, q + Enter ends: "),
            )
        yield result
        if result.error is not None or result.aborted:
            return
