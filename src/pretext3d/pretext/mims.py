"""Modality-invariant and modality-specific learning over image, point cloud and mesh (MIMS).

Each modality m (any non-empty subset of image, points, mesh) has an encoder E_m (ResNet-18,
DGCNN, MeshNet) and two parallel projection heads (Linear -> BatchNorm -> ReLU -> Linear): the
invariant head gives H_I^m = g_I^m(E_m(x_m)), the specific head H_S^m = g_S^m(E_m(x_m)). Every
modality is seen under two augmentations a in {1, 2}. With NT-Xent at temperature t
(``losses.nt_xent``) and the batch-normalised form N(H) (subtract the batch mean of every
column, then scale every row to unit L2 norm):

    L_I = 1/2 sum_a sum_{m < m'} NT-Xent(H_I^{m,a}, H_I^{m',a})     (every modality pair)
    L_S = sum_m NT-Xent(H_S^{m,1}, H_S^{m,2})                         (two augmentations)
    L_O = sum_m |N(H_I^m)^T N(H_S^m)|_F^2 + sum_{m < m'} |N(H_S^m)^T N(H_S^{m'})|_F^2
    L   = alpha L_I + beta L_S + lambda L_O

N is the normalisation of Domain Separation Networks' difference loss (centre each feature
over the batch, unit-length rows). |N(A)^T N(B)|_F^2 = sum_{i,j} (a_i . a_j)(b_i . b_j) over row
pairs is of the order of the number of rows at initialisation (measured: 30-55 per term for
16-32 rows) and 0 when the two heads span orthogonal feature subspaces over the batch; hence the small default lambda = 0.01 (our choice).
The paper's forms, as printed (``contrast="info_nce"``, ``ortho_form="rows"``; the paper
recipe): Eq. 6-7 are one-directional InfoNCE (``losses.info_nce``), view 1 against view 2 and
modality a against modality b for a < b in the order image, points, mesh, whose negatives come
only from the other view or modality; Eq. 8-9 multiply with objects as rows,
|N(H_I) N(H_S)^T|_F^2 (every object's invariant vector against every object's specific one).
In L_O the rows of both augmentations are stacked ((2B, P) per modality; row b of one modality
and row b of another are the same object). With a single modality L_I and the cross-modal part
of L_O are zero.

The two augmentations of each modality: points, two independent point augmentations
(``point_views``); images, two different rendered views with their own crop, flip and colour
jitter; meshes, a random rotation about ``mesh_rotation_axis`` (the paper's; off by default)
and MeshNet's training augmentation, a jitter of the face centres (sigma 0.01, clipped at 0.05)
drawn anew for each augmentation, plus MeshNet's face masking (``mask_ratio`` of the faces left
out of the max-pool, a new draw per pass).

The exported backbone is the point encoder (else the mesh encoder); ``fused_features`` gives
the evaluation feature of several modalities (their encoders' global features, concatenated).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d.geometry.transforms import rotation_about_axis
from pretext3d.losses import info_nce, nt_xent
from pretext3d.models import ProjectionHead, backbone_label, backbone_module, build_backbone, image_encoder_module, mesh_inputs
from pretext3d.pretext.base import DataNeeds, PretextMethod, register_method

__all__ = ["MIMS", "MODALITIES", "batch_normalized", "mesh_inputs", "orthogonality", "jitter_mesh_centres",
           "rotate_mesh_faces"]

MODALITIES = ("image", "points", "mesh")


def jitter_mesh_centres(faces: Tensor, sigma: float = 0.01, clip: float = 0.05) -> Tensor:
    """faces (B, F, 15) with every face centre moved by clip(N(0, sigma^2), -clip, clip) per
    coordinate (corners are stored relative to the centre, so the face moves rigidly)."""
    if sigma <= 0:
        return faces
    noise = (torch.randn_like(faces[..., :3]) * sigma).clamp(-clip, clip)
    return torch.cat([faces[..., :3] + noise, faces[..., 3:]], dim=-1)


_AXES = ("x", "y", "z")


def rotate_mesh_faces(faces: Tensor, axis: str) -> Tensor:
    """faces (B, F, 15) (centre | three corners - centre | normal) with every object turned
    about ``axis`` by its own angle drawn uniformly from [0, 2 pi): a rigid rotation R
    (``geometry.rotation_about_axis``) applied to each of the five 3-vectors of a face, v -> R v
    (Sec. 4.1's mesh augmentation)."""
    if axis not in _AXES:
        raise ValueError(f"mesh_rotation_axis must be one of x, y, z, got {axis!r}")
    angles = torch.rand(faces.shape[0], device=faces.device, dtype=faces.dtype) * (2 * torch.pi)
    rotation = rotation_about_axis(angles, axis)  # (B, 3, 3)
    vectors = faces.reshape(faces.shape[0], faces.shape[1], 5, 3)
    return torch.einsum("bfkj,bij->bfki", vectors, rotation).reshape(faces.shape)


def batch_normalized(h: Tensor) -> Tensor:
    """h: (B, P) -> rows of (h - column means) scaled to unit L2 norm."""
    return F.normalize(h - h.mean(dim=0, keepdim=True), dim=1)


ORTHO_FORMS = ("columns", "rows")
CONTRASTS = ("nt_xent", "info_nce")


def orthogonality(a: Tensor, b: Tensor, form: str = "columns") -> Tensor:
    """a, b: (B, P) -> |N(a)^T N(b)|_F^2 (``form="columns"``, P x P: 0 when every column of one
    is orthogonal to every column of the other over the batch) or |N(a) N(b)^T|_F^2 (``"rows"``,
    B x B, Eq. 8-9 as printed: 0 when every row of one is orthogonal to every row of the other);
    N is ``batch_normalized``."""
    a, b = batch_normalized(a), batch_normalized(b)
    if form == "columns":
        return (a.transpose(0, 1) @ b).square().sum()
    if form == "rows":
        return (a @ b.transpose(0, 1)).square().sum()
    raise ValueError(f"ortho_form must be one of {', '.join(ORTHO_FORMS)}, got {form!r}")


@register_method
class MIMS(PretextMethod):
    """A batch of a prepared store -> {"loss", "invariant", "specific", "orthogonal"}.

    Needs, per chosen modality: points, point_views (B, 2, N, 3); image, images (B, 2, C, S, S);
    mesh, the mesh features (``mesh_inputs``).

    modalities: a non-empty subset of ("image", "points", "mesh"); backbone / backbone_config: the
    point encoder; image_encoder / image_weights: the image encoder (torchvision weights on disk
    optional); mesh_config: MeshNet's kwargs (emb_dims, mask_ratio, ...); projection_dim,
    hidden_dim: the heads; alpha, beta, ortho_weight (lambda): the loss weights; contrast:
    nt_xent (symmetric) or info_nce (Eq. 6-7, one direction); ortho_form: columns or rows (Eq.
    8-9 as printed); mesh_rotation_axis: turn each mesh about this axis by a random angle in
    training (Sec. 4.1; None: no rotation). backbone and
    image_encoder may also be modules (encoders shared in a composed recipe).
    """

    name = "mims"

    @classmethod
    def data_needs(cls, settings: Mapping[str, Any]) -> DataNeeds:
        """Two augmentations of every chosen modality (images: two views)."""
        modalities = settings.get("modalities") or MODALITIES
        return DataNeeds(images="image" in modalities, point_views=2 if "points" in modalities else 1,
                         views=2 if "image" in modalities else 1, mesh="mesh" in modalities)

    def __init__(self, modalities: Sequence[str] = MODALITIES, backbone: str | nn.Module = "dgcnn",
                 backbone_config: dict[str, Any] | None = None, image_encoder: str | nn.Module = "resnet18",
                 image_weights: str | None = None, mesh_config: dict[str, Any] | None = None,
                 projection_dim: int = 256, hidden_dim: int = 512, temperature: float = 0.1, alpha: float = 1.0,
                 beta: float = 1.0, ortho_weight: float = 0.01, mesh_jitter: float = 0.01,
                 gather_distributed: bool = True, contrast: str = "nt_xent", ortho_form: str = "columns",
                 mesh_rotation_axis: str | None = None):
        super().__init__()
        if mesh_rotation_axis is not None and mesh_rotation_axis not in _AXES:
            raise ValueError(f"mesh_rotation_axis must be one of x, y, z or null, got {mesh_rotation_axis!r}")
        self.mesh_rotation_axis = mesh_rotation_axis
        if contrast not in CONTRASTS or ortho_form not in ORTHO_FORMS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)} and ortho_form one of "
                             f"{', '.join(ORTHO_FORMS)}, got {contrast!r} and {ortho_form!r}")
        self.contrast, self.ortho_form = contrast, ortho_form
        unknown = [m for m in modalities if m not in MODALITIES]
        if not modalities or unknown or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be a non-empty subset of {', '.join(MODALITIES)} without repeats, "
                             f"got {list(modalities)}")
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.encoders = nn.ModuleDict()
        if "image" in self.modalities:
            self.encoders["image"] = image_encoder_module(image_encoder, image_weights)
        if "points" in self.modalities:
            self.encoders["points"] = backbone_module(backbone, backbone_config)
        mesh_settings = {"emb_dims": 512, "mask_ratio": 0.5, **(mesh_config or {})}
        if "mesh" in self.modalities:
            self.encoders["mesh"] = build_backbone("meshnet", **mesh_settings)
        self.invariant_heads = nn.ModuleDict({m: ProjectionHead(_width(e), hidden_dim, projection_dim)
                                              for m, e in self.encoders.items()})
        self.specific_heads = nn.ModuleDict({m: ProjectionHead(_width(e), hidden_dim, projection_dim)
                                             for m, e in self.encoders.items()})
        exported = "points" if "points" in self.modalities else "mesh" if "mesh" in self.modalities else None
        if exported is None:
            raise ValueError("MIMS exports a 3D backbone: modalities must include points or mesh")
        self.backbone_name = backbone_label(backbone) if exported == "points" else "meshnet"
        self.backbone_config = dict(backbone_config or {}) if exported == "points" else mesh_settings
        self.exported = exported
        self.temperature, self.alpha, self.beta, self.ortho_weight = temperature, alpha, beta, ortho_weight
        self.mesh_jitter, self.gather_distributed = mesh_jitter, gather_distributed

    @property
    def backbone(self) -> nn.Module:
        return self.encoders[self.exported]

    def modality_encoders(self) -> dict[str, nn.Module]:
        return dict(self.encoders.items())

    def shared_heads(self) -> dict[str, str]:
        """The modality-invariant heads."""
        return {m: f"invariant_heads.{m}" for m in self.modalities}

    def encode(self, modality: str, batch: dict[str, Tensor], augmentations: Sequence[int] = (0,)) -> Tensor:
        """The encoder's global features of the given augmentations (0, 1) of one modality,
        stacked: (len(augmentations) * B, D). Points and images go through the encoder in one
        pass (its BatchNorm sees every row); meshes in one pass per augmentation (MeshNet draws
        one face mask per pass)."""
        if modality == "points":
            if "point_views" in batch:
                clouds = torch.cat([batch["point_views"][:, a] for a in augmentations])
            elif "points" in batch and tuple(augmentations) == (0,):  # an evaluation batch: its one cloud
                clouds = batch["points"]
            else:
                raise ValueError("MIMS with points needs point_views (B, 2, N, 3) (point_views=2) for training, "
                                 "or points (B, N, 3) for features")
            return self.encoders["points"](clouds, need_local=False).global_
        if modality == "image":
            if "images" not in batch or batch["images"].shape[1] < max(augmentations) + 1:
                raise ValueError(f"MIMS with images needs {max(augmentations) + 1} view(s) per object: "
                                 "images (B, V, C, S, S)")
            images = torch.cat([batch["images"][:, a] for a in augmentations])
            return self.encoders["image"](images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images).global_
        faces, neighbours = mesh_inputs(batch)
        passes = []
        for _ in augmentations:
            augmented = faces
            if self.training and self.mesh_rotation_axis:
                augmented = rotate_mesh_faces(augmented, self.mesh_rotation_axis)
            if self.training:
                augmented = jitter_mesh_centres(augmented, self.mesh_jitter)
            passes.append(self.encoders["mesh"](augmented, neighbours, need_local=False).global_)
        return torch.cat(passes)

    def fused_features(self, batch: dict[str, Tensor], modalities: Sequence[str] | None = None) -> Tensor:
        """Evaluation feature: the encoders' global features of ``modalities`` (default all of
        this model's) for the first augmentation/view, concatenated -> (B, sum D_m)."""
        chosen = tuple(modalities or self.modalities)
        missing = [m for m in chosen if m not in self.encoders]
        if missing:
            raise ValueError(f"this MIMS model has no {', '.join(missing)} encoder (it has {', '.join(self.modalities)})")
        return torch.cat([self.encode(m, batch) for m in chosen], dim=1)

    def losses(self, invariant: dict[str, list[Tensor]], specific: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        """invariant / specific: modality -> [H^{m,1}, H^{m,2}], each (B, P) -> the loss and its parts."""
        zero = next(iter(specific.values()))[0].sum() * 0.0
        pairs = list(itertools.combinations(self.modalities, 2))
        t, gather = self.temperature, self.gather_distributed
        contrast = nt_xent if self.contrast == "nt_xent" else info_nce  # info_nce(a, b): a's rows query b's
        l_inv = sum((contrast(invariant[m][a], invariant[n][a], t, gather) for m, n in pairs for a in (0, 1)), zero) / 2
        l_spec = sum((contrast(specific[m][0], specific[m][1], t, gather) for m in self.modalities), zero)
        stacked_inv = {m: torch.cat(invariant[m]) for m in self.modalities}
        stacked_spec = {m: torch.cat(specific[m]) for m in self.modalities}
        form = self.ortho_form
        l_ortho = sum((orthogonality(stacked_inv[m], stacked_spec[m], form) for m in self.modalities), zero)
        l_ortho = l_ortho + sum((orthogonality(stacked_spec[m], stacked_spec[n], form) for m, n in pairs), zero)
        loss = self.alpha * l_inv + self.beta * l_spec + self.ortho_weight * l_ortho
        return {"loss": loss, "invariant": l_inv, "specific": l_spec, "orthogonal": l_ortho}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        invariant: dict[str, list[Tensor]] = {}
        specific: dict[str, list[Tensor]] = {}
        for m in self.modalities:
            features = self.encode(m, batch, (0, 1))  # (2B, D); the heads' BatchNorm sees both too
            invariant[m] = list(self.invariant_heads[m](features).chunk(2))
            specific[m] = list(self.specific_heads[m](features).chunk(2))
        return self.losses(invariant, specific)


def _width(encoder: nn.Module) -> int:
    return encoder.feature_dim if hasattr(encoder, "feature_dim") else encoder.global_dim
