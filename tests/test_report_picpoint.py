"""`pretext3d report` of a Pic@Point run: the point-to-region similarity (known answers), the
choice of the point, and the heatmap section of a tiny run's page (absent for other methods,
a note when the run's store is gone)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest
import torch

from pretext3d.cli import main
from pretext3d.report.picpoint import (SECTION_TITLE, choose_point, picpoint_section, region_similarity,
                                       upsample_regions, uses_picpoint)

DATA = "builtin:seed=0,train=4,test=3"
TINY_PICPOINT = [
    "steps=4", "batch_size=8", "num_workers=0", "amp=false", "log_every=1", "model.backbone_config={k: 8, emb_dims: 32}",
    "model.embed_dim=32", "model.local_samples=32", "data_options.points=128", "data_options.image_size=64",
    "data_options.builtin={train: 2, test: 1}", "data_options.builtin_store={views: 4, image_size: 64, faces: 64}",
]
TINY_PARAE = [
    "model.backbone_config={encoder_widths: [16, 32], decoder_widths: [32], skip_layer: 0, pooling: max}",
    "model.partitions=8", "data_options.points=128", "data_options.builtin={train: 2, test: 1}",
    "batch_size=8", "amp=false", "steps=2", "log_every=1", "num_workers=0",
]
REPORT = ["--data", DATA, "--points", "128", "--queries", "2", "--top-k", "3", "--tsne-objects", "20", "--quiet"]


# --- the computation on hand-made cases ----------------------------------------------------------


def test_the_region_along_the_query_is_the_most_similar():
    """Keys: region 5 is 3 q (same direction, another length), the others random; cos_5 = 1, it
    is the maximum, and p = exp(cos / t) / sum exp(cos / t)."""
    g = torch.Generator().manual_seed(0)
    query = torch.randn(16, generator=g)
    keys = torch.randn(9, 16, generator=g)
    keys[5] = 3 * query
    sim = region_similarity(query, keys, temperature=0.1)
    assert sim.cosine.shape == sim.softmax.shape == (9,)
    assert int(sim.cosine.argmax()) == 5 and int(sim.softmax.argmax()) == 5
    torch.testing.assert_close(sim.cosine[5], torch.tensor(1.0))
    cosine = torch.stack([torch.dot(query, k) / (query.norm() * k.norm()) for k in keys])
    torch.testing.assert_close(sim.cosine, cosine)
    expected = torch.exp(cosine / 0.1) / torch.exp(cosine / 0.1).sum()
    torch.testing.assert_close(sim.softmax, expected)
    batched = region_similarity(torch.stack([query, -query]), torch.stack([keys, keys]), 0.1)
    assert batched.cosine.shape == (2, 9) and int(batched.cosine[1].argmin()) == 5  # -q: region 5 is the least similar
    with pytest.raises(ValueError):
        region_similarity(query, keys[:, :8], 0.1)


def test_two_orthogonal_regions_at_temperature_one():
    """q = e1 against keys e1, e2, -e1, e2 (a 2x2 grid): cos = 1, 0, -1, 0 and, at t = 1,
    p = (e, 1, 1/e, 1) / (e + 2 + 1/e)."""
    eye = torch.eye(2)
    sim = region_similarity(eye[0], torch.stack([eye[0], eye[1], -eye[0], eye[1]]), temperature=1.0)
    torch.testing.assert_close(sim.cosine, torch.tensor([1.0, 0.0, -1.0, 0.0]))
    total = math.e + 2 + 1 / math.e
    torch.testing.assert_close(sim.softmax, torch.tensor([math.e, 1, 1 / math.e, 1]) / total)


def test_upsampling_keeps_each_region_over_its_pixels():
    """A one-hot region (row 1, column 2 of a 3x3 grid) upsampled to 33x33 is 1 at the centre of
    its block (rows and columns 11 pixels each), 0 two regions away; a constant map stays so."""
    values = torch.zeros(9)
    values[1 * 3 + 2] = 1.0
    image = upsample_regions(values, 3, (33, 33))
    assert image.shape == (33, 33)
    row, col = divmod(int(image.argmax()), 33)
    assert (row, col) == (16, 27) and image[16, 27] == 1.0
    assert image[:, :11].max() == 0.0 and image[16, 11:22].max() < 0.5
    torch.testing.assert_close(upsample_regions(torch.full((2, 4), 0.5), 2, (8, 8)), torch.full((2, 8, 8), 0.5))


def test_the_point_is_the_visible_one_on_the_object_farthest_from_the_centroid():
    cloud = torch.tensor([[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 0.2, 0]])
    centres = torch.tensor([[0.9, 0, 0], [0.5, 0, 0], [0.0, 2.0, 0], [0.3, 0, 0]])
    pixels = torch.tensor([[1.5, 1.5], [0.5, 0.5], [3.5, 3.5], [2.5, 2.5]])  # (column, row)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # centre 2 lands off the object
    usable = torch.tensor([True, True, True, True])
    assert choose_point(centres, usable, pixels, mask, cloud) == 0  # centre 2 is farther but off the mask
    assert choose_point(centres, torch.tensor([False, True, True, True]), pixels, mask, cloud) == 1
    assert choose_point(centres, torch.tensor([False, False, True, False]), pixels, mask, cloud) == 2  # no other
    assert choose_point(centres, torch.zeros(4, dtype=torch.bool), pixels, mask, cloud) is None


def test_which_recipes_get_the_section():
    assert uses_picpoint({"method": "picpoint"})
    assert uses_picpoint({"method": "compose", "model": {"tasks": {"parae": {}, "picpoint": {}}}})
    assert not uses_picpoint({"method": "parae"}) and not uses_picpoint(None)
    assert not uses_picpoint({"method": "compose", "model": {"tasks": {"crosspoint": {}}}})


# --- a tiny run's page ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def picpoint_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_picpoint")
    run = root / "pp"
    assert main(["pretrain", "--recipe", "picpoint_cpu", "--out", str(run), *TINY_PICPOINT]) == 0
    page = root / "page.html"
    assert main(["report", str(run), "--out", str(page), "--cache-dir", str(root / "cache"), *REPORT]) == 0
    return run, page


def test_the_page_shows_the_heatmaps(picpoint_page):
    run, page = picpoint_page
    files = page.with_name("page_files")
    record = json.loads((files / "report.json").read_text())
    heat = record["figures"]["picpoint"]
    assert heat["figure"] == "picpoint_heatmaps.png"
    assert (files / heat["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert heat["store"] == str(run / "builtin-store") and heat["split"] == "test"
    assert heat["grid"] == 2 and heat["image_size"] == 64 and heat["chance"] == 0.25  # ResNet-18 on 64 px: a 2x2 map
    assert len(heat["objects"]) == 3 and len({o["class"] for o in heat["objects"]}) == 3
    for row in heat["objects"]:
        assert 0 <= row["region"] < 4 and 0 <= row["most_similar"] < 4 and 1 <= row["rank"] <= 4
        assert all(0 <= p < 64 for p in row["pixel"]) and 0 < row["softmax_own"] < 1
        assert row["cosine_own"] <= row["cosine_max"] + 1e-6 and row["visible_centres"] > 0
    assert 0 <= heat["own_region_top1"] <= 1
    text = page.read_text()
    assert f"<h2>{SECTION_TITLE.replace(chr(39), '&#x27;')}</h2>" in text
    assert text.count('src="data:image/png;base64,') == 4 and 'alt="Pic@Point point-to-region heatmaps"' in text
    assert "the most similar region is the own one for" in text


def test_the_same_objects_and_points_again(picpoint_page, tmp_path):
    run, page = picpoint_page
    recipe = json.loads((run / "recipe.json").read_text())
    _, again = picpoint_section(run, recipe, tmp_path, seed=0)
    shown = json.loads((page.with_name("page_files") / "report.json").read_text())["figures"]["picpoint"]
    assert again == shown  # same objects, views, points and numbers: nothing random is left
    _, other = picpoint_section(run, recipe, tmp_path, seed=1)
    assert [o["object"] for o in other["objects"]] != [o["object"] for o in shown["objects"]]


def test_a_missing_store_is_a_note_not_a_crash(picpoint_page, tmp_path):
    run, _ = picpoint_page
    moved = tmp_path / "pp"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("builtin-store"))
    recipe = json.loads((moved / "recipe.json").read_text())
    content, record = picpoint_section(moved, recipe, tmp_path, seed=0)
    assert "figure" not in record and "store is not readable" in record["note"]
    assert str(moved / "builtin-store") in content and "<img" not in content


def test_other_methods_get_no_heatmaps(tmp_path):
    run = tmp_path / "parae"
    assert main(["pretrain", "--recipe", "parae_cpu", "--out", str(run), *TINY_PARAE]) == 0
    page = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(page), "--cache-dir", str(tmp_path / "cache"), *REPORT]) == 0
    record = json.loads((tmp_path / "page_files" / "report.json").read_text())
    assert "picpoint" not in record["figures"] and "parae" in record["figures"]
    assert "Pic@Point" not in page.read_text() and not (tmp_path / "page_files" / "picpoint_heatmaps.png").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium) for the browser check")
def test_the_page_loads_in_a_headless_browser(picpoint_page):
    _, page = picpoint_page
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-images="4/4"' in body.group(0) and 'data-errors="0"' in body.group(0)
