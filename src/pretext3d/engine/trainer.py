"""The one training loop every pretext method uses.

A method is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, <part>: scalar,
...}`` (parts keep their graph, so a composed recipe can weight them; they are logged detached)
and which exposes ``backbone`` (the network to export), ``backbone_name`` and
``backbone_config`` (how to rebuild it) and ``export_backbone(path, extra)`` to write it. The
engine knows nothing else of a method, of the models or of recipes. The trainer owns the rest:

* optimiser (Adam / AdamW / SGD) and a learning rate that is a pure function of the step
  (linear warm-up, then cosine / step / constant), so resuming needs no scheduler state;
* data order as a pure function of (seed, step): batch b of epoch e is a slice of
  ``randperm(n, seed + e)``; under ``torchrun`` each process takes its share of every global
  batch, so a run's data does not depend on the number of processes;
* gradient clipping, AMP (CUDA only), DDP (gloo on CPU, NCCL on GPU) with BatchNorm
  statistics over the global batch (``sync_bn.py`` on CPU, SyncBatchNorm on GPU);
* a line per ``log_every`` steps with the loss parts, rate, the share of the time spent waiting
  for batches (``data_wait``) and ETA; ``metrics.jsonl`` (with ``peak_memory_mib``) and,
  optionally, TensorBoard event files;
* checkpoints ``checkpoints/step-XXXXXXX/`` (weights in safetensors, optimiser state read
  back with ``weights_only=True``, RNG states, step) written to a temporary folder and renamed,
  the last two kept; ``resume=True`` continues from the newest complete one, and on the CPU the
  final weights equal those of an uninterrupted run bit for bit;
* at the end ``backbone.safetensors`` (``pretext3d.load_backbone``) and ``config.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from pretext3d.engine.checkpoint import CHECKPOINT_FORMAT, remove_unfinished_checkpoints, training_checkpoints
from pretext3d.engine.sync_bn import convert_batchnorm
from pretext3d.utils.device import init_distributed, rank_and_world, resolve_device
from pretext3d.utils.io import atomic_write_json, atomic_write_text, save_tensors
from pretext3d.utils.memory import keep_freed_memory
from pretext3d.utils.state import load_unique_state_dict, unique_state_dict

__all__ = ["OptimConfig", "ScheduleConfig", "TrainConfig", "Trainer", "learning_rate", "batch_indices"]


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine: final lr = ratio x lr
    step_size: int = 1000  # step: multiply by gamma every step_size steps
    gamma: float = 0.1


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 16  # global: split across processes under torchrun
    seed: int = 0
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = None
    amp: bool = False
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    device: str = "auto"
    tensorboard: bool = False  # also log the metrics to out/tensorboard (needs the tensorboard package)
    validate_every: int = 0  # steps between calls of the Trainer's ``validate`` (0: never); also after the last step
    keep_freed_memory: bool = True  # malloc keeps freed host memory for the next step (utils.memory)


def learning_rate(step: int, optim: OptimConfig, schedule: ScheduleConfig, total_steps: int) -> float:
    """lr at ``step`` (0-based): linear warm-up to ``optim.lr`` over ``warmup_steps``, then

    cosine:   lr_min + (lr - lr_min) (1 + cos(pi t)) / 2,  t = (step - warmup) / (total - warmup)
    step:     lr * gamma^floor((step - warmup) / step_size)
    constant: lr
    """
    if step < schedule.warmup_steps:
        return optim.lr * (step + 1) / schedule.warmup_steps
    after = step - schedule.warmup_steps
    if schedule.name == "cosine":
        span = max(1, total_steps - schedule.warmup_steps)
        low = optim.lr * schedule.min_lr_ratio
        return low + (optim.lr - low) * (1 + math.cos(math.pi * min(after, span) / span)) / 2
    if schedule.name == "step":
        return optim.lr * schedule.gamma ** (after // schedule.step_size)
    if schedule.name == "constant":
        return optim.lr
    raise ValueError(f"unknown schedule {schedule.name!r}; known: cosine, step, constant")


def make_optimizer(parameters, optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.name == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    if optim.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown optimizer {optim.name!r}; known: adam, adamw, sgd")


def trainable_groups(method: nn.Module) -> list[dict]:
    """The optimiser's parameter groups: ``method.param_groups()`` when the method has one (a
    list of {"params", "lr_scale"}: e.g. Pic@Point trains its image encoder at 1/20 of the
    rate), else one group; parameters without gradients (frozen encoders) are left out."""
    groups = method.param_groups() if hasattr(method, "param_groups") else [{"params": list(method.parameters())}]
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            out.append({**group, "params": params, "lr_scale": float(group.get("lr_scale", 1.0))})
    return out


def batch_indices(step: int, size: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> tuple[int, list[int]]:
    """(epoch, this process's dataset indices) of global batch ``step``: full batches of a
    seeded permutation per epoch (the incomplete last batch is dropped, as with drop_last)."""
    per_epoch = size // global_batch
    if per_epoch == 0:
        raise ValueError(f"the dataset has {size} samples, fewer than one batch of {global_batch}")
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    batch = order[position * global_batch:(position + 1) * global_batch]
    local = global_batch // world
    return epoch, batch[rank * local:(rank + 1) * local].tolist()


class _StepBatches(Sampler[list[int]]):
    """Batches for steps start..steps-1; indices are encoded with their epoch (see _EpochItems)."""

    def __init__(self, size: int, global_batch: int, seed: int, start: int, steps: int, rank: int, world: int):
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.start, self.steps, self.rank, self.world = start, steps, rank, world

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            epoch, indices = batch_indices(step, self.size, self.global_batch, self.seed, self.rank, self.world)
            yield [epoch * self.size + i for i in indices]


class _EpochItems(Dataset):
    """Decodes ``epoch * size + index`` and tells the dataset its epoch (``set_epoch``) before
    reading the item, so per-epoch augmentation draws work in any DataLoader worker."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, code: int):
        epoch, index = divmod(code, len(self.dataset))  # type: ignore[arg-type]
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rng_state() -> dict:
    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"python": [version, list(internal), gauss_next],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]], "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


class _DoesNotFit(Exception):
    """A sound checkpoint whose weights do not fit the method (not damage: no fallback)."""


def peak_memory_mib(device: torch.device) -> float:
    """The most memory this process has held: on a GPU, the largest allocation of tensors;
    on the CPU, the resident set's peak (what the operating system saw)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Trainer:
    """Trains ``method`` on ``dataset`` for ``config.steps`` steps into ``out``.

    collate: DataLoader collate function (default: torch's). extra_config: recorded in
    config.json next to the trainer's own settings (e.g. the recipe). validate: called as
    ``validate(method, step)`` every ``config.validate_every`` steps and after the last one, on
    every process; it returns scalars that are logged (``val_<name>``) and written to
    metrics.jsonl. Fine-tuning uses it to keep the weights that do best on a validation split.
    A dataset with an ``on_device(batch)`` method finishes each batch there after the copy to
    the device (MultimodalDataset: uint8 images normalised on the GPU).
    """

    def __init__(self, method: nn.Module, dataset: Dataset, config: TrainConfig, out: str | Path,
                 collate=None, extra_config: dict | None = None, log=None,
                 validate: Callable[[nn.Module, int], dict[str, float]] | None = None):
        if not callable(getattr(method, "export_backbone", None)):
            raise TypeError(f"{type(method).__name__} cannot be trained here: the trainer writes the run's backbone with "
                            "the method's export_backbone(path, extra) (pretext.PretextMethod and "
                            "models.checkpoint.ExportsBackbone provide it)")
        self.method, self.dataset, self.config = method, dataset, config
        self.validate = validate
        self.out = Path(out)
        self.collate = collate
        self.extra_config = extra_config or {}
        init_distributed()
        self.rank, self.world = rank_and_world()
        self.device = resolve_device(config.device)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} does not split evenly over {self.world} processes")

    # --- checkpoints -------------------------------------------------------------------------

    def _checkpoints(self) -> list[Path]:
        return training_checkpoints(self.out)

    def _save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler,
              segments: list[dict]) -> None:
        """Write checkpoints/step-<step>/ under a temporary name, then rename (rank 0 only);
        ``segments``: the run's training segments up to ``step`` (see ``fit``)."""
        if self.rank != 0:
            return
        final = self.out / "checkpoints" / f"step-{step:07d}"
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # a tensor shared by several modules (a composed recipe shares its encoders) is stored once
        save_tensors(unique_state_dict(model), tmp / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "rng": _rng_state()}, tmp / "state.pt")
        atomic_write_json(tmp / "trainer.json", {"format": CHECKPOINT_FORMAT, "step": step,
                                                 "config": asdict(self.config), "segments": segments})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self._checkpoints()[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler) -> tuple[int, dict]:
        """Load the newest checkpoint that loads whole; returns the step to continue from (0:
        none) and its trainer.json. A damaged newer checkpoint is reported and the next older one
        is tried."""
        if self.rank == 0:
            for name in remove_unfinished_checkpoints(self.out):
                self.log(f"removed {name}: a checkpoint a killed run did not finish writing")
        for folder in reversed(self._checkpoints()):
            try:
                return self._load_checkpoint(folder, model, optimizer, scaler)
            except _DoesNotFit as err:
                raise ValueError(f"{folder}: {err.args[0]} (was the run started with another recipe?)") from None
            except Exception as err:  # safetensors, torch.load and JSON raise many types for damaged files
                self.log(f"checkpoint {folder} is damaged ({type(err).__name__}: {err}); trying the one before it")
        return 0, {}

    def _load_checkpoint(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                         scaler) -> tuple[int, dict]:
        """Read every part first, then set the state (a damaged part changes nothing)."""
        from safetensors.torch import load_file

        meta = json.loads((folder / "trainer.json").read_text())
        step = int(meta["step"])
        weights = load_file(str(folder / "model.safetensors"), device=str(self.device))
        state = torch.load(folder / "state.pt", map_location=self.device, weights_only=True)
        try:
            load_unique_state_dict(model, weights)
        except ValueError as err:
            raise _DoesNotFit(str(err)) from None
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state({**state["rng"], "torch": state["rng"]["torch"].cpu()})
        return step, meta

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict:
        """Run (or continue) training; returns the summary written to config.json: {"steps",
        "resumed_from", "final" (the last loss parts), "seconds" (this segment), "segments",
        "total_seconds"}.

        A segment is one process run of the training: {"from", "to" (steps), "planned" (the
        total it was run towards), "seconds", "final"}; every checkpoint records the segments up
        to its step, so a run killed and resumed keeps the time and losses of every part.

        Resuming a finished run (the newest checkpoint at ``config.steps``, config.json and the
        backbone written) changes nothing and returns its summary. Resuming with a larger
        ``config.steps`` extends the run: the learning rate from the checkpoint's step on is
        that of a schedule over the new total (``learning_rate(step, ..., config.steps)``; for
        cosine, the rate rises back to the longer curve's value at that step); a smaller total
        than the checkpoint's step is refused (a run can be extended, not shortened).
        """
        config = self.config
        if config.keep_freed_memory:
            keep_freed_memory()
        self.out.mkdir(parents=True, exist_ok=True)
        method = self.method.to(self.device)
        model: nn.Module = method
        if self.world > 1:
            # BatchNorm statistics over the global batch (torch's SyncBatchNorm needs a GPU)
            if self.device.type == "cuda":
                method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
            else:
                method = convert_batchnorm(method)
            self.method = method
            model = nn.parallel.DistributedDataParallel(
                method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        optimizer = make_optimizer(trainable_groups(method), config.optimizer)
        use_amp = config.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        start, meta = self._restore(method, optimizer, scaler) if resume else (0, {})
        if start > config.steps:
            raise ValueError(f"{self.out}: the run has trained {start} steps, more than the {config.steps} asked; "
                             "a run can be extended (more steps), not shortened")
        finished = self._finished_summary(start) if resume else None
        if finished is not None:
            self.log(f"{self.out}: the run has finished its {config.steps} steps; nothing to do "
                     "(to train it longer, resume it with a larger steps=... or epochs=...)")
            return finished
        segments = self._earlier_segments(meta, start)
        planned = (meta.get("config") or {}).get("steps", config.steps)
        if resume and start:
            extended = f"; extended from {planned} to {config.steps} steps (the learning rate follows the schedule " \
                       f"of {config.steps} steps from here)" if planned != config.steps else ""
            self.log(f"resuming from step {start}{extended}")
        self._trim_metrics(start)
        loader = DataLoader(
            _EpochItems(self.dataset),
            batch_sampler=_StepBatches(len(self.dataset), config.batch_size, config.seed, start, config.steps,
                                       self.rank, self.world),
            num_workers=config.num_workers, collate_fn=self.collate, pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        model.train()
        began, last_log = time.perf_counter(), None
        parts: dict[str, float] = {}
        step = start
        self._waited, asked = 0.0, time.perf_counter()  # seconds spent waiting for batches
        self._board = self._tensorboard(start) if self.rank == 0 and config.tensorboard else None
        metrics = open(self.out / "metrics.jsonl", "a") if self.rank == 0 else None
        # a dataset may finish its batches on the device (MultimodalDataset: uint8 images -> normalised float)
        finish_on_device = getattr(self.dataset, "on_device", None)
        try:
            for step, batch in enumerate(loader, start=start):
                self._waited += time.perf_counter() - asked
                lr = learning_rate(step, config.optimizer, config.schedule, config.steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                batch = _to_device(batch, self.device)
                if finish_on_device is not None:
                    batch = finish_on_device(batch)
                with torch.autocast(self.device.type, enabled=use_amp):
                    outputs = model(batch)
                loss = outputs["loss"]
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(optimizer)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                parts = self._reduce({k: v.detach() for k, v in outputs.items() if torch.is_tensor(v) and v.dim() == 0})
                done = step + 1
                if done % config.log_every == 0 or done == config.steps:
                    last_log = self._report(done, parts, lr, began, start, metrics)
                if self.validate and config.validate_every and (done % config.validate_every == 0 or done == config.steps):
                    self._validate(done, metrics)
                    model.train()
                if done % config.checkpoint_every == 0 and done < config.steps:
                    self._save(done, method, optimizer, scaler,
                               [*segments, self._segment(start, done, parts, time.perf_counter() - began)])
                asked = time.perf_counter()
        finally:
            if metrics:
                metrics.close()
            if self._board:
                self._board.close()
        seconds = time.perf_counter() - began
        segments = [*segments, self._segment(start, config.steps, parts or last_log or {}, seconds)]
        if start < config.steps:
            self._save(config.steps, method, optimizer, scaler, segments)
        summary = {"steps": config.steps, "resumed_from": start, "final": parts or last_log or {},
                   "seconds": seconds, "segments": segments,
                   "total_seconds": sum(float(segment.get("seconds") or 0.0) for segment in segments)}
        self._export(summary)
        return summary

    def _segment(self, start: int, done: int, parts: dict[str, float], seconds: float) -> dict:
        return {"from": start, "to": done, "planned": self.config.steps, "seconds": seconds, "final": dict(parts)}

    @staticmethod
    def _earlier_segments(meta: dict, start: int) -> list[dict]:
        """The segments before ``start`` that the restored checkpoint records (a checkpoint from
        before segments were recorded gives one segment of unknown time)."""
        if not start:
            return []
        segments = meta.get("segments")
        if isinstance(segments, list) and segments and all(isinstance(s, dict) for s in segments):
            return [dict(s) for s in segments]
        return [{"from": 0, "to": start, "planned": (meta.get("config") or {}).get("steps"), "seconds": None, "final": {}}]

    def _finished_summary(self, start: int) -> dict | None:
        """The saved summary when the run already finished ``config.steps`` steps (checkpoint,
        backbone and config.json all written); None otherwise (e.g. killed while exporting)."""
        if start != self.config.steps or not (self.out / "backbone.safetensors").is_file():
            return None
        try:
            summary = json.loads((self.out / "config.json").read_text())["summary"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return summary if isinstance(summary, dict) and summary.get("steps") == self.config.steps else None

    def _reduce(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scalars averaged over processes (what the log shows)."""
        if self.world > 1 and values:
            stacked = torch.stack([values[k].float() for k in sorted(values)])
            dist.all_reduce(stacked)
            return {k: float(v) / self.world for k, v in zip(sorted(values), stacked)}
        return {k: float(v) for k, v in values.items()}

    def _report(self, done: int, parts: dict[str, float], lr: float, began: float, start: int, metrics) -> dict:
        elapsed = time.perf_counter() - began
        rate = (done - start) / elapsed if elapsed > 0 else float("inf")
        eta = (self.config.steps - done) / rate if rate > 0 else float("inf")
        if self.rank == 0:
            shown = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            wait = self._waited / elapsed if elapsed > 0 else 0.0
            self.log(f"step {done}/{self.config.steps} {shown} lr {lr:.2e} | {rate:.2f} steps/s, "
                     f"data wait {100 * wait:.0f}%, ETA {eta:.0f}s")
            metrics.write(json.dumps({"step": done, **parts, "lr": lr, "seconds": elapsed, "data_wait": wait,
                                      "peak_memory_mib": peak_memory_mib(self.device)}) + "\n")
            metrics.flush()
            if self._board:
                for name, value in {**parts, "lr": lr}.items():
                    self._board.add_scalar(f"train/{name}", value, done)
        return parts

    def _validate(self, done: int, metrics) -> None:
        values = {f"val_{k}": float(v) for k, v in self.validate(self.method, done).items()}
        if self.rank == 0:
            self.log(f"step {done}/{self.config.steps} validation " + " ".join(f"{k} {v:.4f}" for k, v in values.items()))
            metrics.write(json.dumps({"step": done, **values}) + "\n")
            metrics.flush()
            if self._board:
                for name, value in values.items():
                    self._board.add_scalar(f"validation/{name[4:]}", value, done)

    def _tensorboard(self, start: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        # purge_step: a resumed run drops the events logged after its checkpoint
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=start or None)

    def _trim_metrics(self, start: int) -> None:
        """Drop metric lines after the checkpoint a resumed run restarts from."""
        path = self.out / "metrics.jsonl"
        if self.rank != 0 or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= start:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def _export(self, summary: dict) -> None:
        if self.rank != 0:
            return
        method = self.method
        method.export_backbone(self.out / "backbone.safetensors",  # the method interface (ExportsBackbone)
                               extra={"method": type(method).__name__, "steps": self.config.steps})
        atomic_write_json(self.out / "config.json", {"train": asdict(self.config), **self.extra_config,
                                                     "backbone": method.backbone_name,
                                                     "backbone_config": method.backbone_config,
                                                     "summary": summary})
