"""Parity with the published reference implementations (../shared/golden; skipped when absent).

Golden inputs are channels-first (B, 3, N); our models take (B, N, 3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import golden_case, golden_state_dict
from pretext3d.geometry import knn
from pretext3d.models import detect_reference, load_reference
from pretext3d.models.reference import ReferenceWeightsError
from pretext3d.pretext import NTXentLoss

EVAL_ATOL = 1e-5


def points_of(case: dict[str, np.ndarray], key: str = "inputs/x") -> torch.Tensor:
    return torch.from_numpy(case[key]).transpose(1, 2).contiguous()


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


@pytest.fixture(params=["fast", "plain"])
def impl(request):
    return request.param


def set_impl(model: torch.nn.Module, impl: str) -> None:
    backbone = getattr(model, "backbone", model)
    backbone.impl = impl


def test_crosspoint_dgcnn_eval_outputs(impl):
    case = golden_case("crosspoint_dgcnn_small")
    model = load_reference("crosspoint-dgcnn", golden_state_dict(case), k=8)
    set_impl(model, impl)
    with torch.no_grad():
        out = model(points_of(case))
    torch.testing.assert_close(out.global_, t(case["outputs/eval_feat"]), rtol=0, atol=EVAL_ATOL)
    torch.testing.assert_close(out.global_, t(case["outputs/eval_first_output"]), rtol=0, atol=EVAL_ATOL)
    torch.testing.assert_close(out.projection, t(case["outputs/eval_inv_feat"]), rtol=0, atol=EVAL_ATOL)


def test_crosspoint_dgcnn_first_layer_neighbours_as_sets():
    case = golden_case("crosspoint_dgcnn_small")
    ours = knn(points_of(case), 8)
    ref = t(case["outputs/knn_idx_layer1"])
    assert [[set(r.tolist()) for r in c] for c in ours] == [[set(r.tolist()) for r in c] for c in ref]


def test_crosspoint_dgcnn_training_step(impl):
    """Train-mode forward, NT-Xent losses, every gradient and the BN running stats."""
    case = golden_case("crosspoint_dgcnn_small")
    model = load_reference("crosspoint-dgcnn", golden_state_dict(case), k=8).train()
    set_impl(model, impl)
    x = points_of(case).requires_grad_()
    out = model(x)
    loss_fn = NTXentLoss(temperature=0.1)
    half = x.shape[0] // 2
    inv = out.projection
    imid = loss_fn(inv[:half], inv[half:])
    cmid = loss_fn((inv[:half] + inv[half:]) / 2, t(case["inputs/img_feats"]))
    (imid + cmid).backward()

    torch.testing.assert_close(out.global_, t(case["outputs/train_feat"]), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(inv, t(case["outputs/train_inv_feat"]), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(imid, t(case["outputs/loss_imid"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cmid, t(case["outputs/loss_cmid"]), rtol=1e-5, atol=1e-5)
    grad_x = t(case["outputs/grad_x"]).transpose(1, 2)
    torch.testing.assert_close(x.grad, grad_x, rtol=1e-4, atol=2e-5 * float(grad_x.abs().max()))

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    checked = set()
    for ours, ref_names in model.reference_keys.items():
        for ref in ref_names:
            if f"grads/{ref}" in case:
                expected = t(case[f"grads/{ref}"])
                got = params[ours].grad.reshape(expected.shape)
                scale = max(1.0, float(expected.abs().max()))
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5 * scale, msg=ref)
                checked.add(f"grads/{ref}")
            if f"bn_buffers_after_train_forward/{ref}" in case:
                expected = t(case[f"bn_buffers_after_train_forward/{ref}"])
                torch.testing.assert_close(buffers[ours], expected, rtol=1e-5, atol=1e-6, msg=ref)
                checked.add(f"bn_buffers_after_train_forward/{ref}")
    golden_keys = {k for k in case if k.startswith(("grads/", "bn_buffers_after_train_forward/"))}
    assert checked == golden_keys


def test_crosspoint_method_losses_and_gradients_match_reference(impl):
    """The CrossPoint method (both views through the network as one batch, heads, IMID + CMID)
    with the golden weights: loss_imid, loss_cmid and every point-side gradient to 1e-5."""
    from pretext3d.pretext.crosspoint import CrossPoint

    case = golden_case("crosspoint_dgcnn_small")
    reference = load_reference("crosspoint-dgcnn", golden_state_dict(case), k=8)
    backbone = reference.backbone
    method = CrossPoint("dgcnn", {"k": 8, "emb_dims": backbone.emb_dims}, image_encoder="resnet18",
                        hidden_dim=reference.head.fc1.out_features, projection_dim=reference.head.fc2.out_features,
                        temperature=0.1, gather_distributed=False).train()
    method.backbone.load_state_dict(backbone.state_dict())
    method.point_head.load_state_dict(reference.head.state_dict())
    set_impl(method, impl)
    x = points_of(case)
    half = x.shape[0] // 2
    out = method.losses(method.point_projections(torch.stack([x[:half], x[half:]], dim=1)), t(case["inputs/img_feats"]))
    out["loss"].backward()
    torch.testing.assert_close(out["imid"], t(case["outputs/loss_imid"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["cmid"], t(case["outputs/loss_cmid"]), rtol=1e-5, atol=1e-5)
    params = dict(method.named_parameters())
    checked = 0
    for ours, ref_names in reference.reference_keys.items():
        name = "point_head." + ours[len("head."):] if ours.startswith("head.") else ours
        for ref in ref_names:
            if f"grads/{ref}" in case:
                expected = t(case[f"grads/{ref}"])
                scale = max(1.0, float(expected.abs().max()))
                torch.testing.assert_close(params[name].grad.reshape(expected.shape), expected, rtol=1e-4,
                                           atol=1e-5 * scale, msg=ref)
                checked += 1
    assert checked == sum(k.startswith("grads/") for k in case)


def test_jing_dgcnn512(impl):
    case = golden_case("dgcnn_jing512")
    model = load_reference("jing-dgcnn512", golden_state_dict(case), k=20)
    set_impl(model, impl)
    with torch.no_grad():
        out = model(points_of(case))
    assert out.global_.shape == (2, 512)
    torch.testing.assert_close(out.global_, t(case["outputs/pt_feat"]), rtol=0, atol=EVAL_ATOL)


def test_crosspoint_partseg_logits(impl):
    case = golden_case("crosspoint_partseg_k16")
    model = load_reference("crosspoint-dgcnn-partseg", golden_state_dict(case), k=16)
    set_impl(model, impl)
    with torch.no_grad():
        out = model(points_of(case), t(case["inputs/label_one_hot"]))
    expected = t(case["outputs/seg_logits"]).transpose(1, 2)
    torch.testing.assert_close(out.point_logits, expected, rtol=0, atol=EVAL_ATOL)
    assert out.projection is not None and out.projection.shape == (2, 256)


def test_deepgmr_pointwise_logits():
    case = golden_case("deepgmr_gmm_params")
    model = load_reference("deepgmr-pointnet", golden_state_dict(case))
    with torch.no_grad():
        out = model(points_of(case, "inputs/feats"))  # DeepGMR feeds centred points
    torch.testing.assert_close(out.point_logits, t(case["outputs/logits"]), rtol=0, atol=EVAL_ATOL)


def mesh_inputs(case: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's channels-first centres, corners, normals -> our faces (B, F, 15)."""
    parts = [case[f"inputs/{name}"] for name in ("centers", "corners", "normals")]
    return t(np.concatenate(parts, axis=1)).transpose(1, 2).contiguous(), t(case["inputs/neighbor_index"])


def test_meshnet_logits_and_feature():
    case = golden_case("meshnet_imoonlab_head")
    model = load_reference("meshnet", golden_state_dict(case))
    faces, neighbours = mesh_inputs(case)
    with torch.no_grad():
        out = model(faces, neighbours)
    torch.testing.assert_close(out.logits, t(case["outputs/cls"]), rtol=0, atol=EVAL_ATOL)
    # the reference divides its feature by the norm of the whole batch tensor
    torch.testing.assert_close(out.global_ / out.global_.norm(), t(case["outputs/fea_batchnormed"]), rtol=0, atol=EVAL_ATOL)
    assert out.local.shape == (2, 64, 1024) and torch.equal(out.centres, faces[..., :3])


def test_jing_meshnet512_is_the_meshnet_trunk_and_its_512_layer():
    """Jing et al.'s MeshNet is iMoonLab's trunk + Linear(1024, 512, no bias)/BN/ReLU: their
    names for it, with the golden trunk and a random last layer, give exactly that function."""
    case = golden_case("meshnet_imoonlab_head")
    trunk = {k: v for k, v in golden_state_dict(case).items() if not k.startswith("classifier.")}
    rng = np.random.default_rng(0)
    layer = {"linear1.weight": rng.standard_normal((512, 1024)).astype(np.float32) / 32,
             "bn6.weight": rng.random(512).astype(np.float32) + 0.5, "bn6.bias": rng.standard_normal(512).astype(np.float32),
             "bn6.running_mean": rng.standard_normal(512).astype(np.float32) / 10,
             "bn6.running_var": rng.random(512).astype(np.float32) + 0.5, "bn6.num_batches_tracked": np.array(3)}
    jing = {**trunk, **layer}
    assert detect_reference(jing) == "jing-meshnet512"
    model = load_reference("jing-meshnet512", jing)
    faces, neighbours = mesh_inputs(case)
    with torch.no_grad():
        out = model(faces, neighbours).global_
        pooled = load_reference("meshnet", golden_state_dict(case)).backbone(faces, neighbours).global_
    x = pooled @ t(layer["linear1.weight"]).T
    x = (x - t(layer["bn6.running_mean"])) / torch.sqrt(t(layer["bn6.running_var"]) + 1e-5)
    expected = torch.relu(x * t(layer["bn6.weight"]) + t(layer["bn6.bias"]))
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_detect_reference_names_each_golden_architecture():
    expected = {
        "crosspoint_dgcnn_small": "crosspoint-dgcnn",
        "dgcnn_jing512": "jing-dgcnn512",
        "crosspoint_partseg_k16": "crosspoint-dgcnn-partseg",
        "deepgmr_gmm_params": "deepgmr-pointnet",
        "meshnet_imoonlab_head": "meshnet",
    }
    for case_name, arch in expected.items():
        assert detect_reference(golden_state_dict(golden_case(case_name))) == arch


def test_load_reference_errors_name_the_parameter():
    sd = golden_state_dict(golden_case("crosspoint_dgcnn_small"))
    broken = dict(sd)
    del broken["conv3.0.weight"]
    with pytest.raises(ReferenceWeightsError, match="conv3.0.weight"):
        load_reference("crosspoint-dgcnn", broken, k=8)
    extra = dict(sd, **{"mystery.weight": np.zeros(3, np.float32)})
    with pytest.raises(ReferenceWeightsError, match="mystery.weight"):
        load_reference("crosspoint-dgcnn", extra, k=8)
    mismatched = dict(sd, **{"bn2.bias": sd["bn2.bias"] + 1})
    with pytest.raises(ReferenceWeightsError, match="bn2.bias"):
        load_reference("crosspoint-dgcnn", mismatched, k=8)
    wrapped = {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}
    assert load_reference("crosspoint-dgcnn", wrapped, k=8) is not None
    with pytest.raises(ValueError, match="unknown reference"):
        load_reference("pointnet++", sd)


@pytest.mark.parametrize("temperature", ["0.07", "0.1", "0.5"])
def test_ntxent_matches_lightly(temperature):
    case = golden_case("ntxent_lightly_v1_1_21")
    z0, z1 = t(case["inputs/z0"]), t(case["inputs/z1"])
    loss = NTXentLoss(float(temperature))
    torch.testing.assert_close(loss(z0, z1), t(case[f"outputs/loss_t{temperature}"]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss(z1, z0), t(case[f"outputs/loss_t{temperature}_swapped"]), rtol=1e-6, atol=1e-6)
