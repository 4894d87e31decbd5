"""The 3D-R2N2 renders of ShapeNet (Choy et al., ECCV 2016), which CrossPoint pretrains on.

Layout: ``ShapeNetRendering/<synset>/<model id>/rendering/`` holds ``00.png`` ... ``23.png``
(137 x 137 RGBA, transparent background), ``renderings.txt`` (the PNG names, one per line)
and ``rendering_metadata.txt`` (one line per PNG: azimuth and elevation in degrees, in-plane
rotation (always 0), a distance ratio, and a field of view of 25 that the renderer never used).

The camera, in the ShapeNetCore v1 model's own frame (y up; the frame the renders were made
in), follows the released Blender script (chrischoy/3D-R2N2 lib/blender_renderer.py and
tools/render_models.py), whose conventions meshrcnn, PyTorch3D and DISN reproduce:

    distance  D = 1.75 * ratio                      (MAX_CAMERA_DIST, absent from the released config)
    position  C = D (cos el cos az, sin el, cos el sin az), looking at the origin, up +y
    lens      Blender's default 35 mm on a 32 mm sensor: vertical fov 2 atan(16 / 35) = 49.13 deg,
              near 0.1, far 100, principal point at the image centre

Checked against a real R2N2 model (Pixel2Mesh's committed example): the model's surface points
land on the object pixels of all 24 views. The in-plane rotation is ignored (always 0).
``r2n2_views`` gives these views as a store keeps them: in the frame of the normalised mesh
(``normalize_mesh``: ``x_norm = (x - centre) / scale``), with rigid view matrices.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.geometry.cameras import Cameras, look_at, perspective
from pretext3d.render.shading import Views

__all__ = ["R2N2_DISTANCE", "R2N2_FOV_DEGREES", "R2N2_VIEWS", "read_rendering_metadata", "r2n2_cameras",
           "rendering_folder", "r2n2_views"]

R2N2_DISTANCE = 1.75  # the renderer's camera distance for ratio 1, in ShapeNetCore v1 units
R2N2_FOV_DEGREES = math.degrees(2 * math.atan(16 / 35))  # Blender's default 35 mm lens, 32 mm sensor
R2N2_NEAR, R2N2_FAR = 0.1, 100.0
R2N2_VIEWS = 24


def rendering_folder(root: str | Path, name: str) -> Path:
    """The rendering folder of a ShapeNet object named ``<synset>/<model id>`` (the name
    pretext3d gives a ShapeNetCore model)."""
    parts = name.split("/")
    return Path(root, *parts[-2:], "rendering")


def read_rendering_metadata(folder: Path) -> tuple[list[str], np.ndarray]:
    """PNG names (V,) and metadata (V, 5) of one rendering folder; DataFormatError naming the
    file for anything malformed."""
    names_file, meta_file = folder / "renderings.txt", folder / "rendering_metadata.txt"
    for file in (names_file, meta_file):
        if not file.is_file():
            raise DataFormatError(file, "is missing (a 3D-R2N2 rendering folder holds renderings.txt, "
                                        "rendering_metadata.txt and the PNGs)")
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(meta_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise DataFormatError(meta_file, f"line {number} is not five numbers: {line.strip()!r}") from None
        if len(values) != 5 or not np.all(np.isfinite(values)) or values[3] <= 0:
            raise DataFormatError(meta_file, f"line {number} is not 'azimuth elevation in-plane ratio fov' with a "
                                             f"positive ratio: {line.strip()!r}")
        rows.append(values)
    if len(rows) != len(names) or not names:
        raise DataFormatError(meta_file, f"has {len(rows)} camera lines for the {len(names)} images of renderings.txt")
    return names, np.asarray(rows)


def r2n2_cameras(metadata: np.ndarray) -> Cameras:
    """metadata: (V, 5) rows of rendering_metadata.txt -> the cameras in the model's v1 frame."""
    azimuth, elevation = np.radians(metadata[:, 0]), np.radians(metadata[:, 1])
    distance = R2N2_DISTANCE * metadata[:, 3]
    positions = distance[:, None] * np.stack([np.cos(elevation) * np.cos(azimuth), np.sin(elevation),
                                              np.cos(elevation) * np.sin(azimuth)], axis=1)
    proj = perspective(R2N2_FOV_DEGREES, 1.0, R2N2_NEAR, R2N2_FAR)
    return Cameras(look_at(positions, up="y"), np.repeat(proj[None], len(positions), 0), positions)


def _normalised_frame(cameras: Cameras, centre: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """View and projection matrices for points ``x_norm = (x - centre) / scale``: the camera
    space is scaled by 1 / scale, so the view stays rigid, and the clip planes with it."""
    view = cameras.view.copy()
    view[:, :3, 3] = (np.einsum("vij,j->vi", view[:, :3, :3], centre) + view[:, :3, 3]) / scale
    proj = perspective(R2N2_FOV_DEGREES, 1.0, R2N2_NEAR / scale, R2N2_FAR / scale)
    return view, np.repeat(proj[None], len(view), 0)


def r2n2_views(folder: Path, centre: np.ndarray, scale: float, image_size: int, grayscale: bool = False) -> Views:
    """The renders of one object at ``image_size`` (bilinear), masks from their alpha (a pixel
    any of whose covered pixels is not fully transparent), and matrices for the normalised mesh.
    RGB is kept as stored (black where transparent: what CrossPoint's RGB conversion gives)."""
    from PIL import Image

    names, metadata = read_rendering_metadata(folder)
    images, masks = [], []
    for name in names:
        file = folder / name
        try:
            with Image.open(file) as opened:
                rgba = opened.convert("RGBA")
        except (OSError, ValueError) as err:
            raise DataFormatError(file, f"cannot be read as an image ({err})") from None
        if rgba.size[0] != rgba.size[1]:
            raise DataFormatError(file, f"is {rgba.size[0]} x {rgba.size[1]}, not square like the R2N2 renders")
        resized = rgba.resize((image_size, image_size), Image.BILINEAR)
        pixels = np.asarray(resized)
        rgb = pixels[..., :3]
        images.append(np.asarray(Image.fromarray(rgb).convert("L")) if grayscale else rgb)
        masks.append(pixels[..., 3] > 0)
    view, proj = _normalised_frame(r2n2_cameras(metadata), np.asarray(centre, np.float64), float(scale))
    return Views(np.stack(images), np.zeros((len(names), image_size, image_size), np.float32), np.stack(masks), view, proj,
                 info={"renderer": "3d-r2n2"})
