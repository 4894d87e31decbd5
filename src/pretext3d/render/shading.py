"""The rendered images' common pieces: the ``Views`` container and the lighting model.

Lighting (identical in the OpenGL shader and the point-splat renderer): Phong reflection with
two directional lights on opposite sides of the object, fixed relative to the camera (one from
the upper left, in front; the other from the lower right, behind), so every visible surface is
lit by at least one of them whatever the viewpoint (Jing et al.'s setup):

    colour = albedo * (ambient + sum_l I_l max(0, n.L_l)) + specular * sum_l I_l max(0, r_l.e)^s

with n the unit normal turned towards the camera (meshes from the wild have inconsistent
winding), e the unit vector to the camera, r_l the reflection of L_l about n.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LUMA", "Lighting", "Views", "shade"]

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights of R, G, B in grey


@dataclass(frozen=True)
class Lighting:
    """Phong parameters; ``light`` is the first light's direction (towards the light) in camera
    coordinates, the second light points the opposite way."""

    light: tuple[float, float, float] = (-0.5, 0.6, 0.65)
    intensities: tuple[float, float] = (0.75, 0.45)
    ambient: float = 0.22
    specular: float = 0.15
    shininess: float = 24.0

    def directions(self) -> np.ndarray:
        first = np.asarray(self.light, dtype=np.float64)
        first = first / np.linalg.norm(first)
        return np.stack([first, -first]).astype(np.float32)


@dataclass
class Views:
    """V rendered views of one object.

    images: (V, H, W, 3) uint8 RGB (or (V, H, W) uint8 grey), top row first;
    depth: (V, H, W) float32 distance in front of the camera (-z_cam), 0 on the background;
    mask: (V, H, W) bool, where the object is; view, proj: (V, 4, 4) the OpenGL matrices used
    (see ``pretext3d.geometry.cameras`` for the pixel convention).
    """

    images: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    view: np.ndarray
    proj: np.ndarray
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def shade(normals: np.ndarray, positions: np.ndarray, albedo: np.ndarray, lighting: Lighting) -> np.ndarray:
    """Phong colour of surface samples in camera coordinates.

    normals, positions: (M, 3) camera-space; albedo: (M, 3) or (3,) in [0, 1];
    returns (M, 3) float32 in [0, 1].
    """
    to_eye = -positions / np.maximum(np.linalg.norm(positions, axis=1, keepdims=True), 1e-12)
    n = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    n = np.where((n * to_eye).sum(1, keepdims=True) < 0, -n, n)
    diffuse = np.full((len(n), 1), lighting.ambient, dtype=np.float32)
    highlight = np.zeros((len(n), 1), dtype=np.float32)
    for direction, intensity in zip(lighting.directions(), lighting.intensities):
        n_dot_l = n @ direction
        diffuse[:, 0] += intensity * np.maximum(n_dot_l, 0)
        reflected = 2 * n_dot_l[:, None] * n - direction
        r_dot_e = np.maximum((reflected * to_eye).sum(1), 0) * (n_dot_l > 0)
        highlight[:, 0] += intensity * r_dot_e ** lighting.shininess
    return np.clip(albedo * diffuse + lighting.specular * highlight, 0, 1).astype(np.float32)
