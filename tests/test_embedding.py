"""``pretext3d.embed``: raw inputs prepared as the command line prepares its data give the same
features as the store protocols (parity with ``embed_store``), clouds at any scale and place
give one embedding, un-normalised input is warned about, bad input gets one clear error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pretext3d
from pretext3d.cli import main
from pretext3d.data.meshes import load_mesh
from pretext3d.data.prepare import prepare
from pretext3d.data.store import StoreSettings, decode_images, read_index, read_object
from pretext3d.embedding import Embedder
from pretext3d.eval.modalities import embed_store, load_run_encoders

SMALL = StoreSettings(points=128, views=2, image_size=32, faces=64)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed") / "store"
    prepare("builtin:train=1,test=1", root, SMALL, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def crosspoint_run(store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("embed") / "cp"
    assert main(["pretrain", "--recipe", "crosspoint_cpu", "--out", str(run), f"data={store}", "steps=2", "batch_size=4",
                 "data_options.points=128", "data_options.image_size=32", "num_workers=0",
                 "model.backbone_config={emb_dims: 32, widths: [16]}", "model.hidden_dim=16",
                 "model.projection_dim=8"]) == 0
    return run


@pytest.mark.parametrize("space", ["shared", "encoder"])
def test_embed_equals_the_store_protocols_features(store, crosspoint_run, space):
    torch.manual_seed(0)
    encoders, _ = load_run_encoders(crosspoint_run, space)
    stored = embed_store(encoders, store, "test", ("points", "image"), 128, 32, use_cache=False, progress=False)
    entries = [e for e in read_index(store)["objects"] if e["split"] == "test"]
    clouds, views = [], []
    for entry in entries:
        arrays = read_object(store / entry["file"])
        clouds.append(arrays["points"])
        rgb, _ = decode_images(arrays["images_png"], arrays["image_offsets"])
        views.append(rgb)
    out = pretext3d.embed(crosspoint_run, points=np.stack(clouds), images=np.stack(views), space=space,
                          normalize=False)  # the stored points are already in the unit sphere
    np.testing.assert_allclose(out["points"], stored.features["points"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["image"], stored.features["image"].mean(1), rtol=1e-4, atol=1e-5)


def test_a_cloud_at_any_scale_and_place_gets_one_embedding_and_raw_scale_is_warned(crosspoint_run):
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(300, 3))
    embedder = Embedder(crosspoint_run, space="encoder")
    base = embedder.points(cloud)
    moved = embedder.points([cloud * 100 + 7, cloud])  # a list of clouds, one of them scaled 0..100
    np.testing.assert_allclose(moved, np.concatenate([base, base]), rtol=1e-4, atol=1e-5)
    assert base.shape == (1, 64)  # max + avg pooling of 32 channels
    with pytest.warns(UserWarning, match="cloud 0: its points reach .* from their centroid"):
        embedder.points(cloud * 100, normalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder.points(cloud / np.linalg.norm(cloud - cloud.mean(0), axis=1).max(), normalize=False)
    # fewer points than the run trained with are padded with repeats; more are cut by FPS
    assert embedder.points(cloud[:50]).shape == (1, 64) and embedder.num_points == 128


def test_meshes_embed_by_their_surface_without_a_mesh_encoder(crosspoint_run, tmp_path):
    from pretext3d.data.builtin import export_builtin_meshes

    folder = export_builtin_meshes(tmp_path / "meshes", train=1, test=0)
    file = sorted(folder.rglob("*.off"))[0]
    mesh = load_mesh(file)
    out = pretext3d.embed(crosspoint_run, meshes=[str(file), (mesh.vertices * 50, mesh.faces)], space="encoder")
    assert out["mesh"].shape == (2, 64)
    np.testing.assert_allclose(out["mesh"][0], out["mesh"][1], rtol=1e-4, atol=1e-5)  # the scale is normalised


def test_bad_inputs_get_one_clear_error(crosspoint_run, tmp_path):
    embedder = Embedder(crosspoint_run)
    with pytest.raises(ValueError, match="points 1: holds NaN"):
        embedder.points([np.zeros((10, 3)), np.full((10, 3), np.nan)])
    with pytest.raises(ValueError, match=r"points 0: expected \(N, 3\)"):
        embedder.points([np.zeros((10, 2))])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        embedder.images([str(tmp_path / "bad.png")])
    with pytest.raises(ValueError, match="has no mesh encoder|give points"):
        pretext3d.embed(crosspoint_run)
