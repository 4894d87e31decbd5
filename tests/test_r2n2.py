"""The 3D-R2N2 renders as a store's views: the camera of a metadata line worked by hand, and a
round trip: meshes in a ShapeNetCore-v1-like layout rendered into an R2N2-like folder with
those cameras (arbitrary centre and scale, as v1 models have) are prepared with --renders, and
the stored points, projected with the stored matrices, land on the stored masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretext3d.cli import main
from pretext3d.data.builtin import make_shape
from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh
from pretext3d.data.multimodal import MultimodalDataset
from pretext3d.data.r2n2 import R2N2_FOV_DEGREES, r2n2_cameras, read_rendering_metadata
from pretext3d.geometry.cameras import project_points
from tests.tests_helpers import project_to_pixels

SYNSETS = {"02691156": "airplane", "03001627": "chair"}


def test_a_metadata_line_gives_the_blender_camera():
    # az 0, el 0, ratio 1: the camera at (1.75, 0, 0) in the v1 frame (y up), looking at the origin
    cameras = r2n2_cameras(np.array([[0.0, 0.0, 0.0, 1.0, 25.0], [90.0, 30.0, 0.0, 0.8, 25.0]]))
    np.testing.assert_allclose(cameras.positions[0], [1.75, 0.0, 0.0], atol=1e-12)
    d = 1.75 * 0.8  # az 90: on +z; el 30: up by sin 30
    np.testing.assert_allclose(cameras.positions[1], [0.0, d * 0.5, d * math.cos(math.radians(30))], atol=1e-12)
    assert R2N2_FOV_DEGREES == pytest.approx(49.134, abs=1e-3)  # Blender's 35 mm lens on a 32 mm sensor
    # the origin at the image centre; (0, 0.1, 0) above it by f * 0.1 / 1.75 in NDC, f = 35 / 16
    uv, _ = project_points(np.array([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, -0.1]]), cameras.view[0],
                           cameras.proj[0], 137)
    np.testing.assert_allclose(uv[0], [68.5, 68.5], atol=1e-9)
    ndc_up = 35 / 16 * 0.1 / 1.75
    np.testing.assert_allclose(uv[1], [68.5, (1 - ndc_up) / 2 * 137], atol=1e-9)
    assert uv[2][0] > 68.5  # -z is to the right of a camera on +x looking at the origin (y up)


def _v1_like_dataset(root: Path, rng: np.random.Generator, broken: bool = False) -> tuple[Path, Path]:
    """Two classes of two meshes as ShapeNetCore v1 (<synset>/<id>/model.obj, off centre and
    scaled) and, for all but one of them, R2N2 rendering folders made with its cameras."""
    import trimesh

    from pretext3d.render import render_mesh

    core, renders = root / "ShapeNetCore.v1", root / "ShapeNetRendering"
    for synset, cls in SYNSETS.items():
        for i in range(2):
            model_id = f"{cls[:3]}{i:04d}"
            shape = make_shape(cls, rng)
            vertices = shape.vertices * 0.45 + np.array([0.05, -0.03, 0.02])  # v1: roughly unit diagonal, off centre
            folder = core / synset / model_id
            folder.mkdir(parents=True)
            trimesh.Trimesh(vertices, shape.faces, process=False).export(folder / "model.obj")
            if synset == "03001627" and i == 1:
                continue  # no renders: left out
            meta = np.column_stack([rng.uniform(0, 360, 24), rng.uniform(25, 30, 24), np.zeros(24),
                                    rng.uniform(0.65, 0.95, 24), np.full(24, 25.0)])
            views = render_mesh(Mesh(vertices, shape.faces), r2n2_cameras(meta), 137)
            out = renders / synset / model_id / "rendering"
            out.mkdir(parents=True)
            names = [f"{v:02d}.png" for v in range(24)]
            for name, image, mask in zip(names, views.images, views.mask):
                rgba = np.dstack([image * mask[..., None], mask.astype(np.uint8) * 255])  # black, transparent background
                Image.fromarray(rgba.astype(np.uint8), "RGBA").save(out / name)
            (out / "renderings.txt").write_text("\n".join(names) + "\n")
            lines = [" ".join(f"{x:g}" for x in row) for row in meta]
            if broken and i == 0 and synset == "02691156":
                lines[3] = "12 oops 0 0.8 25"
            (out / "rendering_metadata.txt").write_text("\n".join(lines) + "\n")
    return core, renders


@pytest.fixture(scope="module")
def r2n2_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("r2n2")
    core, renders = _v1_like_dataset(root, np.random.default_rng(0))
    store = root / "store"
    assert main(["prepare", str(core), "--out", str(store), "--renders", str(renders), "--points", "256",
                 "--image-size", "64", "--faces", "64", "--quiet"]) == 0
    return store


def test_prepared_renders_keep_the_2d_3d_correspondence(r2n2_store, capsys):
    data = MultimodalDataset(r2n2_store, split=None, views_per_sample=24, point_augment=None, image_augment=None,
                             modalities=("points", "images"))
    assert len(data) == 3 and data.settings.layout == "r2n2" and data.settings.views == 24
    for i in range(len(data)):
        item = data[i]
        assert item["images"].shape == (24, 3, 64, 64)
        rows, cols, inside, _ = project_to_pixels(item["points"].numpy(), item["view"].numpy(), item["proj"].numpy(),
                                                  (64, 64))
        hits = inside & item["masks"].numpy()[np.arange(24)[:, None], rows, cols]
        assert hits.mean() >= 0.98, hits.mean(axis=1)
        # and the masks are not trivially full: the object covers a minority of each view
        assert item["masks"].numpy().mean() < 0.5
    view = data[0]["view"].numpy()[0]
    np.testing.assert_allclose(view[:3, :3] @ view[:3, :3].T, np.eye(3), atol=1e-5)  # rigid, as every store's


def test_objects_without_renders_are_left_out_and_bad_metadata_named(tmp_path, capsys):
    core, renders = _v1_like_dataset(tmp_path, np.random.default_rng(1), broken=True)
    assert main(["prepare", str(core), "--out", str(tmp_path / "s"), "--renders", str(renders), "--points", "128",
                 "--image-size", "32", "--faces", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "left out 1 objects without 3D-R2N2 renders (e.g. 03001627/cha0001)" in out
    assert "rendering_metadata.txt" in out and "line 4 is not five numbers" in out and "2 done" in out
    with pytest.raises(DataFormatError, match="has 2 camera lines for the 3 images"):
        folder = tmp_path / "bad"
        folder.mkdir()
        (folder / "renderings.txt").write_text("00.png\n01.png\n02.png\n")
        (folder / "rendering_metadata.txt").write_text("0 25 0 0.8 25\n10 25 0 0.8 25\n")
        read_rendering_metadata(folder)
    assert main(["prepare", str(core), "--out", str(tmp_path / "t"), "--renders", str(renders), "--views", "12"]) == 2
    assert "--views: options of rendering, which --renders replaces" in capsys.readouterr().err
    assert main(["prepare", str(core), "--out", str(tmp_path / "t"), "--renders", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
