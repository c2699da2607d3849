"""The operator interface: each operator is one small class in its own file (as in onnx's
reference evaluator), registered by the ONNX op types it implements."""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..sql import Relation, SQLBuilder

Shape = tuple[int, ...]  # per-row shape: the batch axis is implicit


class Op:
    """One IR operator. Subclasses set ``op_types`` and override what they support."""

    op_types: ClassVar[tuple[str, ...]] = ()
    #: can be compiled to SQL (relation-centric execution)
    relational: ClassVar[bool] = True
    registry: ClassVar[dict[str, type["Op"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for op_type in cls.op_types:
            Op.registry[op_type] = cls

    def __init__(self, op_type: str, attrs: dict[str, Any], params: dict[int, np.ndarray]) -> None:
        self.op_type = op_type
        self.attrs = attrs
        #: constant inputs (weights) by input position
        self.params = params

    # -- facts -------------------------------------------------------------------------------

    def infer(self, shapes: list[Shape | None]) -> Shape:
        """Per-row output shape from the per-row shapes of the non-constant inputs."""
        return next(s for s in shapes if s is not None)

    def flops(self, in_shapes: list[Shape | None], out_shape: Shape) -> int:
        return int(prod(out_shape))

    def param_bytes(self) -> int:
        return int(sum(p.nbytes for p in self.params.values()))

    # -- evaluation ----------------------------------------------------------------------------

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """Evaluate on batched numpy arrays (the leading axis is the batch)."""
        raise NotImplementedError

    def arg(self, inputs: tuple[np.ndarray | None, ...], position: int) -> np.ndarray:
        """Input ``position``: the runtime array, or the constant stored for it."""
        if position in self.params:
            return self.params[position]
        return inputs[position]

    # -- SQL -----------------------------------------------------------------------------------

    def to_sql(self, sql: "SQLBuilder", inputs: list["Relation | None"], out_shape: Shape) -> "Relation":
        raise NotImplementedError(f"{self.op_type} has no SQL form")

    def __repr__(self) -> str:
        return f"{self.op_type}({', '.join(f'{k}={v}' for k, v in self.attrs.items())})"


def per_row_size(shape: Shape) -> int:
    return int(prod(shape)) if shape else 1
