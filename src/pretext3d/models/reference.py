"""Build pretext3d modules from the state dicts of the published reference implementations.

``load_reference(name, state_dict, **config)`` maps the reference parameter names onto ours,
reshapes 1x1-convolution weights to linear weights, checks that BatchNorms the reference stores
twice (CrossPoint registers each as ``bnX`` and ``convX.1``) agree, and loads strictly: a
missing or unexpected parameter is an error that names it. Sizes (embedding width, number of
parts/categories) are read from the weights; what the weights cannot tell (``k``) comes from
``config`` with the reference's default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pretext3d.models.dgcnn import DGCNN, DGCNNSeg
from pretext3d.models.layers import EncoderWithHead, FeatureHead, ProjectionHead
from pretext3d.models.meshnet import MeshNet, MeshNetClassifier
from pretext3d.models.pointnet import PointNet, PointNetPointwise

__all__ = ["load_reference", "REFERENCES", "ReferenceWeightsError", "read_state_dict", "detect_reference"]


class ReferenceWeightsError(ValueError):
    """A reference state dict does not fit the architecture it was loaded as."""


StateDict = dict[str, Tensor]


def _as_tensors(state_dict: Mapping[str, Any]) -> StateDict:
    """Unwrap common checkpoint containers, strip DataParallel prefixes, convert numpy arrays."""
    for key in ("state_dict", "model_state_dict", "model", "net"):
        inner = state_dict.get(key) if isinstance(state_dict, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            state_dict = inner
            break
    out: StateDict = {}
    for key, value in state_dict.items():
        name = key[len("module."):] if key.startswith("module.") else key
        out[name] = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
    return out


class _Mapper:
    """Collects reference -> ours renames and records which reference keys were used."""

    def __init__(self, source: StateDict):
        self.source = source
        self.target: StateDict = {}
        self.used: set[str] = set()
        self.renames: dict[str, tuple[str, ...]] = {}  # ours -> reference name(s)

    def take(self, ref: str, ours: str, reshape: Callable[[Tensor], Tensor] | None = None) -> None:
        if ref not in self.source:
            raise ReferenceWeightsError(f"reference weights lack {ref!r} (needed for {ours!r})")
        value = self.source[ref]
        self.target[ours] = reshape(value) if reshape else value
        self.used.add(ref)
        self.renames[ours] = (ref,)

    def conv(self, ref: str, ours: str) -> None:
        """A 1x1 Conv1d/Conv2d weight (O, C, 1[, 1]) as a Linear weight (O, C)."""
        self.take(f"{ref}.weight", f"{ours}.weight", lambda w: w.reshape(w.shape[0], w.shape[1]))

    def linear(self, ref: str, ours: str, bias: bool = True) -> None:
        self.take(f"{ref}.weight", f"{ours}.weight")
        if bias:
            self.take(f"{ref}.bias", f"{ours}.bias")

    def bn(self, ref: str, ours: str, duplicate: str | None = None) -> None:
        for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            self.take(f"{ref}.{field}", f"{ours}.{field}")
            if duplicate is not None and f"{duplicate}.{field}" in self.source:
                a, b = self.source[f"{ref}.{field}"], self.source[f"{duplicate}.{field}"]
                if a.shape != b.shape or not torch.equal(a, b):
                    raise ReferenceWeightsError(f"{ref}.{field} and {duplicate}.{field} should be the same BatchNorm")
                self.used.add(f"{duplicate}.{field}")
                self.renames[f"{ours}.{field}"] += (f"{duplicate}.{field}",)

    def ignore(self, *prefixes: str) -> None:
        """Mark reference parameters our module does not need (e.g. a classifier)."""
        for key in self.source:
            if any(key == p or key.startswith(p + ".") for p in prefixes):
                self.used.add(key)

    def load_into(self, module: nn.Module) -> nn.Module:
        unused = sorted(set(self.source) - self.used)
        if unused:
            raise ReferenceWeightsError(f"unexpected parameters in reference weights: {unused[:8]}")
        result = module.load_state_dict(self.target, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ReferenceWeightsError(
                f"mapping incomplete: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
            )
        module.reference_keys = dict(self.renames)  # our parameter name -> reference name(s)
        return module


def _dgcnn_edge_layers(m: _Mapper, prefix: str = "backbone.") -> None:
    for i in range(4):
        m.conv(f"conv{i + 1}.0", f"{prefix}edge_convs.{i}.layers.0")
        m.bn(f"conv{i + 1}.1", f"{prefix}edge_convs.{i}.bns.0", duplicate=f"bn{i + 1}")
    m.conv("conv5.0", f"{prefix}fuse.linear")
    m.bn("conv5.1", f"{prefix}fuse.bn", duplicate="bn5")


def _crosspoint_dgcnn(sd: StateDict, k: int = 20) -> nn.Module:
    emb = sd["conv5.0.weight"].shape[0]
    head_hidden = sd["inv_head.0.weight"].shape[0]
    head_out = sd["inv_head.3.weight"].shape[0]
    model = EncoderWithHead(DGCNN(k=k, emb_dims=emb), ProjectionHead(2 * emb, head_hidden, head_out))
    m = _Mapper(sd)
    _dgcnn_edge_layers(m)
    m.linear("inv_head.0", "head.fc1")
    m.bn("inv_head.1", "head.bn")
    m.linear("inv_head.3", "head.fc2")
    m.ignore("linear1", "bn6", "linear2", "bn7", "linear3")  # classifier of the cls != -1 variant
    return m.load_into(model)


def _jing_dgcnn512(sd: StateDict, k: int = 20) -> nn.Module:
    emb = sd["conv5.0.weight"].shape[0]
    out_dim = sd["linear1.weight"].shape[0]
    model = EncoderWithHead(DGCNN(k=k, emb_dims=emb), FeatureHead(2 * emb, out_dim), role="global")
    m = _Mapper(sd)
    _dgcnn_edge_layers(m)
    m.linear("linear1", "head.fc", bias=False)
    m.bn("bn6", "head.bn")
    m.ignore("linear2", "bn7", "linear3")  # the classifier after the 512-d feature
    return m.load_into(model)


def _crosspoint_dgcnn_partseg(sd: StateDict, k: int = 40, dropout: float = 0.5) -> nn.Module:
    emb = sd["conv6.0.weight"].shape[0]
    seg = DGCNNSeg(
        num_outputs=sd["conv11.weight"].shape[0],
        num_categories=sd["conv7.0.weight"].shape[1],
        k=k,
        emb_dims=emb,
        dropout=dropout,
    )
    has_head = "inv_head.0.weight" in sd
    model: nn.Module = (
        EncoderWithHead(seg, ProjectionHead(emb, sd["inv_head.0.weight"].shape[0], sd["inv_head.3.weight"].shape[0]))
        if has_head
        else seg
    )
    p = "backbone." if has_head else ""
    m = _Mapper(sd)
    t = "transform_net"
    m.conv(f"{t}.conv1.0", f"{p}{t}.edge.layers.0")
    m.bn(f"{t}.conv1.1", f"{p}{t}.edge.bns.0", duplicate=f"{t}.bn1")
    m.conv(f"{t}.conv2.0", f"{p}{t}.edge.layers.1")
    m.bn(f"{t}.conv2.1", f"{p}{t}.edge.bns.1", duplicate=f"{t}.bn2")
    m.conv(f"{t}.conv3.0", f"{p}{t}.point_mlp.linear")
    m.bn(f"{t}.conv3.1", f"{p}{t}.point_mlp.bn")  # the reference re-binds bn3 to the 512-d layer
    m.linear(f"{t}.linear1", f"{p}{t}.fc1", bias=False)
    m.bn(f"{t}.bn3", f"{p}{t}.bn1")
    m.linear(f"{t}.linear2", f"{p}{t}.fc2", bias=False)
    m.bn(f"{t}.bn4", f"{p}{t}.bn2")
    m.linear(f"{t}.transform", f"{p}{t}.out")
    edge_slots = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]  # conv1..conv5 -> (block, layer)
    for i, (block, layer) in enumerate(edge_slots, start=1):
        m.conv(f"conv{i}.0", f"{p}edge_convs.{block}.layers.{layer}")
        m.bn(f"conv{i}.1", f"{p}edge_convs.{block}.bns.{layer}", duplicate=f"bn{i}")
    for i, ours in [(6, "global_mlp"), (7, "category_mlp"), (8, "head.0"), (9, "head.1"), (10, "head.2")]:
        m.conv(f"conv{i}.0", f"{p}{ours}.linear")
        m.bn(f"conv{i}.1", f"{p}{ours}.bn", duplicate=f"bn{i}")
    m.conv("conv11", f"{p}classifier")
    if has_head:
        m.linear("inv_head.0", "head.fc1")
        m.bn("inv_head.1", "head.bn")
        m.linear("inv_head.3", "head.fc2")
    return m.load_into(model)


def _crosspoint_pointnet(sd: StateDict) -> nn.Module:
    widths = [sd[f"conv{i}.weight"].shape[0] for i in range(1, 5)]
    emb = sd["conv5.weight"].shape[0]
    model = EncoderWithHead(
        PointNet(widths=widths, emb_dims=emb, pooling="max"),
        ProjectionHead(emb, sd["inv_head.0.weight"].shape[0], sd["inv_head.3.weight"].shape[0]),
    )
    m = _Mapper(sd)
    for i in range(5):
        m.conv(f"conv{i + 1}", f"backbone.layers.{i}.linear")
        m.bn(f"bn{i + 1}", f"backbone.layers.{i}.bn")
    m.linear("inv_head.0", "head.fc1")
    m.bn("inv_head.1", "head.bn")
    m.linear("inv_head.3", "head.fc2")
    m.ignore("linear1", "bn6", "linear2")
    return m.load_into(model)


def _deepgmr_pointnet(sd: StateDict) -> nn.Module:
    n_enc = len({k.split(".")[1] for k in sd if k.startswith("encoder.")})
    n_dec = len({k.split(".")[1] for k in sd if k.startswith("decoder.")}) - 1
    enc = [sd[f"encoder.{i}.0.weight"].shape[0] for i in range(n_enc)]
    dec = [sd[f"decoder.{i}.0.weight"].shape[0] for i in range(n_dec)]
    model = PointNetPointwise(
        num_outputs=sd[f"decoder.{n_dec}.weight"].shape[0],
        in_channels=sd["encoder.0.0.weight"].shape[1],
        encoder_widths=enc,
        decoder_widths=dec,
    )
    m = _Mapper(sd)
    for part, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            m.conv(f"{part}.{i}.0", f"{part}.{i}.linear")
            m.bn(f"{part}.{i}.1", f"{part}.{i}.bn")
    m.conv(f"decoder.{n_dec}", "classifier")
    m.take(f"decoder.{n_dec}.bias", "classifier.bias")
    return m.load_into(model)


def _conv_mlp(m: _Mapper, ref: str, ours: str, layers: int) -> None:
    """nn.Sequential(Conv, BN, ReLU, Conv, BN, ReLU, ...) -> our Sequential of PointwiseBlocks."""
    for i in range(layers):
        m.conv(f"{ref}.{3 * i}", f"{ours}.{i}.linear")
        m.take(f"{ref}.{3 * i}.bias", f"{ours}.{i}.linear.bias")
        m.bn(f"{ref}.{3 * i + 1}", f"{ours}.{i}.bn")


def _meshnet_layers(m: _Mapper, prefix: str) -> None:
    """The MeshNet trunk (descriptors, two mesh convolutions, fusion, concatenation), as named
    by iMoonLab's code and by Jing et al.'s copy of it."""
    _conv_mlp(m, "spatial_descriptor.spatial_mlp", f"{prefix}spatial", 2)
    _conv_mlp(m, "structural_descriptor.FRC.rotate_mlp", f"{prefix}rotate.rotate", 2)
    _conv_mlp(m, "structural_descriptor.FRC.fusion_mlp", f"{prefix}rotate.fusion", 2)
    for angle in ("alpha", "beta"):  # (1, K, 4) -> (K, 4)
        m.take(f"structural_descriptor.FKC.weight_{angle}", f"{prefix}kernel_correlation.{angle}", lambda w: w[0])
    m.bn("structural_descriptor.FKC.bn", f"{prefix}kernel_correlation.bn")
    _conv_mlp(m, "structural_descriptor.structural_mlp", f"{prefix}structural", 2)
    for i in (1, 2):
        for part in ("combination", "concat", "aggregation"):
            _conv_mlp(m, f"mesh_conv{i}.{part}_mlp", f"{prefix}conv{i}.{part}", 1)
    _conv_mlp(m, "fusion_mlp", f"{prefix}fusion", 1)
    _conv_mlp(m, "concat_mlp", f"{prefix}concat", 1)


def _meshnet_kernel_config(sd: StateDict) -> dict[str, int]:
    return {"num_kernels": sd["structural_descriptor.FKC.weight_alpha"].shape[1]}


def _meshnet(sd: StateDict, sigma: float = 0.2, dropout: float = 0.5, mask_ratio: float = 0.95) -> nn.Module:
    model = MeshNetClassifier(sd["classifier.6.weight"].shape[0], sigma=sigma, dropout=dropout,
                              mask_ratio=mask_ratio, **_meshnet_kernel_config(sd))
    m = _Mapper(sd)
    _meshnet_layers(m, "backbone.")
    for ref, ours in (("classifier.0", "fc1"), ("classifier.3", "fc2"), ("classifier.6", "fc3")):
        m.linear(ref, ours)
    return m.load_into(model)


def _jing_meshnet512(sd: StateDict, sigma: float = 0.2) -> nn.Module:
    model = MeshNet(sigma=sigma, emb_dims=sd["linear1.weight"].shape[0], **_meshnet_kernel_config(sd))
    m = _Mapper(sd)
    _meshnet_layers(m, "")
    m.linear("linear1", "embed.fc", bias=False)
    m.bn("bn6", "embed.bn")
    return m.load_into(model)


REFERENCES: dict[str, Callable[..., nn.Module]] = {
    "meshnet": _meshnet,
    "jing-meshnet512": _jing_meshnet512,
    "crosspoint-dgcnn": _crosspoint_dgcnn,
    "crosspoint-dgcnn-partseg": _crosspoint_dgcnn_partseg,
    "crosspoint-pointnet": _crosspoint_pointnet,
    "jing-dgcnn512": _jing_dgcnn512,
    "deepgmr-pointnet": _deepgmr_pointnet,
}


def load_reference(name: str, state_dict: Mapping[str, Any], **config: Any) -> nn.Module:
    """Build our module for a reference architecture from its state dict.

    name: one of ``REFERENCES`` ("crosspoint-dgcnn": CrossPoint's DGCNN encoder + 2048-1024-256
    projection head; "jing-dgcnn512": DGCNN + Linear(2048, 512)/BN/ReLU of Jing et al.;
    "crosspoint-dgcnn-partseg": the part-segmentation DGCNN; "crosspoint-pointnet";
    "deepgmr-pointnet"; "meshnet": iMoonLab's 2021 MeshNet with its classifier, called on faces
    (B, F, 15) and neighbours (B, F, 3); "jing-meshnet512": MeshNet + Linear(1024, 512)/BN/ReLU
    of Jing et al.). state_dict: tensors or numpy arrays, optionally wrapped in
    {"state_dict": ...} and/or prefixed "module.". config: ``k`` (neighbours) for DGCNNs,
    ``sigma`` for MeshNets.
    Returns the module in eval mode; calling it on points (B, N, 3) gives ``PointFeatures``.
    Its ``reference_keys`` attribute maps each of our parameter/buffer names to the reference's
    (a tuple: CrossPoint binds some BatchNorms under two names).
    """
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(sorted(REFERENCES))}")
    sd = _as_tensors(state_dict)
    try:
        model = REFERENCES[name](sd, **config)
    except KeyError as err:
        raise ReferenceWeightsError(f"weights do not look like {name!r}: no parameter {err}") from None
    return model.eval()


def detect_reference(state_dict: Mapping[str, Any]) -> str | None:
    """Guess which reference architecture a state dict comes from (None if none fits)."""
    keys = set(_as_tensors(state_dict))
    if "structural_descriptor.FKC.weight_alpha" in keys:
        return "meshnet" if "classifier.6.weight" in keys else "jing-meshnet512" if "linear1.weight" in keys else None
    if "transform_net.transform.weight" in keys and "conv11.weight" in keys:
        return "crosspoint-dgcnn-partseg"
    if "conv5.0.weight" in keys and "inv_head.0.weight" in keys:
        return "crosspoint-dgcnn"
    if "conv5.0.weight" in keys and "linear1.weight" in keys and "bn6.weight" in keys:
        return "jing-dgcnn512"
    if "conv5.weight" in keys and "inv_head.0.weight" in keys:
        return "crosspoint-pointnet"
    if "encoder.0.0.weight" in keys and "decoder.0.0.weight" in keys:
        return "deepgmr-pointnet"
    return None


def read_state_dict(path: str | Path) -> StateDict:
    """Read weights from .safetensors, .npz or a torch file (never unpickling code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(data[k]) for k in data.files}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ReferenceWeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return _as_tensors(obj)
