"""predict in every input form (docs/reference.md "Input forms"): integer ids fed exactly, float64
and bool inputs, several feature arguments, nested and flat images, uint8 bytes, variable-length
token lists (padded, or flat tokens plus offsets), NULLs — under every strategy, on every backend.

Models are plain torch.onnx.export files; every value is compared with onnxruntime run directly
on numpy. Relation-centric SQL takes one flat float32 vector: forced on these forms it must refuse
with its reason, and the planner must then pick another strategy."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import sqlglot
import torch
from conftest import has, per_backend

import dbdl
from dbdl.backends.duckdb.dialect import DbdlDuckDB

ATOL = 1e-5
VOCAB = 95_000


def export(module, args, names, dynamic_axes) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, input_names=names, output_names=["y"],
                          dynamic_axes=dynamic_axes, dynamo=False)
    return buf.getvalue()


def ort_run(model: bytes, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def q(db, sql: str) -> str:
    return sqlglot.transpile(sql, read=DbdlDuckDB, write=db.backend.dialect)[0]


def sql_type(db, duckdb_type: str, postgres_type: str) -> str:
    return per_backend(db, duckdb=duckdb_type, postgres=postgres_type)


def make_table(db, name: str, columns: dict[str, tuple[str, str, list]]) -> None:
    """Table ``name``(id, <columns>) from per-row Python values; columns: name -> (DuckDB type,
    PostgreSQL type, values)."""
    n = len(next(iter(columns.values()))[2])
    types = {c: sql_type(db, d, p) for c, (d, p, _) in columns.items()}
    db.backend.execute(f"CREATE TABLE {name} (id INTEGER, " + ", ".join(f"{c} {t}" for c, t in types.items()) + ")")
    placeholders = ", ".join(f"CAST(? AS {t})" for t in types.values())
    for i in range(n):
        db.backend.execute(f"INSERT INTO {name} VALUES (?, {placeholders})",
                           (i, *[columns[c][2][i] for c in columns]))
    db.backend.analyze(name)  # PostgreSQL's planner wants statistics; DuckDB needs none


def rows_of(db, sql: str, strategy: str | None) -> list:
    return [r[1] for r in sorted(db.sql(q(db, sql), strategy=strategy).fetchall(), key=lambda r: r[0])]


def check(db, sql: str, strategy: str, expected: list, *, relation_refuses: bool = True):
    """The query's second column equals ``expected`` (None = NULL) under ``strategy``; forced
    relation-centric it refuses (StrategyUnavailable), and unforced the planner still answers."""
    if strategy == "relation" and relation_refuses:
        with pytest.raises(dbdl.StrategyUnavailable):
            db.sql(q(db, sql), strategy="relation")
        got = rows_of(db, sql, None)
    else:
        got = rows_of(db, sql, strategy)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            np.testing.assert_allclose(np.asarray(g, dtype=np.float64), np.asarray(e, dtype=np.float64), atol=ATOL,
                                       rtol=1e-5)


# -- models ------------------------------------------------------------------------------------


class IdsMod(torch.nn.Module):
    """Integer arithmetic a float32 round trip would break: ids mod 1000."""

    def forward(self, ids):
        return (ids % 1000).float()


@pytest.fixture(scope="module")
def ids_model() -> bytes:
    return export(IdsMod(), (torch.tensor([[1, 2, 3]], dtype=torch.int64),), ["ids"], {"ids": {0: "n"}, "y": {0: "n"}})


@pytest.fixture(scope="module")
def ids32_model() -> bytes:
    return export(IdsMod(), (torch.tensor([[1, 2, 3]], dtype=torch.int32),), ["ids"], {"ids": {0: "n"}, "y": {0: "n"}})


@pytest.fixture(scope="module")
def double_model() -> bytes:
    torch.manual_seed(1)
    return export(torch.nn.Linear(4, 2).double(), (torch.randn(2, 4, dtype=torch.float64),), ["x"],
                  {"x": {0: "n"}, "y": {0: "n"}})


class BoolNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, m):
        return self.fc(m.float())


@pytest.fixture(scope="module")
def bool_model() -> bytes:
    torch.manual_seed(2)
    return export(BoolNet(), (torch.tensor([[True, False, True]]),), ["m"], {"m": {0: "n"}, "y": {0: "n"}})


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.emb = torch.nn.Embedding(VOCAB, 2)

    def forward(self, a, ids):
        return self.fc(a) + self.emb(ids).sum(dim=1)


@pytest.fixture(scope="module")
def two_model() -> bytes:
    torch.manual_seed(3)
    return export(TwoInputs(), (torch.randn(2, 3), torch.tensor([[1, 2], [3, 4]])), ["a", "ids"],
                  {"a": {0: "n"}, "ids": {0: "n"}, "y": {0: "n"}})


class SmallCNN(torch.nn.Module):
    def __init__(self, uint8: bool = False):
        super().__init__()
        self.uint8 = uint8
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        if self.uint8:
            x = x.float() / 255.0
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def cnn_model() -> bytes:
    torch.manual_seed(4)
    return export(SmallCNN(), (torch.randn(2, 3, 8, 8),), ["x"], {"x": {0: "n"}, "y": {0: "n"}})


@pytest.fixture(scope="module")
def cnn_u8_model() -> bytes:
    torch.manual_seed(5)
    return export(SmallCNN(uint8=True), (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8),), ["x"],
                  {"x": {0: "n"}, "y": {0: "n"}})


class Seq(torch.nn.Module):
    """Sum of embeddings with padding_idx 0: padding does not change a row's result."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8, padding_idx=0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids).sum(dim=1))


@pytest.fixture(scope="module")
def seq_model() -> bytes:
    torch.manual_seed(6)
    return export(Seq(), (torch.tensor([[1, 2, 3]]),), ["ids"], {"ids": {0: "n", 1: "l"}, "y": {0: "n"}})


class TextClassificationModel(torch.nn.Module):
    """The AG News tutorial's model: EmbeddingBag + Linear over flat tokens and offsets."""

    def __init__(self, vocab_size=VOCAB, embed_dim=8, num_class=4):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocab_size, embed_dim, sparse=False)
        self.fc = torch.nn.Linear(embed_dim, num_class)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


@pytest.fixture(scope="module")
def bag_model() -> bytes:
    torch.manual_seed(7)
    return export(TextClassificationModel(), (torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])), ["text", "offsets"],
                  {"text": {0: "t"}, "offsets": {0: "b"}, "y": {0: "b"}})


# -- data --------------------------------------------------------------------------------------

RNG = np.random.default_rng(11)
BIG_IDS = [[2**40 + 123, 2**24 + 1, 7], [2**53 + 999, 5, 2**31 + 17], None, [1, None, 3], [999_999_999_999, 0, 1]]
IMAGES = RNG.integers(0, 256, (6, 3, 8, 8)).astype(np.uint8)
TOKENS = [RNG.integers(1, VOCAB, int(k)).tolist() for k in (5, 1, 12, 3, 7, 2)] + [None, [4, None]]


def _expected_ids(rows):
    return [None if r is None or None in r else (np.array(r, np.int64) % 1000).astype(np.float32) for r in rows]


# -- tests -------------------------------------------------------------------------------------


def test_int64_ids_are_fed_exactly(db, strategy, ids_model):
    db.models.register("ids", ids_model)
    assert db.models.get("ids").inputs[0].dtype == "int64"
    make_table(db, "t", {"ids": ("BIGINT[3]", "bigint[]", BIG_IDS)})
    check(db, "SELECT id, predict_array('ids', ids) FROM t", strategy, _expected_ids(BIG_IDS))


def test_int32_ids_and_ints_of_other_widths(db, strategy, ids32_model):
    db.models.register("ids32", ids32_model)
    rows = [[2**31 - 1, 5, 7], [123456789, -3, 0]]
    make_table(db, "t", {"ids": ("INTEGER[]", "int[]", rows), "wide": ("BIGINT[]", "bigint[]", rows)})
    expected = [(np.array(r, np.int64) % 1000).astype(np.float32) for r in rows]
    check(db, "SELECT id, predict_array('ids32', ids) FROM t", strategy, expected)
    check(db, "SELECT id, predict_array('ids32', wide) FROM t", strategy, expected)
    # a value an int32 input cannot hold is refused, not wrapped
    with pytest.raises(dbdl.DTypeMismatch, match="int32"):
        db.sql(q(db, "SELECT predict_array('ids32', CAST([4294967296, 1, 2] AS BIGINT[]))"))


def test_float64_model(db, strategy, double_model):
    db.models.register("dbl", double_model)
    x = RNG.standard_normal((5, 4))
    make_table(db, "t", {"x": ("DOUBLE[4]", "float8[]", x.tolist())})
    expected = ort_run(double_model, {"x": x}).astype(np.float32)
    # relation-centric SQL computes in double precision: it takes float64 models (issue 13)
    check(db, "SELECT id, predict_array('dbl', x) FROM t", strategy, list(expected), relation_refuses=False)


def test_bool_inputs(db, strategy, bool_model):
    db.models.register("b", bool_model)
    m = [[True, False, True], [False, False, False], None, [True, True, True]]
    make_table(db, "t", {"m": ("BOOLEAN[]", "boolean[]", m)})
    expected = [None if r is None else ort_run(bool_model, {"m": np.array([r])})[0] for r in m]
    check(db, "SELECT id, predict_array('b', m) FROM t", strategy, expected)


def test_several_arguments_map_to_inputs_in_order(db, strategy, two_model):
    db.models.register("two", two_model)
    a = RNG.standard_normal((4, 3)).astype(np.float32)
    ids = [[1, 2], [94_999, 3], [5, 6], [7, 8]]
    make_table(db, "t", {"a": ("FLOAT[3]", "real[]", a.tolist()), "ids": ("BIGINT[2]", "bigint[]", ids)})
    expected = ort_run(two_model, {"a": a, "ids": np.array(ids, np.int64)})
    check(db, "SELECT id, predict_array('two', a, ids) FROM t", strategy, list(expected))
    check(db, "SELECT id, predict_class('two', a, ids) FROM t", strategy, list(expected.argmax(axis=1)))
    with pytest.raises(dbdl.ShapeMismatch, match=r"a\W+float32\[3\]\W+ids\W+int64\[2\]"):
        db.sql(q(db, "SELECT predict_array('two', a, ids, ids) FROM t"), strategy=strategy if strategy == "udf" else None)


def test_one_vector_still_feeds_several_inputs(db, strategy, multi_io_onnx):
    db.models.register("multi", multi_io_onnx)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    make_table(db, "t", {"f": ("FLOAT[5]", "real[]", x.tolist()), "a": ("FLOAT[3]", "real[]", x[:, :3].tolist()),
                         "b": ("FLOAT[2]", "real[]", x[:, 3:].tolist())})
    expected = ort_run(multi_io_onnx, {"a": x[:, :3], "b": x[:, 3:]})
    check(db, "SELECT id, predict_array('multi', f) FROM t", strategy, list(expected))
    check(db, "SELECT id, predict_array('multi', a, b) FROM t", strategy, list(expected))


def test_nested_and_flat_images(db, strategy, cnn_model):
    db.models.register("cnn", cnn_model)
    x = IMAGES.astype(np.float32) / 255
    nested = "FLOAT[8][8][3]"  # DuckDB lists sizes innermost first: rows of shape [3, 8, 8]
    make_table(db, "t", {"img": (nested, "real[]", x.tolist()), "flat": ("FLOAT[192]", "real[]", x.reshape(6, -1).tolist())})
    expected = list(ort_run(cnn_model, {"x": x}))
    # relation-centric SQL compiles the CNN; DuckDB's nested array is not the flat form it takes
    check(db, "SELECT id, predict_array('cnn', img) FROM t", strategy, expected,
          relation_refuses=per_backend(db, duckdb=True, postgres=False))
    check(db, "SELECT id, predict_array('cnn', flat) FROM t", strategy, expected, relation_refuses=False)


def test_wrong_image_shapes_name_both_shapes(db, strategy, cnn_model):
    db.models.register("cnn", cnn_model)
    x = IMAGES.astype(np.float32).transpose(0, 2, 3, 1)  # channels last
    make_table(db, "t", {"img": ("FLOAT[3][8][8]", "real[]", x.tolist()),
                         "short": ("FLOAT[100]", "real[]", x.reshape(6, -1)[:, :100].tolist())})
    forced = None if strategy == "relation" else strategy
    with pytest.raises(dbdl.ShapeMismatch, match=r"\[3, 8, 8\].*\[8, 8, 3\]"):
        db.sql("SELECT id, predict_array('cnn', img) FROM t", strategy=forced).fetchall()
    with pytest.raises(dbdl.ShapeMismatch, match=r"192.*\[3, 8, 8\].*100"):
        db.sql("SELECT id, predict_array('cnn', short) FROM t", strategy=forced).fetchall()


def test_uint8_bytes_feed_a_float_model_unscaled(db, strategy, cnn_model):
    db.models.register("cnn", cnn_model)
    flat = IMAGES.reshape(6, -1)
    blobs = [bytes(r) for r in flat]
    # PostgreSQL has no one-byte unsigned array type
    columns = {"raw": ("BLOB", "bytea", blobs),
               **per_backend(db, duckdb={"small": ("UTINYINT[]", "", flat.tolist())}, postgres={})}
    make_table(db, "t", columns)
    expected = list(ort_run(cnn_model, {"x": IMAGES.astype(np.float32)}))  # 0..255, not scaled
    for column in columns:  # bytes are not the numeric array relation-centric SQL takes; UTINYINT[] is
        check(db, f"SELECT id, predict_array('cnn', {column}) FROM t", strategy, expected,
              relation_refuses=column == "raw")


def test_uint8_model_takes_bytes(db, strategy, cnn_u8_model):
    db.models.register("cnn8", cnn_u8_model)
    assert db.models.get("cnn8").inputs[0].dtype == "uint8"
    blobs = [bytes(r) for r in IMAGES.reshape(6, -1)] + [None]
    make_table(db, "t", {"raw": ("BLOB", "bytea", blobs)})
    expected = list(ort_run(cnn_u8_model, {"x": IMAGES})) + [None]
    check(db, "SELECT id, predict_array('cnn8', raw) FROM t", strategy, expected)


def test_variable_length_tokens_padded_with_pad_id(db, strategy, seq_model):
    db.models.register("seq", seq_model)
    make_table(db, "t", {"tokens": ("INTEGER[]", "int[]", TOKENS)})
    forced = None if strategy == "relation" else strategy
    if not (forced == "udf" and has(db, "udf_row_at_a_time")):
        # rows of different lengths in one batch need a pad id (PostgreSQL's in-server function
        # scores one row per call, so it never pads)
        with pytest.raises(dbdl.ShapeMismatch, match="pad_id"):
            db.sql("SELECT id, predict_array('seq', tokens) FROM t", strategy=forced).fetchall()
    db.models.set_options("seq", pad_id=0)
    expected = [None if r is None or None in r else ort_run(seq_model, {"ids": np.array([r], np.int64)})[0]
                for r in TOKENS]
    check(db, "SELECT id, predict_array('seq', tokens) FROM t", strategy, expected)
    check(db, "SELECT id, predict_class('seq', tokens) FROM t", strategy,
          [None if e is None else int(np.argmax(e)) for e in expected])


def test_embedding_bag_gets_flat_tokens_and_offsets(db, strategy, bag_model):
    db.models.register("news", bag_model)
    info = db.models.get("news")
    assert [s.name for s in info.inputs] == ["text", "offsets"]
    make_table(db, "t", {"tokens": ("INTEGER[]", "int[]", TOKENS)})
    expected = [None if r is None or None in r else
                ort_run(bag_model, {"text": np.array(r, np.int64), "offsets": np.array([0], np.int64)})[0]
                for r in TOKENS]
    check(db, "SELECT id, predict_array('news', tokens) FROM t", strategy, expected)
    check(db, "SELECT id, predict_class('news', tokens) FROM t", strategy,
          [None if e is None else int(np.argmax(e)) for e in expected])


def test_fixed_width_model_refuses_ragged_rows(db, strategy, ids_model):
    db.models.register("ids", ids_model)
    make_table(db, "t", {"ids": ("BIGINT[]", "bigint[]", [[1, 2, 3], [1, 2]])})
    forced = None if strategy == "relation" else strategy
    with pytest.raises(dbdl.ShapeMismatch, match="3 features per row|different lengths"):
        db.sql("SELECT id, predict_array('ids', ids) FROM t", strategy=forced).fetchall()


def test_fractional_values_for_an_integer_input_are_refused(db, strategy, ids_model):
    db.models.register("ids", ids_model)
    make_table(db, "t", {"x": ("DOUBLE[3]", "float8[]", [[1.5, 2.0, 3.0]])})
    forced = None if strategy == "relation" else strategy
    with pytest.raises(dbdl.DTypeMismatch, match="whole numbers"):
        db.sql("SELECT id, predict_array('ids', x) FROM t", strategy=forced).fetchall()


def test_relation_refusal_names_the_reason(db, table, mlp_onnx, ids_model, two_model):
    db.models.register("ids", ids_model)
    db.models.register("two", two_model)
    # integer inputs reach relation-centric SQL since issue 13 (token ids); this model's Mod does not compile
    with pytest.raises(dbdl.StrategyUnavailable, match="operator Mod is not supported"):
        db.sql(q(db, "SELECT predict_array('ids', CAST([1, 2, 3] AS BIGINT[])) FROM t"), strategy="relation")
    plan = str(db.explain(q(db, "SELECT predict_array('two', feats, CAST([1, 2] AS BIGINT[])) FROM t")))
    assert "2 feature arguments" in plan


def test_model_named_by_a_column_takes_the_same_forms(db, ids_model, bag_model):
    db.models.register("ids", ids_model)
    db.models.register("news", bag_model)
    make_table(db, "t", {"ids": ("BIGINT[3]", "bigint[]", BIG_IDS), "tokens": ("INTEGER[]", "int[]", TOKENS[:5])})
    got = rows_of(db, "SELECT id, predict_array(CASE WHEN id >= 0 THEN 'ids' END, ids) FROM t", None)
    for g, e in zip(got, _expected_ids(BIG_IDS)):
        assert (g is None) == (e is None)
        if e is not None:
            np.testing.assert_array_equal(np.asarray(g, np.float32), e)
    got = rows_of(db, "SELECT id, predict_class(CASE WHEN id >= 0 THEN 'news' END, tokens) FROM t", None)
    expected = [int(np.argmax(ort_run(bag_model, {"text": np.array(r, np.int64), "offsets": np.zeros(1, np.int64)})))
                for r in TOKENS[:5]]
    assert got == expected


def test_loaded_model_takes_the_same_forms(db, two_model, bag_model, seq_model):
    db.models.register("two", two_model)
    db.models.register("news", bag_model)
    db.models.register("seq", seq_model)
    a = RNG.standard_normal((3, 3)).astype(np.float32)
    ids = np.array([[1, 2], [3, 4], [94_000, 5]], np.int64)
    np.testing.assert_allclose(db.models.load("two")(a, ids), ort_run(two_model, {"a": a, "ids": ids}), atol=ATOL)
    rows = [[1, 2, 3], [4], [5, 6]]
    flat = np.array(sum(rows, []), np.int64)
    expected = ort_run(bag_model, {"text": flat, "offsets": np.array([0, 3, 4], np.int64)})
    np.testing.assert_allclose(db.models.load("news")(rows), expected, atol=ATOL)
    db.models.set_options("seq", pad_id=0)
    padded = np.array([[1, 2, 3], [4, 0, 0], [5, 6, 0]], np.int64)
    np.testing.assert_allclose(db.models.load("seq")(rows), ort_run(seq_model, {"ids": padded}), atol=ATOL)


def test_pad_id_and_feed_options_are_checked(db, seq_model):
    db.models.register("seq", seq_model)
    for bad in ("0", 1.5, True):
        with pytest.raises(dbdl.ConfigurationError, match="pad_id"):
            db.models.set_options("seq", pad_id=bad)
    with pytest.raises(dbdl.ConfigurationError, match="feed"):
        db.models.set_options("seq", feed="sideways")
    assert db.models.set_options("seq", pad_id=0)["pad_id"] == 0
    assert db.models.options("seq")["pad_id"] == 0
    assert db.models.set_options("seq", pad_id=None)["pad_id"] is None


def test_result_cache_falls_back_to_uncached_for_other_forms(db, strategy, two_model, cnn_model):
    """The cache keys one float32 vector: other forms run uncached, with the reason in EXPLAIN."""
    db.models.register("two", two_model)
    db.models.register("cnn", cnn_model)
    for name in ("two", "cnn"):
        db.models.set_options(name, cache=True)
    a = RNG.standard_normal((4, 3)).astype(np.float32)
    ids = [[1, 2], [3, 4], [5, 6], [7, 8]]
    make_table(db, "t", {"a": ("FLOAT[3]", "real[]", a.tolist()), "ids": ("BIGINT[2]", "bigint[]", ids),
                         "raw": ("BLOB", "bytea", [bytes(r) for r in IMAGES.reshape(6, -1)[:4]])})
    sql = "SELECT id, predict_array('two', a, ids) FROM t"
    assert "result cache not used: the call passes 2 feature arguments" in str(db.explain(q(db, sql)))
    check(db, sql, strategy, list(ort_run(two_model, {"a": a, "ids": np.array(ids, np.int64)})))
    # the other forms this backend's EXPLAIN names as uncached, and why
    for column, why in per_backend(db, duckdb={"raw": "the features are BLOB bytes"}, postgres={}).items():
        sql = f"SELECT id, predict_array('cnn', {column}) FROM t"
        assert f"result cache not used: {why}" in str(db.explain(sql))
        check(db, sql, strategy, list(ort_run(cnn_model, {"x": IMAGES[:4].astype(np.float32)})))
    assert all(s.rows == 0 for s in db.models.cache_stats())


class UserItem(torch.nn.Module):
    """Two 1-D id inputs, one number per row each (a recommender's user and item)."""

    def __init__(self):
        super().__init__()
        self.users = torch.nn.Embedding(1000, 4)
        self.items = torch.nn.Embedding(VOCAB, 4)

    def forward(self, user, item):
        return (self.users(user) * self.items(item)).sum(dim=1, keepdim=True)


def test_one_number_per_row_feeds_1d_inputs(db, strategy):
    torch.manual_seed(8)
    model = export(UserItem(), (torch.tensor([1, 2]), torch.tensor([3, 4])), ["user", "item"],
                   {"user": {0: "n"}, "item": {0: "n"}, "y": {0: "n"}})
    db.models.register("rec", model)
    assert [s.shape for s in db.models.get("rec").inputs] == [(), ()]
    users, items = [3, 999, 0, None, 7], [94_999, 1, 2, 5, None]
    make_table(db, "t", {"u": ("BIGINT", "bigint", users), "i": ("INTEGER", "integer", items)})
    expected = [None if u is None or i is None else
                ort_run(model, {"user": np.array([u], np.int64), "item": np.array([i], np.int64)})[0, 0]
                for u, i in zip(users, items)]
    check(db, "SELECT id, predict('rec', u, i) FROM t", strategy, expected)


def test_dl_runs_a_large_batch_in_slices_each_padded_to_its_own_rows(db, seq_model, monkeypatch):
    """More rows than one DL run takes (strategies/dl.py RUN_ROWS, lowered here so the table stays
    small): each run is padded to its own longest row and the outputs come back in row order, equal
    to row-by-row onnxruntime."""
    from dbdl.strategies import dl

    monkeypatch.setattr(dl, "RUN_ROWS", 256)
    n = 2 * dl.RUN_ROWS + 123
    db.sql(per_backend(
        db, duckdb=f"CREATE TABLE t AS SELECT i::INTEGER AS id, list_transform(range(1 + i % 17), "
                   f"lambda x: ((x * 7 + i) % {VOCAB} + 1)::INTEGER) AS tokens FROM range({n}) r(i)",
        postgres=f"CREATE TABLE t AS SELECT i AS id, ARRAY(SELECT ((x * 7 + i) % {VOCAB} + 1)::int "
                 f"FROM generate_series(0, i % 17) x) AS tokens FROM generate_series(0, {n - 1}) i"))
    db.backend.analyze("t")  # PostgreSQL's planner wants statistics; DuckDB needs none
    db.models.register("seq", seq_model)
    db.models.set_options("seq", pad_id=0)
    got = rows_of(db, "SELECT id, predict_class('seq', tokens) FROM t", "dl")
    expected = [int(np.argmax(ort_run(seq_model, {"ids": np.array([[(x * 7 + i) % VOCAB + 1 for x in range(1 + i % 17)]],
                                                                  np.int64)})[0])) for i in range(n)]
    assert got == expected


class WideCNN(torch.nn.Module):
    """An ImageNet-sized input (3x224x224 = 150,528 values a row): wider than a DuckDB ARRAY holds."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 7, stride=8)
        self.fc = torch.nn.Linear(4 * 28 * 28, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_rows_wider_than_a_duckdb_array_run_under_udf_and_dl(db, strategy):
    torch.manual_seed(8)
    model = export(WideCNN().eval(), (torch.randn(1, 3, 224, 224),), ["x"], {})  # batch fixed at 1, as users export
    db.models.register("wide", model)
    x = np.random.default_rng(8).random((3, 3, 224, 224), dtype=np.float32)
    make_table(db, "t", {"f": ("FLOAT[]", "real[]", [row.tolist() for row in x.reshape(3, -1)])})
    expected = list(ort_run(db.models.model_bytes("wide"), {"x": x}))
    check(db, "SELECT id, predict_array('wide', f) FROM t", strategy, expected,
          relation_refuses=per_backend(db, duckdb=True, postgres=False))


def test_create_table_writes_nested_and_wide_arrays_that_predict_reads(db, strategy, cnn_model):
    """db.create_table of an Arrow column of nested fixed-size lists (images [3, 8, 8]) makes a
    nested array column (DuckDB FLOAT[8][8][3], PostgreSQL real[][][]) that predict feeds as is;
    rows wider than a DuckDB ARRAY holds are stored as lists."""
    import pyarrow as pa

    images = IMAGES.astype(np.float32)
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), 8), 8), 3)
    db.create_table("t", pa.table({"id": pa.array(range(len(images)), pa.int32()), "img": nested}))
    assert np.allclose(np.array(db.sql("SELECT img FROM t ORDER BY id").fetchall()[2][0], dtype=np.float32),
                       images[2])
    db.models.register("cnn", cnn_model)
    check(db, "SELECT id, predict_array('cnn', img) FROM t", strategy, list(ort_run(cnn_model, {"x": images})),
          relation_refuses=per_backend(db, duckdb=True, postgres=False))
    wide = np.random.default_rng(3).random((2, 100_001), dtype=np.float32)
    db.create_table("w", {"id": np.arange(2), "f": wide})
    assert np.array_equal(np.array(db.sql("SELECT f FROM w ORDER BY id").fetchall()[1][0], dtype=np.float32), wide[1])
