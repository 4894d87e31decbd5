"""The main job end to end on the built-in data (``make demo``): the random-init floor, then each
chosen method's CPU recipe on the same built-in training split, every backbone scored with the
same linear-SVM protocol; a table of accuracy and gain over the floor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pretext3d.data.builtin import builtin_spec
from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm
from pretext3d.pretraining import pretrain
from pretext3d.shipped import DEMO_METHODS
from pretext3d.utils.io import atomic_write_json

__all__ = ["DEMO_METHODS", "DemoConfig", "run_demo", "format_demo"]


@dataclass
class DemoConfig:
    out: str = "demo_out"  # runs, evaluation reports and the feature cache (a finished run is reused)
    methods: list[str] = field(default_factory=lambda: ["parae", "crosspoint"])
    steps: int = 120  # pretraining steps per method
    train: int = 40  # built-in objects per class for training
    test: int = 10  # built-in objects per class for testing
    points: int = 1024
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    overrides: list[str] = field(default_factory=list)  # recipe overrides for every method


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> str:
    """Run the demo; returns its table (``format_demo``). Evaluation reports go to ``cfg.out``."""
    unknown = [m for m in cfg.methods if m not in DEMO_METHODS]
    if unknown or not cfg.methods:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or 'none given'}; known: {', '.join(DEMO_METHODS)}")
    out = Path(cfg.out)
    data = builtin_spec(cfg.seed, cfg.train, cfg.test)
    start = time.perf_counter()
    common = dict(data=data, num_points=cfg.points, seeds=[cfg.seed], device=cfg.device, cache_dir=str(out / "cache"),
                  progress=cfg.progress)
    log("[demo] random-init PointNet: BN calibrated on the training clouds, linear SVM")
    floor = run_linear_svm(LinearSVMConfig(backbone="pointnet", random_init=True, bn_calibration_clouds=10 * cfg.train,
                                           **common), log=log)
    atomic_write_json(out / "linear_svm_random_init.json", floor)
    rows: list[tuple[str, dict, dict | None]] = [("random init (BN cal.)", floor, None)]
    for method in cfg.methods:
        run = out / f"pretrain_{method}"
        overrides = [f"steps={cfg.steps}", f"seed={cfg.seed}", f"device={cfg.device}", f"data_options.points={cfg.points}",
                     f"data_options.builtin={{train: {cfg.train}, test: {cfg.test}, seed: {cfg.seed}}}", *cfg.overrides]
        log(f"[demo] pretraining with {method} ({DEMO_METHODS[method]}, {cfg.steps} steps) into {run}")
        summary = pretrain(DEMO_METHODS[method], run, overrides, resume=(run / "recipe.json").exists(), log=log)
        report = run_linear_svm(LinearSVMConfig(backbone=None, checkpoint=str(run), **common), log=log)
        atomic_write_json(out / f"linear_svm_{method}.json", report)
        rows.append((f"{method} {cfg.steps} steps", report, summary))
    return format_demo(rows, time.perf_counter() - start, out)


def format_demo(rows: list[tuple[str, dict, dict | None]], seconds: float, out: Path) -> str:
    first = rows[0][1]
    floor = first["accuracy"]
    lines = [
        f"pretext3d demo - built-in data: {first['num_classes']} classes, {first['train_size']} train / "
        f"{first['test_size']} test objects, {first['num_points']} points; linear SVM on frozen features",
        f"{'weights':26s}{'backbone':20s}{'accuracy':>10s}{'gain':>8s}{'class mean':>12s}{'C':>8s}{'dim':>6s}{'train s':>9s}",
    ]
    for name, report, summary in rows:
        gain = "" if summary is None else f"{100 * (report['accuracy'] - floor):+.1f}"
        trained = "" if summary is None else f"{summary['seconds']:.0f}"
        lines.append(f"{name:26s}{report['backbone']:20s}{100 * report['accuracy']:9.1f}%{gain:>8s}"
                     f"{100 * report['class_mean_accuracy']:11.1f}%{report['C']:8g}{report['feature_dim']:6d}{trained:>9s}")
    lines.append(f"total {seconds:.0f} s; runs and reports in {out}/")
    return "\n".join(lines)
