"""The operator interface: each operator is one small class in its own file (as in onnx's
reference evaluator), registered by the ONNX op types it implements."""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from dbdl_udf.flops import count as flop_count

if TYPE_CHECKING:
    from ..sql import Relation, SQLBuilder

Shape = tuple[int, ...]  # per-row shape: the batch axis is implicit


class Op:
    """One IR operator. Subclasses set ``op_types`` and override what they support."""

    op_types: ClassVar[tuple[str, ...]] = ()
    #: can be compiled to SQL (relation-centric execution)
    relational: ClassVar[bool] = True
    registry: ClassVar[dict[str, type["Op"]]] = {}
    #: outputs the operator computes: with more than one, ``run`` returns a tuple, ``infer_outputs``
    #: a shape per output and ``to_sql`` a list (a str saying why, for an output with no SQL form)
    n_outputs: ClassVar[int] = 1

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

    def infer_outputs(self, shapes: list[Shape | None]) -> list[Shape]:
        """Per-row shape of each output (operators with several outputs override it)."""
        return [self.infer(shapes)]

    def output_problem(self, index: int) -> str:
        """Why output ``index`` has no SQL form (where the operator's others have one), or ""."""
        return ""

    def flops(self, in_shapes: list[Shape | None], out_shape: Shape) -> int:
        """FLOPs per row by the operator's rule in dbdl_udf.flops (the registry counts with the same
        rules): ``in_shapes`` per runtime input (None where the op holds a constant), which this
        fills in with the constants' whole shapes."""
        n = max(len(in_shapes), max(self.params, default=-1) + 1)
        inputs = [tuple(self.params[i].shape) if i in self.params else (in_shapes[i] if i < len(in_shapes) else None)
                  for i in range(n)]
        return flop_count(self.op_type, inputs, out_shape, self.attrs)

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
