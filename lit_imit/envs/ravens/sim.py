"""The physical tabletop: a pybullet world, object spawning, a suction gripper and the pick-place primitive.

The robot is an actuated floating suction tool (a thin rod whose lower end is the suction cup) driven by a
stiff fixed constraint, as a position-controlled arm would be; there are no kinematic shortcuts:

* the tool moves along straight lines in small increments, one physics step per increment;
* suction is a fixed constraint created only when the cup *touches* a movable object, at the relative
  pose the two have at that moment (Ravens' suction model);
* release removes the constraint and the object falls/settles under gravity.

Every pybullet call goes through a ``BulletClient`` bound to this world's own physics server, so
several environments coexist in one process (vectorised rollouts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pybullet
from pybullet_utils import bullet_client

from lit_imit.envs.ravens import assets
from lit_imit.envs.ravens import geometry as geo

TIME_STEP = 1.0 / 240.0
TABLE_RGBA = (0.22, 0.22, 0.22, 1.0)
TRAVEL_Z = 0.30  # height of the suction cup while moving between poses (Ravens lifts 0.32 m)
PARK_POSITION = (0.5, 0.0, 0.8)  # above the cameras (z 0.75, all tilted down): out of every view
TIP_RADIUS = 0.008
CUP_HEIGHT = 0.006  # contacts this close to the rod's lower end are at the suction cup
# Tool speeds as distance per physics step (240 Hz): 4.8 m/s empty, 1.9 m/s holding, 1.4 / 0.36 m/s descending.
FAST_EMPTY = 0.02
FAST_HOLDING = 0.008
DESCEND_FAST = 0.006
DESCEND_SLOW = 0.0015
ROD_LENGTH = 0.10


@dataclass
class Body:
    """Bookkeeping of one spawned body: what it is and how big (for free-space sampling and oracles)."""

    uid: int
    kind: str  # "block", "bowl", "shape", "object", "container", "stand"
    size: tuple[float, float, float]  # upright bounding box (m)
    movable: bool
    name: str = ""
    color: str = ""


class Sim:
    """One pybullet world holding the table, the gripper and the task's bodies."""

    def __init__(self) -> None:
        self.bullet = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        self.bodies: dict[int, Body] = {}
        self.gripper: SuctionGripper | None = None
        self.episode = -1  # set by the env at every reset; snapshots are only valid within one episode

    # ---- world ------------------------------------------------------------------------------------
    def reset_world(self) -> None:
        """Empty the world and add the table and the gripper."""
        b = self.bullet
        b.resetSimulation()
        b.setGravity(0, 0, -9.8)
        b.setTimeStep(TIME_STEP)
        b.setPhysicsEngineParameter(numSolverIterations=50, deterministicOverlappingPairs=1)
        col = b.createCollisionShape(b.GEOM_BOX, halfExtents=[1.0, 1.0, 0.01])
        vis = b.createVisualShape(b.GEOM_BOX, halfExtents=[1.0, 1.0, 0.01], rgbaColor=TABLE_RGBA)
        self.table = b.createMultiBody(0, col, vis, [0.5, 0, -0.01])
        b.changeDynamics(self.table, -1, lateralFriction=0.6)
        self.bodies = {}
        self.gripper = SuctionGripper(self)

    def close(self) -> None:
        """Disconnect from the physics server (idempotent)."""
        if getattr(self, "bullet", None) is not None:
            try:
                self.bullet.disconnect()
            except pybullet.error:
                pass
            self.bullet = None

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.bullet.stepSimulation()

    def settle(self, max_steps: int = 480, min_steps: int = 24, lin_tol: float = 2e-3, ang_tol: float = 2e-2) -> int:
        """Step until every movable body is (nearly) at rest; returns the number of steps taken."""
        steps = 0
        while steps < max_steps:
            self.step(12)
            steps += 12
            if steps >= min_steps and self.max_speed() < (lin_tol, ang_tol):
                break
        return steps

    def max_speed(self) -> tuple[float, float]:
        """Largest linear and angular speed over the movable bodies."""
        lin, ang = 0.0, 0.0
        for uid, body in self.bodies.items():
            if body.movable:
                v, w = self.bullet.getBaseVelocity(uid)
                lin, ang = max(lin, float(np.linalg.norm(v))), max(ang, float(np.linalg.norm(w)))
        return lin, ang

    # ---- bodies ------------------------------------------------------------------------------------
    def pose(self, uid: int) -> tuple[np.ndarray, np.ndarray]:
        pos, quat = self.bullet.getBasePositionAndOrientation(uid)
        return np.asarray(pos), np.asarray(quat)

    def movable_ids(self) -> list[int]:
        return [uid for uid, body in self.bodies.items() if body.movable]

    def _register(self, uid: int, body: Body, friction: float = 0.6, rolling: float = 0.0) -> int:
        """Record a body and give it table-top contact dynamics.

        A little spinning friction and angular damping stop objects that rest on an edge or corner from
        creeping forever, which would keep ``settle`` running to its limit.
        """
        self.bullet.changeDynamics(uid, -1, lateralFriction=friction, rollingFriction=rolling,
                                   spinningFriction=max(0.005, rolling), angularDamping=0.1, restitution=0.0)
        self.bodies[uid] = body
        return uid

    def add_block(self, position, yaw: float, color: str, size: float = assets.BLOCK_SIZE, mass: float = 0.05) -> int:
        """A cube resting on the table (or on whatever is below ``position``)."""
        b, half = self.bullet, [size / 2] * 3
        col = b.createCollisionShape(b.GEOM_BOX, halfExtents=half)
        vis = b.createVisualShape(b.GEOM_BOX, halfExtents=half, rgbaColor=assets.rgba(color))
        uid = b.createMultiBody(mass, col, vis, list(position), geo.yaw_to_quat(yaw).tolist())
        return self._register(uid, Body(uid, "block", (size,) * 3, True, "block", color))

    def add_obj_body(self, path: str, position, yaw: float, rgba, mass: float, kind: str, size, name="", color="",
                     movable: bool = True) -> int:
        """A body whose collision and visual shapes are the same generated OBJ (compound of convex pieces)."""
        b = self.bullet
        col = b.createCollisionShape(b.GEOM_MESH, fileName=path)
        vis = b.createVisualShape(b.GEOM_MESH, fileName=path, rgbaColor=list(rgba))
        uid = b.createMultiBody(mass if movable else 0.0, col, vis, list(position), geo.yaw_to_quat(yaw).tolist())
        return self._register(uid, Body(uid, kind, tuple(size), movable, name, color))

    def add_bowl(self, position_xy, yaw: float, color: str, movable: bool) -> int:
        """A round bowl of 12 cm diameter standing on the table."""
        x, y = position_xy
        return self.add_obj_body(assets.bowl_obj(), (x, y, 0.0), yaw, assets.rgba(color), 0.2, "bowl",
                                 (0.12, 0.12, 0.035), "bowl", color, movable)

    def add_container(self, position_xy, yaw: float, inner_size, height: float = 0.05) -> int:
        """A fixed brown open box with the given inner footprint (a compound of five slabs)."""
        b = self.bullet
        slabs = assets.container_boxes(float(inner_size[0]), float(inner_size[1]), height)
        centres = [list(c) for c, _ in slabs]
        halves = [list(h) for _, h in slabs]
        col = b.createCollisionShapeArray(shapeTypes=[b.GEOM_BOX] * len(slabs), halfExtents=halves,
                                          collisionFramePositions=centres)
        vis = b.createVisualShapeArray(shapeTypes=[b.GEOM_BOX] * len(slabs), halfExtents=halves,
                                       visualFramePositions=centres)
        x, y = position_xy
        uid = b.createMultiBody(0.0, col, vis, [x, y, 0.0], geo.yaw_to_quat(yaw).tolist())
        b.changeVisualShape(uid, -1, rgbaColor=assets.rgba("brown"))
        body = Body(uid, "container", (inner_size[0] + 0.012, inner_size[1] + 0.012, height), False, "brown box", "brown")
        return self._register(uid, body)

    def add_shape(self, shape_id: int, position_xy, yaw: float, color: str, mass: float = 0.05) -> int:
        """A flat kitting shape lying on the table."""
        x, y = position_xy
        pieces = np.concatenate(assets.shape_pieces(shape_id))
        ext = pieces.max(axis=0) - pieces.min(axis=0)
        z = assets.SHAPE_THICKNESS / 2
        return self.add_obj_body(assets.shape_obj(shape_id), (x, y, z), yaw, assets.rgba(color), mass, "shape",
                                 (ext[0], ext[1], assets.SHAPE_THICKNESS), assets.SHAPE_NAMES[shape_id], color)

    def add_mesh_object(self, name: str, position_xy, yaw: float) -> int:
        """A named pybullet_data object, upright, resting on the table."""
        b = self.bullet
        spec, place = assets.MESH_OBJECTS[name], assets.mesh_placement(name)
        scale3 = list(place.scale)
        if place.collision == "box":
            col = b.createCollisionShape(b.GEOM_BOX, halfExtents=[s / 2 for s in place.size])
        elif place.collision == "sphere":
            col = b.createCollisionShape(b.GEOM_SPHERE, radius=max(place.size) / 2)
        else:
            col = b.createCollisionShape(b.GEOM_MESH, fileName=place.collision, meshScale=scale3,
                                         collisionFramePosition=place.frame_position,
                                         collisionFrameOrientation=place.frame_orientation)
        vis_kwargs = {} if spec.rgba is None else {"rgbaColor": list(spec.rgba)}
        vis = b.createVisualShape(b.GEOM_MESH, fileName=place.visual, meshScale=scale3,
                                  visualFramePosition=place.frame_position,
                                  visualFrameOrientation=place.frame_orientation, **vis_kwargs)
        x, y = position_xy
        uid = b.createMultiBody(spec.mass, col, vis, [x, y, place.size[2] / 2 + 0.002], geo.yaw_to_quat(yaw).tolist())
        return self._register(uid, Body(uid, "object", place.size, True, name), friction=0.8,
                              rolling=spec.rolling_friction)

    def add_stand(self, position_xy, yaw: float) -> tuple[int, list[int]]:
        """The pyramid stand: three fixed 5x5 cm pads in light, middle and dark brown along the stand's y."""
        b = self.bullet
        shades = (1.35, 1.0, 0.65)  # lightest, middle, darkest brown (Ravens' stand colours)
        half = [0.025, 0.025, 0.0025]
        col = b.createCollisionShape(b.GEOM_BOX, halfExtents=half)
        pads = []
        x, y = position_xy
        for i, shade in enumerate(shades):
            offset = geo.quat_to_matrix(geo.yaw_to_quat(yaw)) @ np.array([0.0, (i - 1) * 0.05, 0.0])
            color = np.clip(np.array(assets.COLORS["brown"]) * shade, 0, 1).tolist() + [1.0]
            vis = b.createVisualShape(b.GEOM_BOX, halfExtents=half, rgbaColor=color)
            uid = b.createMultiBody(0.0, col, vis, [x + offset[0], y + offset[1], 0.0025], geo.yaw_to_quat(yaw).tolist())
            self._register(uid, Body(uid, "stand", (0.05, 0.05, 0.005), False, "stand"))
            pads.append(uid)
        return pads[1], pads

    # ---- free space ----------------------------------------------------------------------------------
    # Occupied table space is a list of footprints: discs ``(x, y, r)`` for objects and oriented rectangles
    # ``(x, y, half_x, half_y, yaw)`` for large fixed things (boxes), which a disc would grossly overstate.
    def sample_free_xy(self, rng: np.random.Generator, radius: float, occupied: list[tuple],
                       margin: float = 0.01, bounds: np.ndarray = geo.BOUNDS, tries: int = 2000):
        """A random table position whose disc of ``radius`` stays inside the bounds and off ``occupied``.

        Rejection sampling, deterministic given ``rng``; None when the table is too full.
        """
        lo = bounds[:2, 0] + radius + margin
        hi = bounds[:2, 1] - radius - margin
        if np.any(lo > hi):
            return None
        for _ in range(tries):
            xy = rng.uniform(lo, hi)
            if all(footprint_distance(xy, fp) >= radius + margin for fp in occupied):
                return float(xy[0]), float(xy[1])
        return None

    def sample_free_rect(self, rng: np.random.Generator, half_extents, occupied: list[tuple], margin: float = 0.01,
                         bounds: np.ndarray = geo.BOUNDS, tries: int = 2000):
        """A random pose ``(x, y, yaw)`` for a rectangle that fits the bounds and clears ``occupied`` discs."""
        hx, hy = half_extents
        for _ in range(tries):
            yaw = float(rng.uniform(0, 2 * np.pi))
            ex = abs(hx * np.cos(yaw)) + abs(hy * np.sin(yaw)) + margin
            ey = abs(hx * np.sin(yaw)) + abs(hy * np.cos(yaw)) + margin
            lo, hi = bounds[:2, 0] + (ex, ey), bounds[:2, 1] - (ex, ey)
            if np.any(lo > hi):
                continue
            xy = rng.uniform(lo, hi)
            rect = (float(xy[0]), float(xy[1]), hx, hy, yaw)
            if all(len(fp) == 3 and footprint_distance(fp[:2], rect) >= fp[2] + margin for fp in occupied):
                return rect[0], rect[1], yaw
        return None

    def footprints(self, exclude: tuple[int, ...] = ()) -> list[tuple]:
        """Footprints of every spawned body (rectangles for containers, discs otherwise)."""
        out = []
        for uid, body in self.bodies.items():
            if uid in exclude:
                continue
            pos, quat = self.pose(uid)
            if body.kind == "container":
                out.append((float(pos[0]), float(pos[1]), body.size[0] / 2, body.size[1] / 2, geo.quat_to_yaw(quat)))
            else:
                out.append((float(pos[0]), float(pos[1]), 0.5 * float(np.hypot(body.size[0], body.size[1]))))
        return out

    # ---- perception helpers for oracles (privileged) ----------------------------------------------------
    def top_surface_points(self, uid: int, spacing: float = 0.004):
        """Points on the upward-facing surface of a body seen from straight above: (n, 3) array.

        Rays are cast down on a grid over the body's AABB; a point counts if the first hit is this body
        and the surface there faces up.
        """
        b = self.bullet
        lo, hi = b.getAABB(uid)
        xs = np.arange(lo[0] + spacing / 2, hi[0], spacing)
        ys = np.arange(lo[1] + spacing / 2, hi[1], spacing)
        if len(xs) == 0 or len(ys) == 0:
            return np.zeros((0, 3))
        gx, gy = np.meshgrid(xs, ys)
        starts = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 1.0)], axis=1)
        ends = starts.copy()
        ends[:, 2] = -0.05
        hits = []
        for chunk in range(0, len(starts), 1000):
            hits.extend(b.rayTestBatch(starts[chunk:chunk + 1000].tolist(), ends[chunk:chunk + 1000].tolist()))
        pts = [h[3] for h in hits if h[0] == uid and h[4][2] > 0.8]
        return np.asarray(pts).reshape(-1, 3)

    def surface_hit(self, xy, uid: int) -> float | None:
        """Height where a vertical ray at ``xy`` first hits ``uid`` (None if it hits something else first)."""
        hit = self.bullet.rayTest([xy[0], xy[1], 1.0], [xy[0], xy[1], -0.05])[0]
        return float(hit[3][2]) if hit[0] == uid else None


def footprint_distance(xy, footprint: tuple) -> float:
    """Distance from a point to a footprint: a disc ``(x, y, r)`` or a rectangle ``(x, y, hx, hy, yaw)``."""
    if len(footprint) == 3:
        x, y, r = footprint
        return float(np.hypot(xy[0] - x, xy[1] - y) - r)
    x, y, hx, hy, yaw = footprint
    c, s = np.cos(yaw), np.sin(yaw)
    dx, dy = xy[0] - x, xy[1] - y
    lx, ly = c * dx + s * dy, -s * dx + c * dy  # the point in the rectangle's frame
    ox, oy = max(abs(lx) - hx, 0.0), max(abs(ly) - hy, 0.0)
    return float(np.hypot(ox, oy)) if (ox > 0 or oy > 0) else -float(min(hx - abs(lx), hy - abs(ly)))


@dataclass
class PrimitiveResult:
    """What happened during one pick-place."""

    picked: int | None = None  # uid of the object lifted, None if suction grabbed nothing
    timeout: bool = False  # a motion could not finish (blocked or out of reach)
    sim_steps: int = 0
    notes: list[str] = field(default_factory=list)


class SuctionGripper:
    """A floating suction rod (cup at its lower end = body origin) driven by a stiff fixed constraint."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        b = sim.bullet
        frame = [0.0, 0.0, ROD_LENGTH / 2]
        col = b.createCollisionShape(b.GEOM_CYLINDER, radius=TIP_RADIUS, height=ROD_LENGTH, collisionFramePosition=frame)
        vis = b.createVisualShape(b.GEOM_CYLINDER, radius=TIP_RADIUS, length=ROD_LENGTH, visualFramePosition=frame,
                                  rgbaColor=[0.8, 0.8, 0.85, 1.0])
        self.uid = b.createMultiBody(0.2, col, vis, list(PARK_POSITION), [0, 0, 0, 1])
        b.changeDynamics(self.uid, -1, lateralFriction=1.0, linearDamping=0.0, angularDamping=0.0)
        self.drive = b.createConstraint(self.uid, -1, -1, -1, b.JOINT_FIXED, [0, 0, 0], [0, 0, 0], list(PARK_POSITION))
        self.target = (np.array(PARK_POSITION, dtype=np.float64), 0.0)
        self.set_target(self.target[0], 0.0)
        self.attached: int | None = None
        self.suction: int | None = None
        self.attach_pose: tuple | None = None  # object pose in the cup frame while attached
        self.steps = 0

    # ---- low level ----------------------------------------------------------------------------------
    def set_target(self, position, yaw: float) -> None:
        self.target = (np.asarray(position, dtype=np.float64), float(yaw))
        self.sim.bullet.changeConstraint(self.drive, list(map(float, position)), geo.yaw_to_quat(yaw).tolist(),
                                         maxForce=2000.0)

    def tip_pose(self) -> tuple[np.ndarray, float]:
        pos, quat = self.sim.pose(self.uid)
        return pos, geo.quat_to_yaw(quat)

    def _step(self) -> None:
        self.sim.bullet.stepSimulation()
        self.steps += 1

    def touching(self) -> int | None:
        """A body in contact with the cup (or with the held object), None if nothing touches.

        Contacts along the side of the rod count too: the tool stops rather than plough through things.
        """
        b = self.sim.bullet
        for c in b.getContactPoints(bodyA=self.uid):
            if c[2] != self.attached:
                return c[2]
        if self.attached is not None:
            for c in b.getContactPoints(bodyA=self.attached):
                if c[2] != self.uid:
                    return c[2]
        return None

    def move(self, position, yaw: float, step_len: float, stop_on_contact: bool = False,
             max_extra_steps: int = 120) -> tuple[bool, int | None]:
        """Move the cup along a straight line to ``position`` (turning to ``yaw``).

        Returns (reached, contact): ``contact`` is the body touched when ``stop_on_contact`` ended the motion.
        """
        start, start_yaw = self.target
        goal = np.asarray(position, dtype=np.float64)
        dyaw = float(geo.wrap_angle(yaw - start_yaw))
        n = max(1, int(np.ceil(max(np.linalg.norm(goal - start) / step_len, abs(dyaw) / 0.05))))
        for i in range(1, n + 1):
            self.set_target(start + (goal - start) * i / n, start_yaw + dyaw * i / n)
            self._step()
            if stop_on_contact:
                hit = self.touching()
                if hit is not None:
                    self.hold_here()
                    return True, hit
        for _ in range(max_extra_steps):
            pos, cur_yaw = self.tip_pose()
            if np.linalg.norm(pos - goal) < 2e-3 and abs(geo.wrap_angle(cur_yaw - yaw)) < 0.02:
                return True, None
            self._step()
            if stop_on_contact:
                hit = self.touching()
                if hit is not None:
                    self.hold_here()
                    return True, hit
        return False, None

    def hold_here(self) -> None:
        """Freeze the drive target at the cup's current pose (stop pushing after a contact)."""
        pos, yaw = self.tip_pose()
        self.set_target(pos, yaw)

    def descend(self, xy, yaw: float, slow_from_z: float, floor_z: float = -0.01) -> int | None:
        """Go straight down at (x, y) until the cup or the held object touches something; returns that body."""
        pos, _ = self.tip_pose()
        slow_from_z = float(np.clip(slow_from_z, floor_z, pos[2]))
        _, hit = self.move([xy[0], xy[1], slow_from_z], yaw, DESCEND_FAST, stop_on_contact=True, max_extra_steps=30)
        if hit is not None:
            return hit
        _, hit = self.move([xy[0], xy[1], floor_z], yaw, DESCEND_SLOW, stop_on_contact=True, max_extra_steps=30)
        return hit

    # ---- suction ---------------------------------------------------------------------------------------
    def activate(self) -> int | None:
        """Create the suction constraint with a movable body touching the cup; returns its uid or None.

        Only contacts at the cup (the lowest few millimetres of the rod) can seal; a rod brushing an
        object with its side does not pick it.
        """
        b = self.sim.bullet
        if self.attached is not None:
            return self.attached
        cup = self.sim.pose(self.uid)
        for c in b.getContactPoints(bodyA=self.uid):
            uid = c[2]
            body = self.sim.bodies.get(uid)
            if body is None or not body.movable or c[5][2] > cup[0][2] + CUP_HEIGHT:
                continue
            rel = geo.pose_multiply(geo.pose_invert(cup), self.sim.pose(uid))
            self.attach(uid, rel)
            return uid
        return None

    def attach(self, uid: int, rel_pose) -> None:
        """Hold ``uid`` rigidly at ``rel_pose`` (its pose in the cup frame)."""
        b = self.sim.bullet
        self.suction = b.createConstraint(self.uid, -1, uid, -1, b.JOINT_FIXED, [0, 0, 0],
                                          list(map(float, rel_pose[0])), [0, 0, 0],
                                          list(map(float, rel_pose[1])), [0, 0, 0, 1])
        b.changeConstraint(self.suction, maxForce=200.0)
        b.setCollisionFilterPair(self.uid, uid, -1, -1, 0)
        self.attached, self.attach_pose = uid, (np.asarray(rel_pose[0]), np.asarray(rel_pose[1]))

    def release(self) -> int | None:
        """Drop the held object (if any); collisions with it resume once the cup has moved away."""
        held = self.attached
        if self.suction is not None:
            self.sim.bullet.removeConstraint(self.suction)
        self.suction, self.attached, self.attach_pose = None, None, None
        return held

    def restore_collisions(self, uid: int | None) -> None:
        if uid is not None and uid in self.sim.bodies:
            self.sim.bullet.setCollisionFilterPair(self.uid, uid, -1, -1, 1)

    # ---- snapshot ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"target": (self.target[0].copy(), self.target[1]), "attached": self.attached,
                "attach_pose": self.attach_pose}

    def restore(self, state: dict) -> None:
        """Re-create the drive target and suction constraint (pybullet's restoreState keeps neither)."""
        self.release()
        self.set_target(*state["target"])
        if state["attached"] is not None:
            self.attach(state["attached"], state["attach_pose"])


def pick_place(sim: Sim, pick: np.ndarray, place: np.ndarray) -> PrimitiveResult:
    """Ravens' pick-and-place primitive with a suction cup.

    1. travel above the pick pose, descend until contact, switch suction on, lift to the travel height;
    2. if something is held: travel above the place pose (turning by the place yaw minus the pick yaw),
       descend until the held object touches something, release, lift;
    3. park the tool out of the cameras' view and let the scene settle.
    """
    grip = sim.gripper
    grip.steps = 0
    result = PrimitiveResult()
    pick_yaw = geo.quat_to_yaw(pick[3:])
    place_yaw = geo.quat_to_yaw(place[3:])
    ok, _ = grip.move([pick[0], pick[1], TRAVEL_Z], pick_yaw, FAST_EMPTY)
    result.timeout |= not ok
    hit = grip.descend(pick[:2], pick_yaw, slow_from_z=pick[2] + 0.03)
    held = grip.activate() if hit is not None else None
    result.picked = held
    ok, _ = grip.move([pick[0], pick[1], TRAVEL_Z], pick_yaw, FAST_HOLDING)
    result.timeout |= not ok
    if held is not None and grip.attached is None:
        result.notes.append("object lost while lifting")
    if grip.attached is not None:
        ok, _ = grip.move([place[0], place[1], TRAVEL_Z], place_yaw, FAST_HOLDING)
        result.timeout |= not ok
        grip.descend(place[:2], place_yaw, slow_from_z=place[2] + 0.04)
    dropped = grip.release()
    pos, yaw = grip.tip_pose()
    grip.move([pos[0], pos[1], TRAVEL_Z], yaw, FAST_EMPTY)
    grip.restore_collisions(dropped)
    grip.restore_collisions(held)
    grip.move(PARK_POSITION, 0.0, FAST_EMPTY)
    settle = sim.settle()
    result.sim_steps = grip.steps + settle
    return result
