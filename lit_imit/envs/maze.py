"""PointMaze skill-learning tasks (gymnasium-robotics PointMaze) and their scripted planner + PD teacher.

Two kinds of task share one env class:

* **play** (task-agnostic data, like D4RL's maze2d datasets): the ball starts in a random free cell and is
  sent to a random goal cell; whenever it reaches the goal a new random goal is drawn, so an episode is
  a stream of point-to-point motions. Some cells may be *blocked* (turned into walls) so that the play
  data never visits a region; FIST's maze experiments hold out a region this way and ask the agent to go
  through it at test time, guided only by the demonstrations.
* **target** (few-shot imitation): fixed start and goal cells (plus the env's uniform ±0.25 m jitter),
  the episode ends on success (ball within 0.45 m of the goal, gymnasium-robotics' radius).

Observation (flat dict, float32): ``state`` = (x, y, vx, vy), ``qpos`` = (x, y) (the episode store's
proprioception key), ``goal`` = (gx, gy). The reward is 1 on the
step the goal is reached (play: every goal reached), ``info["is_success"]`` says whether the (first) goal
was reached and ``info["goals_reached"]`` counts goals. The ball is force-controlled (action in [-1, 1]^2).

The teacher plans a shortest path over free cells (breadth-first search, 4-connected), shortcuts
waypoints that are in straight view, and drives to the next waypoint with a saturated PD law. Play
recordings add a little action noise and a per-episode speed so the data is not one single motion style.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MAZES: dict[str, list[list[int]]] = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
GOAL_RADIUS = 0.45  # gymnasium-robotics' success radius
Cell = tuple[int, int]


def free_cells(grid: Sequence[Sequence[int]]) -> list[Cell]:
    """All non-wall cells (row, col) of a maze map."""
    return [(r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v != 1]


def shortest_path(grid: Sequence[Sequence[int]], start: Cell, goal: Cell) -> list[Cell]:
    """Cells from start to goal (both included) by breadth-first search; a clear error if unreachable."""
    start, goal = tuple(start), tuple(goal)
    for name, cell in (("start", start), ("goal", goal)):
        r, c = cell
        if not (0 <= r < len(grid) and 0 <= c < len(grid[0])) or grid[r][c] == 1:
            raise ValueError(f"{name} cell {cell} is a wall or outside the maze")
    parent: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        r, c = cell
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if nxt not in parent and grid[nxt[0]][nxt[1]] != 1:
                parent[nxt] = cell
                queue.append(nxt)
    if goal not in parent:
        raise ValueError(f"goal cell {goal} cannot be reached from {start} in this maze")
    path = [goal]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return path[::-1]


class MazeGeometry:
    """Cell <-> metric conversions of a gymnasium-robotics maze (1 m cells, origin at the maze centre)."""

    def __init__(self, grid: Sequence[Sequence[int]]):
        self.grid = [list(row) for row in grid]
        self.rows, self.cols = len(grid), len(grid[0])
        self.x_center, self.y_center = self.cols / 2.0, self.rows / 2.0
        self._walls = np.array([[v == 1 for v in row] for row in grid], dtype=bool)

    def cell_to_xy(self, cell: Sequence[int]) -> np.ndarray:
        r, c = cell
        return np.array([c + 0.5 - self.x_center, self.y_center - (r + 0.5)])

    def xy_to_cell(self, xy: Sequence[float]) -> Cell:
        r = int(np.floor(self.y_center - xy[1]))
        c = int(np.floor(xy[0] + self.x_center))
        return min(max(r, 0), self.rows - 1), min(max(c, 0), self.cols - 1)

    def is_free(self, cell: Cell) -> bool:
        r, c = cell
        return 0 <= r < self.rows and 0 <= c < self.cols and self.grid[r][c] != 1

    def segment_clear(self, a: np.ndarray, b: np.ndarray, margin: float = 0.2) -> bool:
        """Whether a ball of radius ``margin`` can travel in a straight line from a to b (sampled check)."""
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / 0.1)) + 1)
        points = a[None] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None]
        offsets = np.array([[dx, dy] for dx in (-margin, 0.0, margin) for dy in (-margin, 0.0, margin)])
        probes = (points[:, None, :] + offsets[None]).reshape(-1, 2)
        rows = np.floor(self.y_center - probes[:, 1]).astype(int)
        cols = np.floor(probes[:, 0] + self.x_center).astype(int)
        inside = (rows >= 0) & (rows < self.rows) & (cols >= 0) & (cols < self.cols)
        if not inside.all():
            return False
        return not bool(self._walls[rows, cols].any())


def connected_component(grid: Sequence[Sequence[int]], cells: Sequence[Cell]) -> list[Cell]:
    """The largest 4-connected group of free cells (play goals must be reachable from every start)."""
    remaining, best = set(cells), []
    while remaining:
        seed = remaining.pop()
        group, queue = [seed], deque([seed])
        while queue:
            r, c = queue.popleft()
            for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if nxt in remaining:
                    remaining.discard(nxt)
                    group.append(nxt)
                    queue.append(nxt)
        if len(group) > len(best):
            best = group
    return sorted(best)


def blocked_map(name: str, blocked: Sequence[Sequence[int]] = ()) -> list[list[int]]:
    """A named maze with extra wall cells (FIST-style held-out regions)."""
    if name not in MAZES:
        raise ValueError(f"unknown maze {name!r}; choose one of {sorted(MAZES)}")
    grid = [list(row) for row in MAZES[name]]
    for cell in blocked:
        r, c = int(cell[0]), int(cell[1])
        if not (0 <= r < len(grid) and 0 <= c < len(grid[0])):
            raise ValueError(f"blocked cell {tuple(cell)} is outside the {name} maze")
        grid[r][c] = 1
    return grid


class PointMazeSkillEnv(gym.Env):
    """A gymnasium-robotics point maze with flat observations and play / target task modes.

    Args:
        maze: "umaze", "medium" or "large" (gymnasium-robotics' maps).
        mode: "play" (random goals, resampled when reached) or "target" (fixed start/goal, ends on success).
        blocked: cells turned into walls (play data that never visits a region).
        start_cell / goal_cell: (row, col) of the target task; required in target mode.
        render_mode: None or "rgb_array" (top view, ``image_size`` (H, W)).
        cameras: must stay empty (accepted so generic recorders can pass "no cameras").
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        maze: str = "medium",
        mode: str = "play",
        blocked: Sequence[Sequence[int]] = (),
        start_cell: Sequence[int] | None = None,
        goal_cell: Sequence[int] | None = None,
        render_mode: str | None = "rgb_array",
        cameras: Sequence[str] = (),
        image_size: Sequence[int] = (240, 320),
    ) -> None:
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

        if cameras:
            raise ValueError(f"the point maze env observes the state only; got cameras {list(cameras)}")
        if mode not in ("play", "target"):
            raise ValueError(f"mode must be 'play' or 'target', got {mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.maze_name, self.mode = maze, mode
        grid = blocked_map(maze, blocked)
        self.geometry = MazeGeometry(grid)
        self.cells = connected_component(grid, free_cells(grid))
        self.start_cell = tuple(start_cell) if start_cell is not None else None
        self.goal_cell = tuple(goal_cell) if goal_cell is not None else None
        if mode == "target":
            if self.start_cell is None or self.goal_cell is None:
                raise ValueError("a target maze task needs start_cell and goal_cell")
            shortest_path(grid, self.start_cell, self.goal_cell)  # fails now if the task is impossible
        self.render_mode = render_mode
        height, width = (int(v) for v in image_size)
        self._sim = PointMazeEnv(maze_map=grid, render_mode=render_mode, continuing_task=True, reset_target=False,
                                 width=width, height=height)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (4,), np.float32),
            "qpos": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "goal": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        })
        self._state = np.zeros(4)
        self.goals_reached = 0
        self.goal_xy = np.zeros(2)
        self.episode_rng = np.random.default_rng(0)

    # ---- gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.episode_rng = np.random.default_rng(self.np_random.integers(2**63 - 1))
        if self.mode == "target":
            cells = {"reset_cell": np.array(self.start_cell), "goal_cell": np.array(self.goal_cell)}
        else:
            start = self.cells[self.np_random.integers(len(self.cells))]
            cells = {"reset_cell": np.array(start), "goal_cell": np.array(self._random_goal_cell(start))}
        obs, _ = self._sim.reset(seed=int(self.np_random.integers(2**31 - 1)), options=cells)
        self._state = np.asarray(obs["observation"], dtype=np.float64)
        self.goal_xy = np.asarray(self._sim.goal, dtype=np.float64).copy()
        self.goals_reached = 0
        return self._obs(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        obs, _, _, _, _ = self._sim.step(action)
        self._state = np.asarray(obs["observation"], dtype=np.float64)
        reached = bool(np.linalg.norm(self._state[:2] - self.goal_xy) <= GOAL_RADIUS)
        reward = 0.0
        terminated = False
        if reached:
            self.goals_reached += 1
            reward = 1.0
            if self.mode == "target":
                terminated = True
            else:
                self._new_goal()
        return self._obs(), reward, terminated, False, self._info()

    def render(self):
        return self._sim.render() if self.render_mode is not None else None

    def close(self):
        self._sim.close()

    # ---- helpers -----------------------------------------------------------------------------------
    def _random_goal_cell(self, avoid: Cell) -> Cell:
        """A random free cell other than ``avoid`` (the ball's current cell)."""
        choices = [c for c in self.cells if c != tuple(avoid)]
        return choices[self.np_random.integers(len(choices))]

    def _new_goal(self) -> None:
        cell = self._random_goal_cell(self.geometry.xy_to_cell(self._state[:2]))
        noise = self.np_random.uniform(-0.25, 0.25, size=2)
        self.goal_xy = self.geometry.cell_to_xy(cell) + noise
        self._sim.goal = self.goal_xy.copy()
        self._sim.update_target_site_pos()

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": self._state.astype(np.float32), "qpos": self._state[:2].astype(np.float32),
                "goal": self.goal_xy.astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        return {"is_success": self.goals_reached > 0, "goals_reached": self.goals_reached}

    @property
    def ball_xy(self) -> np.ndarray:
        return self._state[:2].copy()

    @property
    def ball_velocity(self) -> np.ndarray:
        return self._state[2:].copy()

    def get_state(self) -> dict[str, Any]:
        """Ball position/velocity, goal and counters (plain numpy), to restore with :meth:`set_state`."""
        data = self._sim.point_env.data
        return {"qpos": data.qpos.copy(), "qvel": data.qvel.copy(), "goal": self.goal_xy.copy(),
                "goals_reached": self.goals_reached, "maze": self.maze_name, "mode": self.mode}

    def set_state(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        if state.get("maze") != self.maze_name or state.get("mode") != self.mode:
            raise ValueError(f"state is for {state.get('maze')}/{state.get('mode')}, this env is "
                             f"{self.maze_name}/{self.mode}")
        self._sim.point_env.set_state(np.asarray(state["qpos"]), np.asarray(state["qvel"]))
        self._state = np.concatenate([state["qpos"], state["qvel"]]).astype(np.float64)
        self.goal_xy = np.asarray(state["goal"], dtype=np.float64).copy()
        self._sim.goal = self.goal_xy.copy()
        self._sim.update_target_site_pos()
        self.goals_reached = int(state["goals_reached"])
        return self._obs()


class MazeTeacher:
    """Shortest-path planner over cells + saturated PD control to the next visible waypoint.

    Re-plans from the ball's current cell at every step, so it recovers from any state (interactive
    learning). ``noise`` adds Gaussian action noise and ``speed`` scales the PD gains; in play mode both
    are drawn per episode from the env's episode RNG, in target mode they are fixed (clean demos).
    """

    def __init__(self, env: gym.Env, kp: float = 10.0, kd: float = 1.0, noise: float | None = None):
        self.env = env
        self.kp, self.kd = kp, kd
        self.fixed_noise = noise
        self.noise = 0.0
        self.gain = 1.0
        self.rng = np.random.default_rng(0)

    @property
    def sim(self) -> PointMazeSkillEnv:
        return self.env.unwrapped

    def reset(self) -> None:
        sim = self.sim
        self.rng = np.random.default_rng(sim.episode_rng.integers(2**63 - 1))
        play = sim.mode == "play"
        self.noise = self.fixed_noise if self.fixed_noise is not None else (0.1 if play else 0.0)
        self.gain = float(self.rng.uniform(0.6, 1.2)) if play else 1.0

    def waypoint(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The farthest cell centre of the shortest path in straight view (the goal itself when visible)."""
        geo = self.sim.geometry
        if geo.segment_clear(pos, goal):
            return goal
        path = shortest_path(geo.grid, geo.xy_to_cell(pos), geo.xy_to_cell(goal))
        if len(path) == 1:  # same cell: nothing can be in the way
            return goal
        centres = [geo.cell_to_xy(c) for c in path[1:]]
        target = centres[0]
        for centre in centres[1:]:
            if not geo.segment_clear(pos, centre):
                break
            target = centre
        return target

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        pos, vel = state[:2], state[2:]
        target = self.waypoint(pos, np.asarray(obs["goal"], dtype=np.float64))
        action = self.gain * self.kp * (target - pos) - self.kd * vel
        norm = np.linalg.norm(action)
        if norm > 1.0:
            action = action / norm
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
