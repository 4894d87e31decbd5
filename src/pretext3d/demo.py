"""The main job end to end on the built-in data (``make demo``): pretrain each chosen method's CPU
recipe on the built-in training shapes, score every backbone and its random-init floor (the same
architecture, random weights, BatchNorm statistics calibrated on the training clouds) with the
same three protocols on frozen features, print a table with the gains and write each run's
report page.

The protocols, and why these: on the built-in shapes a linear SVM that sees every label is
near its ceiling (random features already score about 96%), so it shows little of what
pretraining adds. Where labels are scarce and where the feature geometry itself is used, it shows:

* linear SVM, every training label (the field's standard protocol; near its ceiling here);
* few-shot, 14-way 1-shot: a linear SVM (C = 1) on one labelled object per class, scored on
  the test objects; the same seeded episodes for every set of weights (a paired comparison);
* retrieval: every test object queries the others by cosine distance; mAP over same-class items.

Every evaluation report is written into its run folder (``RUN/eval/<protocol>.json`` and
``RUN/eval/<protocol>_random_init.json``), where ``pretext3d report`` finds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pretext3d.data.builtin import builtin_spec
from pretext3d.eval.fewshot import FewShotConfig, run_fewshot
from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm
from pretext3d.eval.retrieval import RetrievalConfig, run_retrieval
from pretext3d.pretraining import pretrain
from pretext3d.report.compare import main_scores
from pretext3d.shipped import DEMO_METHODS
from pretext3d.utils.io import atomic_write_json

__all__ = ["DEMO_METHODS", "DemoConfig", "DEMO_PROTOCOLS", "run_demo", "format_demo"]

# protocol -> (the table's column, the report's main number shown: ``report.compare.main_scores``)
DEMO_PROTOCOLS: dict[str, tuple[str, str]] = {
    "linear_svm": ("linear SVM, all labels", "accuracy"),
    "fewshot": ("few-shot 14-way 1-shot", "14-way 1-shot"),
    "retrieval": ("retrieval", "mAP"),
}


@dataclass
class DemoConfig:
    out: str = "demo_out"  # one run folder per method, with its evaluations and report (a finished run is reused)
    methods: list[str] = field(default_factory=lambda: ["parae", "crosspoint"])
    steps: int = 100  # pretraining steps per method
    train: int = 40  # built-in objects per class for training
    test: int = 10  # built-in objects per class for testing
    points: int = 256  # points per cloud, in training and evaluation
    image_size: int = 32  # side of the views an image method trains on (rendered at 64 pixels, 4 per object)
    episodes: int = 50  # few-shot episodes
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    report: bool = True  # write RUN/report.html for every run
    overrides: list[str] = field(default_factory=list)  # recipe overrides for every method


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> str:
    """Run the demo; returns its table (``format_demo``)."""
    unknown = [m for m in cfg.methods if m not in DEMO_METHODS]
    if unknown or not cfg.methods:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or 'none given'}; known: {', '.join(DEMO_METHODS)}")
    out = Path(cfg.out)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for number, method in enumerate(cfg.methods, start=1):
        run = out / f"pretrain_{method}"
        log(f"[demo {number}/{len(cfg.methods)}] pretraining with {method} ({DEMO_METHODS[method]}, {cfg.steps} steps, "
            f"{cfg.points} points) into {run}")
        summary = pretrain(DEMO_METHODS[method], run, _overrides(cfg), resume=(run / "recipe.json").exists(), log=log)
        for random_init in (True, False):
            what = "its random-init floor" if random_init else "the pretrained backbone"
            log(f"[demo {number}/{len(cfg.methods)}] scoring {what}: linear SVM, few-shot, retrieval")
            scores = _evaluate(cfg, run, random_init, log)
            rows.append({"method": method, "random_init": random_init, "scores": scores,
                         "seconds": None if random_init else summary.get("total_seconds", summary.get("seconds"))})
        if cfg.report:
            _report(cfg, run, log)
    return format_demo(rows, time.perf_counter() - start, out, cfg)


def _overrides(cfg: DemoConfig) -> list[str]:
    """The recipe overrides of every demo run: its length, data, points, views (4 of 64 pixels
    per object, fed at ``image_size``: images are the costly part of an image method's step on
    a CPU) and the small machine's settings (data loaded in the main process)."""
    return [f"steps={cfg.steps}", f"seed={cfg.seed}", f"device={cfg.device}", f"data_options.points={cfg.points}",
            f"data_options.builtin={{train: {cfg.train}, test: {cfg.test}, seed: {cfg.seed}}}", "num_workers=0",
            "data_options.builtin_store={views: 4, image_size: 64, faces: 256}",
            f"data_options.image_size={cfg.image_size}", *cfg.overrides]


def _evaluate(cfg: DemoConfig, run: Path, random_init: bool, log: Callable[[str], None]) -> dict[str, dict]:
    """The three protocols on the run's backbone (or its random-init floor); each report is
    written to RUN/eval/."""
    weights: dict[str, Any] = ({"random_init": True, "like": str(run), "backbone": None, "bn_calibration_clouds":
                                10 * cfg.train} if random_init else {"checkpoint": str(run), "backbone": None})
    common = dict(data=builtin_spec(cfg.seed, cfg.train, cfg.test), num_points=cfg.points, seeds=[cfg.seed],
                  device=cfg.device, cache_dir=str(Path(cfg.out) / "cache"), progress=cfg.progress, **weights)
    quiet = (lambda message: None) if not cfg.progress else log
    reports = {
        "linear_svm": run_linear_svm(LinearSVMConfig(**common), log=quiet),
        "fewshot": run_fewshot(FewShotConfig(**common, settings=[(14, 1)], queries=cfg.test, runs=cfg.episodes, C=1.0),
                               log=quiet),
        "retrieval": run_retrieval(RetrievalConfig(**common), log=quiet),
    }
    suffix = "_random_init" if random_init else ""
    for protocol, report in reports.items():
        atomic_write_json(run / "eval" / f"{protocol}{suffix}.json", report)
    return {protocol: {"score": float(main_scores(report)[DEMO_PROTOCOLS[protocol][1]]), "report": report}
            for protocol, report in reports.items()}


def _report(cfg: DemoConfig, run: Path, log: Callable[[str], None]) -> None:
    from pretext3d.report import ReportConfig, make_report

    page = run / "report.html"
    log(f"[demo] writing the report page {page}")
    make_report(ReportConfig(run=str(run), out=str(page), num_points=cfg.points, seed=cfg.seed, device=cfg.device,
                             cache_dir=str(Path(cfg.out) / "cache"), progress=cfg.progress),
                log=log if cfg.progress else (lambda message: None))


def format_demo(rows: list[dict[str, Any]], seconds: float, out: Path, cfg: DemoConfig) -> str:
    """The table: per method its floor and its pretrained backbone, each protocol's score and
    the gain over the floor (percentage points)."""
    first = rows[0]["scores"]["linear_svm"]["report"]
    columns = list(DEMO_PROTOCOLS)
    lines = [
        f"pretext3d demo - built-in shapes: {first['num_classes']} classes, {first['train_size']} train / "
        f"{first['test_size']} test objects, {first['num_points']} points; frozen features, the same protocols for "
        "every set of weights",
        f"{'weights':30s}" + "".join(f"{DEMO_PROTOCOLS[c][0]:>26s}" for c in columns) + f"{'train s':>9s}",
    ]
    floors: dict[str, dict[str, float]] = {}
    for row in rows:
        scores = {c: row["scores"][c]["score"] for c in columns}
        if row["random_init"]:
            floors[row["method"]] = scores
            name = f"random init ({row['method']} arch.)"
            cells = [f"{100 * scores[c]:.1f}%" for c in columns]
        else:
            name = f"{row['method']} {cfg.steps} steps"
            floor = floors[row["method"]]
            cells = [f"{100 * scores[c]:.1f}% ({100 * (scores[c] - floor[c]):+.1f})" for c in columns]
        trained = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(f"{name:30s}" + "".join(f"{cell:>26s}" for cell in cells) + f"{trained:>9s}")
    lines += [
        f"few-shot: mean over the same {cfg.episodes} seeded episodes for every set of weights (C = 1); retrieval: mAP of "
        "every test object querying the others (cosine distance); gains in percentage points over the floor",
        f"total {seconds:.0f} s; runs, their evaluations (RUN/eval/) and report pages (RUN/report.html) in {out}/",
    ]
    return "\n".join(lines)
