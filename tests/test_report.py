"""`pretext3d report`: the page, its pictures and report.json for a tiny ParAE run; in a real
headless browser (Debian's chromium) the page loads with every image and no errors."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pretext3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAE = [
    "model.backbone_config={encoder_widths: [16, 32], decoder_widths: [32], skip_layer: 0, pooling: max}",
    "model.partitions=8", "data_options.points=128", "data_options.builtin={train: 4, test: 2}",
    "batch_size=8", "amp=false", "steps=4", "log_every=1", "num_workers=0",
]
DATA = "builtin:seed=0,train=4,test=3"


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    assert main(["pretrain", "--recipe", str(ROOT / "configs" / "parae_cpu.yaml"), "--out", str(run), *TINY_PARAE]) == 0
    (run / "eval").mkdir()
    assert main(["evaluate", "retrieval", "--data", DATA, "--checkpoint", str(run), "--points", "128", "--quiet",
                 "--cache-dir", str(root / "cache"), "--json", str(run / "eval" / "retrieval.json")]) == 0
    assert main(["evaluate", "linear-svm", "--data", DATA, "--checkpoint", str(run), "--preset", "crosspoint", "--quiet",
                 "--cache-dir", str(root / "cache"), "--json", str(run / "eval" / "svm_crosspoint.json")]) == 0
    page = root / "page.html"
    assert main(["report", str(run), "--out", str(page), "--data", DATA, "--points", "128", "--queries", "3",
                 "--top-k", "4", "--cache-dir", str(root / "cache"), "--quiet"]) == 0
    return page


def test_report_writes_the_page_pictures_and_json(report_page):
    files = report_page.with_name("page_files")
    record = json.loads((files / "report.json").read_text())
    assert set(record["figures"]) == {"training_curves", "tsne", "retrieval", "parae"}
    for name in ("training_curves.png", "tsne.png", "retrieval.png", "parae_gaussians.png"):
        assert (files / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(e["protocol"] for e in record["evaluations"]) == ["linear-svm", "retrieval"]
    assert record["figures"]["tsne"]["objects"] == 14 * 3
    rows = record["figures"]["retrieval"]["queries"]
    assert len(rows) == 3 and all(len(r["retrieved"]) == 4 and r["query"] not in r["retrieved"] for r in rows)
    assert len({r["class"] for r in rows}) == 3  # queries of distinct classes
    text = report_page.read_text()
    assert text.count('src="data:image/png;base64,') == 4 and "retrieval (retrieval.json)" in text
    assert "the test split without the query itself" in text  # the protocol's settings are shown
    assert "crosspoint: MohamedAfham/CrossPoint" in text and "nothing is selected on the test split" in text


def test_report_refuses_an_unfinished_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert "no backbone.safetensors" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium) for the browser check")
def test_report_page_loads_in_a_headless_browser(report_page, tmp_path):
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", report_page.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-images="4/4"' in body.group(0) and 'data-errors="0"' in body.group(0)
    assert "Uncaught" not in dom.stderr
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1300,3000", f"--screenshot={shot}", report_page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_retrieval_renders_use_the_up_axis_prepare_uses():
    from pretext3d.data.sources import default_up_axis

    assert default_up_axis("npz") == "z"  # ModelNet's convention, as `prepare` renders it
    assert default_up_axis("mesh_folder") == "y"  # OBJ / ShapeNet
    assert default_up_axis("npz", "y") == "y"  # what the reader knows wins


def test_the_headline_pairs_each_evaluation_with_its_floor():
    from pretext3d.report.compare import comparison_rows

    def svm(accuracy: float, random_init: bool, points: int = 1024) -> dict:
        return {"protocol": "linear-svm", "dataset": "d", "num_points": points, "accuracy": accuracy,
                "class_mean_accuracy": accuracy - 0.01, "weights": "random-init" if random_init else "run/backbone",
                "config": {"random_init": random_init}}

    fewshot = {"protocol": "fewshot", "dataset": "d", "num_points": 1024, "results": {"5-way 1-shot": {"accuracy": 0.7}},
               "config": {"random_init": False, "settings": [[5, 1]]}}
    rows = comparison_rows([("svm.json", svm(0.90, False)), ("floor.json", svm(0.85, True)),
                            ("other_points.json", svm(0.80, True, points=512)), ("fewshot.json", fewshot)])
    by_measure = {(r["protocol"], r["measure"]): r for r in rows}
    assert set(by_measure) == {("linear-svm", "accuracy"), ("linear-svm", "class mean accuracy"),
                               ("fewshot", "5-way 1-shot")}  # floors are not rows of their own
    assert by_measure[("linear-svm", "accuracy")]["gain"] == pytest.approx(0.05)  # the 1024-point floor, not 512
    assert by_measure[("fewshot", "5-way 1-shot")]["floor"] is None  # no floor with its settings


def test_a_store_run_shows_its_own_store_and_a_cross_modal_grid(tmp_path):
    from pretext3d.data.prepare import prepare
    from pretext3d.data.store import StoreSettings

    store = tmp_path / "store"
    prepare("builtin:train=2,test=2", store, StoreSettings(points=128, views=2, image_size=32, faces=64), workers=1,
            progress=False)
    run = tmp_path / "cp"
    assert main(["pretrain", "--recipe", "crosspoint_cpu", "--out", str(run), f"data={store}", "steps=1",
                 "batch_size=4", "data_options.points=128", "data_options.image_size=32",
                 "model.backbone_config={emb_dims: 32, widths: [16]}", "model.hidden_dim=16",
                 "model.projection_dim=8"]) == 0
    for random_init in (False, True):  # the run's retrieval and its floor, in the run folder
        weights = ["--random-init", "--like", str(run)] if random_init else ["--checkpoint", str(run)]
        assert main(["evaluate", "retrieval", "--data", str(store), *weights, "--points", "128", "--quiet",
                     "--no-cache", "--json", str(run / "eval" / f"retrieval{'_random_init' if random_init else ''}.json")]) == 0
    page = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(page), "--points", "128", "--queries", "2", "--top-k", "3",
                 "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads((tmp_path / "page_files" / "report.json").read_text())
    assert record["data"] == str(store)  # the run's own store, not the built-in shapes
    text = html.unescape(page.read_text())
    assert f"test split of {store}, the run's training data (store)" in text
    grid = record["figures"]["crossmodal"]
    assert len(grid["queries"]) == 2 and all(len(q["retrieved"]) == 3 for q in grid["queries"])
    assert (tmp_path / "page_files" / "retrieval_crossmodal.png").is_file()
    rows = {r["measure"]: r for r in record["comparison"]}
    assert rows["mAP"]["floor"] is not None and rows["mAP"]["gain"] == pytest.approx(rows["mAP"]["value"]
                                                                                        - rows["mAP"]["floor"])
    assert "Results against the random-init floor" in text
