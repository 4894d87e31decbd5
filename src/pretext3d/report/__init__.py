"""``pretext3d report RUN_DIR``: one self-contained HTML page about a pretrained run.

The page holds: the run (method, backbone, steps, time), a headline table of every evaluation
beside its random-init floor with the gain (``report.compare``), the result tables of every
evaluation JSON found in the run folder (``RUN/*.json``, ``RUN/eval/*.json`` with a "protocol")
or given, each with its protocol settings; the training curves (metrics.jsonl); a t-SNE of the
backbone's test-split features coloured by class; retrieval grids (queries and their top-k,
rendered), and for a method with a space shared by points and images a cross-modal grid (point
queries, the rendered views they find: ``report.crossmodal``); for
ParAE, the fitted Gaussians as ellipsoids over the points; for Pic@Point, heatmaps of one point's
similarity to the regions of a rendered view (``report.picpoint``). Pictures are embedded (base64)
and also written as PNGs next to the page, with ``report.json``: everything the page shows.
The page checks itself on load: ``<body data-images="loaded/total" data-errors="n">``.
Everything about the run (its recipe, training record, method and backbone) is read through
``pretext3d.runs``. The figures show the run's own data (its store or dataset; the built-in
shapes it trained on) unless ``--data`` says otherwise, and the page says which.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pretext3d.report.compare import comparison_rows
from pretext3d.report.figures import embedded_image
from pretext3d.runs import evaluation_files, read_run, recipe_tasks
from pretext3d.utils.io import atomic_write_json, atomic_write_text

__all__ = ["ReportConfig", "make_report", "find_evaluations"]


@dataclass
class ReportConfig:
    run: str
    out: str
    data: str | None = None  # dataset or store for t-SNE and retrieval; default: the run's own training data
    evaluations: list[str] = field(default_factory=list)
    num_points: int = 1024
    tsne_objects: int = 1500
    queries: int = 5
    top_k: int = 10
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    progress: bool = True


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def find_evaluations(run: Path, extra: Sequence[str | Path] = ()) -> list[tuple[Path, dict]]:
    """Evaluation reports (JSON objects with a "protocol") in RUN/ and RUN/eval/, and ``extra``."""
    given = [Path(e) for e in extra]
    found = []
    for path in [*evaluation_files(run), *given]:
        report = _read_json(path)
        if report is not None and "protocol" in report:
            found.append((path, report))
        elif path in given:
            raise ValueError(f"{path}: not a pretext3d evaluation report (no 'protocol')")
    return found


# --- what each protocol's table shows -------------------------------------------------------


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.2f}%"


def _headline(report: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of a report's main numbers."""
    protocol = report["protocol"]
    if protocol == "linear-svm":
        std = f" +- {100 * report['accuracy_std']:.2f}" if len(report.get("seeds", [])) > 1 else ""
        return [("accuracy", _pct(report["accuracy"]) + std), ("class mean accuracy", _pct(report["class_mean_accuracy"])),
                ("C", f"{report['C']:g}")]
    if protocol == "fewshot":
        return [(name, f"{_pct(r['accuracy'])} +- {100 * r['accuracy_std']:.2f} ({r['episodes']} episodes)")
                for name, r in report["results"].items()]
    if protocol == "retrieval" and "space" in report:  # within and across a store's modalities
        return [(name, f"mAP {_pct(r['mAP'])}, top-1 {_pct(r['top_k'].get('1'))}"
                 + (f", instance top-1 {_pct(r['instance']['top_k'].get('1'))}" if "instance" in r else ""))
                for name, r in report["results"].items()]
    if protocol == "retrieval":
        return [(name, _pct(r["mean"])) for name, r in report["results"].items()]
    if protocol == "modality-svm":
        return [(f"{r['name']} ({r['feature_dim']}-d)", f"{_pct(r['accuracy'])} (class mean "
                 f"{_pct(r['class_mean_accuracy'])}, C={r['C']:g})") for r in report["results"]]
    if protocol == "multiview":
        return [(f"{r['views']} view(s), {report['pool']}-pooled", f"{_pct(r['accuracy'])} (class mean "
                 f"{_pct(r['class_mean_accuracy'])}, C={r['C']:g})") for r in report["results"]]
    if protocol == "pretext":
        return [(name, f"accuracy {_pct(r['accuracy'])}" + (
            f"; distance positive {r['positive_distance']['mean']:.3f} +- {r['positive_distance']['std']:.3f}, "
            f"negative {r['negative_distance']['mean']:.3f} +- {r['negative_distance']['std']:.3f}"
            if "positive_distance" in r else "")) for name, r in report["results"].items()]
    if protocol == "semseg":
        return [(f"{100 * run['fraction']:g}% rooms, {run['mode']}",
                 f"mIoU {_pct(run['test']['miou'])}, overall accuracy {_pct(run['test']['overall_accuracy'])} "
                 f"({_steps_text(run)})") for run in report["runs"]]
    if protocol in ("finetune-cls", "partseg"):
        key = "accuracy" if protocol == "finetune-cls" else "instance_miou"
        rows = []
        for run in report["runs"]:
            extra = "" if protocol == "finetune-cls" else f", class mIoU {_pct(run['test']['class_miou'])}"
            rows.append((f"{100 * run['fraction']:g}% labels, {run['mode']}",
                         f"{key} {_pct(run['test'][key])}{extra} ({_steps_text(run)})"))
        return rows
    return [(k, str(v)) for k, v in report.items() if isinstance(v, (int, float))][:8]


def _steps_text(run: dict) -> str:
    """How long a fine-tuning run trained and which weights were tested; a warning when the run
    was forced through with too few steps to mean much."""
    selected = run["selected"]
    which = "the final weights" if "rule" in selected else f"best val at step {selected['step']}"
    warning = "; too few steps to mean much" if run.get("too_few_steps") else ""
    return f"{run['steps']} steps, {which}{warning}"


_SETTING_KEYS = ("dataset", "backbone", "weights", "num_points", "sampling", "feature_dim", "seeds", "C_selection",
                 "bn_calibration", "support_split", "query_split", "queries_per_class", "episode_sampling", "gallery",
                 "metric", "validation", "label_fractions", "augmentation", "train_size", "test_size", "val_size",
                 "space", "views", "image_size", "pool", "view_choice", "classifier", "pairs", "threshold_fit",
                 "test_area", "features", "voting", "selection", "data_selection", "queries")


def _text(value: Any) -> str:
    """A setting as words: mappings as "key: value; ...", lists joined by commas."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items() if v not in (None, "", [], {}))
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _settings(report: dict) -> list[tuple[str, str]]:
    rows = [(k.replace("_", " "), _text(report[k])) for k in _SETTING_KEYS if report.get(k) not in (None, "", [])]
    preset = report.get("preset")
    if preset:  # a published protocol's settings, and what of that code is not reproduced
        settings = ", ".join(f"{k}={v}" for k, v in preset["settings"].items())
        rows.insert(0, ("preset", f"{preset['name']}: {preset['source']} ({settings}); not reproduced: "
                                  + "; ".join(preset["not_reproduced"])))
    return rows


# --- figures from the backbone ----------------------------------------------------------------


def _report_data(cfg: ReportConfig, run: Path, recipe: dict | None) -> tuple[str, str]:
    """(the data the figures show, what it is in words): ``--data``; else the run's own training
    data (its store or dataset; for the built-in shapes the store prepared in the run folder, or
    the same built-in split); the built-in shapes when the run's data cannot be read here."""
    from pretext3d.data.builtin import builtin_spec
    from pretext3d.data.datasets import point_format
    from pretext3d.data.errors import DataFormatError
    from pretext3d.runs import training_store

    if cfg.data:
        return cfg.data, f"{cfg.data} (given with --data)"
    candidate = (recipe or {}).get("data")
    if candidate:
        try:
            return str(candidate), f"{candidate}, the run's training data ({point_format(candidate)})"
        except DataFormatError as err:
            fallback = builtin_spec()
            return fallback, (f"the built-in shapes ({fallback}): the run's training data cannot be read here ({err})")
    store = training_store(run, recipe or {})
    if (store / "store.json").is_file() and (store / "index.json").is_file():
        return str(store), f"{store}, the built-in shapes the run trained on, prepared with their rendered views"
    options = ((recipe or {}).get("data_options") or {}).get("builtin") or {}
    spec = builtin_spec(int(options.get("seed", 0)), int(options.get("train", 40)), int(options.get("test", 10)))
    return spec, f"{spec}, the built-in shapes the run trained on"


def _test_features(cfg: ReportConfig, data: str):
    from pretext3d.eval.protocols import FeatureConfig, iter_split_features, prepare_feature_config

    feature_cfg = prepare_feature_config(FeatureConfig(data=data, backbone=None, checkpoint=cfg.run, num_points=cfg.num_points,
                                                       seeds=[cfg.seed], device=cfg.device, cache_dir=cfg.cache_dir,
                                                       progress=cfg.progress))
    return next(iter(iter_split_features(feature_cfg)))


def _tsne(features, labels, classes, cfg: ReportConfig, folder: Path, title: str) -> dict:
    from pretext3d.report.figures import tsne_embedding, tsne_figure

    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(features), min(cfg.tsne_objects, len(features)), replace=False))
    embedding = tsne_embedding(features[pick], cfg.seed)
    path = tsne_figure(embedding, labels[pick], classes, folder / "tsne.png", title)
    return {"figure": path.name, "objects": int(len(pick)), "method": "PCA to 50 dims, then sklearn TSNE (init pca)"}


def _retrieval_grid(split_features, cfg: ReportConfig, folder: Path) -> dict:
    from pretext3d.data.sources import default_up_axis
    from pretext3d.eval.metrics import pairwise_distances
    from pretext3d.report.figures import render_cloud, retrieval_grid

    test = split_features.test
    dataset = split_features.splits["test"]
    up = default_up_axis(split_features.fmt, dataset.up_axis)  # as `prepare` renders the same data
    rng = np.random.default_rng(cfg.seed + 1)
    classes = rng.permutation(np.unique(test.labels))[: cfg.queries]
    queries = [int(rng.choice(np.flatnonzero(test.labels == c))) for c in classes]
    renders, marks, captions, rows = [], [], [], []
    for q in queries:
        dist = pairwise_distances(test.features[q:q + 1], test.features, "cosine")[0]
        dist[q] = np.inf  # the query is not in its own ranking
        ranked = np.argsort(dist, kind="stable")[: cfg.top_k]
        rows_ids = [q, *ranked.tolist()]
        clouds = [dataset[int(test.indices[i])]["points"] for i in rows_ids]
        renders.append([render_cloud(c, up) for c in clouds])
        marks.append([bool(test.labels[i] == test.labels[q]) for i in ranked])
        names = [dataset.classes[int(test.labels[i])] for i in rows_ids]
        captions.append([names[0], *[("+ " if same else "- ") + name for same, name in zip(marks[-1], names[1:])]])
        rows.append({"query": dataset.names[int(test.indices[q])], "class": names[0],
                     "retrieved": [dataset.names[int(test.indices[i])] for i in ranked], "retrieved_classes": names[1:],
                     "cosine_distance": [float(dist[i]) for i in ranked]})
    path = retrieval_grid(renders, marks, captions, folder / "retrieval.png")
    return {"figure": path.name, "queries": rows, "gallery": "the other test objects", "metric": "cosine"}


def _parae_figure(split_features, cfg: ReportConfig, folder: Path, count: int = 3) -> dict | None:
    """ParAE's partitions and Gaussians for a few test clouds, when the backbone is point-wise."""
    import torch

    from pretext3d.losses import gmm_params
    from pretext3d.report.figures import gaussians_figure

    model, dataset = split_features.model.eval(), split_features.splits["test"]
    rng = np.random.default_rng(cfg.seed + 2)
    rows = rng.choice(len(dataset), min(count, len(dataset)), replace=False)
    clouds, parts, pis, mus, sigmas, titles = [], [], [], [], [], []
    for row in rows:
        item = dataset[int(row)]
        points = torch.from_numpy(item["points"])[None].to(split_features.device)
        with torch.no_grad():
            logits = model(points).point_logits
        if logits is None:
            return None
        points, logits = points.cpu(), logits.cpu()
        pi, mu, sigma = gmm_params(points, logits, ridge=1e-4)
        clouds.append(item["points"])
        parts.append(logits[0].argmax(-1).numpy())
        pis.append(pi[0].numpy())
        mus.append(mu[0].numpy())
        sigmas.append(sigma[0].numpy())
        titles.append(f"{dataset.classes[item['label']]} ({dataset.names[int(row)]})")
    path = gaussians_figure(clouds, parts, pis, mus, sigmas, titles, folder / "parae_gaussians.png",
                            min_weight=0.5 / pis[0].shape[0])
    return {"figure": path.name, "clouds": titles, "shown": "Gaussians with pi_j > 1/(2J), 1-sigma ellipsoids"}


def _crossmodal(cfg: ReportConfig, run: Path, recipe: dict | None, data: str, folder: Path, device: Any,
                log: Callable[[str], None]) -> dict | None:
    """The cross-modal grid when the run has a space shared by points and images and the data
    shown is a prepared store (its rendered views); None otherwise."""
    from pretext3d.data.datasets import is_store
    from pretext3d.report.crossmodal import crossmodal_grid

    if not is_store(data):
        return None
    return crossmodal_grid(run, recipe, Path(data), folder, cfg.queries, cfg.top_k, cfg.seed, device, cfg.cache_dir,
                           cfg.progress, log)


def _is_parae(recipe: dict | None) -> bool:
    return "parae" in recipe_tasks(recipe)


# --- the page ---------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .settings td { color: #555; font-size: .9em; max-width: 900px; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; font-size: .9em; }
td.up { color: #0072B2; font-weight: 600; } td.down { color: #D55E00; font-weight: 600; }
"""

_SELF_CHECK = """
window.__reportErrors = [];
window.addEventListener('error', function (e) { window.__reportErrors.push(String(e.message || e.type)); }, true);
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', loaded + '/' + images.length);
  document.body.setAttribute('data-errors', String(window.__reportErrors.length));
});
"""


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    """The headline: protocol, measure, run, floor, gain (percentage points)."""
    head = "".join(f"<th>{name}</th>" for name in ("protocol", "measure", "this run", "random-init floor", "gain"))
    body = []
    for row in rows:
        gain = "" if row["gain"] is None else f"{100 * row['gain']:+.2f}"
        css = "" if not row["gain"] else (' class="up"' if row["gain"] > 0 else ' class="down"')
        body.append(f"<tr><td>{html.escape(row['protocol'])}</td><td>{html.escape(row['measure'])}</td>"
                    f"<td>{_pct(row['value'])}</td><td>{_pct(row['floor']) or 'no floor report'}</td>"
                    f"<td{css}>{gain}</td></tr>")
    note = ('<p class="note">Gains in percentage points. A floor is an evaluation of the same protocol and settings with '
            "random weights of the run's architecture (<code>--random-init --like RUN</code>), kept in the run folder.</p>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{note}"


def _table(rows: Sequence[tuple[str, str]], header: tuple[str, str] | None = None, css: str = "") -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows)
    return f'<table class="{css}">{head}{body}</table>'


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script>{_SELF_CHECK}</script></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def make_report(cfg: ReportConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the page, its PNGs and report.json; returns what report.json holds."""
    run = Path(cfg.run)
    record_of_run = read_run(run)
    if not record_of_run.finished:
        raise ValueError(f"{run}: not a finished pretext3d pretrain run (no backbone.safetensors)")
    out = Path(cfg.out)
    folder = out.with_name(out.stem + "_files")
    folder.mkdir(parents=True, exist_ok=True)
    config, recipe, metrics_rows = record_of_run.config, record_of_run.recipe, record_of_run.metrics
    evaluations = find_evaluations(run, cfg.evaluations)
    summary = config.get("summary", {})
    paper = bool((recipe or {}).get("paper_setting"))
    seconds = summary.get("total_seconds", summary.get("seconds", 0)) or 0
    run_rows = [("run", str(run)), ("method", str((recipe or {}).get("method", "?"))),
                ("paper's setting", "yes (a paper recipe run as the paper specifies)" if paper else
                 "no: a reduction or a variant of the paper's setting (see `pretext3d recipes show`)"),
                ("backbone", f"{config.get('backbone')} ({_text(config.get('backbone_config') or {})})"),
                ("steps", str(summary.get("steps", ""))), ("training time", f"{seconds:.0f} s"
                 + (f" in {len(summary['segments'])} segments" if len(summary.get("segments") or []) > 1 else "")),
                ("final loss parts", _text({k: round(v, 4) for k, v in (summary.get("final") or {}).items()}))]
    sections = [("Run", _table(run_rows))]
    record: dict[str, Any] = {"run": str(run), "recipe": recipe, "summary": summary, "evaluations": [], "figures": {}}
    comparison = comparison_rows([(str(path.name), report) for path, report in evaluations])
    if comparison:
        sections.append(("Results against the random-init floor", _comparison_table(comparison)))
    record["comparison"] = comparison
    for path, report in evaluations:
        headline = _headline(report)
        content = _table(headline, ("measure", "value")) + _table(_settings(report), css="settings")
        sections.append((f"{report['protocol']} ({path.name})", content))
        record["evaluations"].append({"file": str(path), "protocol": report["protocol"], "headline": headline})
    if not evaluations:
        sections.append(("Results", '<p class="note">No evaluation reports in the run folder: run '
                         "<code>pretext3d evaluate PROTOCOL ... --json RUN/eval/NAME.json</code>.</p>"))
    from pretext3d.report.figures import training_curves

    curves = training_curves(metrics_rows, folder / "training_curves.png") if metrics_rows else None
    if curves:
        sections.append(("Training curves", embedded_image(folder, curves.name, "training curves")))
        record["figures"]["training_curves"] = curves.name
    data, data_text = _report_data(cfg, run, recipe)
    sections.insert(1, ("Data shown", f"<p>The figures below show the test split of {html.escape(data_text)}.</p>"))
    log(f"[report] embedding the test split of {data_text}")
    split_features = _test_features(cfg, data)
    test = split_features.test
    classes = split_features.splits["test"].classes
    log(f"[report] t-SNE of {min(cfg.tsne_objects, len(test.features))} test objects")
    tsne = _tsne(test.features, test.labels, classes, cfg, folder, f"t-SNE of {config.get('backbone')} features, {data} test")
    sections.append(("t-SNE of the test features", embedded_image(folder, tsne["figure"], "t-SNE")
                     + f'<p class="note">{tsne["objects"]} objects; {tsne["method"]}; colour = class.</p>'))
    record["figures"]["tsne"] = tsne
    log("[report] retrieval grid")
    grid = _retrieval_grid(split_features, cfg, folder)
    sections.append(("Retrieval", embedded_image(folder, grid["figure"], "retrieval grid")
                     + f'<p class="note">Each row: a test query (black frame) and its {cfg.top_k} nearest other test objects '
                     'by cosine distance of the global features; blue frame and "+" = same class, orange frame and "-" = '
                     "other class.</p>"))
    record["figures"]["retrieval"] = grid
    crossmodal = _crossmodal(cfg, run, recipe, data, folder, split_features.device, log)
    if crossmodal:
        sections.append(("Cross-modal retrieval: point clouds find rendered views",
                         embedded_image(folder, crossmodal["figure"], "cross-modal retrieval grid")
                         + f'<p class="note">Each row: a test point cloud (black frame) and the rendered views of its '
                         f"{cfg.top_k} nearest test objects in the run's shared space (cosine distance; views mean-pooled); "
                         'blue frame and "+" = same class, orange frame and "-" = other class.</p>'))
        record["figures"]["crossmodal"] = crossmodal
    if _is_parae(recipe):
        log("[report] ParAE Gaussians")
        gauss = _parae_figure(split_features, cfg, folder)
        if gauss:
            sections.append(("ParAE partitions and Gaussians", embedded_image(folder, gauss["figure"], "ParAE Gaussians")
                             + f'<p class="note">Points coloured by their most likely partition; {gauss["shown"]}.</p>'))
            record["figures"]["parae"] = gauss
    from pretext3d.report.picpoint import SECTION_TITLE, picpoint_section, uses_picpoint

    if uses_picpoint(recipe):
        log("[report] Pic@Point point-to-region heatmaps")
        content, heat = picpoint_section(run, recipe, folder, cfg.seed, split_features.device)
        sections.append((SECTION_TITLE, content))
        record["figures"]["picpoint"] = heat
    record.update({"data": data, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "page": str(out)})
    atomic_write_json(folder / "report.json", record)
    atomic_write_text(out, _page(f"pretext3d report: {run.name}", sections))
    log(f"[report] wrote {out} (pictures and report.json in {folder})")
    return record
