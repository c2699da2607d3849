"""The predict kinds: the one table of what each SQL predict function returns.

Every layer reads it (the planner finds calls by ``function``, each backend derives its result
types from ``dtype`` and ``vector``, the server's functions check a kind by name), so a new kind is
one row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    #: the kind's name, as the planner, the strategies and the backends pass it
    name: str
    #: the SQL function that returns it
    function: str
    #: numpy dtype of one result value
    dtype: str
    #: one result is a vector (the output's values), not one value
    vector: bool
    #: the user calls it by name in SQL (the planner finds and rewrites it); ``text`` is the form
    #: the planner picks for a pinned ``predict`` on an output holding class names
    user: bool = True


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("scalar", "predict", "float32", vector=False),
    Kind("array", "predict_array", "float32", vector=True),
    Kind("class", "predict_class", "int64", vector=False),
    Kind("text", "predict_text", "str", vector=False, user=False),
)}

#: the kinds a user's SQL names, in order: scalar, array, class
OUTPUT_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.user)

#: SQL function name -> kind, for the functions the planner rewrites (predict, predict_array, predict_class)
PREDICT_FUNCTIONS: dict[str, str] = {k.function: k.name for k in KINDS.values() if k.user}


def function_name(kind: str) -> str:
    """The SQL function of a kind: ``function_name("array") == "predict_array"``."""
    return KINDS[kind].function
