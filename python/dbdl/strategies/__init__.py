"""Execution strategies for predict calls, one per file, each registering itself (``base.STRATEGIES``):

- ``udf.py``       UDF-centric: the backend's in-database function (onnxruntime inside the database)
- ``relation.py``  relation-centric: the model compiled to SQL joins over (row, position, value)
- ``dl.py``        DL-centric: the rows streamed out to torch/onnxruntime, the predictions streamed back
- ``hybrid.py``    per-operator: a prefix of the graph as SQL, the rest a sub-model scored DL-centric

``base.py`` holds what they share: ``Strategy``, ``PredictCall``, ``Estimate``, the cost constants.
"""

from .base import STRATEGIES, Estimate, PredictCall, StatementPlan, Strategy

# each module registers its strategy when imported, in the order EXPLAIN lists them
from . import udf  # noqa: E402,F401  isort: skip
from . import relation  # noqa: E402,F401  isort: skip
from . import dl  # noqa: E402,F401  isort: skip
from . import hybrid  # noqa: E402,F401  isort: skip

__all__ = ["STRATEGIES", "Estimate", "PredictCall", "StatementPlan", "Strategy"]
