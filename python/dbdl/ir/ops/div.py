"""Div: element-wise, numpy and SQL forms in binary.Binary."""

from .binary import Binary


class Div(Binary):
    op_types = ("Div",)
