"""Evaluation protocols: frozen features (linear SVM, few-shot, retrieval), a prepared store's
modalities (multi-view, cross-modal retrieval, pretext metrics) and fine-tuning (classification,
part and semantic segmentation). Each protocol's config is made of the shared option groups
(``options``) and its own settings; trained weights are reached through ``pretext3d.runs`` only."""

from pretext3d.eval.features import Features, calibrate_batchnorm, extract_features
from pretext3d.eval.linear_svm import SVMResult, fit_linear_svm
from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm

__all__ = [
    "Features",
    "LinearSVMConfig",
    "SVMResult",
    "calibrate_batchnorm",
    "extract_features",
    "fit_linear_svm",
    "run_linear_svm",
]
