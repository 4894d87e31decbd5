"""The report's cross-modal retrieval grid: for a run whose method has a space shared by points
and images (CrossPoint, Pic@Point, MIMS), test point clouds query the rendered views of the test
objects of a prepared store; each row shows the query cloud and the views of its nearest objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from pretext3d.data.store import decode_images, read_index, read_object, read_store_settings, store_file
from pretext3d.eval.metrics import pairwise_distances
from pretext3d.eval.modalities import embed_store, image_size_of, load_run_encoders
from pretext3d.report.figures import render_cloud, retrieval_grid

__all__ = ["crossmodal_grid"]

_TILE = 96


def crossmodal_grid(run: str | Path, recipe: dict | None, store: Path, folder: Path, queries: int, top_k: int,
                    seed: int, device: Any, cache_dir: str | None, progress: bool,
                    log: Callable[[str], None] = print) -> dict | None:
    """points -> image retrieval in the shared space on the store's test split: the figure
    (retrieval.png's cross-modal twin) and what it shows; None when the run's method does not map
    points and images into one shared space."""
    try:
        encoders, _ = load_run_encoders(run, "shared")
    except ValueError:  # a method without shared heads
        return None
    if not {"points", "image"} <= set(encoders.heads):
        return None
    log("[report] cross-modal retrieval grid")
    points_count = int(((recipe or {}).get("data_options") or {}).get("points") or 1024)
    image_size = image_size_of(recipe, store, None)
    test = embed_store(encoders, store, "test", ("points", "image"), points_count, image_size, device=device,
                       cache_dir=cache_dir, progress=progress)
    point_features, image_features = test.features["points"], test.features["image"].mean(1)  # views mean-pooled
    entries = [e for e in read_index(store)["objects"] if e["split"] == "test"]
    settings, _ = read_store_settings(store)
    rng = np.random.default_rng(seed + 3)
    classes = rng.permutation(np.unique(test.labels))[:queries]
    chosen = [int(rng.choice(np.flatnonzero(test.labels == c))) for c in classes]
    renders, marks, captions, rows = [], [], [], []
    for q in chosen:
        dist = pairwise_distances(point_features[q:q + 1], image_features, "cosine")[0]
        order = np.argsort(dist, kind="stable")
        ranked = order[:top_k]
        cloud = read_object(store_file(store, entries[q]["file"]), ("points",))["points"]
        renders.append([render_cloud(cloud, settings.up, _TILE), *[_first_view(store, entries[int(i)]) for i in ranked]])
        marks.append([bool(test.labels[i] == test.labels[q]) for i in ranked])
        names = [test.classes[int(test.labels[i])] for i in [q, *ranked.tolist()]]
        captions.append([names[0], *[("+ " if same else "- ") + name for same, name in zip(marks[-1], names[1:])]])
        rows.append({"query": test.names[q], "class": names[0], "retrieved": [test.names[int(i)] for i in ranked],
                     "retrieved_classes": names[1:], "own_view_rank": int(np.flatnonzero(order == q)[0]) + 1,
                     "cosine_distance": [float(dist[i]) for i in ranked]})
    path = retrieval_grid(renders, marks, captions, folder / "retrieval_crossmodal.png")
    return {"figure": path.name, "queries": rows, "store": str(store), "space": "shared",
            "gallery": "every test object's rendered views, mean-pooled in the shared space", "metric": "cosine"}


def _first_view(store: Path, entry: dict) -> np.ndarray:
    """The object's first stored view as a (_TILE, _TILE, 3) uint8 picture."""
    from PIL import Image

    arrays = read_object(store_file(store, entry["file"]), ("images_png", "image_offsets"))
    images, _ = decode_images(arrays["images_png"], arrays["image_offsets"], [0])
    picture = Image.fromarray(images[0]).convert("RGB").resize((_TILE, _TILE), Image.BILINEAR)
    return np.asarray(picture)
