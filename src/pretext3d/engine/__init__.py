"""The one training loop (``trainer.Trainer``) and its own state on disk (``checkpoint``), with
BatchNorm over the global batch on CPUs (``sync_bn``). The engine sees a method only through
its interface (``forward(batch) -> {"loss", ...}``, ``backbone``/``backbone_name``/
``backbone_config``, ``export_backbone``, optional ``param_groups``): it imports no model, method
or recipe."""
