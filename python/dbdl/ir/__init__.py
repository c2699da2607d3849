"""The unified IR: an ONNX model as dbdl's own small graph of typed operators.

Each operator (ir/ops/, one small file per family) knows its FLOPs and parameter bytes,
evaluates itself in numpy, and compiles itself to SQL for relation-centric execution."""

from .graph import Graph, Node, from_onnx
from .ops import Op

__all__ = ["Graph", "Node", "Op", "from_onnx"]
