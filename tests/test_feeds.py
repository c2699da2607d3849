"""The feeding layer (dbdl_udf.runtime: Column, build_feeds, run_batch) on numpy arrays.

Signatures are built by hand where a model is not needed; where one is, it is a plain
torch.onnx.export and the result is compared with onnxruntime run directly."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from dbdl_udf.errors import DTypeMismatch, ShapeMismatch
from dbdl_udf.runtime import Column, Signature, TensorSpec, build_feeds, feed_mode, run_batch, valid_rows


def sig(*inputs, out=(TensorSpec("y", "float32", (1,)),)):
    return Signature(tuple(TensorSpec(n, d, tuple(s)) for n, d, s in inputs), tuple(out))


def test_old_matrix_form_still_splits_over_inputs():
    s = sig(("a", "float32", (2,)), ("b", "float64", (3,)))
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    feeds = build_feeds(s, x)
    assert feeds["a"].dtype == np.float32 and feeds["b"].dtype == np.float64
    np.testing.assert_array_equal(feeds["a"], x[:, :2])
    np.testing.assert_array_equal(feeds["b"], x[:, 2:])


def test_integer_ids_are_fed_exactly():
    s = sig(("ids", "int64", (3,)))
    big = np.array([[2**40 + 1, 2**24 + 1, 7], [1, 2, 3]], dtype=np.int64)
    feeds = build_feeds(s, [Column.from_matrix(big)])
    assert feeds["ids"].dtype == np.int64
    np.testing.assert_array_equal(feeds["ids"], big)
    # int32 values into an int32 input: no copy through float
    s32 = sig(("ids", "int32", (3,)))
    feeds = build_feeds(s32, [Column.from_matrix(big[1:].astype(np.int32))])
    assert feeds["ids"].dtype == np.int32
    with pytest.raises(DTypeMismatch, match="int32"):
        build_feeds(s32, [Column.from_matrix(big)])  # 2**40 does not fit


def test_float_values_into_integer_inputs_must_be_whole():
    s = sig(("ids", "int64", (2,)))
    np.testing.assert_array_equal(build_feeds(s, [Column.from_matrix(np.array([[1.0, 2.0]]))])["ids"], [[1, 2]])
    with pytest.raises(DTypeMismatch, match="whole numbers"):
        build_feeds(s, [Column.from_matrix(np.array([[1.5, 2.0]]))])


def test_bool_inputs():
    s = sig(("m", "bool", (2,)))
    assert build_feeds(s, [Column.from_matrix(np.array([[True, False]]))])["m"].dtype == np.bool_
    assert build_feeds(s, [Column.from_matrix(np.array([[1, 0]]))])["m"].tolist() == [[True, False]]
    with pytest.raises(DTypeMismatch, match="booleans"):
        build_feeds(s, [Column.from_matrix(np.array([[2, 0]]))])
    with pytest.raises(DTypeMismatch, match="got booleans"):
        build_feeds(sig(("x", "float32", (2,))), [Column.from_matrix(np.array([[True, False]]))])


def test_several_columns_map_to_inputs_in_order():
    s = sig(("a", "float32", (2,)), ("ids", "int64", (3,)))
    a = np.ones((4, 2), np.float64)
    ids = np.arange(12, dtype=np.int64).reshape(4, 3) + 2**33
    assert feed_mode(s, 2) == "columns" and feed_mode(s, 1) == "concat"
    feeds = build_feeds(s, [Column.from_matrix(a), Column.from_matrix(ids)])
    assert feeds["a"].dtype == np.float32
    np.testing.assert_array_equal(feeds["ids"], ids)
    with pytest.raises(ShapeMismatch, match="a: float32"):
        build_feeds(s, [Column.from_matrix(a)] * 3)


def test_flat_rows_are_reshaped_and_nested_ones_must_match():
    s = sig(("img", "float32", (3, 4, 4)))
    flat = np.arange(2 * 48, dtype=np.float32).reshape(2, 48)
    np.testing.assert_array_equal(build_feeds(s, [Column.from_matrix(flat)])["img"], flat.reshape(2, 3, 4, 4))
    nested = flat.reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(build_feeds(s, [Column.from_matrix(nested)])["img"], nested)
    with pytest.raises(ShapeMismatch, match=r"\[4, 4, 3\].*|.*\[3, 4, 4\].*\[4, 4, 3\]"):
        build_feeds(s, [Column.from_matrix(flat.reshape(2, 4, 4, 3))])
    with pytest.raises(ShapeMismatch, match=r"takes 48 features per row for input 'img' \(shape \[3, 4, 4\]\), got 47 values per row \(rows of shape \[47\]\)"):
        build_feeds(s, [Column.from_matrix(flat[:, :47])])
    # axes of length 1 aside, a nested shape is the model's: [28, 28] feeds [1, 28, 28]
    s1 = sig(("img", "float32", (1, 5, 5)))
    assert build_feeds(s1, [Column.from_matrix(np.zeros((2, 5, 5)))])["img"].shape == (2, 1, 5, 5)


def test_uint8_bytes_feed_float_models_unscaled():
    s = sig(("img", "float32", (2, 2)))
    col = Column.from_rows([bytes([0, 1, 254, 255]), None])
    assert col.values.dtype == np.uint8 and col.valid.tolist() == [True, False]
    feeds = build_feeds(s, [col.take(col.valid)])
    np.testing.assert_array_equal(feeds["img"], [[[0, 1], [254, 255]]])
    assert feeds["img"].dtype == np.float32


def test_variable_length_rows_are_padded_with_pad_id():
    s = sig(("tokens", "int64", (None,)))
    col = Column.from_rows([[5, 6, 7], [8], [9, 10]])
    assert col.offsets is not None
    feeds = build_feeds(s, [col], {"pad_id": 0})
    np.testing.assert_array_equal(feeds["tokens"], [[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    with pytest.raises(ShapeMismatch, match="pad_id"):
        build_feeds(s, [col])
    # rows of one length need no pad id
    np.testing.assert_array_equal(build_feeds(s, [Column.from_rows([[1, 2], [3, 4]])])["tokens"], [[1, 2], [3, 4]])
    # a sequence of vectors: [L, 2]
    s2 = sig(("x", "float32", (None, 2)))
    feeds = build_feeds(s2, [Column.from_rows([[1, 2, 3, 4], [5, 6]])], {"pad_id": -1})
    np.testing.assert_array_equal(feeds["x"], [[[1, 2], [3, 4]], [[5, 6], [-1, -1]]])
    with pytest.raises(ShapeMismatch, match="multiple of 2"):
        build_feeds(s2, [Column.from_rows([[1, 2, 3]])], {"pad_id": 0})


def test_ragged_rows_for_a_fixed_width_are_refused():
    with pytest.raises(ShapeMismatch, match="different lengths"):
        build_feeds(sig(("x", "float32", (2,))), [Column.from_rows([[1, 2], [3]])])


def test_null_rows_and_null_elements_are_not_fed():
    col = Column.from_rows([[1.0, 2.0], None, [3.0, None], [4.0, 5.0]])
    assert valid_rows([col]).tolist() == [True, False, False, True]
    other = Column.from_matrix(np.array([[1], [2], [3], [4]], np.int64), valid=[True, True, True, False])
    assert valid_rows([col, other]).tolist() == [True, False, False, False]


def _export(module, args, names, dynamic_axes):
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, input_names=names, output_names=["y"],
                          dynamic_axes=dynamic_axes, dynamo=False)
    return buf.getvalue()


def _session(data):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_embedding_bag_gets_flat_tokens_and_offsets():
    torch = pytest.importorskip("torch")

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(100_000, 8, mode="mean")
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, text, offsets):
            return self.fc(self.bag(text, offsets))

    torch.manual_seed(0)
    data = _export(Text(), (torch.tensor([1, 2, 3]), torch.tensor([0, 2])), ["text", "offsets"],
                   {"text": {0: "T"}, "offsets": {0: "B"}, "y": {0: "B"}})
    session = _session(data)
    s = sig(("text", "int64", ()), ("offsets", "int64", ()), out=(TensorSpec("y", "float32", (4,)),))
    rows = [[1, 2, 3], None, [99_999], [4, 5, 6, 7, 8]]
    col = Column.from_rows(rows)
    assert feed_mode(s, 1) == "offsets"
    y = run_batch(session, s, [col], 0, "text")
    live = [r for r in rows if r is not None]
    expected = session.run(None, {"text": np.array(sum(live, []), np.int64),
                                  "offsets": np.array([0, 3, 4], np.int64)})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert y.shape == (3, 4)


def test_sequence_model_padded_matches_onnxruntime():
    torch = pytest.importorskip("torch")

    class Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 6, padding_idx=0)
            self.fc = torch.nn.Linear(6, 2)

        def forward(self, ids):
            return self.fc(self.emb(ids).sum(dim=1))

    torch.manual_seed(0)
    data = _export(Seq(), (torch.tensor([[1, 2, 3]]),), ["ids"], {"ids": {0: "N", 1: "L"}, "y": {0: "N"}})
    session = _session(data)
    s = sig(("ids", "int64", (None,)), out=(TensorSpec("y", "float32", (2,)),))
    rows = [[1, 2, 3], [4], [5, 6]]
    y = run_batch(session, s, [Column.from_rows(rows)], 0, "seq", {"pad_id": 0})
    padded = np.array([[1, 2, 3], [4, 0, 0], [5, 6, 0]], np.int64)
    np.testing.assert_allclose(y, session.run(None, {"ids": padded})[0], rtol=1e-6)
