"""Model references: parsing and validation (pure Python)."""

import pytest

from dbdl.errors import InvalidName
from dbdl.names import ModelRef, check_name


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fraud", ModelRef("fraud")),
        ("fraud@3", ModelRef("fraud", 3)),
        ("fraud@3:probs", ModelRef("fraud", 3, "probs")),
        ("fraud:onnx::Gemm_5", ModelRef("fraud", None, "onnx::Gemm_5")),
        ("_x9", ModelRef("_x9")),
    ],
)
def test_parse(text, expected):
    assert ModelRef.parse(text) == expected
    assert str(ModelRef.parse(text)) == text


@pytest.mark.parametrize("text", ["", "@1", "9lives", "a b", "m@", "m@x", "m@0", "m@-1", "a;drop", 3, None])
def test_rejected(text):
    with pytest.raises(InvalidName):
        ModelRef.parse(text)


def test_check_name_limits():
    assert check_name("a" * 63) == "a" * 63
    with pytest.raises(InvalidName, match="1-63 letters"):
        check_name("a" * 64)
