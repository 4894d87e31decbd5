"""The report's Pic@Point picture: how similar one point's local embedding is to every region of
the rendered view (as in the Pic@Point paper's heatmaps).

For a few test objects of the run's prepared store (one per class, drawn with the report's
seed), one stored view (drawn by the dataset's seeded choice, without augmentation; the page
and report.json name it) and the cloud go
through the trained method in eval mode:

* the query of local centre i (a point for DGCNN/PointNet, a set-abstraction centre for
  PointNeXt) is the local 3D head's output q_i = point_local_out([point_local(f_i); pose(view)]);
* the key of region r (r = row * G + column of the image encoder's G x G map F) is the local 2D
  head's output k_r = image_local(F)[:, row, column];
* with u = q / |q|, v_r = k_r / |k_r| and the run's temperature t:

      cos_r = u . v_r,        p_r = exp(cos_r / t) / sum_{r'=1..G^2} exp(cos_{r'} / t)

  p is the local InfoNCE's distribution restricted to the regions of the point's own image (in
  training, regions of the batch's other images are negatives too).

The point shown is, among the centres that project into the image, are not hidden by the cloud
(``project_to_regions``) and land on the object's mask, the one farthest from the cloud's
centroid (an extremity; no randomness). Its true region (where it projects: its positive in
training) is outlined; so is the most similar one. Both maps are upsampled bilinearly to the
image. Over every visible centre of the shown views, the fraction whose most similar region is
their own is reported next to chance (1 / G^2).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointHeatmap", "RegionSimilarity", "uses_picpoint", "find_picpoint", "region_similarity",
           "upsample_regions", "choose_point", "point_heatmap", "heatmap_figure",
           "picpoint_section"]

SECTION_TITLE = "Pic@Point: one point's similarity to the image regions"


@dataclass
class RegionSimilarity:
    """cosine, softmax: (..., R) over the R = G^2 regions of one image."""

    cosine: Tensor
    softmax: Tensor


@dataclass
class PointHeatmap:
    """One object's picture. image: (S, S, 3) float in [0, 1] (the view as the encoder saw it,
    de-normalised); points: (N, 3) the cloud; view, proj: (4, 4); point: the chosen centre's
    index, centre (3,), pixel (2,) (column, row); grid G; region, argmax: the true and the most
    similar region (row * G + column); cosine, softmax: (G, G); cosine_image, softmax_image:
    (S, S) bilinear upsamplings; own_top1: fraction of the view's visible centres whose most
    similar region is their own, over ``visible`` centres."""

    image: np.ndarray
    points: np.ndarray
    view: np.ndarray
    proj: np.ndarray
    point: int
    centre: np.ndarray
    pixel: np.ndarray
    grid: int
    region: int
    argmax: int
    cosine: np.ndarray
    softmax: np.ndarray
    cosine_image: np.ndarray
    softmax_image: np.ndarray
    own_top1: float
    visible: int

    @property
    def rank(self) -> int:
        """1 + the number of regions more similar than the true one."""
        flat = self.cosine.reshape(-1)
        return int((flat > flat[self.region]).sum()) + 1


# --- the computation ----------------------------------------------------------------------------


def uses_picpoint(recipe: dict | None) -> bool:
    """Whether a run's recipe trains Pic@Point (alone or as a task of a composed recipe)."""
    from pretext3d.runs import recipe_tasks

    return "picpoint" in recipe_tasks(recipe)


def find_picpoint(method: nn.Module) -> nn.Module:
    """The Pic@Point part of a method (itself, or the task of a composed method), as the method
    declares its tasks."""
    found = method.task_methods().get("picpoint")
    if found is None:
        raise ValueError(f"{type(method).__name__} holds no Pic@Point task")
    return found


def region_similarity(query: Tensor, keys: Tensor, temperature: float) -> RegionSimilarity:
    """query (..., d), keys (..., R, d) -> cosine and softmax (..., R):
    cos_r = <q, k_r> / (|q| |k_r|), p_r = exp(cos_r / t) / sum_r' exp(cos_r' / t)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if query.shape[-1] != keys.shape[-1] or query.shape[:-1] != keys.shape[:-2]:
        raise ValueError(f"expected query (..., d) and keys (..., R, d), got {tuple(query.shape)}, {tuple(keys.shape)}")
    u, v = F.normalize(query.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    cosine = (v @ u.unsqueeze(-1)).squeeze(-1)
    return RegionSimilarity(cosine, torch.softmax(cosine / temperature, dim=-1))


def upsample_regions(values: Tensor, grid: int, size: tuple[int, int]) -> Tensor:
    """values (..., G^2) in region order (row * G + column) -> (..., H, W), bilinear
    (align_corners False: region (row, column) covers rows [row H / G, (row + 1) H / G))."""
    lead = values.shape[:-1]
    maps = values.reshape(-1, 1, grid, grid).float()
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def choose_point(centres: Tensor, usable: Tensor, pixels: Tensor, mask: Tensor, cloud: Tensor) -> int | None:
    """centres (M, 3), usable (M,) bool, pixels (M, 2) (column, row), mask (S, S) bool, cloud
    (N, 3) -> the usable centre on the mask farthest from the cloud's centroid (any usable one
    when none lands on the mask); None when no centre is usable."""
    height, width = mask.shape
    col = pixels[:, 0].floor().long().clamp(0, width - 1)
    row = pixels[:, 1].floor().long().clamp(0, height - 1)
    candidates = usable & mask[row, col]
    if not candidates.any():
        candidates = usable
    if not candidates.any():
        return None
    distance = (centres - cloud.mean(0)).norm(dim=1)
    return int(torch.where(candidates, distance, -1.0).argmax())


def _displayable(image: Tensor) -> np.ndarray:
    """A normalised (C, S, S) image -> (S, S, 3) float in [0, 1]."""
    from pretext3d.data.multimodal import IMAGENET_MEAN, IMAGENET_STD

    channels = image.shape[0]
    mean = torch.tensor(IMAGENET_MEAN if channels == 3 else [float(np.mean(IMAGENET_MEAN))])[:, None, None]
    std = torch.tensor(IMAGENET_STD if channels == 3 else [float(np.mean(IMAGENET_STD))])[:, None, None]
    pixels = (image.cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(pixels, 3, axis=2) if channels == 1 else pixels


@torch.no_grad()
def point_heatmap(picpoint: nn.Module, item: dict[str, Any], device: torch.device | str = "cpu") -> PointHeatmap | None:
    """One MultimodalDataset item (points (N, 3), images (1, C, S, S), masks (1, S, S), view,
    proj (1, 4, 4), normals?) -> the chosen point's similarity to the regions of the view (None
    when no centre of the cloud is visible in it)."""
    from pretext3d.geometry.projection import project_to_pixels, project_to_regions

    points = item["points"][None].to(device)
    images = item["images"][:1].to(device)
    view, proj = item["view"][:1].to(device), item["proj"][:1].to(device)
    normals = item["normals"][None].to(device) if "normals" in item else None
    size = tuple(images.shape[-2:])
    queries, centres = picpoint.local_queries(points, view, normals)
    keys, grid = picpoint.region_keys(images)
    cells, tolerance = picpoint.occlusion
    regions = project_to_regions(centres, view, proj, size, grid, cloud=points, occlusion_cells=cells,
                                 occlusion_tolerance=tolerance)
    pixels, _ = project_to_pixels(centres.float(), view.float(), proj.float(), *size)
    usable = regions.usable[0].cpu()
    index = choose_point(centres[0].cpu().float(), usable, pixels[0].cpu(), item["masks"][0].bool(),
                         item["points"].float())
    if index is None:
        return None
    everyone = region_similarity(queries[0][regions.usable[0]], keys[0].expand(int(usable.sum()), -1, -1),
                                 picpoint.temperature)
    own_top1 = float((everyone.cosine.argmax(-1) == regions.region[0][regions.usable[0]]).float().mean())
    chosen = region_similarity(queries[0, index], keys[0], picpoint.temperature)
    cosine, softmax = chosen.cosine.cpu(), chosen.softmax.cpu()
    return PointHeatmap(
        image=_displayable(images[0]), points=item["points"].numpy(), view=item["view"][0].numpy(),
        proj=item["proj"][0].numpy(), point=index, centre=centres[0, index].cpu().numpy(),
        pixel=pixels[0, index].cpu().numpy(), grid=grid, region=int(regions.region[0, index]),
        argmax=int(cosine.argmax()), cosine=cosine.reshape(grid, grid).numpy(),
        softmax=softmax.reshape(grid, grid).numpy(), cosine_image=upsample_regions(cosine, grid, size).numpy(),
        softmax_image=upsample_regions(softmax, grid, size).numpy(),
        own_top1=own_top1, visible=int(usable.sum()))


# --- the figure ---------------------------------------------------------------------------------


def _cloud_render(heat: PointHeatmap, scale: int = 3) -> np.ndarray:
    """The cloud splatted from the view's own camera at ``scale`` times the image size, the
    chosen centre's nearest points (1.5% of the cloud, at least 8) in red: (scale S, scale S, 3)."""
    from pretext3d.geometry.cameras import Cameras
    from pretext3d.render import DEFAULT_COLOR, render_points

    view = heat.view.astype(np.float64)
    position = -view[:3, :3].T @ view[:3, 3]
    cameras = Cameras(view=view[None], proj=heat.proj.astype(np.float64)[None], positions=position[None])
    distance = np.linalg.norm(heat.points - heat.centre, axis=1)
    near = np.argsort(distance, kind="stable")[: max(8, int(0.015 * len(heat.points)))]
    colours = np.tile(np.asarray(DEFAULT_COLOR), (len(heat.points), 1))
    colours[near] = (0.9, 0.1, 0.1)
    size = heat.image.shape[0] * scale
    return render_points(heat.points, cameras, size, colors=colours).images[0]


def heatmap_figure(heats: Sequence[PointHeatmap], titles: Sequence[str], path: Path, temperature: float) -> Path:
    """One row per object: the view with the point (star); the cosine and the softmax of the
    point's query against every region, upsampled over the image (true region dashed, most similar
    dotted, region grid faint, colour bars); the cloud from the same camera, the point in red."""
    from matplotlib.patches import Rectangle

    from pretext3d.report.figures import _figure, _save

    plt, fig = _figure(15.5, 3.6 * len(heats))
    for row, (heat, title) in enumerate(zip(heats, titles)):
        size = heat.image.shape[0]
        extent = (0, size, size, 0)  # pixel (column u, row v) in [0, S): the projection's coordinates
        cell = size / heat.grid
        axes = [fig.add_subplot(len(heats), 4, 4 * row + i + 1) for i in range(4)]
        axes[0].imshow(heat.image, extent=extent, interpolation="bilinear")
        axes[0].set_title(f"{title}\nview; point {heat.point} (star) at column {heat.pixel[0]:.0f}, "
                          f"row {heat.pixel[1]:.0f}", fontsize=9)
        maps = [(heat.cosine_image, "viridis", None, "cosine similarity"),
                (heat.softmax_image, "inferno", 0.0, f"softmax over regions (t = {temperature:g})")]
        for ax, (values, cmap, low, label) in zip(axes[1:3], maps):
            ax.imshow(heat.image.mean(axis=2), cmap="gray", extent=extent, interpolation="bilinear")
            shown = ax.imshow(values, cmap=cmap, alpha=0.6, extent=extent, interpolation="bilinear",
                              vmin=low if low is not None else float(values.min()), vmax=float(values.max()))
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=7)
            for k in range(1, heat.grid):
                ax.axhline(k * cell, color="white", lw=0.5, alpha=0.5)
                ax.axvline(k * cell, color="white", lw=0.5, alpha=0.5)
            inset = 0.012 * size  # every side stays visible at the image's border
            for region, style, colour in ((heat.argmax, ":", "white"), (heat.region, "--", "cyan")):
                r, c = divmod(region, heat.grid)
                ax.add_patch(Rectangle((c * cell + inset, r * cell + inset), cell - 2 * inset, cell - 2 * inset,
                                       fill=False, ls=style, lw=1.8, ec=colour))
            (r, c), flat = divmod(heat.region, heat.grid), heat.softmax.reshape(-1)
            ax.set_title(f"{label}\nown region (row {r}, col {c}): rank {heat.rank}/{heat.grid ** 2}, "
                         f"p = {flat[heat.region]:.2f}", fontsize=9)
        axes[3].imshow(_cloud_render(heat), extent=extent, interpolation="bilinear")
        axes[3].set_title(f"the cloud from the same camera\n(point in red; {heat.visible} visible centres)", fontsize=9)
        for ax in axes[:3]:
            ax.plot(*heat.pixel, marker="*", ms=15, mfc="red", mec="white", mew=1.2, ls="none")
        for ax in axes:
            ax.set_xlim(0, size)
            ax.set_ylim(size, 0)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return _save(plt, fig, path)


# --- the report's section -----------------------------------------------------------------------


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def picpoint_section(run: str | Path, recipe: dict, folder: Path, seed: int = 0, device: torch.device | str = "cpu",
                     count: int = 3) -> tuple[str, dict[str, Any]]:
    """The page's HTML for the section and what report.json records of it ({"figure": PNG name
    in ``folder``, ...}, or {"note": why there is no figure}: a missing store or checkpoint)."""
    from pretext3d.data.errors import DataFormatError
    from pretext3d.data.multimodal import MultimodalDataset
    from pretext3d.data.store import read_store_settings
    from pretext3d.report.figures import embedded_image
    from pretext3d.runs import CheckpointError, load_method, training_store

    store = training_store(run, recipe)
    try:
        settings, _ = read_store_settings(store)
    except DataFormatError as err:
        note = f"No heatmaps: the run's prepared store is not readable here ({err})."
        return _note(note), {"note": note, "store": str(store)}
    options = recipe.get("data_options") or {}
    wanted = dict(num_points=min(int(options.get("points") or settings.points), settings.points), views_per_sample=1,
                  image_size=options.get("image_size"), point_augment=None, image_augment=None,
                  modalities=("points", "images"), seed=seed)
    try:
        dataset, split = MultimodalDataset(store, split="test", **wanted), "test"
    except DataFormatError:  # a store without a test split: any object
        dataset, split = MultimodalDataset(store, split=None, **wanted), "all"
    try:
        picpoint = find_picpoint(load_method(run)).to(device).eval()
    except (CheckpointError, ValueError) as err:
        note = f"No heatmaps: the run's Pic@Point method cannot be loaded ({err})."
        return _note(note), {"note": note, "store": str(store)}
    rng = np.random.default_rng(seed + 3)
    classes = rng.permutation(np.unique(dataset.labels))
    heats, titles, rows = [], [], []
    for label in classes:
        if len(heats) == count:
            break
        index = int(rng.choice(np.flatnonzero(dataset.labels == label)))
        item = dataset[index]
        heat = point_heatmap(picpoint, item, device)
        if heat is None:
            continue
        name, cls = Path(dataset.entries[index]["file"]).stem, dataset.classes[int(label)]
        heats.append(heat)
        titles.append(f"{cls} ({name})")
        rows.append({"object": name, "class": cls, "view": int(item["view_index"][0]), "point": heat.point,
                     "centre": heat.centre.round(4).tolist(), "pixel": heat.pixel.round(2).tolist(),
                     "region": heat.region, "most_similar": heat.argmax, "rank": heat.rank,
                     "softmax_own": float(heat.softmax.reshape(-1)[heat.region]),
                     "cosine_own": float(heat.cosine.reshape(-1)[heat.region]), "cosine_max": float(heat.cosine.max()),
                     "own_region_top1": heat.own_top1, "visible_centres": heat.visible})
    if not heats:
        note = f"No heatmaps: no centre of the drawn {split} objects of {store} is visible in its view."
        return _note(note), {"note": note, "store": str(store)}
    grid, temperature = heats[0].grid, float(picpoint.temperature)
    path = heatmap_figure(heats, titles, folder / "picpoint_heatmaps.png", temperature)
    visible = sum(h.visible for h in heats)
    top1 = sum(h.own_top1 * h.visible for h in heats) / visible
    record = {"figure": path.name, "store": str(store), "split": split, "grid": grid, "temperature": temperature,
              "image_size": int(heats[0].image.shape[0]), "objects": rows, "own_region_top1": top1,
              "chance": 1.0 / grid ** 2,
              "similarity": "cos_r = u . v_r (u, v_r the L2-normalised point query and region keys); "
                            "p_r = softmax_r(cos_r / t) over the G^2 regions of the point's image",
              "point_choice": "the visible centre on the mask farthest from the cloud's centroid"}
    text = (f"{len(heats)} {split} objects of {store} (one per class, seed {seed}), each in one stored view at "
            f"{record['image_size']} px. Star: the chosen point (of the local centres that project into the view, are "
            "not hidden by the cloud and land on the object, the one farthest from the cloud's centroid). Middle: "
            "the cosine similarity of its local embedding q = point_local_out([point_local(f); pose(view)]) to the "
            f"embedding of each of the {grid}x{grid} regions of the image encoder's feature map (1x1 conv "
            f"image_local), and the softmax of cosine / t (t = {temperature:g}) over those regions, both upsampled "
            "bilinearly to the image; dashed cyan: the region the point projects into (its positive in training); "
            "dotted white: the most similar region. Right: the cloud from the same camera, the point's "
            f"neighbourhood in red. Over all {visible} visible centres of these views, the most similar region is "
            f"the own one for {100 * top1:.1f}% (chance {100 / grid ** 2:.1f}%).")
    return embedded_image(folder, path.name, "Pic@Point point-to-region heatmaps") + _note(text), record
