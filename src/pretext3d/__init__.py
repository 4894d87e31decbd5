"""pretext3d: self-supervised 3D representation learning from multimodal correspondences."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretext3d._version import __version__

if TYPE_CHECKING:
    from pretext3d.models.checkpoint import LoadedBackbone

__all__ = ["load_backbone", "load_method", "embed", "__version__"]


def load_backbone(path: str | Path, expected: str | None = None, **reference_config: Any) -> LoadedBackbone:
    """Rebuild a backbone from a checkpoint file or a finished ``pretext3d pretrain`` run folder
    (see :func:`pretext3d.runs.load_backbone`). ``.model`` maps points (B, N, 3) to an output
    whose ``.global_`` is (B, D)."""
    # imported here so that `import pretext3d` (and the CLI's --help) does not load torch
    from pretext3d.runs import load_backbone as load

    return load(path, expected, **reference_config)


def load_method(run: str | Path, step: int | None = None):
    """The whole pretext method of a run folder (encoders and heads), from its recipe and its
    newest checkpoint (see :func:`pretext3d.runs.load_method`); e.g.
    ``load_method(run).fused_features(batch, ("points", "mesh"))`` for a MIMS run."""
    from pretext3d.runs import load_method as load

    return load(run, step)


def embed(run: str | Path, points: Any = None, images: Any = None, meshes: Any = None, space: str = "auto",
          **options: Any) -> dict:
    """A run's features of raw point clouds, images and meshes, prepared as its training data
    were (unit-sphere normalisation, the run's point count and image size): {"points": (B, D),
    "image": (B, D), "mesh": (B, D)} for what is given; space "shared" | "encoder" | "auto".
    See :func:`pretext3d.embedding.embed` for the options and :class:`pretext3d.embedding.Embedder`
    to embed many inputs with one loaded run."""
    from pretext3d.embedding import embed as run_embed

    return run_embed(run, points, images, meshes, space, **options)
