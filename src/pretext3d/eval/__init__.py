"""Evaluation protocols on frozen features."""

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
