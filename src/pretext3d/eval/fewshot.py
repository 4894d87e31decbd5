"""Few-shot classification on frozen features: N-way K-shot episodes and a linear SVM each.

An episode draws N classes, K support objects of each from the TRAIN split and Q query objects
of each from the TEST split (the default: support and query never come from the same split, so
no object is both), or, with ``query_split="train"`` (CrossPoint's released script), from the
train objects of those classes that are not in the support. It fits a linear SVM on the support
features (standardised with the support set's statistics when ``standardize``) and scores it
on the queries. C is given, or chosen by cross-validation on the support set of that episode
(never on queries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from pretext3d.eval.linear_svm import fit_linear_svm
from pretext3d.eval.presets import format_preset, preset_record
from pretext3d.eval.protocols import (
    FeatureConfig, config_record, feature_report, format_feature_header, format_skipped, iter_split_features, mean_std,
    prepare_feature_config, skipped_items,
)

__all__ = ["format_fewshot", "Episode", "FewShotConfig", "sample_episodes", "run_episode", "run_fewshot"]

FEWSHOT_C_GRID = (0.01, 0.1, 1.0)


QUERY_SPLITS = ("test", "train")


@dataclass(frozen=True)
class Episode:
    """classes: (N,) class ids; support: (N*K,) rows of the train split, class-major;
    query: (N*Q,) rows of ``query_split``, class-major (never a support row)."""

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    query_split: str = "test"


def sample_episodes(train_labels: np.ndarray, test_labels: np.ndarray, ways: int, shots: int, queries: int,
                    runs: int, seed: int, query_split: str = "test") -> list[Episode]:
    """``runs`` episodes, each seeded by (seed, run) so that run r is the same whatever ``runs`` is.

    Only classes with at least ``shots`` train and ``queries`` test objects (``query_split=
    "train"``: ``shots + queries`` train objects) can be drawn.
    """
    if query_split not in QUERY_SPLITS:
        raise ValueError(f"query_split must be one of {', '.join(QUERY_SPLITS)}, got {query_split!r}")
    from_train = query_split == "train"
    eligible = [c for c in np.unique(train_labels)
                if (train_labels == c).sum() >= shots + (queries if from_train else 0)
                and (from_train or (test_labels == c).sum() >= queries)]
    if len(eligible) < ways:
        need = f"{shots + queries} train objects" if from_train else f"{shots} train and {queries} test objects"
        raise ValueError(f"{ways}-way {shots}-shot with {queries} queries per class needs {ways} classes with at "
                         f"least {need}; this data has {len(eligible)}")
    episodes = []
    for run in range(runs):
        rng = np.random.default_rng([seed, run])
        classes = rng.choice(eligible, size=ways, replace=False)
        support = [rng.choice(np.flatnonzero(train_labels == c), shots, replace=False) for c in classes]
        if from_train:
            query = [rng.choice(np.setdiff1d(np.flatnonzero(train_labels == c), chosen), queries, replace=False)
                     for c, chosen in zip(classes, support)]
        else:
            query = [rng.choice(np.flatnonzero(test_labels == c), queries, replace=False) for c in classes]
        episodes.append(Episode(np.asarray(classes), np.concatenate(support), np.concatenate(query), query_split))
    return episodes


def run_episode(episode: Episode, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                C: float | None, C_grid: Sequence[float], folds: int, seed: int,
                standardize: bool = False) -> dict[str, Any]:
    """Fit a linear SVM on the episode's support features and score its queries.

    train_x: (S, D) / train_y: (S,) the train split's features and labels; test_x / test_y the
    test split's (queries come from the split the episode names). Labels are renumbered
    0..N-1 in the order of ``episode.classes``. standardize: features scaled with the support
    set's mean and std.
    """
    query_x, query_labels = (train_x, train_y) if episode.query_split == "train" else (test_x, test_y)
    relabel = {int(c): i for i, c in enumerate(episode.classes)}
    support_y = np.array([relabel[int(c)] for c in train_y[episode.support]])
    query_y = np.array([relabel[int(c)] for c in query_labels[episode.query]])
    result = fit_linear_svm(train_x[episode.support], support_y, query_x[episode.query], query_y,
                            C, C_grid, folds, "svc", standardize, seed)
    return {"accuracy": result.accuracy, "C": result.C}


@dataclass
class FewShotConfig(FeatureConfig):
    ways: int = 5
    shots: int = 10
    queries: int = 20
    runs: int = 10
    C: float | None = None
    C_grid: tuple[float, ...] = FEWSHOT_C_GRID
    folds: int = 3
    settings: list[tuple[int, int]] = field(default_factory=list)  # (ways, shots) pairs; empty: (ways, shots)
    query_split: str = "test"
    standardize: bool = False
    preset: str | None = None  # a published protocol's settings (eval/presets.py), applied by apply_preset


def run_fewshot(cfg: FewShotConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (ways, shots) setting x ``runs`` episodes per seed; mean +- std over all episodes."""
    cfg = prepare_feature_config(cfg)
    settings = [tuple(s) for s in cfg.settings] or [(cfg.ways, cfg.shots)]
    extracted, results = [], {f"{w}-way {k}-shot": [] for w, k in settings}
    start = time.perf_counter()
    for sf in iter_split_features(cfg):
        extracted.append(sf)
        for ways, shots in settings:
            episodes = sample_episodes(sf.train.labels, sf.test.labels, ways, shots, cfg.queries, cfg.runs, sf.seed,
                                       cfg.query_split)
            for run, episode in enumerate(episodes):
                outcome = run_episode(episode, sf.train.features, sf.train.labels, sf.test.features, sf.test.labels,
                                      cfg.C, cfg.C_grid, min(cfg.folds, shots), sf.seed, cfg.standardize)
                results[f"{ways}-way {shots}-shot"].append({"seed": sf.seed, "run": run, **outcome,
                                                            "classes": episode.classes.tolist()})
            accs = [r["accuracy"] for r in results[f"{ways}-way {shots}-shot"] if r["seed"] == sf.seed]
            log(f"seed {sf.seed}: {ways}-way {shots}-shot {100 * np.mean(accs):.2f}% over {len(accs)} episodes")
    summary = {}
    for name, rows in results.items():
        mean, std = mean_std([r["accuracy"] for r in rows])
        summary[name] = {"accuracy": mean, "accuracy_std": std, "episodes": len(rows)}
    return {
        **feature_report(cfg, "fewshot", extracted),
        "results": summary,
        "queries_per_class": cfg.queries,
        "runs_per_seed": cfg.runs,
        "support_split": "train",
        "query_split": cfg.query_split,
        "episode_sampling": _episode_sampling(cfg.query_split),
        "classifier": "sklearn SVC(kernel='linear') on the support features"
                      f"{' standardised with the support statistics' if cfg.standardize else ''}, labels renumbered per episode",
        "standardize": cfg.standardize,
        "preset": preset_record("fewshot", cfg.preset),
        "C_selection": f"given: {cfg.C:g}" if cfg.C is not None else
                       f"per episode, stratified min({cfg.folds}, K)-fold CV on the support set over {list(cfg.C_grid)} "
                       "(ties -> smaller C)",
        "std_over": "all episodes of all seeds (population of episodes, n-1 denominator)",
        "episodes": results,
        "skipped": skipped_items(extracted),
        "seconds": time.perf_counter() - start,
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _episode_sampling(query_split: str) -> str:
    if query_split == "train":
        return ("classes drawn among those with >= K + Q train objects; support: K train objects per class, queries: "
                "Q other train objects per class, without replacement; episode r of seed s drawn from numpy "
                "default_rng([s, r])")
    return ("classes drawn among those with >= K train and >= Q test objects; support: K train objects per class, "
            "queries: Q test objects per class, without replacement; episode r of seed s drawn from numpy "
            "default_rng([s, r])")


def format_fewshot(report: dict) -> str:
    lines = format_feature_header(report, "few-shot")
    lines += [f"  episodes        {report['runs_per_seed']} per setting and seed (seeds {' '.join(map(str, report['seeds']))}), "
              f"support from {report['support_split']}, {report['queries_per_class']} queries per class from {report['query_split']}",
              f"  C               {report['C_selection']}"]
    for name, res in report["results"].items():
        lines.append(f"  {name:15s} {100 * res['accuracy']:.2f}% +- {100 * res['accuracy_std']:.2f}  ({res['episodes']} episodes)")
    return "\n".join(lines + format_preset(report.get("preset")) + format_skipped(report))
