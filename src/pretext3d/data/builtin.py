"""Built-in data: a procedural dataset of 14 classes of objects made of primitives.

Every object is a triangle mesh (z up, standing on z = 0) with a part label per face, built
from a seeded generator with real intra-class variation (dimensions, proportions, optional and
alternative parts, counts). The same ``seed`` always gives the same objects, so tests, the demo
and later issues (rendering, part segmentation) need no downloads.

Parts are numbered globally across classes, as in ShapeNetPart: ``PART_NAMES[c]`` lists the
parts of class c and ``part_offset(c)`` is the id of its first part.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh
import trimesh.creation as tc

from pretext3d.data.meshes import Mesh
from pretext3d.data.pointclouds import ArrayPointClouds, item_seed
from pretext3d.geometry.sampling import mesh_to_points
from pretext3d.geometry.transforms import normalize_unit_sphere

__all__ = [
    "CLASSES",
    "PART_NAMES",
    "part_offset",
    "make_shape",
    "builtin_meshes",
    "builtin_splits",
    "export_builtin_meshes",
    "parse_builtin_spec",
]

PART_NAMES: dict[str, list[str]] = {
    "airplane": ["fuselage", "wings", "tail", "engines"],
    "bed": ["frame", "mattress", "headboard", "pillow"],
    "bench": ["seat", "legs", "back"],
    "bottle": ["body", "neck", "cap"],
    "car": ["body", "cabin", "wheels"],
    "chair": ["seat", "back", "legs", "arms"],
    "desk": ["top", "legs", "drawers"],
    "lamp": ["base", "pole", "shade"],
    "mug": ["body", "handle"],
    "shelf": ["frame", "shelves"],
    "sofa": ["seat", "back", "arms"],
    "stool": ["seat", "legs", "footrest"],
    "table": ["top", "legs"],
    "vase": ["body", "rim"],
}
CLASSES: list[str] = sorted(PART_NAMES)


def part_offset(class_name: str) -> int:
    """Global id of the first part of ``class_name``."""
    return sum(len(PART_NAMES[c]) for c in CLASSES[: CLASSES.index(class_name)])


class _Builder:
    """Accumulates primitive meshes with their part ids into one labelled mesh."""

    def __init__(self, class_name: str):
        self.parts = PART_NAMES[class_name]
        self.offset = part_offset(class_name)
        self.pieces: list[tuple[trimesh.Trimesh, int]] = []

    def add(self, mesh: trimesh.Trimesh, part: str) -> None:
        self.pieces.append((mesh, self.offset + self.parts.index(part)))

    def box(self, part: str, center, size, yaw: float = 0.0, pitch: float = 0.0) -> None:
        transform = trimesh.transformations.euler_matrix(0.0, pitch, yaw)
        transform[:3, 3] = center
        self.add(tc.box(extents=size, transform=transform), part)

    def rod(self, part: str, start, end, radius: float, sections: int = 16) -> None:
        self.add(tc.cylinder(radius=radius, segment=[start, end], sections=sections), part)

    def cone(self, part: str, base_center, radius: float, height: float, sections: int = 20) -> None:
        transform = np.eye(4)
        transform[:3, 3] = base_center
        self.add(tc.cone(radius=radius, height=height, sections=sections, transform=transform), part)

    def ellipsoid(self, part: str, center, radii) -> None:
        sphere = tc.icosphere(subdivisions=2)
        sphere.apply_scale(radii)
        sphere.apply_translation(center)
        self.add(sphere, part)

    def ring(self, part: str, center, major: float, minor: float, axis: str = "y") -> None:
        torus = tc.torus(major, minor, major_sections=24, minor_sections=8)
        if axis == "y":  # torus is built around z; stand it up in the x-z plane
            torus.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
        torus.apply_translation(center)
        self.add(torus, part)

    def tube(self, part: str, base_center, r_in: float, r_out: float, height: float) -> None:
        transform = np.eye(4)
        transform[:3, 3] = np.asarray(base_center) + [0, 0, height / 2]
        self.add(tc.annulus(r_min=r_in, r_max=r_out, height=height, sections=24, transform=transform), part)

    def lathe(self, part: str, profile, base_z: float = 0.0, sections: int = 24) -> None:
        """A surface of revolution about the z axis; profile: (P, 2) rows of (radius, height)."""
        mesh = tc.revolve(np.asarray(profile, dtype=np.float64), sections=sections)
        mesh.apply_translation([0, 0, base_z])
        self.add(mesh, part)

    def build(self) -> Mesh:
        vertices, faces, labels, offset = [], [], [], 0
        for mesh, label in self.pieces:
            vertices.append(np.asarray(mesh.vertices))
            faces.append(np.asarray(mesh.faces) + offset)
            labels.append(np.full(len(mesh.faces), label, dtype=np.int64))
            offset += len(mesh.vertices)
        return Mesh(np.concatenate(vertices), np.concatenate(faces).astype(np.int64), np.concatenate(labels))


def _legs(b: _Builder, part: str, half_x: float, half_y: float, top: float, width: float, round_: bool, splay: float = 0.0) -> None:
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * half_x, sy * half_y
            if round_:
                b.rod(part, [x + sx * splay, y + sy * splay, 0.0], [x, y, top], width / 2)
            else:
                b.box(part, [x, y, top / 2], [width, width, top])


def _chair(r: np.random.Generator) -> Mesh:
    b = _Builder("chair")
    w, d, seat_h, t = r.uniform(0.4, 0.6), r.uniform(0.4, 0.6), r.uniform(0.38, 0.5), r.uniform(0.04, 0.08)
    b.box("seat", [0, 0, seat_h + t / 2], [w, d, t])
    leg = r.uniform(0.035, 0.06)
    _legs(b, "legs", w / 2 - leg, d / 2 - leg, seat_h, leg, round_=r.random() < 0.5, splay=r.uniform(0, 0.04))
    back_h, back_t, tilt = r.uniform(0.35, 0.65), r.uniform(0.03, 0.06), r.uniform(0.0, 0.25)
    y_back = -d / 2 + back_t / 2
    base = seat_h + t
    if r.random() < 0.6:  # solid back
        b.box("back", [0, y_back - math.sin(tilt) * back_h / 2, base + back_h / 2], [w, back_t, back_h], pitch=0.0)
    else:  # slats and a top rail
        n = int(r.integers(2, 5))
        for x in np.linspace(-w / 2 + 0.03, w / 2 - 0.03, n):
            b.box("back", [x, y_back, base + back_h / 2], [0.03, back_t, back_h])
        b.box("back", [0, y_back, base + back_h - 0.04], [w, back_t, 0.08])
    if r.random() < 0.4:
        arm_h = r.uniform(0.18, 0.28)
        for sx in (-1, 1):
            b.box("arms", [sx * (w / 2 - 0.02), 0, base + arm_h], [0.05, d * 0.9, 0.04])
            b.box("arms", [sx * (w / 2 - 0.02), d * 0.35, base + arm_h / 2], [0.04, 0.04, arm_h])
    return b.build()


def _table(r: np.random.Generator) -> Mesh:
    b = _Builder("table")
    height, t = r.uniform(0.6, 0.8), r.uniform(0.03, 0.07)
    round_top = r.random() < 0.35
    if round_top:
        radius = r.uniform(0.4, 0.65)
        b.rod("top", [0, 0, height - t], [0, 0, height], radius, sections=32)
        half_x = half_y = radius * 0.6
    else:
        w, d = r.uniform(0.8, 1.6), r.uniform(0.5, 0.9)
        b.box("top", [0, 0, height - t / 2], [w, d, t])
        half_x, half_y = w / 2 - 0.06, d / 2 - 0.06
    if round_top and r.random() < 0.6:  # pedestal
        b.rod("legs", [0, 0, 0.04], [0, 0, height - t], r.uniform(0.04, 0.08))
        b.rod("legs", [0, 0, 0], [0, 0, 0.04], r.uniform(0.25, 0.4), sections=24)
    else:
        _legs(b, "legs", half_x, half_y, height - t, r.uniform(0.04, 0.08), round_=r.random() < 0.5)
        if r.random() < 0.3:  # a lower shelf between the legs
            b.box("legs", [0, 0, height * 0.3], [2 * half_x, 2 * half_y, 0.02])
    return b.build()


def _lamp(r: np.random.Generator) -> Mesh:
    b = _Builder("lamp")
    base_r, base_h = r.uniform(0.1, 0.2), r.uniform(0.02, 0.06)
    if r.random() < 0.7:
        b.rod("base", [0, 0, 0], [0, 0, base_h], base_r, sections=24)
    else:
        b.box("base", [0, 0, base_h / 2], [2 * base_r, 2 * base_r, base_h])
    pole_h, pole_r = r.uniform(0.4, 1.0), r.uniform(0.01, 0.025)
    top = np.array([0.0, 0.0, base_h + pole_h])
    b.rod("pole", [0, 0, base_h], top, pole_r, sections=10)
    if r.random() < 0.4:  # desk lamp: an angled arm
        angle = r.uniform(0.3, 1.2)
        arm = r.uniform(0.2, 0.45)
        end = top + arm * np.array([math.sin(angle), 0.0, math.cos(angle)])
        b.rod("pole", top, end, pole_r, sections=10)
        top = end
    shade_r, shade_h = r.uniform(0.1, 0.25), r.uniform(0.12, 0.3)
    style = r.integers(0, 3)
    if style == 0:
        b.cone("shade", top - [0, 0, shade_h * 0.5], shade_r, shade_h)
    elif style == 1:
        b.tube("shade", top - [0, 0, shade_h * 0.5], shade_r * 0.9, shade_r, shade_h)
    else:
        b.ellipsoid("shade", top, [shade_r, shade_r, shade_r * r.uniform(0.6, 1.0)])
    return b.build()


def _mug(r: np.random.Generator) -> Mesh:
    b = _Builder("mug")
    radius, height, wall = r.uniform(0.28, 0.45), r.uniform(0.5, 1.0), r.uniform(0.03, 0.06)
    b.tube("body", [0, 0, 0], radius - wall, radius, height)
    b.rod("body", [0, 0, 0], [0, 0, wall], radius - wall, sections=24)
    major, minor = r.uniform(0.14, 0.25) * height / 0.75, r.uniform(0.025, 0.05)
    b.ring("handle", [radius, 0, height * r.uniform(0.4, 0.6)], min(major, height * 0.4), minor)
    return b.build()


def _bottle(r: np.random.Generator) -> Mesh:
    b = _Builder("bottle")
    radius, body_h = r.uniform(0.12, 0.25), r.uniform(0.45, 0.85)
    if r.random() < 0.3:  # square bottle
        b.box("body", [0, 0, body_h / 2], [2 * radius, 2 * radius, body_h])
    else:
        b.rod("body", [0, 0, 0], [0, 0, body_h], radius, sections=24)
    neck_r = r.uniform(0.035, 0.07)
    shoulder = r.uniform(0.05, 0.25)
    b.cone("neck", [0, 0, body_h], radius, shoulder)
    neck_h = r.uniform(0.12, 0.3)
    b.rod("neck", [0, 0, body_h + shoulder * 0.5], [0, 0, body_h + shoulder + neck_h], neck_r)
    cap_h = r.uniform(0.04, 0.09)
    top = body_h + shoulder + neck_h
    b.rod("cap", [0, 0, top], [0, 0, top + cap_h], neck_r * r.uniform(1.05, 1.3))
    return b.build()


def _bed(r: np.random.Generator) -> Mesh:
    b = _Builder("bed")
    length, width, frame_h, leg_h = r.uniform(1.8, 2.2), r.uniform(0.9, 1.7), r.uniform(0.15, 0.3), r.uniform(0.05, 0.2)
    _legs(b, "frame", length / 2 - 0.05, width / 2 - 0.05, leg_h, 0.06, round_=False)
    b.box("frame", [0, 0, leg_h + frame_h / 2], [length, width, frame_h])
    mat_h = r.uniform(0.12, 0.28)
    top = leg_h + frame_h
    b.box("mattress", [0.02, 0, top + mat_h / 2], [length - 0.08, width - 0.06, mat_h])
    head_h = r.uniform(0.5, 1.1)
    b.box("headboard", [-length / 2 - 0.03, 0, head_h / 2], [0.06, width, head_h])
    if r.random() < 0.4:
        b.box("headboard", [length / 2 + 0.03, 0, head_h * 0.3], [0.06, width, head_h * 0.6])
    n_pillows = int(r.integers(0, 3)) if width > 1.2 else int(r.integers(0, 2))
    for y in np.linspace(-width / 4, width / 4, n_pillows) if n_pillows > 1 else [0.0] * n_pillows:
        b.ellipsoid("pillow", [-length / 2 + 0.25, y, top + mat_h + 0.05], [0.15, min(0.3, width / 4), 0.07])
    return b.build()


def _shelf(r: np.random.Generator) -> Mesh:
    b = _Builder("shelf")
    height, width, depth, t = r.uniform(1.0, 2.0), r.uniform(0.5, 1.2), r.uniform(0.25, 0.45), r.uniform(0.02, 0.04)
    for sx in (-1, 1):
        b.box("frame", [sx * (width / 2 - t / 2), 0, height / 2], [t, depth, height])
    b.box("frame", [0, 0, height - t / 2], [width, depth, t])
    b.box("frame", [0, 0, t / 2 + 0.05], [width, depth, t])
    if r.random() < 0.6:
        b.box("frame", [0, -depth / 2 + 0.005, height / 2], [width, 0.01, height])
    n = int(r.integers(1, 5))
    for z in np.linspace(0.05 + t, height - t, n + 2)[1:-1]:
        b.box("shelves", [0, 0, z], [width - 2 * t, depth * 0.95, t])
    return b.build()


def _airplane(r: np.random.Generator) -> Mesh:
    b = _Builder("airplane")
    length, radius = r.uniform(1.8, 3.0), r.uniform(0.1, 0.2)
    z = 0.5
    b.rod("fuselage", [-length / 2, 0, z], [length / 2, 0, z], radius, sections=20)
    b.cone("fuselage", [length / 2, 0, z], radius, 0.0 + r.uniform(0.2, 0.5))
    b.pieces[-1][0].apply_transform(
        trimesh.transformations.rotation_matrix(math.pi / 2, [0, 1, 0], point=[length / 2, 0, z])
    )
    span, chord, sweep = r.uniform(1.6, 3.0), r.uniform(0.25, 0.6), r.uniform(0.0, 0.6)
    wing_x = r.uniform(-0.15, 0.15) * length
    for side in (-1, 1):
        b.box("wings", [wing_x - math.sin(sweep) * span / 4, side * span / 4, z], [chord, span / 2, 0.04], yaw=side * sweep)
    tail_x = -length / 2 + 0.15
    b.box("tail", [tail_x, 0, z + r.uniform(0.2, 0.35)], [r.uniform(0.2, 0.4), 0.04, r.uniform(0.3, 0.6)])
    b.box("tail", [tail_x, 0, z + 0.05], [0.2, span * r.uniform(0.25, 0.4), 0.03])
    n_engines = int(r.choice([0, 2, 4]))
    for k in range(n_engines):
        side = -1 if k % 2 == 0 else 1
        y = side * span * (0.15 if k < 2 else 0.3)
        b.rod("engines", [wing_x + 0.25, y, z - 0.12], [wing_x - 0.15, y, z - 0.12], r.uniform(0.05, 0.1))
    return b.build()


def _car(r: np.random.Generator) -> Mesh:
    b = _Builder("car")
    length, width, body_h, wheel_r = r.uniform(1.6, 2.6), r.uniform(0.7, 1.0), r.uniform(0.25, 0.45), r.uniform(0.14, 0.26)
    b.box("body", [0, 0, wheel_r + body_h / 2], [length, width, body_h])
    cabin_l, cabin_h = r.uniform(0.5, 1.2) * length / 2, r.uniform(0.2, 0.4)
    truck = r.random() < 0.3
    cabin_x = length / 2 - cabin_l / 2 - 0.1 if truck else r.uniform(-0.15, 0.15) * length
    b.box("cabin", [cabin_x, 0, wheel_r + body_h + cabin_h / 2], [cabin_l, width * 0.9, cabin_h])
    tire = r.uniform(0.08, 0.16)
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (length / 2 - wheel_r - 0.1), sy * (width / 2)
            b.rod("wheels", [x, y - tire / 2, wheel_r], [x, y + tire / 2, wheel_r], wheel_r, sections=20)
    return b.build()


def _sofa(r: np.random.Generator) -> Mesh:
    b = _Builder("sofa")
    length, depth, seat_h = r.uniform(1.3, 2.4), r.uniform(0.7, 0.95), r.uniform(0.3, 0.45)
    b.box("seat", [0, 0, seat_h / 2], [length, depth, seat_h])
    n_cushions = int(r.integers(0, 4))
    for x in np.linspace(-length / 3, length / 3, n_cushions) if n_cushions > 1 else [0.0] * n_cushions:
        b.box("seat", [x, 0.05, seat_h + 0.05], [length / max(n_cushions, 1) * 0.95, depth * 0.8, 0.1])
    back_h, back_t = r.uniform(0.3, 0.55), r.uniform(0.12, 0.25)
    b.box("back", [0, -depth / 2 + back_t / 2, seat_h + back_h / 2], [length, back_t, back_h])
    if r.random() < 0.85:
        arm_w, arm_h = r.uniform(0.08, 0.25), r.uniform(0.12, 0.3)
        for sx in (-1, 1):
            b.box("arms", [sx * (length / 2 + arm_w / 2), 0, (seat_h + arm_h) / 2], [arm_w, depth, seat_h + arm_h])
    return b.build()


def _bench(r: np.random.Generator) -> Mesh:
    b = _Builder("bench")
    length, depth, height, t = r.uniform(0.9, 1.8), r.uniform(0.28, 0.45), r.uniform(0.38, 0.5), r.uniform(0.03, 0.07)
    if r.random() < 0.5:  # plank seat
        n = int(r.integers(2, 5))
        for y in np.linspace(-depth / 2 + depth / (2 * n), depth / 2 - depth / (2 * n), n):
            b.box("seat", [0, y, height - t / 2], [length, depth / n * 0.85, t])
    else:
        b.box("seat", [0, 0, height - t / 2], [length, depth, t])
    if r.random() < 0.5:  # two panel legs
        for sx in (-1, 1):
            b.box("legs", [sx * (length / 2 - 0.08), 0, (height - t) / 2], [0.04, depth * 0.9, height - t])
    else:
        _legs(b, "legs", length / 2 - 0.06, depth / 2 - 0.04, height - t, r.uniform(0.03, 0.06), round_=r.random() < 0.5)
    if r.random() < 0.35:
        back_h = r.uniform(0.2, 0.4)
        b.box("back", [0, -depth / 2, height + back_h / 2 + 0.05], [length, 0.03, back_h])
        for sx in (-1, 1):
            b.box("back", [sx * (length / 2 - 0.08), -depth / 2, height + 0.05], [0.03, 0.03, 0.12])
    return b.build()


def _stool(r: np.random.Generator) -> Mesh:
    b = _Builder("stool")
    height, radius, t = r.uniform(0.45, 0.8), r.uniform(0.15, 0.25), r.uniform(0.03, 0.06)
    if r.random() < 0.7:
        b.rod("seat", [0, 0, height - t], [0, 0, height], radius, sections=24)
    else:
        b.box("seat", [0, 0, height - t / 2], [2 * radius, 2 * radius, t])
    if r.random() < 0.25:  # pedestal
        b.rod("legs", [0, 0, 0.03], [0, 0, height - t], r.uniform(0.02, 0.05))
        b.rod("legs", [0, 0, 0], [0, 0, 0.03], radius * r.uniform(0.9, 1.3), sections=24)
        foot_r = radius * 0.6
    else:
        n_legs, splay = int(r.integers(3, 5)), r.uniform(0.0, 0.12)
        for a in np.linspace(0, 2 * math.pi, n_legs, endpoint=False) + r.uniform(0, math.pi):
            top = [0.75 * radius * math.cos(a), 0.75 * radius * math.sin(a), height - t]
            foot = [(0.75 * radius + splay) * math.cos(a), (0.75 * radius + splay) * math.sin(a), 0.0]
            b.rod("legs", foot, top, r.uniform(0.012, 0.025), sections=10)
        foot_r = 0.75 * radius + splay * 0.6
    if r.random() < 0.5:
        b.ring("footrest", [0, 0, height * r.uniform(0.25, 0.4)], foot_r, 0.012, axis="z")
    return b.build()


def _desk(r: np.random.Generator) -> Mesh:
    b = _Builder("desk")
    width, depth, height, t = r.uniform(1.0, 1.6), r.uniform(0.5, 0.8), r.uniform(0.68, 0.78), r.uniform(0.025, 0.05)
    b.box("top", [0, 0, height - t / 2], [width, depth, t])
    cab_w = r.uniform(0.3, 0.5)
    sides = [-1, 1] if r.random() < 0.35 else [int(r.choice([-1, 1]))]
    for sx in sides:
        x = sx * (width / 2 - cab_w / 2)
        b.box("drawers", [x, 0, (height - t) / 2], [cab_w, depth * 0.95, height - t])
        n = int(r.integers(2, 5))
        for z in np.linspace(0.1, height - t - 0.1, n):
            b.box("drawers", [x, depth * 0.48, z], [cab_w * 0.4, 0.02, 0.02])  # handles
    if len(sides) == 1:
        x = -sides[0] * (width / 2 - 0.04)
        if r.random() < 0.5:
            b.box("legs", [x, 0, (height - t) / 2], [0.04, depth * 0.9, height - t])
        else:
            for sy in (-1, 1):
                b.box("legs", [x, sy * (depth / 2 - 0.04), (height - t) / 2], [0.05, 0.05, height - t])
    return b.build()


def _vase(r: np.random.Generator) -> Mesh:
    b = _Builder("vase")
    height = r.uniform(0.5, 1.2)
    base_r = r.uniform(0.1, 0.25)
    belly_r, belly_z = r.uniform(0.15, 0.4), r.uniform(0.25, 0.6) * height
    neck_r, neck_z = r.uniform(0.05, 0.15), r.uniform(0.7, 0.9) * height
    lip_r = neck_r * r.uniform(1.0, 1.8)
    profile = [[0, 0], [base_r, 0], [belly_r, belly_z], [neck_r, neck_z], [lip_r, height]]
    b.lathe("body", profile)
    b.ring("rim", [0, 0, height], lip_r, r.uniform(0.01, 0.03), axis="z")
    return b.build()


_MAKERS: dict[str, Callable[[np.random.Generator], Mesh]] = {
    "airplane": _airplane, "bed": _bed, "bench": _bench, "bottle": _bottle, "car": _car, "chair": _chair,
    "desk": _desk, "lamp": _lamp, "mug": _mug, "shelf": _shelf, "sofa": _sofa, "stool": _stool,
    "table": _table, "vase": _vase,
}


POSE_YAW_DEGREES = 15.0  # objects stay roughly aligned, as in ModelNet, but not exactly
POSE_SCALE = 0.15  # per-axis stretch of the whole object, 1 +- this


def make_shape(class_name: str, seed: int | np.random.Generator) -> Mesh:
    """One random object of ``class_name`` as a Mesh with face part labels: the class's
    generator, then a random stretch of the whole object (per axis, 1 +- POSE_SCALE) and a
    random turn about the up axis (+- POSE_YAW_DEGREES)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    mesh = _MAKERS[class_name](rng)
    yaw = math.radians(rng.uniform(-POSE_YAW_DEGREES, POSE_YAW_DEGREES))
    c, s = math.cos(yaw), math.sin(yaw)
    turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    stretch = np.diag(rng.uniform(1 - POSE_SCALE, 1 + POSE_SCALE, 3))
    mesh.vertices = mesh.vertices @ (turn @ stretch).T
    return mesh.validate(f"builtin {class_name}")


def builtin_meshes(seed: int = 0, per_class: int = 50) -> list[tuple[Mesh, int, str]]:
    """``per_class`` objects of each class: (mesh, label, name), deterministic in ``seed``."""
    out = []
    for label, cls in enumerate(CLASSES):
        for i in range(per_class):
            out.append((make_shape(cls, np.random.default_rng([seed, label, i])), label, f"{cls}_{i:04d}"))
    return out


def builtin_splits(num_points: int = 1024, seed: int = 0, train: int = 40, test: int = 10) -> dict[str, ArrayPointClouds]:
    """The built-in dataset as point clouds: ``train``/``test`` objects per class, each sampled
    area-weighted + FPS with normals and per-point part labels, normalised to the unit sphere."""
    splits: dict[str, ArrayPointClouds] = {}
    for split, (points, labels, names, parts) in _builtin_arrays(num_points, seed, train, test).items():
        # copies: the arrays are kept for the next call (a protocol may change its own in place)
        splits[split] = ArrayPointClouds(points.copy(), labels.copy(), CLASSES, list(names), split,
                                         f"builtin(seed={seed})", num_points, up_axis="z", point_labels=parts.copy())
    return splits


@functools.lru_cache(maxsize=4)
def _builtin_arrays(num_points: int, seed: int, train: int, test: int
                    ) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]]:
    """split -> (points (S, N, 6), labels (S,), names, part labels (S, N)), sampled once per
    process: sampling the 700 meshes of the default split takes seconds, and the demo's
    protocols and reports read the same split a dozen times."""
    arrays = {}
    meshes = builtin_meshes(seed, train + test)
    for split, keep in (("train", range(train)), ("test", range(train, train + test))):
        chosen = [(m, lab, name) for m, lab, name in meshes if int(name.rsplit("_", 1)[1]) in keep]
        clouds, parts = [], []
        for mesh, _, name in chosen:
            pts, nrm, face = mesh_to_points(mesh.vertices, mesh.faces, num_points, 4, item_seed(seed, name))
            clouds.append(np.concatenate([normalize_unit_sphere(pts), nrm], axis=1))
            parts.append(mesh.face_labels[face])
        points = np.stack(clouds).astype(np.float32) if clouds else np.zeros((0, num_points, 6), np.float32)
        labels = np.array([lab for _, lab, _ in chosen], dtype=np.int64)
        part_labels = np.stack(parts) if parts else np.zeros((0, num_points), np.int64)
        arrays[split] = (points, labels, tuple(name for _, _, name in chosen), part_labels)
    return arrays


def parse_builtin_spec(spec: str, seed: int = 0) -> dict[str, int]:
    """'builtin' or 'builtin:seed=3,train=40,test=10' -> keyword arguments of builtin_splits."""
    options = {"seed": seed, "train": 40, "test": 10}
    if ":" in spec:
        for item in filter(None, spec.split(":", 1)[1].split(",")):
            key, _, value = item.partition("=")
            if key not in options or not value.isdigit():
                raise ValueError(f"bad builtin option {item!r} in {spec!r}; use seed=, train=, test= with integers")
            options[key] = int(value)
    return options


def builtin_spec(seed: int = 0, train: int = 40, test: int = 10) -> str:
    """The data spec ``parse_builtin_spec`` reads back: 'builtin:seed=0,train=40,test=10'."""
    return f"builtin:seed={seed},train={train},test={test}"


def export_builtin_meshes(out_dir: str | Path, seed: int = 0, train: int = 40, test: int = 10) -> Path:
    """Write the built-in meshes as ``<class>/{train,test}/<class>_XXXX.off`` (ModelNet layout)
    plus ``<...>.parts.npy`` face part labels; each file is written atomically."""
    from pretext3d.utils.io import atomic_write_bytes

    out = Path(out_dir)
    for mesh, label, name in builtin_meshes(seed, train + test):
        split = "train" if int(name.rsplit("_", 1)[1]) < train else "test"
        folder = out / CLASSES[label] / split
        folder.mkdir(parents=True, exist_ok=True)
        text = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(file_type="off")
        atomic_write_bytes(folder / f"{name}.off", text.encode() if isinstance(text, str) else text)
        buf = io.BytesIO()
        np.save(buf, mesh.face_labels)
        atomic_write_bytes(folder / f"{name}.parts.npy", buf.getvalue())
    return out
