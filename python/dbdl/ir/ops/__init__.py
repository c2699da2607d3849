"""IR operators, discovered: every module here defines Op subclasses that register themselves."""

import importlib
import pkgutil

from .base import Op, Shape

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Op", "Shape"]
