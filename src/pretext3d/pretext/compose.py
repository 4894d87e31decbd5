"""Several pretext tasks trained together on shared encoders (none of the papers does this).

A composed recipe names one point backbone and one image encoder; every task gets those same
modules (and keeps its own heads), so their gradients add up on the shared weights::

    method: compose
    model:
      backbone: dgcnn
      backbone_config: {k: 20, emb_dims: 1024}
      image_encoder: resnet18
      tasks:
        crosspoint: {parts: {imid: 1.0}}          # CrossPoint's IMID only
        picpoint: {parts: {local: 1.0}, local_samples: 128}
        parae: {weight: 0.5}                     # ParAE's whole loss, halved

With task outputs o_t (each a dict of scalar parts, "loss" the task's own total):

    L = sum_t sum_{p in parts_t} w_tp * o_t[p]      (parts_t defaults to {"loss": weight_t})

Every part of every task is logged as "<task>.<part>". Each task runs its own passes of the
same batch through the shared encoders, so a step costs about the sum of the tasks' steps
(measured: CrossPoint + Pic@Point + ParAE on PointNet + ResNet-18, 0.22 steps/s on 2 cores
against about 0.7 for Pic@Point alone). A task's other keys are its own
keyword arguments (temperature, heads, ...); ``backbone``/``image_encoder`` belong to the top.
ParAE's point-wise logits come from the shared backbone, so it must be point-wise (e.g.
``dgcnn-seg`` or ``pointnext-seg`` with ``num_outputs`` = the partitions).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from pretext3d.models import backbone_module, image_encoder_module
from pretext3d.pretext.base import (METHODS, DataNeeds, MethodSettingsError, PretextMethod, register_method,
                                    settings_problem)

__all__ = ["Composed", "task_classes"]

SHARED_KEYS = ("backbone", "backbone_config", "image_encoder", "image_weights")


def task_classes() -> dict[str, type[PretextMethod]]:
    """Every registered method that can be a task (all but compositions)."""
    return {name: cls for name, cls in METHODS.items() if not issubclass(cls, Composed)}


@register_method
class Composed(PretextMethod):
    """A batch with what every task needs -> {"loss", "<task>.<part>", ...}.

    tasks: {method name: {"weight": w} or {"parts": {part: w}}, plus the method's kwargs};
    backbone / backbone_config / image_encoder / image_weights: the shared encoders;
    image_lr_scale: the image encoder's learning rate relative to the rest.
    """

    name = "compose"

    @classmethod
    def data_needs(cls, settings: Mapping[str, Any]) -> DataNeeds:
        """The union of its tasks' needs."""
        tasks = settings.get("tasks") or {}
        if not isinstance(tasks, dict) or not tasks:
            raise MethodSettingsError("method compose needs model.tasks: {method name: settings, ...}")
        classes = task_classes()
        needs = [classes[name].data_needs(dict(spec or {})) for name, spec in tasks.items() if name in classes]
        if not needs:
            raise MethodSettingsError(f"unknown task(s) {', '.join(tasks)}; known: {', '.join(classes)}")
        union = needs[0]
        for other in needs[1:]:
            union = union.union(other)
        return union

    def __init__(self, tasks: dict[str, dict[str, Any]], backbone: str = "dgcnn",
                 backbone_config: dict[str, Any] | None = None, image_encoder: str = "resnet18",
                 image_weights: str | None = None, image_lr_scale: float = 1.0):
        super().__init__()
        classes = task_classes()
        if not tasks or not isinstance(tasks, dict):
            raise ValueError(f"tasks must map method names ({', '.join(classes)}) to settings, got {tasks!r}")
        unknown = [t for t in tasks if t not in classes]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(classes)}")
        self.backbone_name, self.backbone_config = backbone, dict(backbone_config or {})
        self.backbone = backbone_module(backbone, self.backbone_config)
        uses_images = self.data_needs({"tasks": tasks}).images
        self.image_encoder = image_encoder_module(image_encoder, image_weights) if uses_images else None
        self.image_lr_scale = image_lr_scale
        self.tasks = nn.ModuleDict()
        self.weights: dict[str, dict[str, float]] = {}
        for name, spec in tasks.items():
            settings = dict(spec or {})
            self.weights[name] = _part_weights(name, settings)
            clash = [k for k in SHARED_KEYS if k in settings]
            if clash:
                raise ValueError(f"task {name}: {', '.join(clash)} are shared: set them next to tasks, not in a task")
            shared: dict[str, Any] = {"backbone": self.backbone}
            if classes[name].data_needs(settings).images:
                shared["image_encoder"] = self.image_encoder
            problem = settings_problem(classes[name], name, settings)
            if problem:
                raise ValueError(f"task {name}: {problem}")
            try:
                self.tasks[name] = classes[name](**settings, **shared)
            except TypeError as err:
                raise ValueError(f"task {name}: {err}") from None

    def task_methods(self) -> dict[str, PretextMethod]:
        return dict(self.tasks.items())

    def pair_classifier(self) -> nn.Module | None:
        """The pair classifier of the first task that has one."""
        return next((c for c in (t.pair_classifier() for t in self.tasks.values()) if c is not None), None)

    def param_groups(self) -> list[dict]:
        """The image encoder at ``image_lr_scale`` of the rate; everything else at the rate."""
        image = set(map(id, self.image_encoder.parameters())) if self.image_encoder is not None else set()
        return [{"params": [p for p in self.parameters() if id(p) not in image], "lr_scale": 1.0},
                {"params": [p for p in self.parameters() if id(p) in image], "lr_scale": self.image_lr_scale}]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        total: Tensor | None = None
        logged: dict[str, Tensor] = {}
        for name, task in self.tasks.items():
            outputs = task(batch)
            for part, weight in self.weights[name].items():
                if part not in outputs:
                    raise ValueError(f"task {name} has no part {part!r}; it gives {', '.join(outputs)}")
                term = weight * outputs[part]
                total = term if total is None else total + term
            logged.update({f"{name}.{k}": v.detach() for k, v in outputs.items() if v.dim() == 0})
        assert total is not None  # tasks is not empty
        return {"loss": total, **logged}


def _part_weights(name: str, settings: dict[str, Any]) -> dict[str, float]:
    """Pops "weight"/"parts" from a task's settings -> {part: weight}."""
    weight, parts = settings.pop("weight", None), settings.pop("parts", None)
    if weight is not None and parts is not None:
        raise ValueError(f"task {name}: give weight (the whole loss) or parts, not both")
    if parts is None:
        return {"loss": float(1.0 if weight is None else weight)}
    if not isinstance(parts, dict) or not parts:
        raise ValueError(f"task {name}: parts must map part names to weights, got {parts!r}")
    return {str(k): float(v) for k, v in parts.items()}
