"""Mul: element-wise, numpy and SQL forms in binary.Binary."""

from .binary import Binary


class Mul(Binary):
    op_types = ("Mul",)
