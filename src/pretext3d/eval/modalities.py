"""Frozen embeddings of a prepared store's objects in every modality a method has: the point
cloud, each rendered view, and the mesh.

Two spaces are offered. ``encoder``: each modality's encoder output (the features a linear
probe uses; for images the ResNet's pooled feature). ``shared``: those features passed through
the method's heads into the space its loss aligns across modalities, as the method declares them
(``PretextMethod.shared_heads``: CrossPoint's projection heads, Pic@Point's global heads, MIMS's
modality-invariant heads); only there is cross-modal comparison meaningful. Jing et al.'s CMCV
has no shared space (a classifier F_f judges pairs). A trained method is reached through
``pretext3d.runs``.

Image features are kept per view, (S, V, D), so that a protocol can pool any subset of views
(``pool_views``). Embeddings are cached like point features (``eval.cache.FeatureCache``): the
key holds the weights' digest, the store's fingerprint and every setting.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from pretext3d.data.errors import DataFormatError
from pretext3d.data.multimodal import MultimodalDataset
from pretext3d.data.selection import Selection, select_rows
from pretext3d.data.store import read_index, read_store_settings
from pretext3d.eval.cache import FeatureCache, data_fingerprint, file_digest
from pretext3d.eval.features import Features, batchnorm_calibration, seeded_subset
from pretext3d.eval.options import CacheOptions, RuntimeOptions, SelectionOptions, WeightsOptions
from pretext3d.models import image_encoder_module, mesh_inputs
from pretext3d.runs import open_method
from pretext3d.utils.progress import progress_bar

__all__ = [
    "MODALITIES",
    "describe_encoders",
    "through_heads",
    "image_size_of",
    "StoreProtocolConfig",
    "ModalityEncoders",
    "StoreEmbeddings",
    "method_encoders",
    "image_encoder_alone",
    "load_run_encoders",
    "embed_store",
    "encode_batch",
    "view_subset",
    "pool_views",
    "check_pool",
    "calibrate_encoders",
    "calibration_note",
]

MODALITIES = ("points", "image", "mesh")
_DATASET_MODALITY = {"points": "points", "image": "images", "mesh": "mesh"}

@dataclass
class StoreProtocolConfig(WeightsOptions, SelectionOptions, CacheOptions, RuntimeOptions):
    """What every protocol on a prepared store's modalities takes: the store, the weights (a
    pretraining run folder as ``checkpoint``, or random_init with ``like`` a run folder: that
    run's method with seeded random weights and BatchNorm statistics calibrated on
    ``bn_calibration_objects`` training objects; ``method_run()`` names the run) and how the
    objects are fed (the first ``num_points`` stored points; views resized to ``image_size``,
    default the run's training size)."""

    random_init_needs: ClassVar[str] = "run"

    data: str
    seed: int = 0
    bn_calibration_objects: int = 256
    num_points: int | None = 1024
    image_size: int | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.random_init and self.checkpoint and not self.like:  # the earlier form: the run as checkpoint
            self.like, self.checkpoint = self.checkpoint, None
        super().__post_init__()


@dataclass
class ModalityEncoders:
    """modules[m]: the encoder of modality m; heads[m]: its head into the shared space (only
    with space="shared"); method: the method's class name; weights_id: what identifies the
    weights in cache keys; source: what the weights are, in words."""

    modules: dict[str, nn.Module]
    heads: dict[str, nn.Module]
    space: str
    method: str
    weights_id: dict[str, Any]
    source: str
    head_names: dict[str, str] = field(default_factory=dict)  # modality -> the head's attribute path in the method

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.modules)

    def to(self, device: torch.device) -> "ModalityEncoders":
        for module in (*self.modules.values(), *self.heads.values()):
            module.to(device).eval()
        return self


def method_encoders(method: nn.Module, space: str = "encoder", weights_id: dict[str, Any] | None = None,
                    source: str = "") -> ModalityEncoders:
    """The modality encoders of a pretext method (what it declares: ``modality_encoders``) and,
    for space="shared", its heads into the shared space (``shared_space``)."""
    if space not in ("encoder", "shared"):
        raise ValueError(f"space must be 'encoder' or 'shared', got {space!r}")
    kind = type(method).__name__
    modules = method.modality_encoders()
    heads: dict[str, nn.Module] = {}
    head_names: dict[str, str] = {}
    if space == "shared":
        head_names = {m: path for m, path in method.shared_heads().items() if m in modules}
        if not head_names:
            raise ValueError(f"{kind} has no space shared by its modalities (methods with one declare shared_heads, "
                             f"e.g. CrossPoint, PicAtPoint, MIMS); use the encoder space")
        heads = {m: h for m, h in method.shared_space().items() if m in head_names}
    return ModalityEncoders(modules, heads, space, kind, weights_id or {}, source, head_names)


def image_encoder_alone(name: str = "resnet18", weights: str | None = None, seed: int = 0) -> ModalityEncoders:
    """A ResNet by name: torchvision ``weights`` read from disk, or a seeded random init (whose
    BatchNorm statistics must then be calibrated: ``calibrate_encoders``)."""
    torch.manual_seed(seed)
    encoder = image_encoder_module(name, weights)
    weights_id = {"image_weights": file_digest(weights)} if weights else {"random_init": name, "init_seed": seed}
    source = f"{name} from {weights}" if weights else f"{name}, random init (seed {seed})"
    return ModalityEncoders({"image": encoder}, {}, "encoder", name, weights_id, source)


def load_run_encoders(run: str | Path, space: str = "encoder", random_init: bool = False,
                      seed: int = 0) -> tuple[ModalityEncoders, dict[str, Any]]:
    """The encoders of a ``pretext3d pretrain`` run folder (its newest checkpoint, or seeded
    random weights) and its recipe."""
    opened = open_method(run, random_init, seed)
    return method_encoders(opened.method, space, opened.weights_id, opened.source), opened.recipe


# --- views ------------------------------------------------------------------------------------


def view_subset(total: int, count: int, store: str | Path = "the store") -> np.ndarray:
    """``count`` of a store's ``total`` views spread evenly over its camera order:
    indices floor(i * total / count), i < count."""
    if not 1 <= count <= total:
        raise ValueError(f"{store}: holds {total} views per object; cannot take {count}")
    return np.floor(np.arange(count) * total / count).astype(np.int64)


POOLS = ("max", "mean")


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool must be 'max' or 'mean', got {pool!r}")
    return pool


def pool_views(per_view: np.ndarray, views: np.ndarray, pool: str) -> np.ndarray:
    """per_view: (S, V, D) -> (S, D): max or mean over the chosen view columns ``views``."""
    check_pool(pool)
    chosen = per_view[:, views]
    return chosen.max(axis=1) if pool == "max" else chosen.mean(axis=1)


# --- embedding --------------------------------------------------------------------------------


@dataclass
class StoreEmbeddings:
    """features["points"|"mesh"]: (S, D); features["image"]: (S, V, D) for every stored view;
    labels: (S,); names: the objects' names; classes: the store's class names."""

    split: str
    labels: np.ndarray
    names: list[str]
    classes: list[str]
    features: dict[str, np.ndarray]
    cached: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0


def _store_dataset(root: Path, split: str, modalities: Sequence[str], num_points: int | None,
                   image_size: int | None) -> MultimodalDataset:
    settings, _ = read_store_settings(root)
    wanted = tuple(_DATASET_MODALITY[m] for m in modalities)
    # every view, in the store's order (sorted draw of all of them), no augmentation
    return MultimodalDataset(root, split, num_points, views_per_sample=settings.views, image_size=image_size,
                             point_augment=None, image_augment=None, modalities=wanted)


def _check_store(root: Path, modalities: Sequence[str]) -> None:
    if not (root / "store.json").is_file():
        raise DataFormatError(root, "is not a prepared store (no store.json); make one with `pretext3d prepare`")
    if "mesh" in modalities:
        objects = read_index(root)["objects"]
        without = [e["key"] for e in objects if not e.get("mesh")]
        if without:
            raise DataFormatError(root, f"has {len(without)} object(s) without a mesh (e.g. {without[0]}); the mesh "
                                  "modality needs a store prepared from meshes")


def encode_batch(encoders: ModalityEncoders, modality: str, batch: dict[str, Tensor], device: torch.device) -> Tensor:
    """One batch -> (B, D) for points and meshes, (B, V, D) for images (every view of the batch)."""
    module = encoders.modules[modality]
    if modality == "points":
        points = batch["points"].to(device)
        normals = batch["normals"].to(device) if getattr(module, "in_channels", 3) == 6 else None
        out = module(points, normals, need_local=False).global_
    elif modality == "mesh":
        faces, neighbours = mesh_inputs({k: v.to(device) for k, v in batch.items() if k.startswith("mesh_")})
        out = module(faces, neighbours, need_local=False).global_
    else:
        images = batch["images"].to(device)  # (B, V, C, S, S)
        b, v = images.shape[:2]
        flat = images.flatten(0, 1)
        out = module(flat.expand(-1, 3, -1, -1) if flat.shape[1] == 1 else flat).global_
        if modality in encoders.heads:
            out = encoders.heads[modality](out)
        return out.reshape(b, v, -1)
    return encoders.heads[modality](out) if modality in encoders.heads else out


def _loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
def calibrate_encoders(encoders: ModalityEncoders, root: str | Path, modalities: Sequence[str], num_points: int | None,
                       image_size: int | None, objects: int, batch_size: int, seed: int, device: torch.device,
                       num_workers: int = 0, progress: bool = True) -> int:
    """Set the BatchNorm statistics of randomly initialised encoders (and heads) of
    ``modalities`` to their average over ``objects`` seeded random TRAINING objects (never
    test; images: every view); weights untouched. Records the setting in ``weights_id`` (cache
    keys) and returns the number of objects used."""
    dataset = _store_dataset(Path(root), "train", modalities, num_points, image_size)
    encoders.to(device)
    used = 0
    with ExitStack() as stack:
        for m in modalities:
            stack.enter_context(batchnorm_calibration(encoders.modules[m]))
            if m in encoders.heads:
                stack.enter_context(batchnorm_calibration(encoders.heads[m]))
        for batch in progress_bar(_loader(seeded_subset(dataset, objects, seed), batch_size, num_workers),
                                  desc="BN calibration",
                                  unit="batch", enabled=progress):
            if len(batch["label"]) < 2:  # a head's BatchNorm over one vector per object has no statistics
                continue
            for m in modalities:
                encode_batch(encoders, m, batch, device)
            used += len(batch["label"])
    if used == 0:
        raise ValueError(f"{root}: BatchNorm calibration needs batches of at least 2 training objects; the train split "
                         f"holds {len(dataset)} (use a smaller --batch-size or more training objects)")
    encoders.weights_id = {**encoders.weights_id, "bn_objects": objects, "bn_seed": seed, "bn_batch": batch_size}
    return used


def calibration_note(objects: int | None, encoders: ModalityEncoders | None = None,
                     modalities: Sequence[str] = ()) -> str | None:
    """The report's words for ``calibrate_encoders`` (None when the weights were trained)."""
    if objects is None:
        return None
    names = list(modalities)
    what = (", ".join(names[:-1]) + " and " if len(names) > 1 else "") + names[-1] + " encoder" + ("s" if len(names) > 1 else "")
    if encoders is not None and any(m in encoders.heads for m in modalities):
        what += " and their shared-space heads"
    images = " (every view of their images)" if "image" in modalities else ""
    return (f"random init: BatchNorm statistics of the {what} averaged over {objects} seeded random training "
            f"objects{images}; only BatchNorm layers in training mode; weights untouched")


def image_size_of(recipe: dict[str, Any] | None, store: str | Path, given: int | None) -> int:
    """The side images are fed at: given, else the size the run trained on, else the store's."""
    if given:
        return given
    trained = ((recipe or {}).get("data_options") or {}).get("image_size")
    return int(trained) if trained else read_store_settings(Path(store))[0].image_size


def _cache_key(encoders: ModalityEncoders, split: str, modality: str, num_points: int | None,
               image_size: int | None, store_id: str, rows: list[int] | None) -> str:
    return FeatureCache.key(weights=encoders.weights_id, space=encoders.space, data=store_id, split=split, rows=rows,
                            modality=modality, points=num_points if modality == "points" else None,
                            image_size=image_size if modality == "image" else None, kind="store-embedding")


@torch.no_grad()
def embed_store(encoders: ModalityEncoders, root: str | Path, split: str, modalities: Sequence[str] | None = None,
                num_points: int | None = None, image_size: int | None = None, batch_size: int = 16,
                device: torch.device | str = "cpu", num_workers: int = 0, cache_dir: str | None = None,
                use_cache: bool = True, progress: bool = True, objects: Sequence[int] | None = None,
                selection: Selection | None = None) -> StoreEmbeddings:
    """Embeddings of every object of ``split`` (or of the rows ``objects`` of it, or of a trial
    ``selection`` of its classes and objects, labels renumbered) in each of ``modalities``
    (default: every modality the encoders have). num_points: the first N stored points
    (default all); image_size: the side views are resized to (default the stored size)."""
    root = Path(root)
    kept_classes, relabelled = None, None
    if selection is not None and selection.active:
        if objects is not None:
            raise ValueError("give objects or a selection, not both")
        index = read_index(root)
        split_labels = np.array([e["label"] for e in index["objects"] if e["split"] == split], dtype=np.int64)
        objects, kept_classes, relabelled = select_rows(split_labels, index["classes"], selection, str(root))
    chosen = tuple(modalities or encoders.modalities)
    missing = [m for m in chosen if m not in encoders.modules]
    if missing:
        raise ValueError(f"{encoders.source or encoders.method}: has no {', '.join(missing)} encoder "
                         f"(it has {', '.join(encoders.modalities)})")
    _check_store(root, chosen)
    device = torch.device(device)
    encoders.to(device)
    cache = FeatureCache(cache_dir) if use_cache else None
    store_id = data_fingerprint(root, "store")
    rows = None if objects is None else [int(i) for i in objects]
    keys = {m: _cache_key(encoders, split, m, num_points, image_size, store_id, rows) for m in chosen}
    found = {m: cache.get(keys[m]) if cache else None for m in chosen}
    todo = [m for m in chosen if found[m] is None]
    dataset = _store_dataset(root, split, todo or chosen, num_points, image_size)  # reads only what is missing
    entries, labels = dataset.entries, dataset.labels
    if rows is not None:
        entries, labels = [entries[i] for i in rows], labels[rows]
    items = dataset if rows is None else Subset(dataset, rows)
    features: dict[str, np.ndarray] = {}
    seconds = 0.0
    if todo:
        parts: dict[str, list[np.ndarray]] = {m: [] for m in todo}
        for batch in progress_bar(_loader(items, batch_size, num_workers), desc=f"embed {split} ({', '.join(todo)})",
                                  unit="batch", enabled=progress):
            start = time.perf_counter()
            for m in todo:
                parts[m].append(encode_batch(encoders, m, batch, device).float().cpu().numpy())
            seconds += time.perf_counter() - start
        for m in todo:
            features[m] = np.concatenate(parts[m])
            if cache:
                flat = features[m].reshape(len(features[m]), -1)
                cache.put(keys[m], Features(flat, labels, np.arange(len(labels)), [], seconds))
    for m in chosen:
        if found[m] is not None:
            flat = found[m].features
            features[m] = flat.reshape(len(flat), dataset.settings.views, -1) if m == "image" else flat
    names = [e.get("name", e["key"]) for e in entries]
    if relabelled is not None:
        labels = relabelled
    return StoreEmbeddings(split, labels.copy(), names, list(kept_classes or dataset.classes), features,
                           {m: found[m] is not None for m in chosen}, seconds)


@torch.no_grad()
def through_heads(encoders: ModalityEncoders, features: dict[str, np.ndarray], device: torch.device | str = "cpu",
                  chunk: int = 4096) -> dict[str, np.ndarray]:
    """Encoder-space features -> the shared space: each modality's head (in eval mode) applied
    to its encoder output, as ``embed_store`` with ``encoders`` would compute it, without running
    the encoders again. features: {"points"|"mesh": (S, D), "image": (S, V, D)}; a modality
    without a head is returned as is."""
    out = {}
    for modality, values in features.items():
        head = encoders.heads.get(modality)
        if head is None:
            out[modality] = values
            continue
        head.to(device).eval()
        flat = torch.from_numpy(values.reshape(-1, values.shape[-1]))
        mapped = torch.cat([head(flat[i:i + chunk].to(device)).float().cpu() for i in range(0, len(flat), chunk)])
        out[modality] = mapped.numpy().reshape(*values.shape[:-1], -1)
    return out


def describe_encoders(encoders: ModalityEncoders, modalities: Sequence[str]) -> dict[str, str]:
    """Per modality, which network (and head) gives its features, in words."""
    out = {}
    for m in modalities:
        module = encoders.modules[m]
        text = type(module).__name__
        if m in encoders.heads:
            text += f" -> {type(encoders.heads[m]).__name__} (the method's {encoders.head_names[m]})"
        out[m] = text
    return out

