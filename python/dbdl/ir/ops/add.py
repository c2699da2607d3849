"""Add: element-wise, numpy and SQL forms in binary.Binary."""

from .binary import Binary


class Add(Binary):
    op_types = ("Add",)
