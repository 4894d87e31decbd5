"""The notebook door to a trained run: raw point clouds, images and meshes -> the run's features,
prepared the way the command line prepares its data.

    import pretext3d
    out = pretext3d.embed("runs/crosspoint", points=clouds, images=photos)  # {"points": (B, D), "image": (B, D)}

Preprocessing (what ``prepare`` and the readers do to the run's training data):

* points: each cloud centred on its centroid and scaled into the unit sphere
  (``normalize=True``; with ``normalize=False`` a cloud far from that scale gets a warning),
  then cut to the run's training point count by farthest point sampling (or padded with
  repeated points when it has fewer); normals are those given or PCA-estimated when the
  point encoder reads normals.
* images: RGB (or grey, for a run trained on grey renders), resized to the run's training
  image size (bilinear), scaled to [0, 1] and normalised with the ImageNet mean and std; the
  V views of an object (B, V, H, W, C) are embedded one by one and pooled (``pool``).
* meshes: centred and scaled into the unit sphere (``normalize_mesh``); a run with a mesh
  encoder (MIMS) embeds MeshNet's face features (the store's face count); any other run embeds
  the mesh's surface samples (as ``prepare`` samples them) with its point encoder.

``space``: "shared" (the method's heads into the space its modalities share: CrossPoint,
Pic@Point, MIMS), "encoder" (each encoder's output) or "auto" (shared when the method has one).
For many calls, build an ``Embedder`` once (it holds the loaded run).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pretext3d.data.meshes import Mesh, load_mesh, normalize_mesh
from pretext3d.data.meshnet import mesh_face_features
from pretext3d.data.multimodal import normalize_pixels
from pretext3d.data.splits import resample_indices
from pretext3d.data.store import fps_indices, read_store_settings, surface_points
from pretext3d.eval.modalities import ModalityEncoders, encode_batch, method_encoders
from pretext3d.geometry.transforms import normalize_unit_sphere
from pretext3d.runs import open_method, training_store
from pretext3d.utils.device import resolve_device

__all__ = ["Embedder", "embed", "surface_points"]

# a cloud whose farthest point from its centroid lies outside this range is not in the unit
# sphere the runs train on (normalize=False then warns)
_UNIT_RADIUS = (0.5, 1.5)


class Embedder:
    """A run folder's encoders with the preprocessing of its training data (module docstring).

    run: a ``pretext3d pretrain`` run folder; space: "auto" | "shared" | "encoder"; device:
    "auto", "cpu", "cuda", ...; batch_size: objects per forward pass."""

    def __init__(self, run: str | Path, space: str = "auto", device: str = "auto", batch_size: int = 32):
        opened = open_method(run)
        self.run, self.recipe = Path(run), opened.recipe
        if space == "auto":
            space = "shared" if opened.method.shared_heads() else "encoder"
        self.encoders: ModalityEncoders = method_encoders(opened.method, space, opened.weights_id, opened.source)
        self.space = space
        self.device = resolve_device(device)
        self.encoders.to(self.device)
        self.batch_size = batch_size
        options = self.recipe.get("data_options") or {}
        self.num_points = int(options.get("points") or 1024)
        store = training_store(self.run, self.recipe)
        settings = read_store_settings(store)[0] if (store / "store.json").is_file() else None
        self.training_settings = settings  # the store the run trained on (None for point datasets)
        self.image_size = int(options.get("image_size") or (settings.image_size if settings else 224))
        self.faces = settings.faces if settings else 1024
        self.grayscale = bool(settings.grayscale) if settings else False

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the run has encoders for (points, image, mesh)."""
        return self.encoders.modalities

    # --- points ---------------------------------------------------------------------------------

    def points(self, clouds: Any, normals: Any = None, normalize: bool = True) -> np.ndarray:
        """clouds: (B, N, 3), one (N, 3) cloud, or a list of (N_i, 3) clouds (arrays or tensors);
        normals: the same shapes, or None -> (B, D) features."""
        listed = _clouds(clouds, "points")
        given = _clouds(normals, "normals") if normals is not None else [None] * len(listed)
        if len(given) != len(listed):
            raise ValueError(f"{len(listed)} clouds but {len(given)} normal sets")
        prepared = [self._cloud(i, cloud, n, normalize) for i, (cloud, n) in enumerate(zip(listed, given))]
        return self._encode("points", [{"points": p, "normals": n} for p, n in prepared])

    def _cloud(self, i: int, cloud: np.ndarray, normals: np.ndarray | None,
               normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        radius = float(np.linalg.norm(cloud - cloud.mean(0), axis=1).max())
        if normalize:
            cloud = normalize_unit_sphere(cloud)
        elif not _UNIT_RADIUS[0] <= radius <= _UNIT_RADIUS[1]:
            warnings.warn(f"cloud {i}: its points reach {radius:.3g} from their centroid, but {self.run} trained on "
                          "clouds in the unit sphere: its features of this cloud mean little (normalize=True scales it)",
                          stacklevel=3)
        if len(cloud) > self.num_points:
            keep = fps_indices(cloud, self.num_points, 0)
        else:
            keep = resample_indices(len(cloud), self.num_points, np.random.default_rng(0))
        points = cloud[keep].astype(np.float32)
        if normals is not None:
            return points, normals[keep].astype(np.float32)
        return points, self._estimated_normals(points)

    def _estimated_normals(self, points: np.ndarray) -> np.ndarray:
        if getattr(self.encoders.modules.get("points"), "in_channels", 3) != 6:
            return np.zeros_like(points)  # the encoder reads xyz only
        from pretext3d.render.splat import estimate_normals

        return estimate_normals(points).astype(np.float32)

    # --- images ---------------------------------------------------------------------------------

    def images(self, images: Any, pool: str = "mean") -> np.ndarray:
        """images: one (H, W, C) image, (B, H, W, C), (B, V, H, W, C) (V views of each object),
        or a list of images (arrays, PIL images or file paths), uint8 or floats in [0, 1]
        -> (B, D) features (views pooled by ``pool``: "mean" or "max")."""
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
        objects = _image_objects(images)
        items = [{"images": torch.stack([self._pixels(view) for view in views])} for views in objects]
        per_view = self._encode("image", items)  # (B, V, D)
        return per_view.mean(1) if pool == "mean" else per_view.max(1)

    def _pixels(self, image: Any) -> torch.Tensor:
        from PIL import Image

        picture = _pil_image(image).convert("L" if self.grayscale else "RGB")
        resized = picture.resize((self.image_size, self.image_size), Image.BILINEAR)
        pixels = np.asarray(resized, np.float32) / 255
        return torch.from_numpy(normalize_pixels(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)))

    # --- meshes ---------------------------------------------------------------------------------

    def meshes(self, meshes: Any) -> np.ndarray:
        """meshes: one mesh or a list (file paths, ``pretext3d.data.Mesh``, trimesh meshes or
        (vertices, faces) pairs) -> (B, D) features: the mesh encoder's where the run has one,
        else the point encoder's of the surface samples."""
        listed = [_mesh(m, i) for i, m in enumerate(meshes if isinstance(meshes, (list, tuple)) and not _is_pair(meshes)
                                                     else [meshes])]
        normalized = [normalize_mesh(mesh.validate(origin))[0] for mesh, origin in listed]
        if "mesh" not in self.encoders.modules:
            samples = [surface_points(mesh, self.num_points, 0) for mesh in normalized]
            return self._encode("points", [{"points": p.astype(np.float32), "normals": n.astype(np.float32)}
                                           for p, n in samples])
        items = []
        for mesh, (_, origin) in zip(normalized, listed):
            faces = mesh_face_features(mesh, self.faces, 0, origin)
            features = torch.from_numpy(faces.features.T.copy())
            items.append({"mesh_centers": features[0:3], "mesh_corners": features[3:12], "mesh_normals": features[12:15],
                          "mesh_neighbors": torch.from_numpy(faces.neighbours.astype(np.int64))})
        return self._encode("mesh", items)

    # --- the forward passes -------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, modality: str, items: list[dict[str, Any]]) -> np.ndarray:
        if modality not in self.encoders.modules:
            raise ValueError(f"{self.run}: its method ({self.encoders.method}) has no {modality} encoder; it embeds "
                             f"{', '.join(self.modalities)}")
        if self.space == "shared" and modality not in self.encoders.heads:
            raise ValueError(f"{self.run}: its method ({self.encoders.method}) has no head taking {modality} into its "
                             "shared space; embed with space='encoder'")
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            batch = {key: torch.stack([torch.as_tensor(item[key]) for item in chunk]) for key in chunk[0]}
            out.append(encode_batch(self.encoders, modality, batch, self.device).float().cpu().numpy())
        return np.concatenate(out)


def embed(run: str | Path, points: Any = None, images: Any = None, meshes: Any = None, space: str = "auto",
          normals: Any = None, normalize: bool = True, pool: str = "mean", device: str = "auto",
          batch_size: int = 32) -> dict[str, np.ndarray]:
    """The run's features of the given inputs, prepared as its training data were (see the
    module docstring): {"points": (B, D), "image": (B, D), "mesh": (B, D)} for what was given."""
    if points is None and images is None and meshes is None:
        raise ValueError("give points=, images= or meshes= to embed")
    embedder = Embedder(run, space, device, batch_size)
    out: dict[str, np.ndarray] = {}
    if points is not None:
        out["points"] = embedder.points(points, normals, normalize)
    if images is not None:
        out["image"] = embedder.images(images, pool)
    if meshes is not None:
        out["mesh"] = embedder.meshes(meshes)
    return out


# --- input forms ----------------------------------------------------------------------------------


def _clouds(value: Any, what: str) -> list[np.ndarray]:
    """One cloud, a (B, N, 3) batch or a list -> a list of finite float64 (N, 3) arrays."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 2:
        value = [value]
    listed = [np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, np.float64) for v in value]
    for i, cloud in enumerate(listed):
        if cloud.ndim != 2 or cloud.shape[1] < 3 or len(cloud) == 0:
            raise ValueError(f"{what} {i}: expected (N, 3) with N >= 1, got shape {cloud.shape}")
        if not np.isfinite(cloud).all():
            raise ValueError(f"{what} {i}: holds NaN or infinite values")
    return [cloud[:, :3] for cloud in listed]


def _image_objects(images: Any) -> list[list[Any]]:
    """Every input form of ``Embedder.images`` -> per object, its views."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            return [[images]]
        if images.ndim == 4:
            return [[image] for image in images]
        if images.ndim == 5:
            return [list(views) for views in images]
        raise ValueError(f"images: expected (H, W, C), (B, H, W, C) or (B, V, H, W, C), got shape {images.shape}")
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        return [[images]]
    return [list(item) if isinstance(item, (list, tuple)) else [item] for item in images]


def _pil_image(image: Any):
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{image}: not a readable image ({err})") from None
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all():
            raise ValueError("an image holds NaN or infinite values")
        array = np.clip(array * 255 if array.max() <= 1.0 else array, 0, 255)
    array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(array[..., :3] if array.ndim == 3 else array)


def _is_pair(value: Any) -> bool:
    """A (vertices, faces) pair rather than a list of meshes."""
    return (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, np.ndarray) for v in value)
            and value[0].ndim == 2 and value[1].ndim == 2)


def _mesh(value: Any, i: int) -> tuple[Mesh, str]:
    """A mesh in any accepted form, and what names it in errors."""
    if isinstance(value, (str, Path)):
        return load_mesh(value), str(value)
    if isinstance(value, Mesh):
        return value, f"mesh {i}"
    if hasattr(value, "vertices") and hasattr(value, "faces"):  # trimesh.Trimesh and alike
        return Mesh(np.asarray(value.vertices, np.float64), np.asarray(value.faces, np.int64)), f"mesh {i}"
    if _is_pair(value):
        return Mesh(np.asarray(value[0], np.float64), np.asarray(value[1], np.int64)), f"mesh {i}"
    raise ValueError(f"mesh {i}: expected a file path, a pretext3d Mesh, a trimesh mesh or (vertices, faces)")
