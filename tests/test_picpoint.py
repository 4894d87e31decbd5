"""Pic@Point's region assignment on a synthetic scene: a rendered cube, its mask, crops and
flips of the image, and points hidden behind the cube."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from pretext3d.data.meshes import Mesh
from pretext3d.data.multimodal import crop_flip_ndc
from pretext3d.geometry.cameras import make_cameras
from pretext3d.pretext.picpoint import project_to_regions
from pretext3d.render import render_mesh

SIZE = 112


@pytest.fixture(scope="module")
def scene():
    """A cube of side 0.3 centred at (0.35, 0.25, 0.3), seen from (2.5, -0.6, 0.9)."""
    box = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    centre = np.array([0.35, 0.25, 0.3])
    mesh = Mesh(np.asarray(box.vertices) + centre, np.asarray(box.faces, dtype=np.int64))
    cameras = make_cameras(np.array([[2.5, -0.6, 0.9]]))
    views = render_mesh(mesh, cameras, SIZE)
    surface, _ = trimesh.sample.sample_surface_even(trimesh.Trimesh(mesh.vertices, mesh.faces), 3000, seed=0)
    return {"centre": centre, "mask": views.mask[0], "view": cameras.view[0], "proj": cameras.proj[0],
            "surface": np.asarray(surface), "camera": np.array([2.5, -0.6, 0.9])}


def regions_of(points: np.ndarray, view: np.ndarray, proj: np.ndarray, size=(SIZE, SIZE), cloud=None):
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    return project_to_regions(t(points), t(view), t(proj), size, cloud=None if cloud is None else t(cloud))


def mask_region(mask: np.ndarray, grid: int = 7) -> int:
    """The 7x7 region holding the centroid of a mask."""
    rows, cols = np.nonzero(mask)
    return int(rows.mean() * grid // mask.shape[0]) * grid + int(cols.mean() * grid // mask.shape[1])


def test_the_cube_centre_falls_in_the_region_of_the_rendered_cube(scene):
    assignment = regions_of(scene["centre"][None], scene["view"], scene["proj"])
    assert assignment.usable.all()
    region = int(assignment.region[0, 0])
    assert region == mask_region(scene["mask"])
    assert region != 3 * 7 + 3  # off-centre: the test can tell regions apart


@pytest.mark.parametrize("flip", [False, True])
def test_regions_follow_a_crop_and_a_flip_of_the_image(scene, flip):
    x0, y0, w, h = 30.0, 10.0, 70.0, 80.0
    proj = crop_flip_ndc((x0, y0, w, h), SIZE, SIZE, flip) @ scene["proj"]
    crop = scene["mask"][int(y0):int(y0 + h), int(x0):int(x0 + w)]
    crop = crop[:, ::-1] if flip else crop
    assignment = regions_of(scene["centre"][None], scene["view"], proj, size=(int(h), int(w)))
    assert int(assignment.region[0, 0]) == mask_region(crop)


def test_points_behind_the_cube_or_off_screen_are_not_used(scene):
    surface = scene["surface"]
    towards_camera = scene["camera"] - scene["centre"]
    towards_camera /= np.linalg.norm(towards_camera)
    depth_along = (surface - scene["centre"]) @ towards_camera
    front, back = surface[depth_along > 0.12], surface[depth_along < -0.12]  # near and far sides
    assert len(front) > 100 and len(back) > 100
    assignment = regions_of(np.concatenate([front, back]), scene["view"], scene["proj"], cloud=surface)
    visible = assignment.visible[0].numpy()
    assert visible[: len(front)].mean() > 0.95 and visible[len(front):].mean() < 0.05
    off_screen = regions_of(np.array([[0.0, 3.0, 0.0], [4.0, -1.0, 1.5]]), scene["view"], scene["proj"])
    assert not off_screen.inside.any() and not off_screen.usable.any()
