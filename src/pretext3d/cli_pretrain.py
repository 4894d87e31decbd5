"""``pretext3d pretrain``: run a recipe into a run folder (resumable, also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pretext3d.shipped import shipped_recipes

__all__ = ["add_pretrain"]


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain with a recipe (CrossPoint, ParAE, Pic@Point, CMCV, MIMS, compositions, or any registered method)",
        description="Pretrain with a YAML recipe (configs/*.yaml). Overrides are key=value with dotted keys, "
        "e.g. steps=200 batch_size=32 optimizer.lr=3e-4 model.backbone_config.k=20 data=/path/to/store (a mapping value replaces the mapping: model.backbone=pointnet \"model.backbone_config={emb_dims: 1024}\"). "
        "The run folder gets metrics.jsonl, checkpoints/, and at the end backbone.safetensors and config.json. "
        "Several processes: torchrun --nproc_per_node=N -m pretext3d.cli pretrain ...",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML (configs/*.yaml), or a shipped recipe's name "
                   f"({', '.join(shipped_recipes())})")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from pretext3d.pretraining import pretrain

    summary = pretrain(args.recipe, args.out, args.overrides, args.resume)
    if summary.get("rank", 0) == 0:
        final = " ".join(f"{k} {v:.4f}" for k, v in summary["final"].items())
        print(f"pretrained {summary['steps']} steps in {summary['seconds']:.0f} s ({final}); "
              f"backbone: {Path(args.out) / 'backbone.safetensors'}")
    return 0
