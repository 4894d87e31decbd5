"""Evaluation protocols: frozen features (linear SVM, few-shot, retrieval), a prepared store's
modalities (multi-view, cross-modal retrieval, pretext metrics) and fine-tuning (classification,
part and semantic segmentation). Each protocol's config is made of the shared option groups
(``options``) and its own settings; trained weights are reached through ``pretext3d.runs`` only.
The names below load their submodule on first use (``utils.lazy``): light parts such as
``eval.presets`` import without torch."""

from pretext3d.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "pretext3d.eval.features": ("Features", "calibrate_batchnorm", "extract_features"),
    "pretext3d.eval.linear_svm": ("SVMResult", "fit_linear_svm"),
    "pretext3d.eval.protocols": ("LinearSVMConfig", "run_linear_svm"),
})
