"""Pure geometric functions on tensors/arrays: sampling, FPS, kNN, normalisation, augmentations."""

from pretext3d.geometry.neighbors import ball_query, gather_max, gather_sum, knn, neighbour_counts, uses_fast_kernels
from pretext3d.geometry.sampling import farthest_point_sample, fps_backends, mesh_to_points, sample_surface
from pretext3d.geometry.transforms import (
    jitter,
    normalize_unit_sphere,
    random_point_dropout,
    random_rotate_up,
    random_scale,
    random_translate,
    rotation_about_axis,
)

__all__ = [
    "ball_query",
    "farthest_point_sample",
    "fps_backends",
    "gather_max",
    "gather_sum",
    "jitter",
    "knn",
    "mesh_to_points",
    "neighbour_counts",
    "normalize_unit_sphere",
    "random_point_dropout",
    "random_rotate_up",
    "random_scale",
    "random_translate",
    "rotation_about_axis",
    "sample_surface",
    "uses_fast_kernels",
]
