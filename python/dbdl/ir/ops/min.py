"""Min: the element-wise smallest of its inputs, LEAST in SQL (the rest as Max)."""

from __future__ import annotations

import numpy as np

from .max import Max


class Min(Max):
    op_types = ("Min",)
    _numpy = staticmethod(np.minimum)
    _sql = "LEAST"
