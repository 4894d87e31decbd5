"""The prepared store: prepare / resume / shards / bad input / verify, and the multimodal Dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pretext3d.cli import main
from pretext3d.data.errors import DataFormatError
from pretext3d.data.multimodal import (
    IMAGENET_STD,
    ImageAugment,
    MultimodalDataset,
    PointAugment,
    colour_jitter,
    crop_flip_ndc,
    normalize_image_batch,
)
from pretext3d.data.prepare import parse_shard, prepare, verify
from pretext3d.data.store import StoreSettings, decode_images, encode_images, object_path, read_object
from pretext3d.render.shading import LUMA
from tests.tests_helpers import project_to_pixels, write_two_class_npz

SMALL = StoreSettings(points=256, views=4, layout="dodecahedron", image_size=64, faces=128)
BUILTIN = "builtin:train=1,test=1"  # 14 classes x 2 objects


@pytest.fixture(scope="module")
def builtin_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "builtin"
    summary = prepare(BUILTIN, root, SMALL, workers=1, progress=False)
    assert summary.done == 28 and not summary.failed
    return root


def in_mask_fraction(points: np.ndarray, view: np.ndarray, proj: np.ndarray, mask: np.ndarray) -> float:
    """Of the points that project inside the image, the fraction that land in the mask."""
    rows, cols, inside, _ = project_to_pixels(points, view, proj, mask.shape)
    return mask[rows, cols][inside].mean()


def test_store_layout_index_and_object_contents(builtin_store):
    config = json.loads((builtin_store / "store.json").read_text())
    assert config["settings"]["up"] == "z" and config["kind"] == "mesh"
    index = json.loads((builtin_store / "index.json").read_text())
    assert index["counts"] == {"present": 28, "failed": 0, "missing": 0, "total": 28}
    entry = index["objects"][0]
    assert {"key", "class", "label", "split", "file", "points", "views", "mesh"} <= set(entry)
    arrays = read_object(builtin_store / entry["file"])
    assert arrays["points"].shape == (256, 3) and arrays["normals"].shape == (256, 3)
    assert arrays["view"].shape == (4, 4, 4) and arrays["proj"].shape == (4, 4, 4)
    assert arrays["mesh_features"].shape == (128, 15) and arrays["mesh_neighbours"].shape == (128, 3)
    assert np.linalg.norm(arrays["points"], axis=1).max() <= 1.0 + 1e-5
    images, masks = decode_images(arrays["images_png"], arrays["image_offsets"])
    assert images.shape == (4, 64, 64, 3) and masks.any(axis=(1, 2)).all()
    for v in range(4):  # the stored matrices put the stored points on the stored masks
        assert in_mask_fraction(arrays["points"], arrays["view"][v], arrays["proj"][v], masks[v]) >= 0.99
    assert verify(builtin_store, progress=False)["problems"] == []


def test_rerun_skips_finished_objects_and_settings_are_fixed(builtin_store):
    summary = prepare(BUILTIN, builtin_store, SMALL, workers=1, progress=False)
    assert summary.done == 0 and summary.skipped == 28
    with pytest.raises(DataFormatError, match="other settings.*views: 4 -> 6"):
        prepare(BUILTIN, builtin_store, StoreSettings(**{**SMALL.__dict__, "views": 6}), progress=False)


def test_interrupted_run_is_completed_and_verified(builtin_store, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(builtin_store, root)
    index = json.loads((root / "index.json").read_text())
    lost = [e["key"] for e in index["objects"][::5]]
    for key in lost:  # as if killed: files never renamed into place, a torn record, a stale temp file
        object_path(root, key).unlink()
    (root / "index.json").unlink()
    (root / "objects" / "train" / ".chair_0000.npz.abc.tmp").write_bytes(b"partial")
    with open(next((root / "records").glob("*.jsonl")), "a") as log:
        log.write('{"key": "train/cha')
    report = verify(root, progress=False)
    assert report["index_stale"] and report["counts"]["missing"] == len(lost)
    summary = prepare(BUILTIN, root, SMALL, workers=2, progress=False)
    assert summary.done == len(lost) and summary.skipped == 28 - len(lost)
    report = verify(root, progress=False)
    assert report["problems"] == [] and not report["index_stale"] and report["counts"]["missing"] == 0
    assert report["temporary_files"] == ["objects/train/.chair_0000.npz.abc.tmp"]
    # the redone objects are the same as the first time (every draw is seeded by the key)
    again = read_object(object_path(root, lost[0]), ("points", "mesh_features"))
    first = read_object(object_path(builtin_store, lost[0]), ("points", "mesh_features"))
    np.testing.assert_array_equal(again["points"], first["points"])
    np.testing.assert_array_equal(again["mesh_features"], first["mesh_features"])


def test_shards_split_the_work_without_overlap(tmp_path):
    root = tmp_path / "sharded"
    first = prepare(BUILTIN, root, SMALL, shard=(0, 3), progress=False, limit=9)
    assert first.done == 3 and first.counts["missing"] == 25  # the manifest lists all 28 objects
    prepare(BUILTIN, root, SMALL, shard=(1, 3), progress=False, limit=9)
    last = prepare(BUILTIN, root, SMALL, shard=(2, 3), progress=False, limit=9)
    assert last.done == 3 and last.counts == {"present": 9, "failed": 0, "missing": 19, "total": 28}
    assert [e["key"] for e in json.loads((root / "index.json").read_text())["objects"]] == \
        [e["key"] for e in json.loads((root / "manifest.json").read_text())["objects"][:9]]
    assert len(list((root / "records").glob("*.jsonl"))) == 3
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_bad_meshes_are_skipped_with_a_reason_and_the_rest_finish(tmp_path):
    source = tmp_path / "meshes"
    main(["data", "builtin", "--out", str(source), "--train", "1", "--test", "0"])
    broken = source / "chair" / "train" / "chair_0000.off"
    broken.write_text("OFF\n8 12 0\n0 0 0\n")  # truncated
    (source / "lamp" / "train" / "lamp_0000.off").write_text("")
    summary = prepare(source, tmp_path / "out", SMALL, progress=False)
    assert summary.done == 12 and len(summary.failed) == 2
    reasons = dict(summary.failed)
    assert "chair_0000.off" in reasons["train/chair_0000"] and "truncated" in reasons["train/chair_0000"]
    assert "is empty" in reasons["train/lamp_0000"]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["counts"]["failed"] == 2 and {f["key"] for f in index["failed"]} == set(reasons)
    assert verify(tmp_path / "out", progress=False)["problems"] == []


def test_point_cloud_source_gets_splat_views_and_estimated_normals(tmp_path):
    npz = write_two_class_npz(tmp_path / "two.npz", n_train=4, n_test=2, points=300)
    settings = StoreSettings(points=128, views=3, layout="ring12", image_size=48, up="z")
    summary = prepare(npz, tmp_path / "clouds", settings, progress=False)
    assert summary.done == 6
    index = json.loads((tmp_path / "clouds" / "index.json").read_text())
    arrays = read_object(tmp_path / "clouds" / index["objects"][0]["file"])
    meta = json.loads(arrays["meta"].tobytes())
    assert meta["renderer"] == "splat" and meta["normals_estimated"] and meta["source_points"] == 300
    assert "mesh_features" not in arrays and not index["objects"][0]["mesh"]
    _, masks = decode_images(arrays["images_png"], arrays["image_offsets"])
    for v in range(3):
        assert in_mask_fraction(arrays["points"], arrays["view"][v], arrays["proj"][v], masks[v]) == 1.0
    with pytest.raises(DataFormatError, match="fewer than the 500"):
        prepare(npz, tmp_path / "too_many", StoreSettings(points=500, views=1, image_size=16), progress=False)


def test_verify_names_a_damaged_object(builtin_store, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(builtin_store, root)
    entry = json.loads((root / "index.json").read_text())["objects"][3]
    path = root / entry["file"]
    path.write_bytes(path.read_bytes()[:500])
    report = verify(root, progress=False)
    assert [key for key, _ in report["problems"]] == [entry["key"]]
    assert entry["file"] in report["problems"][0][1] and "cannot be read" in report["problems"][0][1]
    assert main(["verify", str(root), "--quiet"]) == 1
    dataset = MultimodalDataset(root, split=None)
    with pytest.raises(DataFormatError, match=f"{path.name}.*cannot be read"):
        dataset[dataset.entries.index(next(e for e in dataset.entries if e["key"] == entry["key"]))]
    # without the records (a copied store) the damaged file is found while indexing, not a crash
    shutil.rmtree(root / "records")
    report = verify(root, progress=False)
    assert [key for key, _ in report["problems"]] == [entry["key"]] and report["counts"]["damaged"] == 1


def test_a_dying_worker_fails_its_object_and_the_run_goes_on(tmp_path):
    from tests.tests_helpers import DyingSource

    summary = prepare(DyingSource(BUILTIN), tmp_path / "dying", SMALL, workers=2, limit=6, progress=False)
    assert summary.failed == [("train/airplane_0000", summary.failed[0][1])]  # only the culprit
    assert "worker process died" in summary.failed[0][1] and summary.done == 5
    again = prepare(BUILTIN, tmp_path / "dying", SMALL, workers=1, limit=6, progress=False)
    assert again.done == 1 and again.counts["present"] == 6


def test_a_pool_that_breaks_on_submit_loses_no_object(monkeypatch):
    """A worker can die just after the last results came back, so that the pool breaks on the
    next submit instead of on a result (a rare race of the test above): every object is still
    reported exactly once, by a fresh pool."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import pretext3d.data.prepare as prepare_module
    from pretext3d.data.sources import SourceObject
    from pretext3d.data.store import ObjectRecord

    submits = {"n": 0}

    class BreaksOnThirdSubmit:
        def submit(self, fn, obj):
            submits["n"] += 1
            if submits["n"] == 3:
                raise BrokenProcessPool("a worker died")
            done: Future = Future()
            done.set_result(ObjectRecord(obj.key, "done"))
            return done

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    monkeypatch.setattr(prepare_module, "_executor", lambda workers, initargs: BreaksOnThirdSubmit())
    todo = [SourceObject(f"train/o{i}", f"o{i}", "train", 0, i) for i in range(6)]
    records = list(prepare_module._run_in_processes(todo, 1, ()))
    assert sorted(r.key for r in records) == [o.key for o in todo] and {r.status for r in records} == {"done"}
    assert submits["n"] == 7  # one submit failed and its object went to the next pool


def test_png_round_trip_keeps_pixels_and_mask():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    masks = rng.random((3, 20, 30)) > 0.5
    data, offsets = encode_images(images, masks)
    back, back_masks = decode_images(data, offsets, [2, 0])
    np.testing.assert_array_equal(back, images[[2, 0]])
    np.testing.assert_array_equal(back_masks, masks[[2, 0]])


# --- the Dataset ------------------------------------------------------------------------------


def test_crop_flip_ndc_known_answers():
    np.testing.assert_allclose(crop_flip_ndc((0, 0, 64, 64), 64, 64, False), np.eye(4))
    flip = crop_flip_ndc((0, 0, 64, 64), 64, 64, True)
    np.testing.assert_allclose(flip @ [0.5, 0.2, 0, 1], [-0.5, 0.2, 0, 1])
    # the top-left quarter: its centre (NDC (-0.5, 0.5)) becomes the new centre, its corner stays a corner
    quarter = crop_flip_ndc((0, 0, 32, 32), 64, 64, False)
    np.testing.assert_allclose(quarter @ [-0.5, 0.5, 0, 1], [0, 0, 0, 1])
    np.testing.assert_allclose(quarter @ [-1, 1, 0, 1], [-1, 1, 0, 1])


def test_dataset_items_are_deterministic_and_shaped(builtin_store):
    ds = MultimodalDataset(builtin_store, split="train", num_points=200, views_per_sample=2, image_size=48, seed=1)
    assert len(ds) == 14 and ds.classes[0] == "airplane"
    a, b = ds[3], ds[3]
    for key in ("points", "images", "view", "proj", "view_index"):
        torch.testing.assert_close(a[key], b[key])
    assert a["points"].shape == (200, 3) and a["images"].shape == (2, 3, 48, 48) and a["masks"].shape == (2, 48, 48)
    assert a["mesh_centers"].shape == (3, 128) and a["mesh_neighbors"].dtype == torch.int64
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["points"], a["points"])
    plain = MultimodalDataset(builtin_store, split="test", point_augment=None, image_augment=None, normalize=False)
    item = plain[0]
    stored = read_object(builtin_store / plain.entries[0]["file"], ("points",))["points"]
    np.testing.assert_array_equal(item["points"].numpy(), stored)
    assert item["images"].min() >= 0 and item["images"].max() <= 1


def test_augmented_points_still_project_into_augmented_masks(builtin_store):
    ds = MultimodalDataset(builtin_store, split=None, views_per_sample=3, point_augment=PointAugment(jitter_sigma=0.0),
                           image_augment=ImageAugment(crop_scale=(0.3, 1.0)), seed=5)
    fractions = []
    for i in range(0, len(ds), 3):
        item = ds[i]
        for v in range(3):
            fractions.append(in_mask_fraction(item["points"].numpy(), item["view"][v].numpy(),
                                              item["proj"][v].numpy(), item["masks"][v].numpy()))
    assert np.mean(fractions) >= 0.99


@pytest.mark.parametrize("factors", [(1.3, 0.7, 1.2), (0.6, 1.4, 0.0), (1.0, 1.0, 1.0)])
def test_colour_jitter_equals_the_three_steps_in_turn(factors):
    """The closed form against brightness, contrast and saturation applied one after the other
    in float64 (clipped once at the end), on an image with saturated and dark pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    pixels[0, :5] = 255
    b, c, s = factors
    luma = np.array(LUMA)
    x = pixels / 255.0 * b
    mean = (x @ luma).mean()
    x = (x - mean) * c + mean
    grey = (x @ luma)[..., None]
    expected = np.clip((x - grey) * s + grey, 0, 1) * 255
    got = colour_jitter(pixels, factors)
    assert got.dtype == np.float32 and got.shape == pixels.shape
    np.testing.assert_allclose(got, expected, atol=2e-3)


@pytest.mark.parametrize("jitter", [0.0, 0.4])
def test_uint8_images_normalised_on_the_device_equal_the_float_path(builtin_store, jitter):
    """Same draws (crop, flip, views, points); pixels equal to float rounding, and within half a
    grey level (0.5 / 255 / std) where colour jitter is rounded back to uint8."""
    augment = ImageAugment(brightness=jitter, contrast=jitter, saturation=jitter)
    kwargs = dict(split="train", num_points=64, views_per_sample=2, image_size=40, image_augment=augment, seed=3)
    as_float = MultimodalDataset(builtin_store, **kwargs)
    as_pixels = MultimodalDataset(builtin_store, image_dtype="uint8", **kwargs)
    batch_f = torch.utils.data.default_collate([as_float[i] for i in range(4)])
    raw = torch.utils.data.default_collate([as_pixels[i] for i in range(4)])
    assert raw["images"].dtype == torch.uint8 and raw["images"].shape == batch_f["images"].shape
    batch_u = as_pixels.on_device(raw)
    assert batch_u["images"].dtype == torch.float32
    tolerance = 1e-5 if jitter == 0 else 0.5 / 255 / min(IMAGENET_STD) + 1e-5
    assert float((batch_u["images"] - batch_f["images"]).abs().max()) <= tolerance
    for key in ("points", "view", "proj", "masks", "view_index"):
        torch.testing.assert_close(batch_u[key], batch_f[key])
    assert normalize_image_batch(batch_f) is batch_f  # float batches pass through unchanged
    kwargs.update(normalize=False)
    unit = MultimodalDataset(builtin_store, **kwargs)[0]["images"]
    raw_unit = MultimodalDataset(builtin_store, image_dtype="uint8", **kwargs)
    finished = raw_unit.on_device({"images": raw_unit[0]["images"]})["images"]
    assert float((finished - unit).abs().max()) <= (1e-6 if jitter == 0 else 0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="image_dtype"):
        MultimodalDataset(builtin_store, image_dtype="float16")


def test_dataloader_with_two_workers_collates(builtin_store):
    ds = MultimodalDataset(builtin_store, views_per_sample=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 2, 3, 64, 64) and batch["points"].shape == (4, 256, 3)
    assert batch["label"].shape == (4,)


def test_dataset_errors_name_the_problem(builtin_store, tmp_path):
    with pytest.raises(DataFormatError, match="not a prepared store"):
        MultimodalDataset(tmp_path)
    with pytest.raises(ValueError, match="views_per_sample"):
        MultimodalDataset(builtin_store, views_per_sample=5)
    with pytest.raises(ValueError, match="stores 256 points"):
        MultimodalDataset(builtin_store, num_points=1000)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_prepare_verify_render(tmp_path, capsys):
    out = tmp_path / "cli_store"
    assert main(["prepare", BUILTIN, "--out", str(out), "--points", "128", "--views", "3", "--image-size", "32",
                 "--faces", "64", "--limit", "4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "4 done" in text and "views/s" in text
    assert main(["verify", str(out), "--quiet"]) == 3  # sound but incomplete: --limit 4 of 28
    assert "INCOMPLETE: sound so far, 24 object(s) not prepared yet" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert main(["render", str(out), "--out", str(sheet), "--objects", "2"]) == 0
    from PIL import Image

    assert Image.open(sheet).size[0] == 2 + 3 * 34  # three 32-pixel views and 2-pixel gaps
    mesh_dir = tmp_path / "meshes"
    main(["data", "builtin", "--out", str(mesh_dir), "--train", "1", "--test", "0"])
    single = tmp_path / "one.png"
    assert main(["render", str(mesh_dir / "vase" / "train" / "vase_0000.off"), "--layout", "ring12",
                 "--image-size", "40", "--out", str(single)]) == 0
    assert Image.open(single).size == (2 + 10 * 42, 2 * (42 + 14) + 2)  # 12 views wrap onto two lines


def test_cli_bad_source_is_one_line(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err and "does not exist" in err
