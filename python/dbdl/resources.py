"""Where dbdl's non-Python files are: the source checkout, or the installed package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """The ``migrations`` or ``sql`` folder (top level of a checkout; ``dbdl/_<name>`` in a wheel)."""
    checkout = Path(__file__).resolve().parent.parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("dbdl") / f"_{name}"))


def udf_dir() -> Path:
    """The folder to put on the database server's sys.path so that ``import dbdl_udf`` works."""
    import dbdl_udf

    return Path(dbdl_udf.__file__).resolve().parent.parent
