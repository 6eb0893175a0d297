"""The language-conditioned Ravens tasks: scene generation, goals, partial-credit reward, oracle, relabeling.

A task describes *what* to achieve with a list of goals, evaluated in order as in Ravens:

* a goal lists objects, targets and which object may go to which target;
* ``pose`` goals count objects lying on a distinct allowed target (xy within ``pos_eps``, yaw within
  ``rot_eps`` modulo the object's symmetry), ``container`` goals count objects inside a box;
* the episode score is the reward of completed goals plus the partial credit of the current one, so
  it lies in [0, 1]; a goal is complete at full credit and the next one becomes current.

The oracle (``plan``) reads object and target poses from the simulator (privileged state) and names the
object to move and where its centre must go; ``RavensTask.oracle_action`` turns that into the pick and
place poses of the suction tool. It works from any state a rollout reaches: misplaced objects are picked
again, and an object blocking a target is first moved to free table space.

``matches`` reports which object currently fulfils which target (for every candidate object, distractors
included) and ``relabel(before, after)`` names the instruction a pick-place did fulfil (hindsight
relabeling for FIER).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import numpy as np

from lit_imit.envs.ravens import assets
from lit_imit.envs.ravens import geometry as geo
from lit_imit.envs.ravens.sim import Sim

SPLITS = ("train", "val", "test")


@dataclass
class Target:
    """Where an object may go: a pose on the table (or on a stack), or the inside of a container."""

    key: Hashable  # bowl uid, ("slot", i) or container uid
    position: np.ndarray  # xyz of the object's centre when placed
    yaw: float | None  # required yaw (None: any)
    container: int | None = None  # uid of the box for container goals
    inner_size: tuple[float, float] | None = None


@dataclass
class Goal:
    """One step of a task's goal sequence (Ravens' goal tuple, with names)."""

    objects: list[int]
    targets: list[Target]
    allowed: np.ndarray  # (n_objects, n_targets) bool
    metric: str  # "pose" | "container"
    max_reward: float
    instruction: str
    symmetry: float | None = None  # rotational symmetry of the objects (None: rotation irrelevant)


@dataclass
class Plan:
    """Oracle decision: move ``uid`` so that its centre lands at ``position`` with yaw ``yaw``."""

    uid: int
    position: np.ndarray
    yaw: float | None
    symmetry: float | None


def max_matching(allowed: np.ndarray) -> list[tuple[int, int]]:
    """Maximum bipartite matching (objects x targets) by augmenting paths; the sets here are tiny."""
    n_obj, n_tgt = allowed.shape
    owner = [-1] * n_tgt

    def augment(i: int, seen: set) -> bool:
        for j in range(n_tgt):
            if allowed[i, j] and j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(n_obj):
        augment(i, set())
    return [(owner[j], j) for j in range(n_tgt) if owner[j] >= 0]


class RavensTask:
    """Base class: goal bookkeeping, reward, the generic oracle and helpers shared by the tasks."""

    name = "ravens"
    pos_eps = 0.01
    rot_eps = np.deg2rad(15)
    completed_instruction = "task completed."

    def __init__(self, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.goals: list[Goal] = []
        self.progress = 0.0
        self.score = 0.0
        self.total_reward = 1.0
        self.max_steps = 1

    # ---- to implement --------------------------------------------------------------------------------
    def build(self, sim: Sim, rng: np.random.Generator) -> None:
        """Spawn the scene and fill ``self.goals`` and ``self.max_steps``."""
        raise NotImplementedError

    def matches(self, sim: Sim) -> dict[int, Hashable]:
        """Which object currently fulfils which target (all candidate objects, not only the goal's)."""
        raise NotImplementedError

    def relabel(self, before: dict, after: dict) -> str | None:
        """The instruction a pick-place fulfilled given the matches before and after it, or None."""
        raise NotImplementedError

    # ---- colours / splits ------------------------------------------------------------------------------
    def reset_bookkeeping(self) -> None:
        self.goals, self.progress, self.score = [], 0.0, 0.0

    # ---- goal evaluation ---------------------------------------------------------------------------------
    def object_on_target(self, sim: Sim, uid: int, target: Target, symmetry: float | None) -> bool:
        """Whether ``uid`` fulfils ``target`` right now."""
        pos, quat = sim.pose(uid)
        if target.container is not None:
            return self.inside_container(sim, uid, target.container, target.inner_size)
        if np.linalg.norm(pos[:2] - target.position[:2]) >= self.pos_eps:
            return False
        if target.yaw is None:
            return True
        return geo.symmetric_yaw_error(geo.quat_to_yaw(quat), target.yaw, symmetry) < self.rot_eps

    @staticmethod
    def inside_container(sim: Sim, uid: int, box: int, inner_size) -> bool:
        """Object centre within the box's inner footprint and not hovering above its rim."""
        pos, _ = sim.pose(uid)
        box_pose = sim.pose(box)
        local = geo.pose_multiply(geo.pose_invert(box_pose), (pos, geo.IDENTITY_QUAT))[0]
        return bool(abs(local[0]) < inner_size[0] / 2 and abs(local[1]) < inner_size[1] / 2
                    and local[2] < sim.bodies[box].size[2] + 0.05)

    def satisfied(self, sim: Sim, goal: Goal) -> list[tuple[int, int]]:
        """(object index, target index) pairs of the goal met now, each target used at most once."""
        met = np.zeros_like(goal.allowed, dtype=bool)
        for i, uid in enumerate(goal.objects):
            for j, target in enumerate(goal.targets):
                if goal.allowed[i, j]:
                    met[i, j] = self.object_on_target(sim, uid, target, goal.symmetry)
        if goal.metric == "container":  # a container takes every object: no one-to-one constraint
            return [(i, int(np.argmax(met[i]))) for i in range(len(goal.objects)) if met[i].any()]
        return max_matching(met)

    def goal_credit(self, sim: Sim, goal: Goal) -> float:
        return goal.max_reward * len(self.satisfied(sim, goal)) / len(goal.objects)

    def evaluate(self, sim: Sim) -> float:
        """Update progress (completing goals in order) and return the new episode score in [0, 1]."""
        while self.goals:
            credit = self.goal_credit(sim, self.goals[0])
            if abs(self.goals[0].max_reward - credit) < 0.01:
                self.progress += self.goals.pop(0).max_reward
                continue
            self.score = self.progress + credit
            return self.score
        self.score = self.progress
        return self.score

    @property
    def done(self) -> bool:
        return not self.goals or self.score > 0.99

    @property
    def instruction(self) -> str:
        return self.goals[0].instruction if self.goals else self.completed_instruction

    @property
    def max_step_reward(self) -> float:
        """The reward one correct pick-place earns for the current goal (FIER's success test)."""
        if not self.goals:
            return 0.0
        return self.goals[0].max_reward / len(self.goals[0].objects)

    # ---- oracle ---------------------------------------------------------------------------------------------
    def plan(self, sim: Sim, rng: np.random.Generator) -> Plan | None:
        """Default oracle for the current goal: farthest unmatched object to its nearest free target."""
        if not self.goals:
            return None
        goal = self.goals[0]
        done = self.satisfied(sim, goal)
        used_obj = {i for i, _ in done}
        used_tgt = {j for _, j in done} if goal.metric == "pose" else set()
        best = None
        for i, uid in enumerate(goal.objects):
            if i in used_obj:
                continue
            pos, _ = sim.pose(uid)
            free = [j for j in range(len(goal.targets)) if goal.allowed[i, j] and j not in used_tgt]
            free = [j for j in free if self.target_is_free(sim, goal.targets[j], uid)] or free
            if not free:
                continue
            dists = [np.linalg.norm(goal.targets[j].position[:2] - pos[:2]) for j in free]
            k = int(np.argmin(dists))
            if best is None or dists[k] > best[0]:
                best = (dists[k], uid, free[k])
        if best is None:
            return None
        _, uid, j = best
        target = goal.targets[j]
        blocker = self.blocker(sim, target, uid)
        if blocker is not None:
            return self.clear_plan(sim, rng, blocker)
        return Plan(uid, self.place_position(sim, target, uid), target.yaw, goal.symmetry)

    def target_is_free(self, sim: Sim, target: Target, uid: int) -> bool:
        return self.blocker(sim, target, uid) is None

    def blocker(self, sim: Sim, target: Target, uid: int) -> int | None:
        """A movable object (other than ``uid``) occupying a pose target; containers are never blocked."""
        if target.container is not None:
            return None
        for other in sim.movable_ids():
            if other == uid or sim.bodies[other].kind == "bowl":
                continue
            pos, _ = sim.pose(other)
            if np.linalg.norm(pos[:2] - target.position[:2]) < 0.03 and abs(pos[2] - target.position[2]) < 0.03:
                return other
        return None

    def place_position(self, sim: Sim, target: Target, uid: int) -> np.ndarray:
        return np.asarray(target.position, dtype=np.float64)

    def clear_plan(self, sim: Sim, rng: np.random.Generator, uid: int) -> Plan | None:
        """Move ``uid`` out of the way to free table space."""
        body = sim.bodies[uid]
        radius = 0.5 * float(np.hypot(body.size[0], body.size[1]))
        xy = sim.sample_free_xy(rng, radius, sim.footprints(exclude=(uid,)), margin=0.02)
        if xy is None:
            return None
        return Plan(uid, np.array([xy[0], xy[1], body.size[2] / 2]), None, None)

    def oracle_action(self, sim: Sim, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        """Pick and place poses (7 each: xyz + xyzw) for the oracle's next move, None if nothing to do."""
        plan = self.plan(sim, rng)
        if plan is None:
            return None
        return move_action(sim, plan.uid, plan.position, plan.yaw, plan.symmetry)

    # ---- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def sample_colors(split: str, unseen: bool) -> tuple[str, ...]:
        """Ravens' colour split: 'seen' tasks always use train colours, 'unseen' ones eval colours off train."""
        return assets.EVAL_COLORS if (unseen and split != "train") else assets.TRAIN_COLORS

    @staticmethod
    def free_xy(sim: Sim, rng: np.random.Generator, radius: float, occupied: list) -> tuple[float, float]:
        """Free table position for a disc footprint, recorded in ``occupied`` (RuntimeError when full)."""
        xy = sim.sample_free_xy(rng, radius, occupied)
        if xy is None:
            raise RuntimeError("could not find free table space for a new object; the scene is too crowded")
        occupied.append((xy[0], xy[1], radius))
        return xy

    @staticmethod
    def add_box(sim: Sim, rng: np.random.Generator, inner: tuple[float, float], occupied: list) -> int:
        """Spawn the brown container at a free pose and record its rectangle in ``occupied``."""
        half = (inner[0] / 2 + 0.006, inner[1] / 2 + 0.006)
        pose = sim.sample_free_rect(rng, half, occupied)
        if pose is None:
            raise RuntimeError("could not find free table space for the box")
        occupied.append((pose[0], pose[1], half[0], half[1], pose[2]))
        return sim.add_container(pose[:2], pose[2], inner)


def move_action(sim: Sim, uid: int, position, yaw: float | None = None,
                symmetry: float | None = None) -> dict[str, np.ndarray]:
    """Pick-place poses that carry object ``uid`` so that its centre ends at ``position``.

    The tool picks at a suction point on the object's top (``choose_pick_point``) and turns by the
    smallest rotation that gives the object the yaw ``yaw`` modulo ``symmetry`` (no turn if ``yaw`` is
    None); the place pose keeps the pick point's offset from the object centre, rotated with it (Ravens'
    ``place = target * inverse(object -> pick)``).
    """
    pick_point = choose_pick_point(sim, uid)
    obj_pos, obj_quat = sim.pose(uid)
    turn = 0.0
    if yaw is not None:
        turn = geo.smallest_rotation_to(geo.quat_to_yaw(obj_quat), yaw, symmetry if symmetry else 2 * np.pi)
    offset = geo.quat_to_matrix(geo.yaw_to_quat(turn)) @ (pick_point - obj_pos)
    place = np.asarray(position, dtype=np.float64) + offset
    return {
        "pick": np.concatenate([pick_point, geo.IDENTITY_QUAT]).astype(np.float32),
        "place": np.concatenate([place, geo.yaw_to_quat(turn)]).astype(np.float32),
    }


def choose_pick_point(sim: Sim, uid: int, ring: float = 0.006) -> np.ndarray:
    """A suction point on the object's upward surface, as close as possible to its centre.

    A candidate must have its neighbours at ``ring`` (the cup's rim) on the same surface, so that the cup
    seals on the object rather than on its edge. Falls back to any top point, then to the centre.
    """
    pts = sim.top_surface_points(uid)
    centre, _ = sim.pose(uid)
    if len(pts) == 0:
        lo, hi = sim.bullet.getAABB(uid)
        return np.array([centre[0], centre[1], hi[2]])
    order = np.argsort(np.linalg.norm(pts[:, :2] - centre[:2], axis=1))
    candidates = pts[order[:40]]
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    rim = np.stack([np.cos(angles), np.sin(angles)], axis=1) * ring
    starts, ends = [], []
    for p in candidates:
        for d in rim:
            starts.append([p[0] + d[0], p[1] + d[1], 1.0])
            ends.append([p[0] + d[0], p[1] + d[1], -0.05])
    hits = sim.bullet.rayTestBatch(starts, ends)
    for k, p in enumerate(candidates):
        around = hits[k * len(rim):(k + 1) * len(rim)]
        if all(h[0] == uid and abs(h[3][2] - p[2]) < 0.006 for h in around):
            return np.asarray(p, dtype=np.float64)
    return np.asarray(candidates[0], dtype=np.float64)


# ==================================================================================================================
class PutBlockInBowl(RavensTask):
    """Put the blocks of one colour into bowls of another colour (Ravens/CLIPort put-block-in-bowl)."""

    pos_eps = 0.05
    template = "put the {pick} blocks in a {place} bowl"
    completed_instruction = "done placing blocks in bowls."

    def __init__(self, split: str = "train", unseen: bool = False) -> None:
        super().__init__(split)
        self.unseen = unseen
        self.block_colors: dict[int, str] = {}
        self.bowl_colors: dict[int, str] = {}

    def build(self, sim: Sim, rng: np.random.Generator) -> None:
        self.reset_bookkeeping()
        n_bowls = int(rng.integers(1, 4))
        n_blocks = int(rng.integers(1, n_bowls + 1))
        palette = self.sample_colors(self.split, self.unseen)
        block_color, bowl_color = [str(c) for c in rng.choice(palette, 2, replace=False)]
        occupied: list = []
        bowls, blocks = [], []
        for _ in range(n_bowls):
            xy = self.free_xy(sim, rng, 0.065, occupied)
            bowls.append(sim.add_bowl(xy, rng.uniform(0, 2 * np.pi), bowl_color, movable=False))
        for _ in range(n_blocks):
            xy = self.free_xy(sim, rng, 0.03, occupied)
            blocks.append(sim.add_block((xy[0], xy[1], 0.02), rng.uniform(0, 2 * np.pi), block_color))
        # Distractors: 6 blocks or bowls in any other Ravens colour (as the original task does).
        others = [c for c in assets.COLORS if c not in (block_color, bowl_color)]
        rng.shuffle(others)
        for k in range(6):
            color = others[k % len(others)]
            if rng.random() > 0.5:
                xy = self.free_xy(sim, rng, 0.03, occupied)
                sim.add_block((xy[0], xy[1], 0.02), rng.uniform(0, 2 * np.pi), color)
            else:
                xy = self.free_xy(sim, rng, 0.065, occupied)
                sim.add_bowl(xy, rng.uniform(0, 2 * np.pi), color, movable=True)
        self.block_colors = {u: b.color for u, b in sim.bodies.items() if b.kind == "block"}
        self.bowl_colors = {u: b.color for u, b in sim.bodies.items() if b.kind == "bowl"}
        targets = [Target(uid, np.array([*sim.pose(uid)[0][:2], 0.025]), None) for uid in bowls]
        self.goals = [Goal(blocks, targets, np.ones((n_blocks, n_bowls), dtype=bool), "pose", 1.0,
                           self.template.format(pick=block_color, place=bowl_color))]
        self.max_steps = n_blocks + 1

    def object_on_target(self, sim, uid, target, symmetry) -> bool:
        return self.in_bowl(sim, uid, target.key)

    def in_bowl(self, sim: Sim, block: int, bowl: int) -> bool:
        """Block centre within 5 cm of the bowl centre and above the bowl's bottom."""
        bpos, _ = sim.pose(block)
        wpos, _ = sim.pose(bowl)
        return bool(np.linalg.norm(bpos[:2] - wpos[:2]) < self.pos_eps and bpos[2] > wpos[2] + 0.005)

    def blocker(self, sim, target, uid):
        for other in self.block_colors:
            if other != uid and self.in_bowl(sim, other, target.key):
                return other
        return None

    def place_position(self, sim, target, uid):
        pos, _ = sim.pose(target.key)
        return np.array([pos[0], pos[1], pos[2] + 0.025])

    def matches(self, sim: Sim) -> dict[int, Hashable]:
        found = {}
        for block in self.block_colors:
            for bowl in self.bowl_colors:
                if self.in_bowl(sim, block, bowl):
                    found[block] = bowl
        return found

    def relabel(self, before: dict, after: dict) -> str | None:
        occupied_before = set(before.values())
        label = None
        for block, bowl in after.items():
            if bowl in occupied_before:
                continue
            moved_from_other_colour = (block in before and before[block] != bowl
                                       and self.bowl_colors[before[block]] != self.bowl_colors[bowl])
            if block not in before or moved_from_other_colour:
                label = self.template.format(pick=self.block_colors[block], place=self.bowl_colors[bowl])
        return label


# ==================================================================================================================
class PackingShapes(RavensTask):
    """Pack one named flat shape into a brown box among 4 distractor shapes (single pick-place)."""

    template = "pack the {obj} in the brown box"
    completed_instruction = "done packing shapes."

    def __init__(self, split: str = "train", unseen: bool = False) -> None:
        super().__init__(split)
        self.unseen = unseen
        self.shape_names: dict[int, str] = {}
        self.box: int | None = None
        self.inner: tuple[float, float] = (0.0, 0.0)

    def choose_shapes(self, rng: np.random.Generator) -> list[int]:
        """ASkDAgger's split: train target from ids 0-13 with any distractors; eval: all five from the split."""
        if self.split == "train":
            target = int(rng.choice(assets.TRAIN_SHAPES))
            rest = [s for s in range(20) if s != target]
            return [target] + [int(s) for s in rng.choice(rest, 4, replace=False)]
        pool = assets.TEST_SHAPES if self.unseen else assets.TRAIN_SHAPES
        return [int(s) for s in rng.choice(pool, 5, replace=False)]

    def build(self, sim: Sim, rng: np.random.Generator) -> None:
        self.reset_bookkeeping()
        shapes = self.choose_shapes(rng)
        palette = list(assets.EVAL_COLORS if self.split != "train" else assets.TRAIN_COLORS)
        rng.shuffle(palette)
        occupied: list = []
        self.inner = (float(rng.uniform(0.1, 0.15)), float(rng.uniform(0.1, 0.15)))
        self.box = self.add_box(sim, rng, self.inner, occupied)
        uids = []
        for k, shape in enumerate(shapes):
            xy = self.free_xy(sim, rng, 0.05, occupied)
            uids.append(sim.add_shape(shape, xy, rng.uniform(0, 2 * np.pi), palette[k % len(palette)]))
        self.shape_names = {u: assets.SHAPE_NAMES[s] for u, s in zip(uids, shapes)}
        self.goals = [Goal([uids[0]], [self.box_target(sim)], np.ones((1, 1), dtype=bool), "container", 1.0,
                           self.template.format(obj=self.shape_names[uids[0]]), symmetry=np.pi / 2)]
        self.max_steps = 1

    def box_target(self, sim: Sim) -> Target:
        pos, quat = sim.pose(self.box)
        centre = np.array([pos[0], pos[1], 0.004 + assets.SHAPE_THICKNESS / 2])
        return Target(self.box, centre, geo.quat_to_yaw(quat), container=self.box, inner_size=self.inner)

    def matches(self, sim: Sim) -> dict[int, Hashable]:
        return {u: self.box for u in self.shape_names if self.inside_container(sim, u, self.box, self.inner)}

    def relabel(self, before: dict, after: dict) -> str | None:
        label = None
        for uid in after:
            if uid not in before:
                label = self.template.format(obj=self.shape_names[uid])
        return label


# ==================================================================================================================
STAND_SLOTS = ((0.0, -0.05, 0.025), (0.0, 0.0, 0.025), (0.0, 0.05, 0.025),
               (0.0, -0.025, 0.065), (0.0, 0.025, 0.065), (0.0, 0.0, 0.105))
PAD_NAMES = ("the lightest brown block", "the middle brown block", "the darkest brown block")
SUPPORTS = {3: (0, 1), 4: (1, 2), 5: (3, 4)}


class StackBlockPyramidSeq(RavensTask):
    """Build a 3-2-1 pyramid on a stand, one instructed block at a time."""

    template = "put the {pick} block on {place}"
    completed_instruction = "done stacking block pyramid."

    def __init__(self, split: str = "train", unseen: bool = False) -> None:
        super().__init__(split)
        self.unseen = unseen
        self.block_colors: dict[int, str] = {}
        self.slots: list[np.ndarray] = []
        self.stand_yaw = 0.0

    def build(self, sim: Sim, rng: np.random.Generator) -> None:
        self.reset_bookkeeping()
        occupied: list = []
        xy = self.free_xy(sim, rng, 0.085, occupied)
        self.stand_yaw = float(rng.uniform(0, 2 * np.pi))
        sim.add_stand(xy, self.stand_yaw)
        colors = list(self.sample_colors(self.split, self.unseen))
        rng.shuffle(colors)
        blocks = []
        for k in range(6):
            bxy = self.free_xy(sim, rng, 0.03, occupied)
            blocks.append(sim.add_block((bxy[0], bxy[1], 0.02), rng.uniform(0, 2 * np.pi), colors[k]))
        self.block_colors = {u: c for u, c in zip(blocks, colors)}
        rot = geo.quat_to_matrix(geo.yaw_to_quat(self.stand_yaw))
        self.slots = [np.array([xy[0], xy[1], 0.0]) + rot @ np.array(s) for s in STAND_SLOTS]
        places = list(PAD_NAMES) + [f"the {colors[0]} and {colors[1]} blocks", f"the {colors[1]} and {colors[2]} blocks",
                                    f"the {colors[3]} and {colors[4]} blocks"]
        self.goals = [Goal([blocks[k]], [Target(("slot", k), self.slots[k], self.stand_yaw)], np.ones((1, 1), dtype=bool),
                           "pose", 1.0 / 6, self.template.format(pick=colors[k], place=places[k]), symmetry=np.pi / 2)
                      for k in range(6)]
        self.max_steps = len(self.goals) + 1

    def slot_of(self, sim: Sim, uid: int) -> int | None:
        """The pyramid slot a block occupies (right place, height level and alignment), if any."""
        pos, quat = sim.pose(uid)
        for k, slot in enumerate(self.slots):
            if (np.linalg.norm(pos[:2] - slot[:2]) < self.pos_eps and abs(pos[2] - slot[2]) < 0.015
                    and geo.symmetric_yaw_error(geo.quat_to_yaw(quat), self.stand_yaw, np.pi / 2) < self.rot_eps):
                return k
        return None

    def matches(self, sim: Sim) -> dict[int, Hashable]:
        found = {}
        for uid in self.block_colors:
            k = self.slot_of(sim, uid)
            if k is not None:
                found[uid] = ("slot", k)
        return found

    def relabel(self, before: dict, after: dict) -> str | None:
        occupant = {slot[1]: uid for uid, slot in after.items()}
        taken_before = {slot for slot in before.values()}
        label = None
        for uid, slot in after.items():
            k = slot[1]
            if slot in taken_before or before.get(uid) == slot:
                continue
            if k < 3:
                place = PAD_NAMES[k]
            elif all(s in occupant for s in SUPPORTS[k]):
                a, b = (self.block_colors[occupant[s]] for s in SUPPORTS[k])
                place = f"the {a} and {b} blocks"
            else:
                continue
            label = self.template.format(pick=self.block_colors[uid], place=place)
        return label


# ==================================================================================================================
class PackingObjectsSeq(RavensTask):
    """Pack named household objects into a brown box, one instructed object after another."""

    template = "pack the {obj} in the brown box"
    completed_instruction = "done packing objects."
    slot_pitch = 0.09

    def __init__(self, split: str = "train", unseen: bool = False) -> None:
        super().__init__(split)
        self.unseen = unseen
        self.object_names: dict[int, str] = {}
        self.box: int | None = None
        self.inner: tuple[float, float] = (0.0, 0.0)
        self.box_slots: list[np.ndarray] = []

    def names(self) -> tuple[str, ...]:
        """Seen tasks always draw from the seen set; unseen ones switch to the unseen set off train."""
        return assets.UNSEEN_OBJECTS if (self.unseen and self.split != "train") else assets.SEEN_OBJECTS

    def build_box(self, sim: Sim, rng: np.random.Generator, occupied: list) -> None:
        self.inner = (float(rng.uniform(0.2, 0.35)), float(rng.uniform(0.2, 0.35)))
        self.box = self.add_box(sim, rng, self.inner, occupied)
        pos, quat = sim.pose(self.box)
        rot = geo.quat_to_matrix(quat)
        nx, ny = (max(1, int(s // self.slot_pitch)) for s in self.inner)
        xs = (np.arange(nx) - (nx - 1) / 2) * (self.inner[0] / nx)
        ys = (np.arange(ny) - (ny - 1) / 2) * (self.inner[1] / ny)
        self.box_slots = [pos + rot @ np.array([x, y, 0.0]) for x in xs for y in ys]

    def spawn_objects(self, sim: Sim, rng: np.random.Generator, names: list[str], occupied: list) -> list[int]:
        uids = []
        for name in names:
            size = assets.mesh_placement(name).size
            xy = self.free_xy(sim, rng, 0.5 * float(np.hypot(size[0], size[1])) + 0.005, occupied)
            uids.append(sim.add_mesh_object(name, xy, rng.uniform(0, 2 * np.pi)))
        self.object_names = {u: n for u, n in zip(uids, names)}
        return uids

    def box_target(self, sim: Sim) -> Target:
        pos, quat = sim.pose(self.box)
        return Target(self.box, pos.copy(), geo.quat_to_yaw(quat), container=self.box, inner_size=self.inner)

    def build(self, sim: Sim, rng: np.random.Generator) -> None:
        self.reset_bookkeeping()
        occupied: list = []
        self.build_box(sim, rng, occupied)
        n_total = int(min(len(self.box_slots), rng.integers(3, 7), len(self.names())))
        names = [str(n) for n in rng.choice(self.names(), n_total, replace=False)]
        uids = self.spawn_objects(sim, rng, names, occupied)
        n_pack = int(rng.integers(1, n_total))
        self.goals = [Goal([u], [self.box_target(sim)], np.ones((1, 1), dtype=bool), "container", 1.0 / n_pack,
                           self.template.format(obj=self.object_names[u]), symmetry=np.pi / 2) for u in uids[:n_pack]]
        self.max_steps = n_pack + 1

    def place_position(self, sim: Sim, target: Target, uid: int) -> np.ndarray:
        """A free slot of the box (objects are spread out rather than piled at the centre)."""
        inside = [u for u in self.object_names if u != uid and self.inside_container(sim, u, self.box, self.inner)]
        taken = [sim.pose(u)[0][:2] for u in inside]
        free = [s for s in self.box_slots if all(np.linalg.norm(s[:2] - t) > 0.06 for t in taken)]
        slot = free[0] if free else self.box_slots[0]
        height = sim.bodies[uid].size[2]
        return np.array([slot[0], slot[1], 0.004 + height / 2])

    def matches(self, sim: Sim) -> dict[int, Hashable]:
        return {u: self.box for u in self.object_names if self.inside_container(sim, u, self.box, self.inner)}

    def relabel(self, before: dict, after: dict) -> str | None:
        label = None
        for uid in after:
            if uid not in before:
                label = self.template.format(obj=self.object_names[uid])
        return label


class PackingObjectsGroup(PackingObjectsSeq):
    """Pack all the objects of one named kind (two instances) into the box, among distractors."""

    template = "pack all the {obj} objects in the brown box"

    def build(self, sim: Sim, rng: np.random.Generator) -> None:
        self.reset_bookkeeping()
        occupied: list = []
        self.build_box(sim, rng, occupied)
        pool = list(self.names())
        chosen = [str(n) for n in rng.choice(pool, 2 + int(rng.integers(0, 3)), replace=False)]
        repeat, distractor, others = chosen[0], chosen[1], chosen[2:]
        names = [repeat, repeat, distractor, distractor] + others
        order = rng.permutation(len(names))
        uids = self.spawn_objects(sim, rng, [names[k] for k in order], occupied)
        targets = [u for u in uids if self.object_names[u] == repeat]
        self.goals = [Goal(targets, [self.box_target(sim)] * len(targets), np.ones((len(targets), len(targets)), dtype=bool),
                           "container", 1.0, self.template.format(obj=repeat), symmetry=np.pi / 2)]
        self.max_steps = len(targets) + 1


# ==================================================================================================================
TASKS: dict[str, tuple[type[RavensTask], dict]] = {
    "put-block-in-bowl-seen-colors": (PutBlockInBowl, {"unseen": False}),
    "put-block-in-bowl-unseen-colors": (PutBlockInBowl, {"unseen": True}),
    "packing-seen-shapes": (PackingShapes, {"unseen": False}),
    "packing-unseen-shapes": (PackingShapes, {"unseen": True}),
    "stack-block-pyramid-seq-seen-colors": (StackBlockPyramidSeq, {"unseen": False}),
    "stack-block-pyramid-seq-unseen-colors": (StackBlockPyramidSeq, {"unseen": True}),
    "packing-seen-objects-seq": (PackingObjectsSeq, {"unseen": False}),
    "packing-unseen-objects-seq": (PackingObjectsSeq, {"unseen": True}),
    "packing-seen-objects-group": (PackingObjectsGroup, {"unseen": False}),
    "packing-unseen-objects-group": (PackingObjectsGroup, {"unseen": True}),
}


def make_task(name: str, split: str = "train") -> RavensTask:
    """Instantiate a task by its Ravens name, e.g. ``"put-block-in-bowl-seen-colors"``."""
    if name not in TASKS:
        raise ValueError(f"unknown Ravens task {name!r}; known: {sorted(TASKS)}")
    cls, kwargs = TASKS[name]
    task = cls(split=split, **kwargs)
    task.name = name
    return task
