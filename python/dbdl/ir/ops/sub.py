"""Sub: element-wise, numpy and SQL forms in binary.Binary."""

from .binary import Binary


class Sub(Binary):
    op_types = ("Sub",)
