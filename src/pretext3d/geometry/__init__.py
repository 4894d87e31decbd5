"""Pure geometric functions on tensors/arrays: sampling, FPS, kNN, normalisation, augmentations.

The names below load their submodule on first use (``utils.lazy``), so that importing a light
part such as ``pretext3d.geometry.cameras`` (numpy only) does not import torch, numba and
trimesh: ``pretext3d --help`` stays fast.
"""

from pretext3d.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "pretext3d.geometry.neighbors": ("ball_query", "gather_max", "gather_sum", "knn", "neighbour_counts",
                                     "uses_fast_kernels"),
    "pretext3d.geometry.sampling": ("farthest_point_sample", "fps_backends", "mesh_to_points", "sample_surface"),
    "pretext3d.geometry.transforms": ("jitter", "normalize_unit_sphere", "random_point_dropout", "random_rotate_up",
                                      "random_scale", "random_translate", "rotation_about_axis"),
})
