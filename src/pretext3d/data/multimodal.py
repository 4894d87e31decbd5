"""A torch Dataset over a prepared store: points, k views with their matrices, mesh, label.

Augmentations follow the papers (CrossPoint, Pic@Point, Jing et al.) and keep the 2D-3D
correspondence exact: the rigid/scaling part of the point augmentation A (rotation about the
up axis, anisotropic scale, translation) is folded into the returned view matrices
(view' = view A^-1), and the random crop and horizontal flip into the projection matrices
(proj' = M proj, M an affine map of normalised device coordinates). So
``project_points(points, view, proj)`` still lands augmented points on the pixels of the
augmented images where they were drawn (jitter and dropout aside, which move points by ~0.01).

Every random choice comes from ``numpy.random.default_rng([seed, epoch, index])``: a sample
is the same in any worker and any run; call ``set_epoch`` for new draws each epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pretext3d.data.errors import DataFormatError
from pretext3d.data.store import decode_images, read_index, read_object, read_store_settings, store_file
from pretext3d.render.shading import LUMA

__all__ = [
    "AugmentedClouds",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize_pixels",
    "normalize_image_batch",
    "ImageAugment",
    "MultimodalDataset",
    "PointAugment",
    "augment_cloud",
    "augmented_views",
    "colour_jitter",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class PointAugment:
    """Point augmentations; the defaults are DGCNN's ranges (CrossPoint's official code differs: see
    recipes/crosspoint_dgcnn.yaml). ``rotate``: about the store's up axis. ``translate``: the
    bound of a uniform shift per axis, absolute, or with ``translate_relative`` in units of the
    cloud's bounding-box extent on that axis after scaling and rotation (CrossPoint's code:
    0.5 relative)."""

    rotate: bool = True
    scale: tuple[float, float] = (2.0 / 3.0, 3.0 / 2.0)
    anisotropic: bool = True
    translate: float = 0.2
    translate_relative: bool = False
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05
    dropout_max: float = 0.0  # PointNet++ dropout ratio bound (0 = off)


@dataclass(frozen=True)
class ImageAugment:
    """Image augmentations: random resized crop (area fraction and aspect ranges), horizontal
    flip, colour jitter (brightness, contrast, saturation factors in [1 - x, 1 + x])."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def random_point_affine(rng: np.random.Generator, augment: PointAugment, up: str,
                        points: np.ndarray | None = None) -> np.ndarray:
    """A (4, 4) = translate @ scale @ rotate-about-up, drawn from ``augment``'s ranges.
    points: (N, 3), needed for a relative translation: shift_a = U(-t, t) * extent_a, the
    extent of the scaled and rotated points on axis a."""
    linear = np.diag(rng.uniform(*augment.scale, 3 if augment.anisotropic else 1) * np.ones(3))
    if augment.rotate:
        linear = linear @ _rotation(_AXES[up], rng.uniform(0, 2 * math.pi))
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = rng.uniform(-augment.translate, augment.translate, 3)
    if augment.translate_relative:
        if points is None:
            raise ValueError("a relative translation needs the points")
        mapped = points @ linear.T
        affine[:3, 3] *= mapped.max(axis=0) - mapped.min(axis=0)
    return affine


def augment_cloud(points: np.ndarray, normals: np.ndarray | None, affine: np.ndarray, rng: np.random.Generator,
                  augment: PointAugment | None) -> dict[str, torch.Tensor]:
    """points, normals: (N, 3) -> {"points", "normals"?}: (N, 3) float32 after the affine map
    (normals by its inverse transpose), jitter and dropout (dropped points repeat the first)."""
    points = points.astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]
    if normals is not None:
        normals = normals.astype(np.float64) @ np.linalg.inv(affine[:3, :3])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    if augment and augment.jitter_sigma > 0:
        points += np.clip(augment.jitter_sigma * rng.standard_normal(points.shape), -augment.jitter_clip, augment.jitter_clip)
    if augment and augment.dropout_max > 0:
        drop = rng.random(len(points)) <= rng.uniform(0, augment.dropout_max)
        points[drop] = points[0]
        if normals is not None:
            normals[drop] = normals[0]
    out = {"points": torch.from_numpy(points.astype(np.float32))}
    if normals is not None:
        out["normals"] = torch.from_numpy(normals.astype(np.float32))
    return out


POINT_SAMPLING = ("first", "random")


def sampled_points(count: int, num_points: int, sampling: str, rng: np.random.Generator) -> np.ndarray | slice:
    """Which of ``count`` held points a sample uses: the first ``num_points`` (stores and
    mesh readers hold them in farthest-point order, so a prefix is evenly spread), or
    (``"random"``) ``num_points`` drawn uniformly without replacement, new for every rng (every
    sample and epoch). Raises ValueError when fewer than ``num_points`` are held."""
    if count < num_points:
        raise ValueError(f"{count} points held, {num_points} asked for")
    if sampling == "first":
        return slice(0, num_points)
    if sampling == "random":
        return rng.choice(count, size=num_points, replace=False)
    raise ValueError(f"point sampling must be one of {', '.join(POINT_SAMPLING)}, got {sampling!r}")


def augmented_views(points: np.ndarray, normals: np.ndarray | None, rng: np.random.Generator,
                    augment: PointAugment | None, up: str, views: int = 1) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """``views`` independent augmentations of one cloud (N, 3): {"points" (N, 3), "normals"?
    (the first view's), "point_views" (V, N, 3) when V > 1} and the first view's (4, 4) affine."""
    first_affine = np.eye(4)
    clouds = []
    for v in range(views):
        affine = random_point_affine(rng, augment, up, points) if augment else np.eye(4)
        first_affine = affine if v == 0 else first_affine
        clouds.append(augment_cloud(points, normals if v == 0 else None, affine, rng, augment))
    out = dict(clouds[0])
    if views > 1:
        out["point_views"] = torch.stack([c["points"] for c in clouds])
    return out, first_affine


def random_crop_box(rng: np.random.Generator, height: int, width: int, augment: ImageAugment) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) of a random resized crop (in pixels; the whole image after 10 misses)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*augment.crop_scale)
        ratio = math.exp(rng.uniform(math.log(augment.crop_ratio[0]), math.log(augment.crop_ratio[1])))
        w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if w <= width and h <= height:
            return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h
    return 0.0, 0.0, float(width), float(height)


def crop_flip_ndc(box: tuple[float, float, float, float], height: int, width: int, flip: bool) -> np.ndarray:
    """(4, 4) M with proj' = M proj: maps NDC of the full image to NDC of the (flipped) crop.

    For a crop (x0, y0, w, h) in pixels: x' = (W / w) x + (W - 2 x0) / w - 1 and
    y' = (H / h) y + 1 - (H - 2 y0) / h; a horizontal flip negates x'."""
    x0, y0, w, h = box
    m = np.eye(4)
    m[0, 0], m[0, 3] = width / w, (width - 2 * x0) / w - 1
    m[1, 1], m[1, 3] = height / h, 1 - (height - 2 * y0) / h
    if flip:
        m[0] *= -1
    return m


def normalize_pixels(pixels: np.ndarray) -> np.ndarray:
    """pixels (..., C, S, S) in [0, 1] -> ImageNet-normalised: (x - mean_c) / std_c for RGB
    (C = 3); grey images (C = 1) use the means of the three channels' mean and std."""
    mean, std = (np.asarray(v, dtype=pixels.dtype) for v in _imagenet_stats(pixels.shape[-3]))
    return (pixels - mean[:, None, None]) / std[:, None, None]


def _imagenet_stats(channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: ImageNet's for RGB, their means for one grey channel."""
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [float(np.mean(IMAGENET_MEAN))], [float(np.mean(IMAGENET_STD))]


def normalize_image_batch(batch: dict, normalize: bool = True) -> dict:
    """A batch whose ``images`` are uint8 (B, k, C, S, S) (``MultimodalDataset(image_dtype="uint8")``)
    with them as float32 on their own device: ImageNet-normalised (``normalize_pixels`` of
    x / 255), or x / 255 with ``normalize=False``; other batches unchanged. Run after the copy to
    the GPU: it carries a quarter of the bytes."""
    images = batch.get("images") if isinstance(batch, dict) else None
    if images is None or images.dtype != torch.uint8:
        return batch
    if not normalize:
        return {**batch, "images": images.to(torch.float32).div_(255)}
    mean, std = (torch.tensor(v, device=images.device) for v in _imagenet_stats(images.shape[-3]))
    pixels = images.to(torch.float32).div_(255).sub_(mean[:, None, None]).div_(std[:, None, None])
    return {**batch, "images": pixels}


def _jitter_factors(rng: np.random.Generator, augment: ImageAugment) -> tuple[float, float, float]:
    """Brightness, contrast and saturation factors (three draws, also when a range is empty, so
    that the random stream of the following views does not depend on the settings)."""
    return (rng.uniform(1 - augment.brightness, 1 + augment.brightness),
            rng.uniform(1 - augment.contrast, 1 + augment.contrast),
            rng.uniform(1 - augment.saturation, 1 + augment.saturation))


def colour_jitter(pixels: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """Brightness b, contrast c and saturation s applied in turn to pixels (H, W, 3) uint8, as
    float32 in [0, 255] (clipped once, at the end):

        x1 = b x;  x2 = c (x1 - m) + m, m = mean grey(x1);  x3 = s x2 + (1 - s) grey(x2)

    with grey the luma-weighted sum of the channels. All three are affine in x, so
    x3 = s c b x + (1 - s) c b grey(x) + (1 - c) m: two passes over the image instead of six in
    float64 (3.7 -> 0.9 ms per 224-pixel view, benchmarks/bench_data_path.py, crosspoint_dgcnn).
    """
    brightness, contrast, saturation = factors
    image = pixels.astype(np.float32)
    grey = image @ np.asarray(LUMA, np.float32)  # (H, W)
    mean = brightness * float(grey.mean())
    scale = saturation * contrast * brightness
    offset = (1 - saturation) * contrast * brightness * grey + (1 - contrast) * mean
    image *= scale
    image += offset[..., None]
    return np.clip(image, 0, 255, out=image)


class MultimodalDataset(Dataset):
    """Samples of a prepared store (``pretext3d prepare``).

    Each item: points (N, 3), normals (N, 3) float32; images (k, C, S, S) float32 (ImageNet-
    normalised unless ``normalize=False``), masks (k, S, S) bool, view/proj (k, 4, 4) float32,
    view_index (k,) int64; for meshes mesh_centers (3, F), mesh_corners (9, F), mesh_normals
    (3, F) float32 and mesh_neighbors (F, 3) int64 (MeshNet's inputs, batch first after
    collation); label, index. With ``point_views`` V > 1 also point_views (V, N, 3): V
    independent augmentations of the cloud, the first being ``points`` (the one the image
    matrices follow), for methods that contrast point views (CrossPoint).

    split: "train", "test" or None (all); num_points: the first N stored points (stored in
    farthest-point order, so any prefix is well spread; default all); point_sampling: "first"
    (those first N) or "random" (N of all stored points, uniformly, new each epoch); views_per_sample: k
    views drawn without replacement; image_size: output side S (default the stored size);
    point_augment / image_augment: None for none (evaluation); image_dtype "uint8": images
    stay (k, C, S, S) uint8 pixels (a colour-jittered image rounded back to uint8), a quarter of
    the bytes through the loader and to the GPU, normalised there by ``normalize_image_batch``
    (the trainer calls the dataset's ``on_device``). The mesh features are returned
    as stored (MeshNet's own augmentation, if wanted, belongs to the method using them).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        num_points: int | None = None,
        views_per_sample: int = 1,
        image_size: int | None = None,
        point_augment: PointAugment | None = PointAugment(),
        image_augment: ImageAugment | None = ImageAugment(),
        normalize: bool = True,
        modalities: tuple[str, ...] = ("points", "images", "mesh"),
        seed: int = 0,
        point_views: int = 1,
        point_sampling: str = "first",
        image_dtype: str = "float32",
    ):
        self.root = Path(root)
        if image_dtype not in ("float32", "uint8"):
            raise ValueError(f"image_dtype must be float32 or uint8, got {image_dtype!r}")
        self.image_dtype = image_dtype
        if point_sampling not in POINT_SAMPLING:
            raise ValueError(f"point_sampling must be one of {', '.join(POINT_SAMPLING)}, got {point_sampling!r}")
        self.point_sampling = point_sampling
        if point_views < 1:
            raise ValueError(f"point_views must be at least 1, got {point_views}")
        self.point_views = point_views
        self.settings, _ = read_store_settings(self.root)
        index = read_index(self.root)
        self.entries = [e for e in index["objects"] if split is None or e["split"] == split]
        if not self.entries:
            raise DataFormatError(self.root, f"holds no prepared objects in split {split!r}")
        self.classes: list[str] = index["classes"]
        self.labels = np.array([e["label"] for e in self.entries], dtype=np.int64)
        self.num_points = num_points or self.settings.points
        if self.num_points > self.settings.points:
            raise ValueError(f"{self.root} stores {self.settings.points} points per object, {self.num_points} asked for")
        if not 1 <= views_per_sample <= self.settings.views:
            raise ValueError(f"views_per_sample must be in [1, {self.settings.views}], got {views_per_sample}")
        self.views_per_sample = views_per_sample
        self.image_size = image_size or self.settings.image_size
        self.point_augment, self.image_augment = point_augment, image_augment
        self.normalize, self.modalities, self.seed = normalize, tuple(modalities), seed
        self.epoch = 0
        wanted = {"points": ("points", "normals"), "images": ("images_png", "image_offsets", "view", "proj"),
                  "mesh": ("mesh_features", "mesh_neighbours")}
        self._keys = tuple(k for m in self.modalities for k in wanted.get(m, ()))

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def on_device(self, batch: dict) -> dict:
        """Finish a collated batch on its device: uint8 images become float32 as the float path
        gives them (normalised, or in [0, 1] with ``normalize=False``)."""
        return normalize_image_batch(batch, self.normalize)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        entry = self.entries[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        path = store_file(self.root, entry["file"])
        try:
            arrays = read_object(path, self._keys)
        except Exception as err:  # a damaged file: name it (zip/npy errors come in many types)
            raise DataFormatError(path, f"cannot be read ({type(err).__name__}: {err}); run `pretext3d verify`") from None
        item: dict[str, torch.Tensor | int] = {"label": int(entry["label"]), "index": i}
        affine = np.eye(4)
        if "points" in self.modalities:
            keep = sampled_points(len(arrays["points"]), self.num_points, self.point_sampling, rng)
            clouds, affine = augmented_views(arrays["points"][keep], arrays["normals"][keep],
                                             rng, self.point_augment, self.settings.up, self.point_views)
            item.update(clouds)
        if "images" in self.modalities:
            item.update(self._images(arrays, affine, rng))
        if "mesh" in self.modalities and "mesh_features" in arrays:
            features = torch.from_numpy(arrays["mesh_features"].T.copy())
            item.update(mesh_centers=features[0:3], mesh_corners=features[3:12], mesh_normals=features[12:15],
                        mesh_neighbors=torch.from_numpy(arrays["mesh_neighbours"].astype(np.int64)))
        return item

    def _images(self, arrays: dict, affine: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        from PIL import Image

        total = len(arrays["image_offsets"]) - 1
        chosen = np.sort(rng.choice(total, size=self.views_per_sample, replace=False))
        images, masks = decode_images(arrays["images_png"], arrays["image_offsets"], chosen)
        height, width = images.shape[1:3]
        size = self.image_size
        out_images, out_masks, projections = [], [], []
        for image, mask, v in zip(images, masks, chosen):
            augment = self.image_augment
            box = random_crop_box(rng, height, width, augment) if augment else (0.0, 0.0, float(width), float(height))
            flip = bool(augment and augment.flip and rng.random() < 0.5)
            pil_box = (box[0], box[1], box[0] + box[2], box[1] + box[3])
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=pil_box))
            # bilinear and "> 0": a pixel is in the mask when any covered pixel touches it, so a
            # point on a one-pixel-thin part stays inside after the crop is resampled
            coverage = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR, box=pil_box)
            mask = np.asarray(coverage) > 0
            if flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
            factors = _jitter_factors(rng, augment) if augment and image.ndim == 3 else (1.0, 1.0, 1.0)
            if factors != (1.0, 1.0, 1.0):
                image = colour_jitter(image, factors)
                image = np.rint(image).astype(np.uint8) if self.image_dtype == "uint8" else image / 255
            elif self.image_dtype == "float32":
                image = image / np.float32(255)
            out_images.append(image if image.ndim == 3 else image[..., None])
            out_masks.append(mask)
            projections.append(crop_flip_ndc(box, height, width, flip) @ arrays["proj"][v])
        pixels = np.stack(out_images).transpose(0, 3, 1, 2)  # (k, C, S, S)
        if self.image_dtype == "float32" and self.normalize:
            pixels = normalize_pixels(pixels)
        views = arrays["view"][chosen].astype(np.float64) @ np.linalg.inv(affine)
        return {
            "images": torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32 if self.image_dtype == "float32"
                                                            else np.uint8)),
            "masks": torch.from_numpy(np.stack(out_masks).astype(bool)),
            "view": torch.from_numpy(views.astype(np.float32)),
            "proj": torch.from_numpy(np.stack(projections).astype(np.float32)),
            "view_index": torch.from_numpy(chosen.astype(np.int64)),
        }


class AugmentedClouds(Dataset):
    """Point-only pretraining data from any dataset ``open_splits`` reads (npz, HDF5, folders,
    the built-in shapes): items {"points" (N, 3), "normals"? , "label", "index"} after
    ``augment``, plus "point_views" (V, N, 3) when ``point_views`` > 1. Draws come from
    ``default_rng([seed, epoch, index])`` as in MultimodalDataset. up: the axis rotations turn
    about (the dataset's own when it knows it, else z). num_points: draw this many of each
    cloud's points uniformly at random, new each epoch (None: use the cloud as read)."""

    def __init__(self, clouds: Dataset, augment: PointAugment | None = PointAugment(), point_views: int = 1,
                 seed: int = 0, up: str | None = None, num_points: int | None = None):
        if point_views < 1:
            raise ValueError(f"point_views must be at least 1, got {point_views}")
        self.num_points = num_points
        self.clouds, self.augment, self.point_views, self.seed = clouds, augment, point_views, seed
        self.up = up or getattr(clouds, "up_axis", None) or "z"
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.clouds)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        item = self.clouds[i]
        if "error" in item:
            raise DataFormatError(getattr(self.clouds, "source", "dataset"), item["error"])
        rng = np.random.default_rng([self.seed, self.epoch, i])
        points = np.asarray(item["points"])
        normals = np.asarray(item["normals"]) if "normals" in item else None
        if self.num_points is not None:
            try:
                keep = sampled_points(len(points), self.num_points, "random", rng)
            except ValueError as err:
                raise DataFormatError(getattr(self.clouds, "source", "dataset"), f"item {i}: {err}") from None
            points, normals = points[keep], (normals[keep] if normals is not None else None)
        clouds, _ = augmented_views(points, normals, rng, self.augment, self.up, self.point_views)
        return {**clouds, "label": int(item["label"]), "index": i}
