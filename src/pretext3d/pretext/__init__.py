"""Pretext methods: the registry (``METHODS``, ``register_method``, ``build_method``) and the
built-in methods, each in its own file, each registered by its class (see ``base``).

A new method is one file with a ``PretextMethod`` subclass decorated with ``register_method``,
one recipe and its tests; nothing else in the package names it: every module of this package is
imported here, so a method file dropped into ``pretext/`` registers itself."""

import importlib
import pkgutil

from pretext3d.losses import NTXentLoss
from pretext3d.pretext.base import (METHODS, DataNeeds, MethodSettingsError, PretextMethod, build_method, method_class,
                                    register_method)

# the built-in methods register themselves on import
from pretext3d.pretext.crosspoint import CrossPoint  # noqa: E402
from pretext3d.pretext.parae import ParAE  # noqa: E402
from pretext3d.pretext.picpoint import PicAtPoint  # noqa: E402
from pretext3d.pretext.cmcv import CMCV  # noqa: E402
from pretext3d.pretext.mims import MIMS  # noqa: E402
from pretext3d.pretext.compose import Composed  # noqa: E402

for _module in pkgutil.iter_modules(__path__):  # any other method file of this package
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "DataNeeds", "MethodSettingsError", "PretextMethod", "build_method", "method_class",
           "register_method", "NTXentLoss", "CrossPoint", "ParAE", "PicAtPoint", "CMCV", "MIMS", "Composed"]
