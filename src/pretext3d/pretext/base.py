"""What a pretext method is, and the registry of methods by name.

A method is an ``nn.Module`` subclass of ``PretextMethod`` registered with ``register_method``.
It declares everything the rest of the library asks of it, so that adding a method touches no
other file:

* ``name``: its recipe name (``method: <name>``);
* ``data_needs(settings)``: what its batches must hold (``DataNeeds``), from its recipe
  settings where they matter (e.g. MIMS's modalities);
* ``modality_encoders()``: its encoder per modality ("points", "image", "mesh");
* ``shared_heads()``: per modality, the attribute path of the head into the space its loss
  aligns across modalities (empty: no shared space);
* ``pair_classifier()``: a module judging (image, cloud) pairs as the same object, if any;
* ``task_methods()``: the registered methods it is made of (itself; a composition its tasks);
* ``backbone``, ``backbone_name``, ``backbone_config``: the exported point (or mesh) network,
  written by ``export_backbone`` (the trainer calls it at the end of a run);
* optionally ``param_groups()``: per-group learning-rate scales;
* ``paper_setting_problems(settings)``: what a run needs before it may call itself the paper's
  setting (a recipe with ``paper_setting: true`` is refused before any work otherwise).

``forward(batch)`` returns ``{"loss": scalar, <part>: scalar, ...}``.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Mapping, TypeVar

from torch import nn

from pretext3d.models.checkpoint import ExportsBackbone
from pretext3d.utils.names import closest_hint

__all__ = ["DataNeeds", "PretextMethod", "METHODS", "register_method", "method_class", "build_method", "settings_problem",
           "MethodSettingsError"]


@dataclass(frozen=True)
class DataNeeds:
    """What a method's training batches hold: rendered images (``views`` per object), meshes,
    and ``point_views`` augmented copies of each cloud. Images or meshes need a prepared store."""

    images: bool = False
    point_views: int = 1
    views: int = 1
    mesh: bool = False

    def union(self, other: "DataNeeds") -> "DataNeeds":
        """What two methods trained on one batch need together."""
        return DataNeeds(self.images or other.images, max(self.point_views, other.point_views),
                         max(self.views, other.views), self.mesh or other.mesh)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MethodSettingsError(ValueError):
    """A method's settings (a recipe's ``model``) do not fit it; the message says which."""


class PretextMethod(ExportsBackbone, nn.Module):
    """The base of every pretext method (see the module docstring for what a method declares)."""

    name: ClassVar[str] = ""
    needs: ClassVar[DataNeeds] = DataNeeds()

    @classmethod
    def data_needs(cls, settings: Mapping[str, Any]) -> DataNeeds:
        """What the training data must hold for this method built with ``settings``."""
        return cls.needs

    @classmethod
    def paper_setting_problems(cls, settings: Mapping[str, Any]) -> list[str]:
        """What keeps ``settings`` from being the paper's setting although a paper recipe claims
        it (each a sentence saying what is needed); empty by default."""
        return []

    def modality_encoders(self) -> dict[str, nn.Module]:
        """Modality -> encoder: the point backbone and, when the method has one, the image encoder."""
        found = {"points": getattr(self, "backbone", None), "image": getattr(self, "image_encoder", None)}
        return {m: module for m, module in found.items() if isinstance(module, nn.Module)}

    def shared_heads(self) -> dict[str, str]:
        """Modality -> attribute path of its head into the shared space (none by default)."""
        return {}

    def shared_space(self) -> dict[str, nn.Module]:
        """Modality -> the head module of ``shared_heads``."""
        return {m: _attribute(self, path) for m, path in self.shared_heads().items()}

    def pair_classifier(self) -> nn.Module | None:
        """A module mapping [image feature; cloud feature] to 2 logits (1: the same object)."""
        return None

    def task_methods(self) -> dict[str, "PretextMethod"]:
        """The registered methods this one is made of, by name (itself)."""
        return {self.name: self}


def _attribute(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[part] if isinstance(module, nn.ModuleDict) else getattr(module, part)
    return module


METHODS: dict[str, type[PretextMethod]] = {}
Method = TypeVar("Method", bound=type[PretextMethod])


def register_method(cls: Method) -> Method:
    """Class decorator: make ``cls`` available to recipes as ``method: <cls.name>``."""
    if not (isinstance(cls, type) and issubclass(cls, PretextMethod)):
        raise TypeError(f"{cls!r} is not a PretextMethod subclass")
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"{cls.__name__} needs a class attribute name (its recipe name)")
    if METHODS.get(cls.name, cls) is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[PretextMethod]:
    """The registered class of method ``name``."""
    if name not in METHODS:
        raise MethodSettingsError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def settings_problem(cls: type, name: str, settings: Mapping[str, Any]) -> str | None:
    """What is wrong with ``settings`` as keyword arguments of ``cls`` (the method ``name``): the
    first unknown key with the closest known one and the list of known ones; None when all are known."""
    parameters = inspect.signature(cls.__init__).parameters
    known = [p for p in parameters if p != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    unknown = [key for key in settings if key not in known]
    if not unknown:
        return None
    return f"{unknown[0]!r} is not a setting of {name}{closest_hint(unknown[0], known)}; its settings: {', '.join(known)}"


def build_method(name: str, settings: Mapping[str, Any] | None = None) -> PretextMethod:
    """Method ``name`` built with ``settings`` (a recipe's ``model``) as keyword arguments."""
    cls = method_class(name)
    settings = dict(settings or {})
    problem = settings_problem(cls, name, settings)
    if problem:
        raise MethodSettingsError(problem)
    try:
        return cls(**settings)
    except TypeError as err:  # a missing keyword
        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise MethodSettingsError(f"{name}: {err}; its settings: {', '.join(known)}") from None
