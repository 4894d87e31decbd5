"""Recipes, `pretext3d pretrain` end to end (ParAE and CrossPoint on the built-in shapes), the
evaluation of a run folder, kill -9 + --resume bit-identical to an uninterrupted run, and the
pieces the recipes use (augmented point views, ParAE's decoder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretext3d.cli import main
from pretext3d.config import RecipeError, apply_overrides, build_method, complete, load_recipe, train_config
from pretext3d.data.multimodal import AugmentedClouds, MultimodalDataset, PointAugment
from pretext3d.models import PointNetPointwise
from tests_helpers import project_to_pixels, tiny_clouds, write_two_class_npz

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY_PARAE = [
    "model.backbone_config={encoder_widths: [16, 32], decoder_widths: [32], skip_layer: 0, pooling: max}",
    "model.partitions=8", "data_options.points=128", "data_options.builtin={train: 4, test: 2}",
    "batch_size=8", "amp=false",
]


# --- recipes ---------------------------------------------------------------------------------

SHIPPED = ["crosspoint_dgcnn", "crosspoint_cpu", "parae", "parae_cpu", "parae_dgcnn", "picpoint_cpu", "picpoint_dgcnn",
           "picpoint_pointnext", "cmcv", "cmcv_cpu", "mims", "mims_cpu", "compose_cpu"]


def test_the_list_of_shipped_recipes_is_complete():
    assert sorted(SHIPPED) == sorted(p.stem for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_and_builds_its_method(name):
    recipe = load_recipe(CONFIGS / f"{name}.yaml")
    method = build_method(recipe)
    assert method.backbone_name == recipe["model"]["backbone"]
    assert hasattr(method.backbone, "global_dim")


def test_paper_recipe_of_cmcv_has_the_published_settings():
    recipe = load_recipe(CONFIGS / "cmcv.yaml")
    assert recipe["optimizer"] == {**recipe["optimizer"], "name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}
    assert recipe["schedule"]["name"] == "step" and (recipe["schedule"]["step_size"], recipe["schedule"]["gamma"]) == (40000, 0.1)
    assert recipe["batch_size"] == 32 and recipe["model"]["image_encoder"] == "resnet18"
    assert recipe["model"]["backbone_config"]["widths"] == [64, 64, 64, 128] and recipe["model"]["backbone_config"]["emb_dims"] == 512
    augment = recipe["data_options"]["augment"]
    assert augment["rotate"] and augment["jitter_sigma"] == 0.02 and augment["scale"] == [1.0, 1.0] and augment["translate"] == 0


def test_paper_recipe_of_crosspoint_has_the_published_settings():
    recipe = load_recipe(CONFIGS / "crosspoint_dgcnn.yaml")
    assert recipe["optimizer"]["name"] == "adam" and recipe["optimizer"]["lr"] == 1e-3
    assert recipe["optimizer"]["weight_decay"] == 1e-6 and recipe["schedule"]["name"] == "cosine"
    assert (recipe["epochs"], recipe["batch_size"]) == (100, 20)
    assert recipe["model"]["backbone_config"]["k"] == 15 and recipe["model"]["temperature"] == 0.1
    assert (recipe["data_options"]["points"], recipe["data_options"]["image_size"]) == (2048, 224)
    # 100 epochs of full batches of 20
    assert train_config(recipe, 1010).steps == 100 * 50


def test_overrides_use_dotted_keys_and_yaml_values():
    recipe = load_recipe(CONFIGS / "parae_cpu.yaml")
    changed = apply_overrides(recipe, ["steps=7", "optimizer.lr=3e-4", "model.backbone_config.skip_layer=-1",
                                       "data=/some/where", "seed=5", "batch_size=4"])
    assert (changed["steps"], changed["seed"], changed["batch_size"], changed["data"]) == (7, 5, 4, "/some/where")
    assert changed["optimizer"]["lr"] == 3e-4
    # a dotted key changes one setting, the others stay
    assert changed["model"]["backbone_config"]["skip_layer"] == -1
    assert changed["model"]["backbone_config"]["encoder_widths"] == [64, 64, 64, 128, 1024]
    # a mapping replaces the mapping, so that another backbone can be chosen
    other = apply_overrides(load_recipe(CONFIGS / "crosspoint_dgcnn.yaml"),
                            ["model.backbone=pointnet", "model.backbone_config={emb_dims: 512}"])
    assert other["model"]["backbone_config"] == {"emb_dims": 512}
    assert build_method(other).backbone.global_dim == 1024
    # a section given whole starts from its defaults
    assert apply_overrides(recipe, ["optimizer={name: sgd}"])["optimizer"]["lr"] == 1e-3
    assert recipe["steps"] is None  # the original is untouched
    config = train_config(changed, 100)
    assert (config.steps, config.optimizer.lr, config.seed) == (7, 3e-4, 5)


@pytest.mark.parametrize("override, message", [
    ("stpes=3", "unknown recipe key 'stpes'"),
    ("optimizer.learning_rate=1", "unknown recipe key 'optimizer.learning_rate'"),
    ("batch_size=0", "batch_size must be a positive integer"),
    ("method=simclr", "method must be one of"),
    ("steps", "is not key=value"),
    ("seed.x=1", "'seed' is not a section"),
    ("model.backbone_config={k: 3", "the value is not valid YAML"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        apply_overrides(load_recipe(CONFIGS / "parae_cpu.yaml"), [override])


def test_bad_recipe_files_name_the_file(tmp_path):
    missing = tmp_path / "none.yaml"
    with pytest.raises(RecipeError, match="none.yaml: recipe not found"):
        load_recipe(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: parae\nsteps: [1,\n")
    with pytest.raises(RecipeError, match="broken.yaml: not valid YAML"):
        load_recipe(broken)
    no_length = tmp_path / "no_length.yaml"
    no_length.write_text("method: parae\n")
    with pytest.raises(RecipeError, match="no_length.yaml: give steps or epochs"):
        load_recipe(no_length)
    wrong_model = complete({"method": "parae", "steps": 1, "model": {"latent": 3}})
    with pytest.raises(RecipeError, match="model: .*latent"):
        build_method(wrong_model)


def test_crosspoint_starts_its_image_encoder_from_torchvision_weights_on_disk(tmp_path):
    from safetensors.torch import save_file

    from pretext3d.models import resnet18
    from pretext3d.pretext.crosspoint import CrossPoint

    torch.manual_seed(3)
    source = resnet18(num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    method = CrossPoint("pointnet", {"emb_dims": 32}, "resnet18", image_weights=str(tmp_path / "r18.safetensors"))
    for key, value in method.image_encoder.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    (tmp_path / "bad.pth").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="bad.pth: not usable torchvision ResNet weights"):
        CrossPoint("pointnet", {"emb_dims": 32}, "resnet18", image_weights=str(tmp_path / "bad.pth"))


# --- data for pretraining --------------------------------------------------------------------

def test_augmented_clouds_give_independent_views_drawn_per_seed_epoch_index():
    clouds = tiny_clouds(6, 64)
    data = AugmentedClouds(clouds, PointAugment(), point_views=2, seed=1)
    a, b = data[3], data[3]
    assert a["point_views"].shape == (2, 64, 3) and torch.equal(a["point_views"], b["point_views"])
    assert torch.equal(a["point_views"][0], a["points"])
    assert not torch.allclose(a["point_views"][0], a["point_views"][1], atol=1e-3)
    data.set_epoch(1)
    assert not torch.allclose(data[3]["points"], a["points"], atol=1e-3)
    plain = AugmentedClouds(clouds, None)[3]
    np.testing.assert_array_equal(plain["points"].numpy(), clouds[3]["points"])
    assert "point_views" not in plain


def test_random_point_sampling_draws_a_new_uniform_subset_each_epoch(tmp_path):
    """data_options.point_sampling=random: N of the held points without repeats, the same for a
    (seed, epoch, index), new in the next epoch; "first" keeps the first N (FPS order)."""
    from pretext3d.config import build_dataset

    npz = write_two_class_npz(tmp_path / "two.npz", n_train=6, n_test=2, points=64)
    recipe = complete({"method": "parae", "data": str(npz), "steps": 1, "data_options": {
        "points": 16, "point_sampling": "random", "augment": {"rotate": False, "scale": [1.0, 1.0], "translate": 0.0,
                                                              "jitter_sigma": 0.0}}})
    data = build_dataset(recipe, tmp_path)
    stored = np.load(npz)["train_x"][2].astype(np.float32)
    first = data[2]["points"].numpy()
    rows = [np.flatnonzero((stored == p).all(axis=1))[0] for p in first]  # every point is a stored one
    assert first.shape == (16, 3) and len(set(rows)) == 16 and rows != list(range(16))
    np.testing.assert_array_equal(data[2]["points"].numpy(), first)
    data.set_epoch(1)
    assert not np.array_equal(data[2]["points"].numpy(), first)
    plain = build_dataset(complete({**recipe, "data_options": {**recipe["data_options"], "point_sampling": "first"}}),
                          tmp_path)
    np.testing.assert_array_equal(plain[2]["points"].numpy(), stored[:16])
    with pytest.raises(RecipeError, match="point_sampling must be one of first, random"):
        complete({**recipe, "data_options": {"point_sampling": "fps"}})


def test_random_point_sampling_from_a_store_keeps_the_images_aligned(tmp_path):
    from pretext3d.data.prepare import prepare
    from pretext3d.data.store import StoreSettings, read_object

    prepare("builtin:train=1,test=0", tmp_path / "s", StoreSettings(points=256, views=2, image_size=32, faces=64),
            progress=False)
    data = MultimodalDataset(tmp_path / "s", num_points=64, point_sampling="random", modalities=("points", "images"),
                             point_augment=PointAugment(jitter_sigma=0.0))
    item = data[0]
    assert item["points"].shape == (64, 3)
    rows, cols, inside, _ = project_to_pixels(item["points"].numpy(), item["view"][0].numpy(), item["proj"][0].numpy(),
                                              (32, 32))
    assert (inside & item["masks"][0].numpy()[rows, cols]).mean() >= 0.95
    exact = MultimodalDataset(tmp_path / "s", num_points=64, point_sampling="random", point_augment=None,
                              image_augment=None, modalities=("points",))
    stored = read_object(tmp_path / "s" / exact.entries[0]["file"], ("points",))["points"]
    picked = exact[0]["points"].numpy()
    assert all((stored == p).all(axis=1).any() for p in picked)
    assert not np.array_equal(picked, stored[:64])  # not the FPS prefix
    with pytest.raises(ValueError, match="point_sampling must be one of"):
        MultimodalDataset(tmp_path / "s", point_sampling="fps")


def test_relative_translation_is_a_fraction_of_the_bounding_box():
    """translate_relative: shift_a = U(-t, t) * extent_a of the scaled, rotated cloud (CrossPoint's
    code); worked case: a cloud of extent (2, 4, 6), t = 0.5, no scale or rotation."""
    from pretext3d.data.multimodal import random_point_affine

    points = np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    augment = PointAugment(rotate=False, scale=(1.0, 1.0), translate=0.5, translate_relative=True)
    shifts = np.stack([random_point_affine(np.random.default_rng(s), augment, "z", points)[:3, 3] for s in range(400)])
    bound = np.array([1.0, 2.0, 3.0])
    assert (np.abs(shifts) <= bound + 1e-12).all() and (np.abs(shifts).max(axis=0) > 0.95 * bound).all()
    fraction = random_point_affine(np.random.default_rng(7), augment, "z", points)[:3, 3] / (2 * bound)
    absolute = random_point_affine(np.random.default_rng(7), PointAugment(rotate=False, scale=(1.0, 1.0), translate=0.5), "z")
    np.testing.assert_allclose(fraction, absolute[:3, 3])  # the same draw, times the extent (2, 4, 6)
    doubled = PointAugment(rotate=False, scale=(2.0, 2.0), translate=0.5, translate_relative=True)
    assert np.abs(random_point_affine(np.random.default_rng(7), doubled, "z", points)[:3, 3] /
                  random_point_affine(np.random.default_rng(7), augment, "z", points)[:3, 3] - 2).max() < 1e-12


def test_crosspoint_heads_can_take_the_official_widths_and_bias():
    from pretext3d.pretext.crosspoint import CrossPoint

    method = CrossPoint("pointnet", {"emb_dims": 32}, "resnet18", hidden_dim=16, point_hidden_dim=24,
                        image_head_bias=False)
    assert method.point_head.fc1.out_features == 24 and method.point_head.fc1.bias is not None
    assert method.image_head.fc1.out_features == 16
    assert method.image_head.fc1.bias is None and method.image_head.fc2.bias is None
    batch = {"point_views": torch.randn(3, 2, 64, 3), "images": torch.randn(3, 1, 3, 32, 32)}
    assert torch.isfinite(method(batch)["loss"])


def test_crosspoint_with_n_images_averages_their_projections():
    """Table 6's n > 1: z_img = mean over the n views of q(h(view)); n = 1 is the first view."""
    from pretext3d.config import data_needs
    from pretext3d.pretext.crosspoint import CrossPoint

    assert data_needs("crosspoint", {"images_per_object": 3})["views"] == 3
    with pytest.raises(RecipeError, match="images_per_object must be an integer >= 1"):
        data_needs("crosspoint", {"images_per_object": 0})
    torch.manual_seed(0)
    method = CrossPoint("pointnet", {"emb_dims": 32}, "resnet18", hidden_dim=16, images_per_object=3).eval()
    images = torch.randn(2, 4, 3, 32, 32)
    each = torch.stack([method.image_head(method.image_encoder(images[:, v]).global_) for v in range(3)], 1)
    torch.testing.assert_close(method.image_projections(images), each.mean(1))
    method.images_per_object = 1
    torch.testing.assert_close(method.image_projections(images), each[:, 0])
    method.images_per_object = 5
    with pytest.raises(ValueError, match="needs 5 views per object, got 4"):
        method.image_projections(images)


def test_store_items_carry_two_point_views_the_first_matching_the_images(tmp_path):
    from pretext3d.data.prepare import prepare
    from pretext3d.data.store import StoreSettings

    prepare("builtin:train=1,test=0", tmp_path / "s", StoreSettings(points=256, views=2, image_size=32, faces=64),
            progress=False)
    item = MultimodalDataset(tmp_path / "s", point_views=2, modalities=("points", "images"))[0]
    assert item["point_views"].shape == (2, 256, 3)
    assert torch.equal(item["point_views"][0], item["points"])
    assert not torch.allclose(item["point_views"][0], item["point_views"][1], atol=1e-3)
    rows, cols, inside, _ = project_to_pixels(item["points"].numpy(), item["view"][0].numpy(), item["proj"][0].numpy(),
                                              (32, 32))
    on_object = inside & item["masks"][0].numpy()[rows, cols]
    assert on_object.mean() >= 0.95  # the matrices follow the first view (jitter moves points ~0.01)


def test_parae_decoder_split_equals_the_concatenation():
    """W [skip; context] computed as W_s skip + W_c context gives the same partitions."""
    torch.manual_seed(0)
    net = PointNetPointwise(num_outputs=5, encoder_widths=(8, 16, 32), decoder_widths=(12, 6), skip_layer=0).train()
    points = torch.randn(3, 40, 3)
    out = net(points)
    x, skip = points, None
    for i, layer in enumerate(net.encoder):
        x = layer(x)
        skip = x if i == 0 else skip
    joined = torch.cat([skip, x.amax(dim=1, keepdim=True).expand(-1, 40, -1)], dim=-1)
    h = joined
    for layer in net.decoder:
        h = layer(h)
    torch.testing.assert_close(out.point_logits, net.classifier(h), rtol=1e-5, atol=1e-6)
    assert net(points, need_local=False).point_logits is None  # feature extraction skips the decoder


# --- the command line ------------------------------------------------------------------------

def test_pretrain_parae_then_evaluate_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["pretrain", "--recipe", str(CONFIGS / "parae_cpu.yaml"), "--out", str(run), "steps=3",
               "log_every=1", "tensorboard=true", *TINY_PARAE])
    assert rc == 0
    assert (run / "backbone.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["method"] == "parae" and config["train"]["steps"] == 3
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and all(np.isfinite(line["nll"]) for line in lines)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # a second run into the same folder is refused
    assert main(["pretrain", "--recipe", str(CONFIGS / "parae_cpu.yaml"), "--out", str(run), "steps=3", *TINY_PARAE]) == 2
    assert "already holds a run" in capsys.readouterr().err

    report = tmp_path / "svm.json"
    rc = main(["evaluate", "linear-svm", "--data", "builtin:train=4,test=2", "--checkpoint", str(run), "--points", "128",
               "--C", "1", "--quiet", "--no-cache", "--json", str(report)])
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["backbone"] == "pointnet-pointwise" and result["feature_dim"] == 32
    assert result["weights"].endswith("backbone.safetensors")
    assert main(["evaluate", "linear-svm", "--data", "builtin", "--checkpoint", str(tmp_path), "--quiet"]) == 2
    assert "without backbone.safetensors" in capsys.readouterr().err


def _folder_bytes(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing_and_more_steps_extend_it(tmp_path, capsys):
    from pretext3d.engine.trainer import OptimConfig, ScheduleConfig, learning_rate

    run = tmp_path / "run"
    parae = ["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE, "log_every=1", "checkpoint_every=2"]
    assert main([*parae, "steps=4"]) == 0
    before = _folder_bytes(run)
    # resuming the finished run (even with another log_every) writes nothing and says so
    assert main([*parae, "steps=4", "log_every=2", "--resume"]) == 0
    assert "has finished its 4 steps; nothing to do" in capsys.readouterr().err
    assert _folder_bytes(run) == before
    # fewer steps would shorten it; another setting is another run
    assert main([*parae, "steps=3", "--resume"]) == 2
    assert "would shorten it" in capsys.readouterr().err
    assert main([*parae, "steps=6", "optimizer.lr=0.01", "--resume"]) == 2
    assert "differs in optimizer" in capsys.readouterr().err
    assert _folder_bytes(run) == before
    # more steps extend it: steps 5 and 6 follow the cosine schedule of 6 steps
    assert main([*parae, "steps=6", "--resume"]) == 0
    assert "extended from 4 to 6 steps" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    optim, schedule = OptimConfig(lr=1e-3), ScheduleConfig(name="cosine")
    assert [row["lr"] for row in rows[:4]] == pytest.approx([learning_rate(s, optim, schedule, 4) for s in range(4)])
    assert [row["lr"] for row in rows[4:]] == pytest.approx([learning_rate(s, optim, schedule, 6) for s in (4, 5)])
    summary = json.loads((run / "config.json").read_text())["summary"]
    assert json.loads((run / "recipe.json").read_text())["steps"] == 6 and summary["steps"] == 6
    segments = summary["segments"]
    assert [(s["from"], s["to"], s["planned"]) for s in segments] == [(0, 4, 4), (4, 6, 6)]
    assert segments[0]["final"]["nll"] == pytest.approx(rows[3]["nll"])
    assert segments[1]["final"]["nll"] == pytest.approx(rows[5]["nll"])
    assert summary["total_seconds"] == pytest.approx(segments[0]["seconds"] + segments[1]["seconds"])


def test_a_failed_start_binds_nothing_even_under_resume(tmp_path, capsys):
    run = tmp_path / "run"
    parae = ["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE, "steps=1"]
    # a typo under model.* names the known settings and the closest one
    assert main([*parae, "model.partitons=4"]) == 2
    err = capsys.readouterr().err
    assert "'partitons' is not a setting of parae (did you mean 'partitions'?)" in err and "ridge" in err
    assert main([*parae, "model.tasks.crosspoint.x=1"]) == 2
    assert "'tasks' is not a setting of parae" in capsys.readouterr().err
    # a start that wrote its recipe but no checkpoint (killed before step 1) binds nothing
    run.mkdir(exist_ok=True)  # the failed starts above made it
    (run / "recipe.json").write_text(json.dumps({**load_recipe("parae_cpu"), "batch_size": 64}))
    assert main([*parae, "--resume"]) == 0
    assert json.loads((run / "recipe.json").read_text())["batch_size"] == 8


def test_parae_with_the_dgcnn_pointwise_network(tmp_path):
    run = tmp_path / "dg"
    rc = main(["pretrain", "--recipe", "parae_dgcnn", "--out", str(run), "steps=2", "batch_size=4", "num_workers=0",
               "model.backbone_config.k=8", "model.backbone_config.emb_dims=32", "model.partitions=8",
               "data_options.points=128",
               "data_options.builtin={train: 2, test: 1}"])
    assert rc == 0
    assert all(np.isfinite(json.loads(line)["nll"]) for line in (run / "metrics.jsonl").read_text().splitlines())
    report = tmp_path / "svm.json"
    assert main(["evaluate", "linear-svm", "--data", "builtin:train=2,test=1", "--checkpoint", str(run), "--points",
                 "128", "--C", "1", "--quiet", "--no-cache", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["backbone"] == "dgcnn-seg" and result["feature_dim"] == 32


def test_pretrain_crosspoint_on_the_builtin_shapes(tmp_path):
    run = tmp_path / "cp"
    rc = main(["pretrain", "--recipe", str(CONFIGS / "crosspoint_cpu.yaml"), "--out", str(run), "steps=2",
               "batch_size=8", "num_workers=0", "model.backbone_config={emb_dims: 32, widths: [16]}",
               "model.hidden_dim=16", "model.projection_dim=8", "data_options.points=128",
               "data_options.image_size=32", "data_options.builtin={train: 2, test: 1}",
               "data_options.builtin_store={views: 2, image_size: 32, faces: 64}"])
    assert rc == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and lines[-1]["loss"] == pytest.approx(lines[-1]["imid"] + lines[-1]["cmid"], rel=1e-5)
    weights = load_file(str(run / "backbone.safetensors"))
    assert not any(k.startswith(("point_head", "image")) for k in weights)  # the point backbone alone


def test_crosspoint_refuses_data_without_images(tmp_path, capsys):
    npz = tmp_path / "clouds.npz"
    from tests_helpers import write_two_class_npz

    write_two_class_npz(npz)
    rc = main(["pretrain", "--recipe", str(CONFIGS / "crosspoint_cpu.yaml"), "--out", str(tmp_path / "r"),
               f"data={npz}", "steps=1"])
    assert rc == 2 and "needs images" in capsys.readouterr().err


def _pretrain_process(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "pretext3d.cli", "pretrain", "--recipe", str(CONFIGS / "parae_cpu.yaml"),
           "--out", str(out), "steps=60", "checkpoint_every=8", "log_every=1", "data_options.points=256",
           *TINY_PARAE, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_resume_gives_bit_identical_weights(tmp_path):
    straight = _pretrain_process(tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    run = tmp_path / "killed"
    victim = _pretrain_process(run)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len(lines) >= 11:  # past the checkpoint at step 8, mid-way to the one at 16
            break
        time.sleep(0.005)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert not (run / "backbone.safetensors").exists()

    resumed = _pretrain_process(run, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from step" in err
    for name in ("backbone.safetensors", "checkpoints/step-0000060/model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))
    # config.json keeps both segments: the killed one up to its checkpoint, and the resumed one
    segments = json.loads((run / "config.json").read_text())["summary"]["segments"]
    assert segments[0]["from"] == 0 and segments[0]["to"] in (8, 16)  # the checkpoint it resumed from
    assert segments[1]["from"] == segments[0]["to"] and segments[1]["to"] == 60
    assert all(s["seconds"] > 0 and np.isfinite(s["final"]["nll"]) for s in segments)
