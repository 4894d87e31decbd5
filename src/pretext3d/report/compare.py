"""The report's headline: every evaluation of the run beside its random-init floor, with the gain.

An evaluation report has a few main numbers (``main_scores``: accuracy, mAP, mIoU, ... by
name). A floor is a report of the same protocol whose weights are a random initialisation
(``random-init``, e.g. ``--random-init --like RUN``); it is paired with the run's report of the
same protocol when the settings that change the number agree (``pairing_key``: data, its
selection, points, views, space, modalities, few-shot settings, preset). Gains are in
percentage points.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["main_scores", "is_floor", "pairing_key", "comparison_rows"]

# settings that must agree for a floor to be the floor of a run's evaluation
_PAIRING = ("protocol", "dataset", "data_selection", "subset", "num_points", "sampling", "space", "views", "pool",
            "image_size", "gallery", "metric", "test_area", "features", "task", "label_fractions")


def main_scores(report: dict) -> dict[str, float]:
    """The report's main numbers (fractions), by name."""
    protocol, results = report.get("protocol"), report.get("results")
    if protocol == "linear-svm" and "accuracy" in report:
        return {"accuracy": report["accuracy"], "class mean accuracy": report["class_mean_accuracy"]}
    if protocol == "fewshot":
        return {name: r["accuracy"] for name, r in results.items()}
    if protocol == "retrieval" and "space" in report:
        return {f"{pair} mAP": r["mAP"] for pair, r in results.items()}
    if protocol == "retrieval":
        return {name: r["mean"] for name, r in results.items() if name == "mAP" or name.startswith("top_")}
    if protocol in ("modality-svm", "linear-svm"):
        return {f"{r['name']} accuracy": r["accuracy"] for r in results}
    if protocol == "multiview":
        return {f"{r['views']} view(s) accuracy": r["accuracy"] for r in results}
    if protocol == "pretext":
        return {f"{name} accuracy": r["accuracy"] for name, r in results.items()}
    if protocol in ("finetune-cls", "partseg", "semseg"):
        key = {"finetune-cls": "accuracy", "partseg": "instance_miou", "semseg": "miou"}[protocol]
        return {f"{100 * run['fraction']:g}% labels, {run['mode']}: {key.replace('_', ' ')}": run["test"][key]
                for run in report.get("runs", [])}
    return {}


def is_floor(report: dict) -> bool:
    """Whether the report scores a random initialisation."""
    config = report.get("config") or {}
    return bool(config.get("random_init")) or report.get("weights") == "random-init"


def pairing_key(report: dict) -> str:
    """What must agree between a run's evaluation and its floor (as one comparable string)."""
    config = report.get("config") or {}
    values = {name: report.get(name, config.get(name)) for name in _PAIRING}
    values["modalities"] = config.get("modalities")
    values["settings"] = config.get("settings")
    values["preset"] = (report.get("preset") or {}).get("name") if isinstance(report.get("preset"), dict) else None
    return json.dumps(values, sort_keys=True, default=str)


def comparison_rows(evaluations: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """One row per main number of every evaluation of the run (not the floors): protocol,
    measure, the run's value, the floor's value and the gain (None where no floor matches)."""
    floors: dict[str, dict] = {}
    for _, report in evaluations:
        if is_floor(report):
            floors.setdefault(pairing_key(report), report)
    rows = []
    for name, report in evaluations:
        if is_floor(report):
            continue
        floor = floors.get(pairing_key(report))
        floor_scores = main_scores(floor) if floor else {}
        for measure, value in main_scores(report).items():
            base = floor_scores.get(measure)
            rows.append({"file": name, "protocol": report["protocol"], "measure": measure, "value": float(value),
                         "floor": None if base is None else float(base),
                         "gain": None if base is None else float(value) - float(base)})
    return rows
