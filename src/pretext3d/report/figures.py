"""The report's pictures, each written as a PNG (atomically): training curves, a t-SNE of
features coloured by class, retrieval grids of rendered clouds, ParAE's Gaussians as ellipsoids.

Colours come from the Okabe-Ito palette, which readers with the common colour-vision
deficiencies can tell apart; classes beyond its 8 colours also differ in marker shape, and the
retrieval grids mark same-class results with "+" as well as by colour."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pretext3d.utils.io import atomic_path

__all__ = ["OKABE_ITO", "training_curves", "tsne_figure", "retrieval_grid", "gaussians_figure", "render_cloud"]

# Okabe & Ito's colour-blind-safe palette: orange, sky blue, bluish green, yellow, blue,
# vermillion, reddish purple, black
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _save(plt, fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(rows: Sequence[dict], path: Path) -> Path | None:
    """One panel per logged quantity (loss parts, lr, validation scores) against the step.
    rows: the lines of metrics.jsonl. None when nothing was logged."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "seconds") or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(int(row["step"]))
            values.append(float(value))
    if not series:
        return None
    columns = min(3, len(series))
    lines = -(-len(series) // columns)
    plt, fig = _figure(4.2 * columns, 2.8 * lines)
    for i, (name, (steps, values)) in enumerate(sorted(series.items())):
        ax = fig.add_subplot(lines, columns, i + 1)
        ax.plot(steps, values, color=OKABE_ITO[4] if not name.startswith("val_") else OKABE_ITO[0],
                marker="." if len(steps) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(plt, fig, path)


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """features: (S, D) -> (S, 2): PCA to at most 50 dimensions, then scikit-learn's t-SNE."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_figure(embedding: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """A scatter of (S, 2) points, one colour and marker per class (Okabe-Ito colours; class i
    gets colour i mod 8 and marker i // 8), with a legend of class names."""
    plt, fig = _figure(8.5, 7.0)
    ax = fig.add_subplot(1, 1, 1)
    present = np.unique(labels)
    for i, c in enumerate(present):
        pick = labels == c
        ax.scatter(embedding[pick, 0], embedding[pick, 1], s=10, color=OKABE_ITO[i % len(OKABE_ITO)],
                   marker=_MARKERS[(i // len(OKABE_ITO)) % len(_MARKERS)], label=classes[c])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, ncol=1 + len(present) // 25)
    return _save(plt, fig, path)


def render_cloud(points: np.ndarray, up_axis: str = "y", size: int = 96) -> np.ndarray:
    """One shaded splat view (size, size, 3) uint8 of a unit-sphere cloud (N, 3), seen from
    above and to the side (the same camera for every cloud)."""
    from pretext3d.geometry.cameras import make_cameras
    from pretext3d.render import render_points

    eye = {"x": [1.5, 1.7, -1.3], "y": [1.7, 1.5, 1.3], "z": [1.7, -1.3, 1.5]}[up_axis]
    cameras = make_cameras(np.array([eye]), up=up_axis)
    return render_points(np.asarray(points, dtype=np.float64), cameras, size).images[0]


def retrieval_grid(renders: Sequence[Sequence[np.ndarray]], relevant: Sequence[Sequence[bool]],
                   captions: Sequence[Sequence[str]], path: Path) -> Path:
    """Rows of [query, top-1, ..., top-k] renders (each (H, W, 3) uint8): the query framed in
    black, retrieved items framed blue (same class) or orange (Okabe-Ito); a caption under every
    tile (callers prefix "+" / "-" so that the class match does not rest on colour alone)."""
    from PIL import Image, ImageDraw

    height, width = renders[0][0].shape[:2]
    pad, text = 4, 12
    tile_w, tile_h = width + 2 * pad, height + 2 * pad + text
    columns = max(len(r) for r in renders)
    sheet = Image.new("RGB", (columns * tile_w, len(renders) * tile_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (images, marks, names) in enumerate(zip(renders, relevant, captions)):
        for col, (image, name) in enumerate(zip(images, names)):
            x, y = col * tile_w, row * tile_h
            frame = (0, 0, 0) if col == 0 else ((0, 114, 178) if marks[col - 1] else (230, 159, 0))
            draw.rectangle([x, y, x + tile_w - 1, y + height + 2 * pad - 1], fill=frame)
            sheet.paste(Image.fromarray(image), (x + pad, y + pad))
            draw.text((x + pad, y + height + 2 * pad), name[: max(4, tile_w // 6)], fill=(20, 20, 20))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def ellipsoid_surface(mu: np.ndarray, sigma: np.ndarray, scale: float = 1.0, resolution: int = 12):
    """(X, Y, Z) grids of the surface {mu + scale * L u : |u| = 1}, Sigma = L L^T (eigen
    decomposition): the ``scale``-sigma ellipsoid of a 3D Gaussian."""
    values, vectors = np.linalg.eigh(sigma)
    axes = vectors * (scale * np.sqrt(np.maximum(values, 0.0)))[None, :]
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, resolution), np.linspace(0, np.pi, resolution // 2 + 1))
    sphere = np.stack([np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v)], axis=-1)
    surface = sphere @ axes.T + mu
    return surface[..., 0], surface[..., 1], surface[..., 2]


def gaussians_figure(clouds: Sequence[np.ndarray], assignments: Sequence[np.ndarray], pis: Sequence[np.ndarray],
                     mus: Sequence[np.ndarray], sigmas: Sequence[np.ndarray], titles: Sequence[str], path: Path,
                     min_weight: float = 0.0) -> Path:
    """Per cloud (N, 3): the points coloured by their most likely partition (N,) and the 1-sigma
    ellipsoid of every Gaussian j with pi_j > min_weight (pi (J,), mu (J, 3), sigma (J, 3, 3))."""
    plt, fig = _figure(5.0 * len(clouds), 5.0)
    cmap = plt.get_cmap("tab20")
    for i, (points, part, pi, mu, sigma, title) in enumerate(zip(clouds, assignments, pis, mus, sigmas, titles)):
        ax = fig.add_subplot(1, len(clouds), i + 1, projection="3d")
        ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=2, c=[cmap(int(j) % 20) for j in part], alpha=0.6)
        for j in np.flatnonzero(pi > min_weight):
            ax.plot_wireframe(*ellipsoid_surface(mu[j], sigma[j]), color=cmap(int(j) % 20), linewidth=0.5, alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_box_aspect((1, 1, 1))
        for axis in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            axis(-1, 1)
        ax.set_axis_off()
    fig.tight_layout()
    return _save(plt, fig, path)


def embedded_image(folder: Path, name: str, alt: str) -> str:
    """An <img> of the PNG ``folder / name``, embedded as base64 (the page stays one file)."""
    import base64
    import html

    data = base64.b64encode((folder / name).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
