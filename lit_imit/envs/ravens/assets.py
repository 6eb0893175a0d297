"""Procedural assets of the Ravens tasks, built in code (no downloads).

* 20 named flat **kitting shapes** (letters, polygons, ring, flower, star, heart...), each a union of
  convex 2-D pieces extruded to a prism. A shape is written once to a Wavefront OBJ file with one
  ``o`` group per convex piece, which pybullet turns into a compound of convex hulls for collision and
  uses as is for rendering. Train shapes are ids 0-13, test shapes 14-19 (as Ravens' packing-shapes).
* **Containers**: the bowl is built the same way; the open box (a new size every episode) and the pyramid
  stand are compounds of primitive boxes.
* **Household objects** are named meshes shipped in ``pybullet_data`` (duck, teddy bear, mug, lego brick,
  jenga block, domino, soccer ball, ...) rescaled to tabletop size, split into a seen and an unseen set.

Files go to ``$LIT_IMIT_CACHE/ravens_assets`` (default ``~/.cache/lit_imit/ravens_assets``), named by
the hash of their content and written atomically, so concurrent processes share them safely.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lit_imit.envs.ravens import geometry as geo

# ---- colours (Ravens' Tableau palette, RGB in [0, 1]) -------------------------------------------------
COLORS: dict[str, tuple[float, float, float]] = {
    "blue": (78 / 255, 121 / 255, 167 / 255),
    "red": (255 / 255, 87 / 255, 89 / 255),
    "green": (89 / 255, 169 / 255, 79 / 255),
    "orange": (242 / 255, 142 / 255, 43 / 255),
    "yellow": (237 / 255, 201 / 255, 72 / 255),
    "purple": (176 / 255, 122 / 255, 161 / 255),
    "pink": (255 / 255, 157 / 255, 167 / 255),
    "cyan": (118 / 255, 183 / 255, 178 / 255),
    "brown": (156 / 255, 117 / 255, 95 / 255),
    "white": (255 / 255, 255 / 255, 255 / 255),
    "gray": (186 / 255, 176 / 255, 172 / 255),
}
TRAIN_COLORS = ("blue", "red", "green", "yellow", "brown", "gray", "cyan")
EVAL_COLORS = ("blue", "red", "green", "orange", "purple", "pink", "white")

BLOCK_SIZE = 0.04
SHAPE_THICKNESS = 0.015
SHAPE_MAX_EXTENT = 0.07  # largest side of a kitting shape (the packing box is at least 10 cm inside)


def rgba(name: str, alpha: float = 1.0) -> list[float]:
    """RGBA list of a named Ravens colour."""
    return [*COLORS[name], alpha]


# ---- cache ---------------------------------------------------------------------------------------------
def asset_dir() -> Path:
    """Directory where generated meshes live (created on demand)."""
    root = Path(os.environ.get("LIT_IMIT_CACHE", Path.home() / ".cache" / "lit_imit"))
    path = root / "ravens_assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_cached(stem: str, text: str) -> str:
    """Write ``text`` under a content-hashed name unless it already exists; return the path."""
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    path = asset_dir() / f"{stem}-{digest}.obj"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return str(path)


# ---- 2-D convex pieces ----------------------------------------------------------------------------------
def _ccw(poly: np.ndarray) -> np.ndarray:
    """Return the polygon counter-clockwise (positive signed area)."""
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return poly if area > 0 else poly[::-1]


def rect(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> np.ndarray:
    """Rectangle of size w x h centred at (cx, cy), rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def bar(p0: Sequence[float], p1: Sequence[float], width: float) -> np.ndarray:
    """A stroke of the given width from p0 to p1 (square caps extended by half a width, so strokes join)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    length = float(np.linalg.norm(d))
    centre = (p0 + p1) / 2
    return rect(centre[0], centre[1], length + width, width, float(np.arctan2(d[1], d[0])))


def regular_polygon(n: int, radius: float, cx: float = 0.0, cy: float = 0.0, rot: float = np.pi / 2) -> np.ndarray:
    """Regular n-gon with circumradius ``radius`` and a vertex at angle ``rot``."""
    a = rot + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], axis=1)


def disc(radius: float, cx: float = 0.0, cy: float = 0.0, n: int = 20) -> np.ndarray:
    """A circle approximated by an n-gon."""
    return regular_polygon(n, radius, cx, cy, rot=0.0)


def annulus(r_in: float, r_out: float, n: int = 16, start: float = 0.0, stop: float = 2 * np.pi) -> list[np.ndarray]:
    """A ring (or arc) as n convex quadrilateral pieces."""
    a = np.linspace(start, stop, n + 1)
    pieces = []
    for a0, a1 in zip(a[:-1], a[1:]):
        pieces.append(np.array([[r_in * np.cos(a0), r_in * np.sin(a0)], [r_out * np.cos(a0), r_out * np.sin(a0)],
                                [r_out * np.cos(a1), r_out * np.sin(a1)], [r_in * np.cos(a1), r_in * np.sin(a1)]]))
    return pieces


# ---- the 20 kitting shapes (footprints of about 6-7 cm) ---------------------------------------------------
W = 0.014  # stroke width of letters


def _letter_r():
    return [bar((-0.018, -0.035), (-0.018, 0.035), W), bar((-0.018, 0.03), (0.012, 0.03), W),
            bar((0.015, 0.03), (0.015, 0.002), W), bar((-0.018, 0.0), (0.012, 0.0), W),
            bar((0.0, -0.002), (0.02, -0.033), W)]


def _star():
    outer, inner = regular_polygon(5, 0.037), regular_polygon(5, 0.015, rot=np.pi / 2 + np.pi / 5)
    points = [np.array([inner[i - 1], outer[i], inner[i]]) for i in range(5)]
    return [inner] + points


def _letter_g():
    return (annulus(0.02, 0.034, n=9, start=np.radians(35), stop=np.radians(360))
            + [bar((0.006, -0.001), (0.027, -0.001), 0.012)])


def _heart():
    return [disc(0.018, -0.016, 0.012), disc(0.018, 0.016, 0.012),
            np.array([[-0.032, 0.008], [0.0, -0.034], [0.032, 0.008], [0.0, 0.014]])]


SHAPE_BUILDERS: dict[int, tuple[str, Callable[[], list[np.ndarray]]]] = {
    0: ("letter R shape", _letter_r),
    1: ("letter A shape", lambda: [bar((-0.024, -0.033), (0.0, 0.033), W), bar((0.024, -0.033), (0.0, 0.033), W),
                                   bar((-0.012, -0.008), (0.012, -0.008), 0.012)]),
    2: ("triangle", lambda: [regular_polygon(3, 0.04)]),
    3: ("square", lambda: [rect(0, 0, 0.05, 0.05)]),
    4: ("plus", lambda: [rect(0, 0, 0.066, 0.02), rect(0, 0, 0.02, 0.066)]),
    5: ("letter T shape", lambda: [bar((-0.03, 0.03), (0.03, 0.03), W), bar((0.0, 0.03), (0.0, -0.035), W)]),
    6: ("diamond", lambda: [np.array([[0, -0.036], [0.024, 0], [0, 0.036], [-0.024, 0]])]),
    7: ("pentagon", lambda: [regular_polygon(5, 0.033)]),
    8: ("rectangle", lambda: [rect(0, 0, 0.07, 0.034)]),
    9: ("flower", lambda: [disc(0.014)] + [disc(0.012, 0.021 * np.cos(a), 0.021 * np.sin(a), n=14)
                                           for a in np.pi / 2 + 2 * np.pi * np.arange(5) / 5]),
    10: ("star", _star),
    11: ("circle", lambda: [disc(0.031, n=28)]),
    12: ("letter G shape", _letter_g),
    13: ("letter V shape", lambda: [bar((-0.024, 0.033), (0.0, -0.033), W), bar((0.024, 0.033), (0.0, -0.033), W)]),
    14: ("letter E shape", lambda: [bar((-0.02, -0.035), (-0.02, 0.035), W)]
         + [bar((-0.02, y), (0.02, y), 0.012) for y in (0.029, 0.0, -0.029)]),
    15: ("letter L shape", lambda: [bar((-0.018, -0.033), (-0.018, 0.035), W), bar((-0.018, -0.033), (0.024, -0.033), W)]),
    16: ("ring", lambda: annulus(0.017, 0.033, n=16)),
    17: ("hexagon", lambda: [regular_polygon(6, 0.033)]),
    18: ("heart", _heart),
    19: ("letter M shape", lambda: [bar((-0.027, -0.033), (-0.027, 0.033), 0.012), bar((0.027, -0.033), (0.027, 0.033), 0.012),
                                    bar((-0.027, 0.033), (0.0, -0.006), 0.012), bar((0.027, 0.033), (0.0, -0.006), 0.012)]),
}
SHAPE_NAMES: dict[int, str] = {i: name for i, (name, _) in SHAPE_BUILDERS.items()}
TRAIN_SHAPES = tuple(range(0, 14))
TEST_SHAPES = tuple(range(14, 20))


def shape_pieces(shape_id: int) -> list[np.ndarray]:
    """Convex CCW pieces of a kitting shape, centred on its bounding box (metres)."""
    if shape_id not in SHAPE_BUILDERS:
        raise ValueError(f"unknown shape id {shape_id}; valid ids are 0..{len(SHAPE_BUILDERS) - 1}")
    pieces = [_ccw(np.asarray(piece, dtype=np.float64)) for piece in SHAPE_BUILDERS[shape_id][1]()]
    allpts = np.concatenate(pieces)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    shrink = min(1.0, SHAPE_MAX_EXTENT / float(np.max(hi - lo)))  # every shape fits the smallest box
    return [(piece - (lo + hi) / 2) * shrink for piece in pieces]


# ---- OBJ writer -------------------------------------------------------------------------------------------
def prisms_obj(pieces: Sequence[tuple[np.ndarray, float, float]]) -> str:
    """OBJ text of convex prisms ``(polygon (n, 2) CCW, z_bottom, z_top)``, one ``o`` group each.

    Faces carry explicit normals so the renderer shades them flat.
    """
    lines = ["# generated by lit_imit.envs.ravens.assets"]
    v_off, n_off = 0, 0
    for k, (poly, z0, z1) in enumerate(pieces):
        poly = _ccw(np.asarray(poly, dtype=np.float64))
        n = len(poly)
        lines.append(f"o piece{k}")
        for z in (z0, z1):
            lines.extend(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y in poly)
        normals = [(0.0, 0.0, -1.0), (0.0, 0.0, 1.0)]
        for i in range(n):
            d = poly[(i + 1) % n] - poly[i]
            normals.append((d[1] / np.hypot(*d), -d[0] / np.hypot(*d), 0.0))
        lines.extend(f"vn {a:.6f} {b:.6f} {c:.6f}" for a, b, c in normals)
        bottom = [v_off + i + 1 for i in range(n)]
        top = [v_off + n + i + 1 for i in range(n)]
        lines.append("f " + " ".join(f"{i}//{n_off + 1}" for i in reversed(bottom)))
        lines.append("f " + " ".join(f"{i}//{n_off + 2}" for i in top))
        for i in range(n):
            j = (i + 1) % n
            nn = n_off + 3 + i
            lines.append(f"f {bottom[i]}//{nn} {bottom[j]}//{nn} {top[j]}//{nn} {top[i]}//{nn}")
        v_off += 2 * n
        n_off += n + 2
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=None)
def shape_obj(shape_id: int, thickness: float = SHAPE_THICKNESS) -> str:
    """Path of the OBJ of a kitting shape, centred in 3-D (z from -t/2 to t/2)."""
    pieces = [(poly, -thickness / 2, thickness / 2) for poly in shape_pieces(shape_id)]
    return _write_cached(f"shape{shape_id:02d}", prisms_obj(pieces))


@lru_cache(maxsize=None)
def bowl_obj(radius: float = 0.06, height: float = 0.035, wall: float = 0.007, bottom: float = 0.005) -> str:
    """An open round bowl (flat bottom, 16 wall segments), origin at the centre of its underside."""
    pieces = [(disc(radius - wall / 2, n=24), 0.0, bottom)]
    pieces += [(quad, 0.0, height) for quad in annulus(radius - wall, radius, n=16)]
    return _write_cached("bowl", prisms_obj(pieces))


def container_boxes(size_x: float, size_y: float, height: float, wall: float = 0.006,
                    bottom: float = 0.004) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """An open box whose *inner* footprint is size_x x size_y as (centre, half extents) of 5 slabs.

    The origin is the centre of its underside. Built from primitive boxes rather than a mesh file because
    every episode draws a new size (a file per size would grow the cache without bound).
    """
    hx, hy, hz = size_x / 2, size_y / 2, height / 2
    return [
        ((0.0, 0.0, bottom / 2), (hx + wall, hy + wall, bottom / 2)),
        ((hx + wall / 2, 0.0, hz), (wall / 2, hy + wall, hz)),
        ((-hx - wall / 2, 0.0, hz), (wall / 2, hy + wall, hz)),
        ((0.0, hy + wall / 2, hz), (hx, wall / 2, hz)),
        ((0.0, -hy - wall / 2, hz), (hx, wall / 2, hz)),
    ]


# ---- household objects from pybullet_data ------------------------------------------------------------------
@dataclass(frozen=True)
class MeshObject:
    """A named pybullet_data mesh rescaled so that its largest side is ``extent`` metres.

    ``up`` is the Euler rotation (rad) that puts the mesh in a stable resting pose; ``collision`` is a mesh file, or
    "box"/"sphere" for a primitive fitted to the visual bounds. ``rgba`` None keeps the mesh's texture.
    """

    name: str
    visual: str
    collision: str
    extent: float
    up: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] | None = None
    mass: float = 0.1
    rolling_friction: float = 0.0
    stretch: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-axis mesh scale before ``up`` (jenga)


def _data(path: str) -> str:
    import pybullet_data  # light: only a path

    return os.path.join(pybullet_data.getDataPath(), path)


HALF_PI = np.pi / 2
MESH_OBJECTS: dict[str, MeshObject] = {obj.name: obj for obj in [
    MeshObject("rubber duck", "duck.obj", "duck_vhacd.obj", 0.07, (HALF_PI, 0, 0), (1.0, 0.85, 0.2, 1.0)),
    MeshObject("teddy bear", "teddy2_VHACD_CHs.obj", "teddy2_VHACD_CHs.obj", 0.075, (0, 0, 0), (0.65, 0.42, 0.25, 1.0)),
    MeshObject("lego brick", "lego/lego.obj", "box", 0.06, (HALF_PI, 0, 0), (0.9, 0.15, 0.15, 1.0)),
    MeshObject("jenga block", "jenga/jenga.obj", "box", 0.075, (0, 0, 0), (0.85, 0.7, 0.45, 1.0), stretch=(5, 5 / 3, 1)),
    MeshObject("mug", "objects/mug.obj", "objects/mug_col.obj", 0.075, (0, 0, 0), (0.95, 0.95, 0.9, 1.0)),
    MeshObject("toy wheel", "racecar/meshes/left_front_wheel.obj", "racecar/meshes/left_front_wheel.obj", 0.06),
    MeshObject("donut", "torus/torus_textured.obj", "torus/torus_textured.obj", 0.07, (HALF_PI, 0, 0), (0.85, 0.55, 0.3, 1.0)),
    MeshObject("toy cube", "toys/cube.obj", "box", 0.045, (0, 0, 0), (0.3, 0.75, 0.35, 1.0)),
    MeshObject("domino", "domino/domino.obj", "box", 0.065, (HALF_PI, 0, 0), None),
    MeshObject("soccer ball", "soccerball.obj", "sphere", 0.055, (0, 0, 0), None, rolling_friction=0.02),
    MeshObject("bunny figure", "bunny.obj", "bunny.obj", 0.07, (HALF_PI, 0, 0), (0.8, 0.75, 0.7, 1.0)),
    MeshObject("toy prism", "toys/prism.obj", "toys/prism.obj", 0.055, (HALF_PI, 0, 0), (0.6, 0.3, 0.8, 1.0)),
    MeshObject("stone", "stone.obj", "stone.obj", 0.06, (0, 0, 0), (0.45, 0.45, 0.48, 1.0)),
    MeshObject("shape sorter", "toys/shape_sorter.obj", "toys/shape_sorter.obj", 0.06, (0, 0, 0), (0.9, 0.6, 0.1, 1.0)),
]}
SEEN_OBJECTS = ("rubber duck", "teddy bear", "lego brick", "jenga block", "mug", "toy wheel", "donut", "toy cube")
UNSEEN_OBJECTS = ("domino", "soccer ball", "bunny figure", "toy prism", "stone", "shape sorter")


@lru_cache(maxsize=None)
def obj_vertices(path: str) -> np.ndarray:
    """Vertex array (n, 3) of an OBJ file (used to size and centre meshes)."""
    verts = []
    with open(path, errors="ignore") as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
    if not verts:
        raise ValueError(f"{path} has no vertices")
    return np.asarray(verts)


@dataclass(frozen=True)
class MeshPlacement:
    """How to build a MeshObject: file paths, scale, frame offset and the size of its upright box."""

    visual: str
    collision: str
    scale: tuple[float, float, float]  # pybullet meshScale (mesh axes)
    frame_position: tuple[float, float, float]
    frame_orientation: tuple[float, float, float, float]
    size: tuple[float, float, float]


@lru_cache(maxsize=None)
def mesh_placement(name: str) -> MeshPlacement:
    """Scale and recentre a catalogue mesh so that the body origin is the centre of its upright bounds."""
    if name not in MESH_OBJECTS:
        raise ValueError(f"unknown object {name!r}; known: {sorted(MESH_OBJECTS)}")
    spec = MESH_OBJECTS[name]
    visual = _data(spec.visual)
    rot = geo.quat_from_euler(*spec.up)
    verts = (obj_vertices(visual) * np.asarray(spec.stretch)) @ geo.quat_to_matrix(rot).T
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    scale = spec.extent / float(np.max(hi - lo))
    centre = (lo + hi) / 2 * scale
    collision = spec.collision if spec.collision in ("box", "sphere") else _data(spec.collision)
    mesh_scale = tuple(float(scale * k) for k in spec.stretch)
    return MeshPlacement(visual, collision, mesh_scale, tuple(-centre), tuple(rot), tuple((hi - lo) * scale))
