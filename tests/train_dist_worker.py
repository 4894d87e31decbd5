"""Run by torchrun in test_engine: ParAE for a few steps on 2 processes; rank 0 saves weights."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from pretext3d.data.builtin import builtin_splits
from pretext3d.engine.trainer import OptimConfig, TrainConfig, Trainer
from pretext3d.pretext.parae import ParAE
from pretext3d.utils.device import finish_distributed

TINY = {"encoder_widths": (16, 32), "decoder_widths": (32,)}


def main(out: str) -> None:
    torch.manual_seed(0)
    method = ParAE(partitions=8, backbone_config=TINY)
    clouds = builtin_splits(num_points=128, train=2, test=0)["train"]
    config = TrainConfig(steps=4, batch_size=4, seed=3, optimizer=OptimConfig("sgd", 0.05), log_every=1,
                         checkpoint_every=100)
    trainer = Trainer(method, clouds, config, out, log=lambda m: None)
    trainer.fit()
    if trainer.rank == 0:
        save_file({k: v.detach().contiguous() for k, v in trainer.method.state_dict().items()}, f"{out}/final.safetensors")
    finish_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
