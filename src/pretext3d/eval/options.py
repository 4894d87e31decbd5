"""The option groups every protocol shares, each defined once; a protocol's config is made of
the groups it needs plus its own settings (``FeatureConfig``, ``StoreProtocolConfig``,
``FinetuneConfig``, ``SemsegConfig`` and the configs built on them).

* ``WeightsOptions``: where the weights come from: a checkpoint (a ``pretext3d pretrain`` run
  folder, a pretext3d backbone file or reference weights), or a random initialisation whose
  architecture is a named ``backbone`` (with ``random_config``) or that of ``like`` (a run
  folder or checkpoint; ``random_config`` keys override its config). Checked when the config is
  made; ``architecture()`` and ``method_run()`` resolve it, through ``pretext3d.runs``.
* ``RuntimeOptions``: device and progress output.
* ``CacheOptions``: data-loading processes and the feature cache (protocols on frozen features).
* ``SelectionOptions``: a trial subset of the data: some classes, at most N objects per class
  (``data.selection``).
* ``TrainingOptions``: the fine-tuning runs (label fractions, frozen / unfrozen, optimisation,
  validation passes, where the run folders go).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pretext3d.data.selection import Selection
from pretext3d.runs import backbone_architecture

__all__ = ["WeightsOptions", "RuntimeOptions", "CacheOptions", "SelectionOptions", "TrainingOptions"]


@dataclass(kw_only=True)
class WeightsOptions:
    """checkpoint | random_init [like] (see the module docstring). backbone: with random_init
    and no ``like``, the backbone to build; otherwise the backbone the weights must hold."""

    checkpoint: str | None = None
    random_init: bool = False
    like: str | None = None
    backbone: str | None = None
    random_config: dict[str, Any] | None = None

    # what a random init without ``like`` needs: "backbone" (a backbone name), "run" (like RUN:
    # a run's whole method), or "any" (the protocol decides, e.g. a bare ResNet)
    random_init_needs: ClassVar[str] = "backbone"
    random_backbones: ClassVar[tuple[str, ...]] = ()  # the names a random init may build here (empty: any)

    def __post_init__(self) -> None:
        self.check_weights()

    def weight_sources(self) -> int:
        """How many weight sources are given (exactly one is valid)."""
        return int(self.random_init) + int(bool(self.checkpoint))

    def check_weights(self) -> None:
        if self.weight_sources() != 1:
            raise ValueError("give exactly one of random_init=True (--random-init) or a checkpoint (--checkpoint)")
        if self.like and not self.random_init:
            raise ValueError("--like goes with --random-init (a checkpoint's architecture, random weights)")
        if self.random_config and not self.random_init:
            raise ValueError("--emb-dims and --k go with --random-init (a checkpoint fixes its architecture)")
        if self.random_init and not self.like:
            allowed = self.random_backbones
            named = self.backbone and (not allowed or self.backbone in allowed or self.random_config is not None)
            if self.random_init_needs == "backbone" and not named:
                names = f" {' or '.join(allowed)}" if allowed else ""
                raise ValueError(f"--random-init needs --backbone{names} (or --like CHECKPOINT)")
            if self.random_init_needs == "run":
                raise ValueError("protocols on a store's modalities need --checkpoint RUN, or --random-init --like RUN")

    def architecture(self) -> tuple[str | None, dict[str, Any] | None]:
        """(backbone name, config) a random init builds: ``like``'s architecture with
        ``random_config`` on top when ``like`` is given, else (backbone, random_config)."""
        if not self.like:
            return self.backbone, self.random_config
        name, config = backbone_architecture(self.like)
        if self.backbone and self.backbone != name:
            raise ValueError(f"{self.like}: holds a {name} backbone, not a {self.backbone}")
        return name, {**config, **(self.random_config or {})}

    def method_run(self) -> str:
        """The run folder whose method a store protocol uses (--checkpoint, or --like with
        --random-init); its point backbone must be ``backbone`` when that is given."""
        run = self.checkpoint or self.like
        if not run:
            raise ValueError("protocols on a store's modalities need --checkpoint RUN, or --random-init --like RUN")
        if self.backbone:
            held, _ = backbone_architecture(run)  # the run's exported backbone
            if held != self.backbone:
                raise ValueError(f"{run}: the run's point backbone is {held}, not {self.backbone}")
        return run


@dataclass(kw_only=True)
class RuntimeOptions:
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda, cuda:1, ...
    progress: bool = True  # progress bars and lines on stderr


@dataclass(kw_only=True)
class SelectionOptions:
    """A trial subset of the data (``data.selection``): the classes to keep (None: all) and at
    most ``per_class`` objects of each per split, drawn with ``select_seed``."""

    classes: list[str] | None = None
    per_class: int | None = None
    select_seed: int = 0

    def data_selection(self) -> Selection:
        return Selection(tuple(self.classes) if self.classes is not None else None, self.per_class, self.select_seed)


@dataclass(kw_only=True)
class CacheOptions:
    num_workers: int = 0  # data-loading processes
    cache_dir: str | None = None  # feature cache (default ~/.cache/pretext3d/features or $PRETEXT3D_CACHE)
    use_cache: bool = True


@dataclass(kw_only=True)
class TrainingOptions:
    """The fine-tuning runs: one per label fraction and mode, each selected on validation."""

    fractions: list[float] = field(default_factory=lambda: [1.0])  # label fractions
    modes: list[str] = field(default_factory=lambda: ["unfrozen"])  # "frozen" and/or "unfrozen"
    epochs: float = 50.0  # passes over the labelled items
    min_steps: int = 0  # at least this many steps (small label fractions give few steps per epoch)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd
    schedule: str = "cosine"  # cosine (to min_lr) | step (x gamma every step_epochs)
    min_lr: float = 0.0  # cosine: the final rate
    step_epochs: float = 20.0  # step: epochs between decays
    gamma: float = 0.1  # step: the decay factor
    augment: bool = True  # the protocol's training augmentation (False: the points as read)
    validations: int = 10  # validation passes over a run (evenly spaced, the last after the final step)
    seed: int = 0
    out: str | None = None  # run folders; a temporary folder when None
    force: bool = False  # run even when a run gets fewer than finetune.MIN_MEANINGFUL_STEPS steps
