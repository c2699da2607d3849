"""train_export and the readers take what tables hold (issue 11 §2): variable-length token lists
(collated padded or as the AG News tutorial's flat text + offsets) and compact uint8 images, stored
exactly, read back exactly, and trained on with the same losses, step for step, as the same data
in memory under a plain torch DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import has, per_backend, release_for_workers
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, TensorDataset

import dbdl
from dbdl_udf.datasets import assign_splits
from test_security import world  # noqa: F401 - the fixture: a migrated PostgreSQL database with attacker logins

VOCAB = 95_000
PAD = VOCAB  # a pad id outside the vocabulary: Embedding(VOCAB + 1, ..., padding_idx=PAD)


def make_tokens(n: int, seed: int = 0, max_len: int = 18, vocab: int = VOCAB):
    """Synthetic AG-News-like rows: token lists of 1..max_len ids whose range depends on the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    rows = []
    for y in labels:
        length = int(rng.integers(1, max_len + 1))
        lo = int(y) * (vocab // 4)
        rows.append(rng.integers(lo, lo + vocab // 4, length))
    return rows, labels.astype(np.int64)


def _list_literal(db, values, element: str) -> str:
    pg_type = {"INTEGER": "pg_catalog.int4", "BIGINT": "pg_catalog.int8", "DOUBLE": "pg_catalog.float8"}[element]
    spark_type = {"INTEGER": "INT", "BIGINT": "BIGINT", "DOUBLE": "DOUBLE"}[element]
    inner = ", ".join(str(v) for v in values)
    return per_backend(db, duckdb=f"CAST([{inner}] AS {element}[])",
                       postgres=f"ARRAY[{inner}]::{pg_type}[]" if len(values) else f"'{{}}'::{pg_type}[]",
                       spark=f"CAST(array({inner}) AS ARRAY<{spark_type}>)")


def token_table(db, name: str, rows, labels, element: str = "INTEGER") -> None:
    column = per_backend(db, duckdb=f"{element}[]",
                         postgres={"INTEGER": "integer[]", "BIGINT": "bigint[]", "DOUBLE": "double precision[]"}[element],
                         spark={"INTEGER": "ARRAY<INT>", "BIGINT": "ARRAY<BIGINT>", "DOUBLE": "ARRAY<DOUBLE>"}[element])
    db.sql(f"CREATE TABLE {name} (id integer, tokens {column}, label integer)")
    values = ", ".join(f"({i}, {_list_literal(db, r.tolist(), element)}, {int(y)})"
                       for i, (r, y) in enumerate(zip(rows, labels)))
    db.sql(f"INSERT INTO {name} VALUES {values}")


def in_split_order(items, labels, split: str, seed: int = 0, train=0.8, validation=0.1):
    """The rows of a split in the order train_export promises (source order within the split)."""
    _, codes, _ = assign_splits(len(labels), train, validation, seed)
    code = {"train": 0, "validation": 1, "test": 2}[split]
    keep = np.flatnonzero(codes == code)
    return [items[i] for i in keep], labels[keep]


def dataset_tables(db) -> list[str]:
    # the backend's own listing of its tables and views (Spark has no information_schema)
    return sorted(t for t in db.backend.tables_in(db.backend.data_schema) if t.startswith("ds"))


# the collate functions of PyTorch's tutorials, over (tokens, label) samples ------------------------


def collate_batch(batch):
    """The AG News text-classification tutorial's collate_batch (labels, text, offsets)."""
    label_list, text_list, offsets = [], [], [0]
    for _text, _label in batch:
        label_list.append(int(_label))
        processed_text = torch.as_tensor(_text, dtype=torch.int64)  # the tutorial: torch.tensor(list)
        text_list.append(processed_text)
        offsets.append(processed_text.size(0))
    label_list = torch.tensor(label_list, dtype=torch.int64)
    offsets = torch.tensor(offsets[:-1]).cumsum(dim=0)
    text_list = torch.cat(text_list)
    return label_list, text_list, offsets


def collate_padded(batch):
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.int64)
    seqs = [torch.tensor(t, dtype=torch.int64) for t, _ in batch]
    return labels, pad_sequence(seqs, batch_first=True, padding_value=PAD), torch.tensor([len(s) for s in seqs])


class TextClassificationModel(torch.nn.Module):
    """The AG News tutorial's model: EmbeddingBag + Linear."""

    def __init__(self, vocab_size=VOCAB, embed_dim=16, num_class=4):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocab_size, embed_dim, sparse=False)
        self.fc = torch.nn.Linear(embed_dim, num_class)
        self.embedding.weight.data.uniform_(-0.5, 0.5)
        self.fc.weight.data.uniform_(-0.5, 0.5)
        self.fc.bias.data.zero_()

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


class PaddedModel(torch.nn.Module):
    """Embedding over padded [B, L] tokens, mean over each row's length, Linear."""

    def __init__(self, embed_dim=16, num_class=4):
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCAB + 1, embed_dim, padding_idx=PAD)
        self.fc = torch.nn.Linear(embed_dim, num_class)

    def forward(self, text, lengths):
        return self.fc(self.embedding(text).sum(1) / lengths.unsqueeze(1))


def train_text(loader, mode: str, epochs: int = 2, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    model = TextClassificationModel() if mode == "offsets" else PaddedModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    losses = []
    for _ in range(epochs):
        for labels, text, extra in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(text, extra), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# -- token lists -------------------------------------------------------------------------------------


def test_token_lists_are_stored_and_read_back_exactly(db):
    rows, labels = make_tokens(150, seed=1)
    rows[3] = np.zeros(0, dtype=np.int64)  # an empty list is a row too
    token_table(db, "news", rows, labels)
    info = db.train_export("SELECT tokens, label FROM news ORDER BY id", "news", ragged=True)
    assert (info.shape, info.dtype, info.label_dtype, info.ragged, info.n_rows) == ((-1,), "int32", "int64", True, 150)
    assert db.datasets.get("news") == info
    # compact: integers, one per token (DuckDB INTEGER[]; PostgreSQL 4 bytes a token in bytea)
    types = per_backend(db, duckdb=[(f"SELECT typeof(features) FROM {info.view} LIMIT 1", [("INTEGER[]",)])],
                        postgres=[], spark=[(f"SELECT typeof(features) FROM {info.view} LIMIT 1", [("array<int>",)])])
    for sql, want in types:
        assert db.sql(sql).fetchall() == want
    stored = db.sql(per_backend(db, duckdb=f"SELECT sum(len(features)) FROM {info.view}",
                                postgres=f"SELECT sum(pg_catalog.octet_length(features)) / 4 FROM {info.view}",
                                spark=f"SELECT sum(size(features)) FROM {info.view}")
                    ).fetchall()[0][0]
    assert int(stored) == sum(len(r) for r in rows)
    for split in ("train", "validation", "test"):
        want_rows, want_labels = in_split_order(rows, labels, split)
        got_rows, got_labels = db.training_set("news", split, cache=False).arrays()
        assert np.array_equal(got_labels, want_labels)
        assert len(got_rows) == len(want_rows) and all(
            g.dtype == np.int32 and np.array_equal(g, w) for g, w in zip(got_rows, want_rows))
    # a ragged dataset's shape gives no example input: register asks for one, naming both forms
    with pytest.raises(dbdl.InvalidModel, match="EmbeddingBag.*padded sequence"):
        db.models.register("bag", torch.nn.EmbeddingBag(10, 2), dataset="news")
    assert db.models.names() == []
    tokens, label = db.training_set("news", "train", cache=False)[5]
    want_rows, want_labels = in_split_order(rows, labels, "train")
    assert tokens.dtype == torch.int64 and torch.equal(tokens, torch.from_numpy(want_rows[5]))
    assert int(label) == want_labels[5]
    # int64 ids beyond float precision stay exact
    big_rows = [np.array([2**53 + 1, -(2**62) + 3, 7], dtype=np.int64), np.array([2**40 + 5], dtype=np.int64)] * 3
    token_table(db, "big", big_rows, np.arange(6) % 2, element="BIGINT")
    big = db.train_export("SELECT tokens, label FROM big ORDER BY id", "big", ragged=True, train_fraction=1.0,
                          validation_fraction=0.0)
    assert big.dtype == "int64"
    got, _ = db.training_set("big", cache=False).arrays()
    assert all(np.array_equal(g, w) for g, w in zip(got, big_rows))


def test_collate_modes_match_the_tutorials_collate_functions(db, tmp_path):
    rows, labels = make_tokens(120, seed=2)
    token_table(db, "news", rows, labels)
    out = db.sql("CALL dbdl.train_export('SELECT tokens, label FROM news ORDER BY id', 'news', ragged => true)")
    if has(db, "call_returns_rows"):
        assert out.fetchall()[0][3] == [-1]
    assert db.datasets.get("news").shape == (-1,)
    want_rows, want_labels = in_split_order(rows, labels, "train")
    samples = list(zip(want_rows, want_labels))
    # per-sample form + DataLoader batches: the same tensors as the tutorial's collate over the samples
    for collate, reference in (("offsets", collate_batch), ("padded", collate_padded)):
        ds = db.training_set("news", collate=collate, pad_id=PAD, cache=tmp_path)
        got = list(DataLoader(ds, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(4)))
        want = list(DataLoader(samples, batch_size=10, shuffle=True, collate_fn=reference,
                               generator=torch.Generator().manual_seed(4)))
        assert len(got) == len(want) == 10
        for g, w in zip(got, want):
            assert type(g).__name__ == ("OffsetsBatch" if collate == "offsets" else "PaddedBatch")
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(g, w))
        assert got[0].labels is got[0][0]
    # batch form: rows kB..kB+B-1
    batches = db.training_set("news", batch_size=32, collate="offsets", cache=False)
    labels3, text3, offsets3 = batches[2]
    w_labels, w_text, w_offsets = collate_batch(samples[64:])
    assert torch.equal(labels3, w_labels) and torch.equal(text3, w_text) and torch.equal(offsets3, w_offsets)
    padded = db.training_set("news", batch_size=32, collate="padded", pad_id=-1, cache=False)[0]
    assert padded.text.shape == (32, max(len(r) for r in want_rows[:32]))
    assert torch.equal(padded.lengths, torch.tensor([len(r) for r in want_rows[:32]]))
    assert int(padded.text[0, len(want_rows[0]):].eq(-1).sum()) == padded.text.shape[1] - len(want_rows[0])
    # the per-sample form with one's own collate_fn gets (tokens, label) samples
    plain = db.training_set("news", cache=False)
    mine = next(iter(DataLoader(plain, batch_size=8, collate_fn=collate_batch)))
    assert all(torch.equal(a, b) for a, b in zip(mine, collate_batch(samples[:8])))
    # dtype int32 tokens for whoever wants them
    assert db.training_set("news", collate="offsets", dtype="int32", cache=False, batch_size=4)[0].text.dtype == \
        torch.int32


# workers only with the padded collate (the one that does more in the workers): each worker case
# costs two process starts with torch imported
@pytest.mark.parametrize("collate, workers", [("offsets", 0), ("padded", 0), ("padded", 2)])
def test_text_training_curve_equals_the_in_memory_one(url, collate, workers, tmp_path):
    db = dbdl.connect(url)
    rows, labels = make_tokens(300, seed=3)
    token_table(db, "news", rows, labels)
    db.train_export("SELECT tokens, label FROM news ORDER BY id", "news", ragged=True, seed=5)
    ds = db.training_set("news", collate=collate, pad_id=PAD, cache=tmp_path, block_rows=50)
    if workers:
        release_for_workers(db)  # DuckDB: DataLoader workers open the file read-only
    want_rows, want_labels = in_split_order(rows, labels, "train", seed=5)
    samples = list(zip(want_rows, want_labels))

    def loader(dataset, collate_fn=None):
        return DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers, collate_fn=collate_fn,
                          generator=torch.Generator().manual_seed(11))

    from_db = train_text(loader(ds), collate)
    if workers == 0:  # epoch 2 came from the LMDB cache alone
        queries = ds.store.queries
        assert ds.cache.count() == 5  # ceil(240 / 50) blocks
        train_text(loader(ds), collate, epochs=1)
        assert ds.store.queries == queries
    in_memory = train_text(loader(samples, collate_batch if collate == "offsets" else collate_padded), collate)
    assert len(from_db) == 2 * 15
    assert from_db == in_memory  # bitwise, at every step
    db.close()


def test_shuffled_text_stream_with_workers_and_prefetch_equals_the_in_memory_order(url, tmp_path):
    db = dbdl.connect(url)
    rows, labels = make_tokens(300, seed=4)
    token_table(db, "news", rows, labels)
    db.train_export("SELECT tokens, label FROM news ORDER BY id", "news", ragged=True)
    stream = db.training_set("news", shuffle=True, seed=9, batch_size=16, collate="offsets", block_rows=37,
                             buffer_blocks=2, prefetch=2, cache=tmp_path)
    release_for_workers(db)
    # what the DataLoader yields: the workers' batches in turn, each worker's rows in ds.order(w, 2)
    per_worker = []
    for w in range(2):
        order = stream.order(w, 2)
        per_worker.append([order[i:i + 16] for i in range(0, len(order), 16)])
    expected = []
    for k in range(max(len(b) for b in per_worker)):
        expected += [b[k] for b in per_worker if k < len(b)]
    want = [collate_batch([(rows[i], labels[i]) for i in _source_positions(len(labels), ids)]) for ids in expected]
    for _ in range(2):  # the second time from the LMDB cache
        got = list(DataLoader(stream, batch_size=None, num_workers=2))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert all(torch.equal(a, b) for a, b in zip(g, w))
    assert train_text(DataLoader(stream, batch_size=None, num_workers=2), "offsets", epochs=1) == \
        train_text(want, "offsets", epochs=1)


def _source_positions(n: int, row_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Source positions of dataset row ids (train_export numbers the splits one after another)."""
    ids, _, _ = assign_splits(n, 0.8, 0.1, seed)
    position = np.empty(n, dtype=np.int64)
    position[ids] = np.arange(n)
    return position[row_ids]


# -- uint8 images ---------------------------------------------------------------------------------------


def make_images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[np.arange(n), labels % 3, :8, :8] = 255  # something to learn
    return images, labels.astype(np.int64)


def test_uint8_images_stay_one_byte_and_come_out_as_asked(db):
    images, labels = make_images(60, seed=1)
    db.create_table("cifar", {"id": np.arange(60), "img": [bytes(im.tobytes()) for im in images], "label": labels})
    info = db.train_export("SELECT img, label FROM cifar ORDER BY id", "cifar", shape=(3, 32, 32))
    assert (info.shape, info.dtype) == ((3, 32, 32), "uint8")
    sql, want = per_backend(
        db, duckdb=(f"SELECT typeof(features) FROM {info.view} LIMIT 1", [("UTINYINT[3072]",)]),
        postgres=("SELECT min(pg_catalog.octet_length(features)), max(pg_catalog.octet_length(features)) FROM "
                  + info.view, [(3072, 3072)]),
        spark=(f"SELECT typeof(features), min(length(features)), max(length(features)) FROM {info.view} "
               "GROUP BY 1", [("binary", 3072, 3072)]))
    assert db.sql(sql).fetchall() == want
    want_x, want_y = in_split_order(list(images), labels, "train")
    want_x = np.stack(want_x)
    x, y = db.training_set("cifar", cache=False).arrays()
    assert x.dtype == np.uint8 and np.array_equal(x, want_x) and np.array_equal(y, want_y)
    batch_x, batch_y = db.training_set("cifar", batch_size=16, dtype="float32", cache=False)[1]
    assert batch_x.dtype == torch.float32 and batch_x.shape == (16, 3, 32, 32)
    assert torch.equal(batch_x, torch.from_numpy(want_x[16:32]).float())
    one, _ = db.training_set("cifar", dtype="uint8", cache=False)[0]
    assert one.dtype == torch.uint8 and torch.equal(one, torch.from_numpy(want_x[0]))
    with pytest.raises(dbdl.DTypeMismatch, match="cannot hold exactly"):
        db.training_set("cifar", dtype="int8")
    # nested arrays keep their dimensions when no shape is given
    db.sql(per_backend(
        db, duckdb="CREATE TABLE nested AS SELECT id, CAST([[[v, v + 1], [v + 2, v + 3], [v + 4, v + 5]]] AS "
                   "FLOAT[2][3][1]) AS img, label FROM (SELECT id, CAST(id AS FLOAT) AS v, label FROM cifar)",
        postgres="CREATE TABLE nested AS SELECT id, ARRAY[[[id, id + 1], [id + 2, id + 3], [id + 4, id + 5]]]::"
                 "pg_catalog.float4[] AS img, label FROM cifar",
        spark="CREATE TABLE nested AS SELECT id, CAST(array(array(array(id, id + 1), array(id + 2, id + 3), "
              "array(id + 4, id + 5))) AS ARRAY<ARRAY<ARRAY<FLOAT>>>) AS img, label FROM cifar"))
    nested_query = "SELECT img, label FROM nested ORDER BY id"
    nested = db.train_export(nested_query, "nested")
    assert nested.shape == (1, 3, 2)
    got, _ = db.training_set("nested", "all", cache=False).arrays()
    ids = np.array(_split_positions(60), dtype=np.float32)
    assert got.shape == (60, 1, 3, 2)
    assert np.array_equal(got, (ids[:, None] + np.arange(6, dtype=np.float32)).reshape(60, 1, 3, 2))


def _fixed_uint8(matrix: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x / 255.0)), 1))


@pytest.mark.never(["postgres"], reason="PostgreSQL has no one-byte unsigned array type (its uint8 images are bytea)")
@pytest.mark.never(["spark"], reason="Spark has no unsigned byte type (its uint8 images are BINARY)")
def test_a_utinyint_array_column_exports_as_uint8_images(db):
    """DuckDB's UTINYINT[3072]: one byte a value, exported with a shape like a BLOB of image bytes."""
    import pyarrow as pa

    images, labels = make_images(60, seed=1)
    want_x = np.stack(in_split_order(list(images), labels, "train")[0])
    # (db.create_table stores fixed-size lists as FLOAT[n]: load a UTINYINT[3072] column directly)
    db.backend.con.register("arr_src", pa.table({"id": np.arange(60), "img": _fixed_uint8(images.reshape(60, -1)),
                                                 "label": labels}))
    db.sql("CREATE TABLE arr AS SELECT * FROM arr_src")
    assert db.sql("SELECT typeof(img) FROM arr LIMIT 1").fetchall() == [("UTINYINT[3072]",)]
    flat = db.train_export("SELECT img, label FROM arr ORDER BY id", "arr", shape=(3, 32, 32))
    assert flat.dtype == "uint8" and np.array_equal(db.training_set("arr", cache=False).arrays()[0], want_x)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_training_curve_equals_the_in_memory_one(url, workers, tmp_path):
    db = dbdl.connect(url)
    images, labels = make_images(100, seed=2)
    db.create_table("cifar", {"id": np.arange(100), "img": [bytes(im.tobytes()) for im in images], "label": labels})
    db.sql("CALL dbdl.train_export('SELECT img, label FROM cifar ORDER BY id', 'cifar', shape => "
           + per_backend(db, duckdb="[3, 32, 32]", postgres="ARRAY[3, 32, 32]", spark="array(3, 32, 32)") + ", seed => 2)")
    ds = db.training_set("cifar", dtype="float32", cache=tmp_path, block_rows=24, prefetch=1)
    if workers:
        release_for_workers(db)
    want_x, want_y = in_split_order(list(images), labels, "train", seed=2)
    memory = TensorDataset(torch.from_numpy(np.stack(want_x)).float(), torch.from_numpy(want_y))

    def curve(dataset):
        torch.manual_seed(0)
        model = TinyCNN()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(2):
            for x, y in DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers,
                                   generator=torch.Generator().manual_seed(3)):
                assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return losses

    from_db, in_memory = curve(ds), curve(memory)
    assert len(from_db) == 2 * 5 and from_db == in_memory
    db.close()


# -- refusals ------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_the_fix_and_leave_nothing(db):
    rows, labels = make_tokens(12, seed=5)
    token_table(db, "news", rows, labels)
    token_table(db, "floats", [r.astype(np.float64) / 7 for r in rows], labels, element="DOUBLE")
    nested = per_backend(db, duckdb="SELECT [[1, 2], [3]] AS tokens, 1 AS label",
                         postgres="SELECT ARRAY[[1, 2], [3, 4]]::pg_catalog.int4[] AS tokens, 1 AS label",
                         spark="SELECT array(array(1, 2), array(3)) AS tokens, 1 AS label")
    null_in_list = per_backend(db, duckdb="[1, NULL]", postgres="ARRAY[1, NULL]::pg_catalog.int4[]",
                               spark="array(1, NULL)")
    db.create_table("pics", {"id": np.arange(3), "img": [b"\x01\x02", b"\x01\x02\x03", b"\x04\x05"],
                             "label": [0, 1, 2]})
    cases = [
        ("SELECT tokens, label FROM news", {}, dbdl.ShapeMismatch, "ragged => true"),
        ("SELECT tokens, label FROM news", {"ragged": True, "shape": (4,)}, dbdl.ShapeMismatch, "drop shape"),
        ("SELECT tokens, label FROM news", {"shape": (-1,)}, dbdl.ShapeMismatch, "ragged => true"),
        ("SELECT CASE WHEN id = 7 THEN NULL ELSE tokens END AS tokens, label FROM news", {"ragged": True},
         dbdl.DTypeMismatch, "row 7 of the query has a NULL list"),
        ("SELECT CASE WHEN id = 2 THEN " + null_in_list
         + " ELSE tokens END AS tokens, label FROM news ORDER BY id", {"ragged": True}, dbdl.DTypeMismatch,
         "row 2 .*NULL"),
        ("SELECT tokens, CASE WHEN id = 4 THEN NULL ELSE label END AS label FROM news ORDER BY id", {"ragged": True},
         dbdl.DTypeMismatch, "row 4 .*NULL label"),
        (nested, {"ragged": True}, dbdl.ShapeMismatch, "one-dimensional"),
        ("SELECT id, label FROM news", {"ragged": True}, dbdl.DTypeMismatch, "one list column"),
        ("SELECT img, label FROM pics ORDER BY id", {}, dbdl.ShapeMismatch, "row 1 has 3 values"),
        ("SELECT CASE WHEN id = 1 THEN NULL ELSE img END AS img, label FROM pics", {"ragged": True},
         dbdl.DTypeMismatch, "NULL"),
        ("SELECT tokens, label FROM news", {"ragged": True, "dtype": "uint8"}, dbdl.DTypeMismatch, "range"),
        ("SELECT tokens, label FROM floats", {"ragged": True, "dtype": "int32"}, dbdl.DTypeMismatch, "fractional"),
        ("SELECT tokens, label FROM news", {"ragged": "yes"}, dbdl.ShapeMismatch, "true or false"),
        ("SELECT tokens, label FROM news", {"ragged": True, "label_column": 'label"; DROP TABLE news; --'},
         dbdl.QueryError, "no label column"),
        ("SELECT tokens, label FROM news", {"ragged": True, "features": ['tokens") FROM news; DROP TABLE news; --']},
         dbdl.QueryError, "no column"),
    ]
    for query, options, error, message in cases:
        with pytest.raises(error, match=message):
            db.train_export(query, "d", **options)
        assert dataset_tables(db) == [] and db.datasets.list() == [], (query, options)
    for hostile in ("d; DROP TABLE news", "ds_x\"", "", "x" * 49, "1abc"):
        with pytest.raises(dbdl.InvalidName):
            db.train_export("SELECT tokens, label FROM news", hostile, ragged=True)
    assert dataset_tables(db) == [] and db.datasets.list() == []
    assert db.sql("SELECT count(*) FROM news").fetchall() == [(12,)]
    # bytes of different lengths are ragged rows of uint8
    pics = db.train_export("SELECT img, label FROM pics ORDER BY id", "pics", ragged=True, train_fraction=1.0,
                           validation_fraction=0.0)
    assert pics.dtype == "uint8" and [r.tolist() for r in db.training_set("pics", cache=False).arrays()[0]] == [
        [1, 2], [1, 2, 3], [4, 5]]
    db.datasets.drop("pics")
    # readers: what the dataset cannot give
    db.train_export("SELECT tokens, label FROM news ORDER BY id", "news", ragged=True)
    db.train_export("SELECT tokens, label FROM floats ORDER BY id", "floats", ragged=True)
    db.create_table("flat", {"x": np.ones((4, 3), np.float32), "label": [0, 1, 0, 1]})
    db.train_export("SELECT x, label FROM flat", "flat")
    with pytest.raises(dbdl.ConfigurationError, match="collate='padded'"):
        db.training_set("news", batch_size=4)
    with pytest.raises(dbdl.ConfigurationError, match="collate='padded'"):
        db.training_set("news", shuffle=True, batch_size=4)
    with pytest.raises(dbdl.ConfigurationError, match="one of padded, offsets"):
        db.training_set("news", collate="stack")
    with pytest.raises(dbdl.ConfigurationError, match="drop collate"):
        db.training_set("flat", collate="offsets")
    with pytest.raises(dbdl.DTypeMismatch, match="CAST\\(tokens AS INTEGER\\[\\]\\)"):
        db.training_set("floats", collate="offsets")
    with pytest.raises(dbdl.DTypeMismatch, match="dtype must be int64 or int32"):
        db.training_set("news", collate="offsets", dtype="float64")
    with pytest.raises(dbdl.ConfigurationError, match="pad_id"):
        db.training_set("news", collate="padded", pad_id=2**40, dtype="int32")
    with pytest.raises(dbdl.DTypeMismatch, match="cannot hold exactly"):
        db.training_set("flat", dtype="uint8")
    padded = db.training_set("floats", collate="padded", pad_id=-1.5, batch_size=12, split=None, cache=False)[0]
    assert padded.text.dtype == torch.float32 and float(padded.text.min()) == -1.5


# -- PostgreSQL: hostile callers --------------------------------------------------------------------------


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_ragged_and_bytea_exports_never_run_a_planted_overload(world, attacker):
    """train_export runs as its caller, through the caller's search_path: overloads of what its
    new inputs could resolve to (array_send of int[] / bigint[], bytea and int functions and
    operators), planted in public and a schema on the victim's path, never run."""
    from test_security import assert_nothing_ran_as_another_role, connect, evil_body, plant_functions

    role = world["roles"][attacker]
    with connect(world) as con:
        con.execute(f"CREATE SCHEMA planted AUTHORIZATION {role}")
        con.execute("GRANT USAGE ON SCHEMA planted TO PUBLIC")
        con.execute("CREATE TABLE tok AS SELECT i AS id, (SELECT pg_catalog.array_agg(j * 7 + i) FROM "
                    "pg_catalog.generate_series(1, 1 + i % 5) j)::pg_catalog.int4[] AS tokens, "
                    "(SELECT pg_catalog.array_agg((j * 7 + i)::pg_catalog.int8) FROM "
                    "pg_catalog.generate_series(1, 1 + i % 3) j) AS big, "
                    "pg_catalog.decode(pg_catalog.repeat('0102', 6), 'hex') AS img, i % 4 AS label "
                    "FROM pg_catalog.generate_series(0, 39) i")
    with connect(world, attacker) as con:
        for schema in ("public", "planted"):
            plant_functions(con, schema, (
                    ("array_send", "integer[]", "bytea"), ("array_send", "bigint[]", "bytea"),
                    ("array_send", "smallint[]", "bytea"), ("array_send", "anyarray", "bytea"),
                    ("unnest", "bytea[]", "SETOF bytea"), ("unnest", "bigint[]", "SETOF bigint"),
                    ("unnest", "smallint[]", "SETOF smallint"), ("unnest", "text[]", "SETOF text"),
                    ("length", "bytea", "integer"), ("octet_length", "bytea", "integer"),
                    ("format_type", "oid, integer", "text"), ("quote_ident", "text", "text")))
            for op, left, right in (("=", "bigint", "bigint"), ("+", "smallint", "integer"),
                                    ("-", "bigint", "integer"), ("=", "integer", "integer")):
                fn = f"op_{abs(hash((schema, op, left, right)))}"
                con.execute(f"CREATE FUNCTION {schema}.{fn}({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema} {op}')}RETURN false; END$$")
                con.execute(f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
                            f"FUNCTION = {schema}.{fn})")
    for n, path in enumerate(('"$user", public', 'planted, public, pg_catalog')):
        with connect(world) as con:
            con.execute(f"SET search_path = {path}")
            con.execute(f"CALL dbdl.train_export('SELECT tokens, label FROM tok ORDER BY id', 'tok{n}', "
                        "ragged => true)")
            con.execute(f"CALL dbdl.train_export('SELECT big, label FROM tok ORDER BY id', 'big{n}', "
                        "ragged => true)")
            con.execute(f"CALL dbdl.train_export('SELECT img, label FROM tok ORDER BY id', 'img{n}', "
                        "shape => ARRAY[3, 2, 2])")
            assert con.execute(f"SELECT dtype, shape FROM dbdl.datasets WHERE name = 'img{n}'").fetchall() == [
                ("uint8", "[3, 2, 2]")]
    assert_nothing_ran_as_another_role(world, attacker)
    db = dbdl.connect(world["url"])
    got, _ = db.training_set("tok1", None, cache=False).arrays()
    assert [len(r) for r in got] == [1 + i % 5 for i in _split_positions(40)]
    db.close()


def _split_positions(n: int) -> list[int]:
    _, codes, _ = assign_splits(n, 0.8, 0.1, 0)
    return np.lexsort((np.arange(n), codes)).tolist()




def test_call_binds_question_marks_and_leaves_those_in_strings(db):
    """CALL train_export with ? parameters: each ? binds (PostgreSQL's CALL is a command sqlglot
    keeps as raw text, so its arguments must still become %s), a ? inside a string stays text."""
    rows, labels = make_tokens(40, seed=4)
    token_table(db, "news", rows, labels)
    # (Spark SQL reads 'a''b' as two literals, concatenated: there the query is a "…" string)
    query = per_backend(db, duckdb="'SELECT tokens, label FROM news WHERE ''?'' = ''?'' ORDER BY id'",
                        postgres="'SELECT tokens, label FROM news WHERE ''?'' = ''?'' ORDER BY id'",
                        spark="\"SELECT tokens, label FROM news WHERE '?' = '?' ORDER BY id\"")
    db.sql(f"CALL dbdl.train_export({query}, ?, ragged => true, seed => ?)", ["news_q", 5])
    info = db.datasets.get("news_q")
    assert (info.n_rows, info.seed) == (40, 5)
    got_rows, got_labels = db.training_set("news_q", "train", cache=False).arrays()
    want_rows, want_labels = in_split_order(rows, labels, "train", seed=5)
    assert np.array_equal(got_labels, want_labels) and all(np.array_equal(g, w) for g, w in zip(got_rows, want_rows))
