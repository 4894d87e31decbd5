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

Every part of every task is logged as "<task>.<part>". Within a step, a shared encoder called
by a second task with the very same inputs as an earlier call (the same tensors, unchanged,
and the same other arguments) returns the earlier call's output, autograd graph included
(``shared_passes``; ``shared_passes=False`` runs every task's passes): the loss and the
gradients are the same, each pass is paid once. (A random layer in a shared encoder, such as
the dropout of DGCNN's segmentation head, draws once for the shared pass instead of once per
task: another draw of the same distribution; and a shared pass updates BatchNorm's running
statistics once, where every task's pass moved them again towards the same batch.) Measured on the shipped ``compose_cpu`` at its
sizes (batch 16, 1024 points, 96 px; 2 cores; ``benchmarks/bench_compose.py``): 14.7 s a step
with every task's passes, 9.4 s shared (1.57x). Passes with different inputs still run
(CrossPoint's two views go through the backbone as one batch of 2B, whose BatchNorm statistics
differ from a batch of B: they cannot be shared without changing the loss). A task's other keys are its own
keyword arguments (temperature, heads, ...); ``backbone``/``image_encoder`` belong to the top.
ParAE's point-wise logits come from the shared backbone, so it must be point-wise (e.g.
``dgcnn-seg`` or ``pointnext-seg`` with ``num_outputs`` = the partitions).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from pretext3d.models import backbone_module, image_encoder_module
from pretext3d.pretext.base import (METHODS, DataNeeds, MethodSettingsError, PretextMethod, register_method,
                                    settings_problem)

__all__ = ["Composed", "task_classes", "shared_passes"]

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
                 image_weights: str | None = None, image_lr_scale: float = 1.0, shared_passes: bool = True):
        super().__init__()
        self.shared_passes = shared_passes
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
        encoders = (self.backbone, self.image_encoder) if self.shared_passes else ()
        with shared_passes(*encoders):
            return self._tasks_forward(batch)

    def _tasks_forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
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


_UNSHARED = object()  # an argument that makes a call unshareable


def _identity(value: Any) -> Any:
    """What makes two arguments the same input: a tensor's memory (data pointer, shape, strides,
    dtype, device) and its version counter (bumped by any in-place change); plain values by
    value; anything else is never shared."""
    if isinstance(value, Tensor):
        return ("tensor", value.data_ptr(), tuple(value.shape), value.stride(), value.dtype, value.device,
                value._version, value.requires_grad)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _UNSHARED


@contextmanager
def shared_passes(*modules: nn.Module | None) -> Iterator[dict[str, int]]:
    """Within the block, a call of one of ``modules`` with the same inputs (``_identity``), the
    same grad mode and the same train/eval mode as an earlier call returns that call's output
    object instead of running again; yields {"runs", "reused"} counts. The inputs of every call
    are kept alive until the block ends, so no later tensor can take their memory and pass for
    them. The modules' own ``forward`` is restored on exit (the state dict is untouched)."""
    counts = {"runs": 0, "reused": 0}
    cache: dict[tuple, tuple[tuple, Any]] = {}
    patched: list[nn.Module] = []

    def memoized(module: nn.Module, original: Callable) -> Callable:
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            identities = tuple(_identity(v) for v in bound.arguments.values())
            key = (id(module), torch.is_grad_enabled(), module.training, identities)
            if _UNSHARED in identities:
                counts["runs"] += 1
                return original(*args, **kwargs)
            if key in cache:
                counts["reused"] += 1
                return cache[key][1]
            counts["runs"] += 1
            out = original(*args, **kwargs)
            cache[key] = (tuple(bound.arguments.values()), out)
            return out

        return forward

    for module in dict.fromkeys(m for m in modules if m is not None):
        if "forward" in vars(module):
            continue  # already shared by an enclosing block
        module.forward = memoized(module, module.forward)
        patched.append(module)
    try:
        yield counts
    finally:
        for module in patched:
            del module.forward
        cache.clear()


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
