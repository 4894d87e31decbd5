"""Modality-invariant / modality-specific learning: known answers of the orthogonality term,
the loss formula, modality subsets, fused features, and a short run on the built-in shapes."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from pretext3d.losses import info_nce, nt_xent
from pretext3d.models import mesh_inputs
from pretext3d.pretext.mims import MIMS, batch_normalized, jitter_mesh_centres, orthogonality, rotate_mesh_faces

TINY = {"backbone": "pointnet", "backbone_config": {"emb_dims": 16}, "mesh_config": {"emb_dims": 16, "num_kernels": 4},
        "projection_dim": 8, "hidden_dim": 16, "gather_distributed": False}


def mesh_batch(batch: int, faces: int = 32, points: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(batch, 3, faces, generator=g), dim=1)
    return {"point_views": torch.rand(batch, 2, points, 3, generator=g) - 0.5,
            "images": torch.randn(batch, 2, 3, 32, 32, generator=g),
            "mesh_centers": torch.rand(batch, 3, faces, generator=g) - 0.5,
            "mesh_corners": torch.randn(batch, 9, faces, generator=g) * 0.05, "mesh_normals": normals,
            "mesh_neighbors": torch.randint(0, faces, (batch, faces, 3), generator=g)}


def test_orthogonality_known_answers():
    # columns (features over 4 samples): a's is (1, -1, 1, -1), b's is (1, 1, -1, -1)
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0]])
    assert orthogonality(a, b).item() == pytest.approx(0.0)
    # the same column in both: N(a)^T N(a) has the entry 1 + 1 + 1 + 1 = 4, squared 16
    assert orthogonality(a, a).item() == pytest.approx(16.0)
    # a constant shift of every sample is removed by the batch centring; a per-row scale by the row norm
    shifted = a + torch.tensor([3.0, -2.0])
    assert orthogonality(shifted, b).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(batch_normalized(a * torch.tensor([[2.0], [5.0], [1.0], [3.0]])), batch_normalized(a))


def test_orthogonality_with_objects_as_rows_known_answers():
    """Eq. 8-9 as printed: |N(a) N(b)^T|_F^2 (B x B). Rows after centring: a -> (1, 0), (-1, 0)
    and b -> (0, 1), (0, -1): every row of a is orthogonal to every row of b."""
    a = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[5.0, 3.0], [5.0, 1.0]])
    assert orthogonality(a, b, "rows").item() == pytest.approx(0.0, abs=1e-12)
    # N(a) N(a)^T = [[1, -1], [-1, 1]]: four entries of squared size 1
    assert orthogonality(a, a, "rows").item() == pytest.approx(4.0)
    # the forms agree for a = b (both trace((A^T A)^2)) but not in general: here columns are
    # uncorrelated over the batch (the columns form is 0) while rows are not orthogonal
    c = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    d = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert orthogonality(c, d, "columns").item() == pytest.approx(0.0, abs=1e-12)
    assert orthogonality(c, d, "rows").item() > 1.0
    with pytest.raises(ValueError, match="ortho_form must be one of columns, rows"):
        orthogonality(a, b, "diagonal")


def test_mims_printed_loss_forms():
    """contrast=info_nce: Eq. 6-7, one direction (view 1 -> 2; modality a -> b for a < b in the
    order image, points, mesh); ortho_form=rows: Eq. 8-9."""
    torch.manual_seed(1)
    method = MIMS(contrast="info_nce", ortho_form="rows", **TINY)
    heads = {m: [torch.randn(5, 8), torch.randn(5, 8)] for m in method.modalities}
    specific = {m: [torch.randn(5, 8), torch.randn(5, 8)] for m in method.modalities}
    out = method.losses(heads, specific)
    pairs = [("image", "points"), ("image", "mesh"), ("points", "mesh")]
    l_i = sum(info_nce(heads[m][a], heads[n][a], 0.1) for m, n in pairs for a in (0, 1)) / 2
    l_s = sum(info_nce(specific[m][0], specific[m][1], 0.1) for m in method.modalities)
    stack = lambda d, m: torch.cat(d[m])  # noqa: E731
    l_o = sum(orthogonality(stack(heads, m), stack(specific, m), "rows") for m in method.modalities) \
        + sum(orthogonality(stack(specific, m), stack(specific, n), "rows") for m, n in pairs)
    assert out["invariant"].item() == pytest.approx(l_i.item(), rel=1e-6)
    assert out["specific"].item() == pytest.approx(l_s.item(), rel=1e-6)
    assert out["orthogonal"].item() == pytest.approx(l_o.item(), rel=1e-6)
    # one direction: swapping the views changes L_S (NT-Xent would not)
    swapped = method.losses(heads, {m: v[::-1] for m, v in specific.items()})
    assert swapped["specific"].item() != pytest.approx(out["specific"].item())
    with pytest.raises(ValueError, match="contrast must be one of nt_xent, info_nce"):
        MIMS(contrast="triplet", **TINY)


def test_mesh_rotation_turns_every_face_vector_about_the_axis():
    faces, _ = mesh_inputs(mesh_batch(3, faces=16))
    torch.manual_seed(4)
    turned = rotate_mesh_faces(faces, "z")
    vectors, turned_vectors = faces.view(3, 16, 5, 3), turned.view(3, 16, 5, 3)
    torch.testing.assert_close(turned_vectors[..., 2], vectors[..., 2])  # the z components stay
    torch.testing.assert_close(turned_vectors.norm(dim=-1), vectors.norm(dim=-1))  # lengths stay
    # one rigid rotation per object: the angle between any two of its vectors is kept
    dots = torch.einsum("bfki,bgli->bfkgl", vectors, vectors)
    torch.testing.assert_close(torch.einsum("bfki,bgli->bfkgl", turned_vectors, turned_vectors), dots,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(turned, faces)
    with pytest.raises(ValueError, match="mesh_rotation_axis must be one of x, y, z"):
        rotate_mesh_faces(faces, "w")
    method = MIMS(mesh_rotation_axis="y", mesh_jitter=0.0, **TINY).train()
    batch = mesh_batch(2, faces=16)
    torch.manual_seed(0)
    a = method.encode("mesh", batch)
    torch.manual_seed(1)
    assert not torch.allclose(a, method.encode("mesh", batch))  # a new turn per pass
    method.eval()
    torch.testing.assert_close(method.encode("mesh", batch), method.encode("mesh", batch))  # none in evaluation


def test_mims_losses_follow_the_formula():
    torch.manual_seed(0)
    method = MIMS(alpha=0.7, beta=1.3, ortho_weight=0.05, **TINY)
    heads = {m: [torch.randn(6, 8), torch.randn(6, 8)] for m in method.modalities}
    specific = {m: [torch.randn(6, 8), torch.randn(6, 8)] for m in method.modalities}
    out = method.losses(heads, specific)
    pairs = list(itertools.combinations(("image", "points", "mesh"), 2))
    l_i = sum(nt_xent(heads[m][a], heads[n][a], 0.1) for m, n in pairs for a in (0, 1)) / 2
    l_s = sum(nt_xent(specific[m][0], specific[m][1], 0.1) for m in method.modalities)
    stack = lambda d, m: torch.cat(d[m])  # noqa: E731
    l_o = sum(orthogonality(stack(heads, m), stack(specific, m)) for m in method.modalities) \
        + sum(orthogonality(stack(specific, m), stack(specific, n)) for m, n in pairs)
    assert out["invariant"].item() == pytest.approx(l_i.item(), rel=1e-6)
    assert out["specific"].item() == pytest.approx(l_s.item(), rel=1e-6)
    assert out["orthogonal"].item() == pytest.approx(l_o.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((0.7 * l_i + 1.3 * l_s + 0.05 * l_o).item(), rel=1e-6)


@pytest.mark.parametrize("modalities", [("image", "points", "mesh"), ("points", "mesh"), ("points",), ("image", "mesh")])
def test_mims_trains_every_encoder_of_any_subset(modalities):
    torch.manual_seed(0)
    method = MIMS(modalities=modalities, **TINY)
    out = method(mesh_batch(4))
    assert torch.isfinite(out["loss"])
    if len(modalities) == 1:
        assert out["invariant"].item() == 0.0  # no modality pair to contrast
    out["loss"].backward()
    for name, encoder in method.encoders.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters()), name
    assert method.backbone is method.encoders["points" if "points" in modalities else "mesh"]


def test_mims_rejects_what_it_cannot_train():
    with pytest.raises(ValueError, match="subset"):
        MIMS(modalities=("points", "voxels"), **TINY)
    with pytest.raises(ValueError, match="3D backbone"):
        MIMS(modalities=("image",), **TINY)
    with pytest.raises(ValueError, match="mesh_centers"):
        MIMS(modalities=("points", "mesh"), **TINY)({"point_views": torch.rand(2, 2, 16, 3)})


def test_fused_features_concatenate_the_chosen_encoders():
    torch.manual_seed(0)
    method = MIMS(**TINY).eval()
    batch = mesh_batch(3)
    fused = method.fused_features(batch, ("points", "mesh"))
    faces, neighbours = mesh_inputs(batch)
    with torch.no_grad():
        points = method.encoders["points"](batch["point_views"][:, 0]).global_
        mesh = method.encoders["mesh"](faces, neighbours).global_
    assert torch.allclose(fused, torch.cat([points, mesh], 1))
    assert method.fused_features(batch).shape == (3, 512 + 32 + 16)  # ResNet-18, PointNet max+avg, MeshNet
    with pytest.raises(ValueError, match="no mesh encoder"):
        MIMS(modalities=("points",), **TINY).fused_features(batch, ("mesh",))
    # an evaluation batch (one cloud per object, as MultimodalDataset gives with point_views=1) works too
    plain = {k: v for k, v in batch.items() if k != "point_views"}
    plain["points"] = batch["point_views"][:, 0]
    assert torch.allclose(method.fused_features(plain, ("points", "mesh")), fused)
    with pytest.raises(ValueError, match="or points"):
        method({k: v for k, v in plain.items()})  # training needs two point views


def test_mesh_inputs_and_the_mesh_augmentation():
    features = torch.randn(2, 10, 15)  # as stored: centre | corners - centre | normal per face
    split = {"mesh_centers": features[..., 0:3].transpose(1, 2), "mesh_corners": features[..., 3:12].transpose(1, 2),
             "mesh_normals": features[..., 12:15].transpose(1, 2), "mesh_neighbors": torch.zeros(2, 10, 3, dtype=torch.long)}
    faces, _ = mesh_inputs(split)
    assert torch.equal(faces, features)
    torch.manual_seed(0)
    jittered = jitter_mesh_centres(faces, sigma=0.5, clip=0.05)
    moved = jittered[..., :3] - faces[..., :3]
    assert moved.abs().max() <= 0.05 + 1e-7 and moved.abs().max() > 0.04  # clipped
    assert torch.equal(jittered[..., 3:], faces[..., 3:])  # corners (relative) and normals unchanged


def test_mims_pretrains_on_the_builtin_shapes_with_decreasing_loss(tmp_path):
    from pretext3d.cli import main

    run = tmp_path / "mims"
    rc = main(["pretrain", "--recipe", "mims_cpu", "--out", str(run), "steps=12", "batch_size=8", "num_workers=0",
               "optimizer.lr=0.003", "model.backbone=pointnet", "model.backbone_config={emb_dims: 32}",
               "model.mesh_config={emb_dims: 32, num_kernels: 8}", "model.projection_dim=16", "model.hidden_dim=32",
               "data_options.points=128", "data_options.image_size=32", "data_options.builtin={train: 4, test: 1}",
               "data_options.builtin_store={views: 4, image_size: 32, faces: 64}", "log_every=1"])
    assert rc == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (run / "backbone.safetensors").is_file()
    # the whole trained model comes back from the run folder: fused features of the test split
    from torch.utils.data import default_collate

    import pretext3d
    from pretext3d.data.multimodal import MultimodalDataset

    method = pretext3d.load_method(run)
    assert isinstance(method, MIMS) and not method.training
    test = MultimodalDataset(run / "builtin-store", split="test", num_points=128, views_per_sample=2, image_size=32,
                             point_augment=None, image_augment=None, point_views=2)
    batch = default_collate([test[0], test[1]])
    with torch.no_grad():
        fused = method.fused_features(batch, ("points", "mesh"))
        alone = pretext3d.load_backbone(run).model(batch["points"]).global_
    assert fused.shape == (2, 64 + 32)
    assert torch.allclose(fused[:, :64], alone, atol=1e-5)  # the exported backbone is the point encoder
