"""Training export over every backend: CALL train_export, the PyTorch datasets, the LMDB cache,
exact training curves, and a trained model back into SQL predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import has, per_backend, release_for_workers
from conftest import DM8_NO_ARRAYS
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import dbdl
from dbdl_udf.datasets import assign_splits


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def load(db, digits, table="digits"):
    x, y = digits
    db.create_table(table, {"id": np.arange(len(y)), "pixels": x, "label": y}, replace=True)


def expected_split(digits, split, seed=0, train=0.8, validation=0.1):
    """What train_export promises: rows of a split in source order, row ids after splitting."""
    x, y = digits
    row_ids, codes, counts = assign_splits(len(y), train, validation, seed)
    code = {"train": 0, "validation": 1, "test": 2}[split]
    mask = codes == code
    return x[mask], y[mask], row_ids[mask]


def dataset_tables(db) -> list[str]:
    # the backend's own listing of its tables and views (Spark has no information_schema)
    return sorted(t for t in db.backend.tables_in(db.backend.data_schema) if t.startswith("ds"))


# -- export --------------------------------------------------------------------------------------


@DM8_NO_ARRAYS
def test_export_writes_dense_split_ordered_rows_and_metadata(db, digits, tmp_path):
    load(db, digits)
    info = db.train_export("SELECT pixels, label FROM digits ORDER BY id", "Digits", shape=(1, 8, 8), seed=0)
    x, y = digits
    assert (info.name, info.version, info.shape, info.dtype, info.label_dtype) == ("digits", 1, (1, 8, 8),
                                                                                   "float32", "int64")
    assert (info.n_rows, info.n_train, info.n_validation, info.n_test) == (1797, 1438, 180, 179)
    assert info.features == ("pixels",) and info.label_column == "label" and info.table == f"{db.backend.data_schema}.ds_digits_v1"
    assert db.datasets.get("digits") == info and db.datasets.names() == ["digits"]
    assert db.sql(f"SELECT min(row_id), max(row_id), count(DISTINCT row_id) FROM {info.view}").fetchall() == [
        (0, 1796, 1797)]
    spans = db.sql(f"SELECT split, min(row_id), max(row_id), count(*) FROM {info.view} GROUP BY split "
                   "ORDER BY 2").fetchall()
    assert spans == [("train", 0, 1437, 1438), ("validation", 1438, 1617, 180), ("test", 1618, 1796, 179)]
    for split in ("train", "validation", "test"):
        want_x, want_y, want_ids = expected_split(digits, split)
        ds = db.training_set("digits", split, cache=False)
        got_x, got_y = ds.arrays()
        assert got_x.shape == (len(want_y), 1, 8, 8) and got_x.dtype == np.float32
        assert np.array_equal(got_x.reshape(len(want_y), 64), want_x) and np.array_equal(got_y, want_y)
        assert np.array_equal(np.sort(want_ids), np.arange(ds.start, ds.stop))
    one_x, one_y = db.training_set("digits", "test", cache=False)[5]
    assert torch.equal(one_x, torch.from_numpy(expected_split(digits, "test")[0][5].reshape(1, 8, 8)))
    assert int(one_y) == expected_split(digits, "test")[1][5]


@pytest.mark.notimpl(["dm8"], reason="the CALL's features => list has no DM8 spelling here yet (DM8 has no array "
                                       "literal; per_backend names none)")
def test_call_train_export_from_sql_with_stacked_columns(db):
    rng = np.random.default_rng(1)
    a, b, c = rng.standard_normal((3, 50))
    target = rng.standard_normal(50)
    db.create_table("pts", {"id": np.arange(50), "a": a, "b": b, "c": c, "y": target, "note": ["x"] * 50})
    array = per_backend(db, duckdb="[2]", postgres="ARRAY[2]", spark="array(2)")
    out = db.sql(f"CALL dbdl.train_export('SELECT id, a, b, c, y FROM pts ORDER BY id', 'pts', label_column => 'y', "
                 f"features => {array.replace('2', chr(39) + 'a' + chr(39) + ', ' + chr(39) + 'c' + chr(39))}, "
                 f"dtype => 'float64', train_fraction => 0.5, validation_fraction => 0.5, seed => 7)")
    if has(db, "call_returns_rows"):
        assert out.fetchall()[0][:2] == ("pts", 1)
    info = db.datasets.get("pts")
    assert (info.features, info.label_column, info.dtype, info.label_dtype, info.shape) == (
        ("a", "c"), "y", "float64", "float32", (2,))
    assert (info.n_train, info.n_validation, info.n_test, info.seed) == (25, 25, 0, 7)
    x, labels = db.training_set("pts", None, cache=False).arrays()
    _, codes, _ = assign_splits(50, 0.5, 0.5, 7)
    order = np.lexsort((np.arange(50), codes))
    assert np.array_equal(x, np.column_stack([a, c])[order])
    assert np.array_equal(labels, target[order].astype(np.float32))


@DM8_NO_ARRAYS
def test_reexport_replaces_atomically_and_a_failed_export_leaves_nothing(db, digits, tmp_path):
    load(db, digits)
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "d", shape=(1, 8, 8))
    first = db.training_set("d", cache=tmp_path)
    first_x, _ = first.arrays()  # read (and cached) before the re-export
    stale = db.training_set("d", cache=False)
    v2 = db.train_export("SELECT pixels, label FROM digits WHERE label < 5 ORDER BY id", "d", shape=(1, 8, 8),
                         train_fraction=1.0, validation_fraction=0.0)
    assert (v2.version, v2.n_rows, v2.n_train) == (2, int((digits[1] < 5).sum()), int((digits[1] < 5).sum()))
    assert dataset_tables(db) == ["ds_d", "ds_d_v2"]  # the view and the new version's table only
    assert db.sql(f"SELECT count(*) FROM {v2.view}").fetchall() == [(v2.n_rows,)]
    # a reader of the old version fails loudly instead of mixing versions; its cache still serves it
    with pytest.raises(dbdl.DatasetNotFound, match="re-exported or dropped"):
        stale.arrays()
    assert np.array_equal(first.arrays()[0], first_x)
    fresh = db.training_set("d", "train", cache=False)
    # failures: NULL label, NULL features, ragged rows, text features, bad fractions; nothing changes
    db.create_table("bad", {"id": np.arange(3), "f": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "label": [1, 2, 3],
                            "txt": ["a", "b", "c"]})
    db.sql(per_backend(
        db, duckdb="CREATE TABLE ragged AS SELECT 1 AS label, [1.0, 2.0] AS f UNION ALL SELECT 2, [1.0]",
        postgres="CREATE TABLE ragged AS SELECT 1 AS label, ARRAY[1.0, 2.0]::real[] AS f UNION ALL "
                 "SELECT 2, ARRAY[1.0]::real[]",
        spark="CREATE TABLE ragged AS SELECT 1 AS label, array(1.0D, 2.0D) AS f UNION ALL SELECT 2, array(1.0D)"))
    cases = [
        ("SELECT f, CASE WHEN id = 2 THEN NULL ELSE label END AS label FROM bad", {}, dbdl.DTypeMismatch, "NULL label"),
        ("SELECT CASE WHEN id = 1 THEN NULL ELSE f END AS f, label FROM bad", {}, dbdl.DTypeMismatch, "NULL features"),
        ("SELECT f, label FROM ragged", {}, dbdl.ShapeMismatch, "one length"),
        ("SELECT txt, label FROM bad", {}, dbdl.DTypeMismatch, "txt"),
        ("SELECT f, label FROM bad", {"train_fraction": 0.9, "validation_fraction": 0.2}, dbdl.ShapeMismatch,
         "sum to at most 1"),
        ("SELECT f, label FROM bad", {"shape": (3,)}, dbdl.ShapeMismatch, "multiply"),
        ("SELECT f FROM bad", {}, dbdl.QueryError, "no label column"),
        ("SELECT f, label FROM nowhere", {}, dbdl.QueryError, "nowhere"),
    ]
    for query, options, error, message in cases:
        with pytest.raises(error, match=message):
            db.train_export(query, "d", **options)
        assert db.datasets.get("d").version == 2
        assert dataset_tables(db) == ["ds_d", "ds_d_v2"]
    for hostile in ("d; DROP TABLE digits", "a-b", "", "x" * 49, "1abc"):
        with pytest.raises(dbdl.InvalidName):
            db.train_export("SELECT f, label FROM bad", hostile)
    with pytest.raises(dbdl.DatasetNotFound, match="no dataset named 'nope'"):
        db.training_set("nope")
    assert db.sql("SELECT count(*) FROM digits").fetchall() == [(1797,)]
    assert np.array_equal(fresh.arrays()[0].reshape(-1, 64), digits[0][digits[1] < 5])
    assert len(first_x) == 1438
    dropped = db.datasets.drop("d")
    assert dropped.version == 2 and db.datasets.list() == [] and dataset_tables(db) == []


# -- the readers -----------------------------------------------------------------------------------


@DM8_NO_ARRAYS
def test_batch_form_and_seeded_shuffled_stream(db, digits, tmp_path):
    load(db, digits)
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits", shape=(64,))
    want_x, want_y, _ = expected_split(digits, "train")
    batches = db.training_set("digits", batch_size=100, cache=False)
    assert len(batches) == 15
    x, y = batches[14]
    assert torch.equal(x, torch.from_numpy(want_x[1400:])) and torch.equal(y, torch.from_numpy(want_y[1400:]))
    seen = [b for b in DataLoader(batches, batch_size=None, num_workers=0)]
    assert torch.equal(torch.cat([b[0] for b in seen]), torch.from_numpy(want_x))

    stream = db.training_set("digits", shuffle=True, seed=3, batch_size=64, block_rows=100, cache=tmp_path / "c")
    epoch0 = torch.cat([y for _, y in stream])
    again = torch.cat([y for _, y in stream])
    stream.set_epoch(1)
    epoch1 = torch.cat([y for _, y in stream])
    assert torch.equal(epoch0, again) and not torch.equal(epoch0, epoch1)
    rows = stream.order()
    assert np.array_equal(np.sort(rows), np.arange(1438))  # every row exactly once
    stream.set_epoch(0)
    assert np.array_equal(epoch0.numpy(), want_y[stream.order()])
    ahead = db.training_set("digits", shuffle=True, seed=3, batch_size=64, block_rows=100, prefetch=2, cache=False)
    assert torch.equal(torch.cat([y for _, y in ahead]), epoch0)
    # two workers: the blocks are dealt between them, still every row once
    release_for_workers(db)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    got = torch.cat([x for x, _ in loader])
    assert got.shape == (1438, 64)
    assert np.array_equal(np.sort(got.numpy(), axis=0), np.sort(want_x, axis=0))
    order = np.concatenate([stream.order(0, 2), stream.order(1, 2)])
    assert np.array_equal(np.sort(order), np.arange(1438))


@DM8_NO_ARRAYS
def test_lmdb_cache_serves_later_epochs_without_the_database(url, digits, tmp_path):
    db = dbdl.connect(url)
    load(db, digits)
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits", shape=(1, 8, 8))
    ds = db.training_set("digits", block_rows=128, cache=tmp_path, cache_map_size=64 << 10)
    first = [b for b in DataLoader(ds, batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert ds.store.queries >= 1 and ds.cache.count() == 12  # ceil(1438 / 128) blocks
    assert ds.cache.map_bytes() > 64 << 10  # the map grew past its first size
    # the table disappears behind dbdl's back: epoch 2 must not notice
    db.sql(f"ALTER TABLE {db.backend.data_schema}.ds_digits_v1 RENAME TO hidden_v1")
    info = db.datasets.get("digits")
    release_for_workers(db)  # DuckDB: workers open the file read-only, no writer may hold it
    queries = ds.store.queries
    fresh = pickle_roundtrip(ds)
    second = [b for b in DataLoader(fresh, batch_size=100, shuffle=True, num_workers=2,
                                    generator=torch.Generator().manual_seed(0))]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert ds.store.queries == queries
    # a re-export (new version and uid) gets a new cache; the old one is removed
    db = dbdl.connect(url)
    db.sql(f"ALTER TABLE {db.backend.data_schema}.hidden_v1 RENAME TO ds_digits_v1")
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits", shape=(1, 8, 8))
    new = db.training_set("digits", block_rows=128, cache=tmp_path)
    assert new.cache_path != ds.cache_path and not ds.cache_path.exists() and info.version == 1
    db.close()


def pickle_roundtrip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))


def test_duckdb_workers_and_an_open_writer(tmp_path, digits):
    db = dbdl.connect(f"duckdb:///{tmp_path / 'w.duckdb'}")
    load(db, digits)
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits")
    ds = db.training_set("digits", cache=False)
    with pytest.raises(dbdl.ConfigurationError, match="read-only"):
        next(iter(DataLoader(ds, batch_size=64, num_workers=1)))
    cached = db.training_set("digits", cache=tmp_path / "cache")
    assert cached.fill_cache() >= 1  # read here, through this process's connection
    got = torch.cat([x for x, _ in DataLoader(cached, batch_size=64, num_workers=2)])
    assert torch.equal(got, torch.from_numpy(expected_split(digits, "train")[0]))
    db.close()


@DM8_NO_ARRAYS
def test_a_blocked_table_reads_back_bit_for_bit(db, tmp_path):
    """PostgreSQL writes rows of one shape blocked (format 2): 64 KiB rows make 16-sample blocks,
    70 rows five of them, the last one short. Every reader — map-style by split, read blocks that
    straddle stored ones, the LMDB cache's second pass, the shuffled stream's per-worker orders, the
    per-sample view — gives back the source's bytes and labels (float labels here); DuckDB keeps
    one row per sample and reads the same."""
    from dbdl_udf.datasets import stored_block_rows

    rng = np.random.default_rng(5)
    x = rng.standard_normal((70, 16384), dtype=np.float32)
    x[3, :4] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny]  # bits, not values
    y = (rng.standard_normal(70) / 3).astype(np.float32)
    db.create_table("big", {"id": np.arange(70), "x": x, "y": y})
    info = db.train_export("SELECT x, y FROM big ORDER BY id", "big", label_column="y", shape=(4, 64, 64),
                           train_fraction=0.6, validation_fraction=0.2, seed=2)
    blocked = has(db, "blocked_datasets")
    assert info.block_rows == (16 if blocked else 0) == (stored_block_rows(16384 * 4) if blocked else 0)
    if blocked:
        assert db.sql(f"SELECT count(*) FROM {info.table}").scalar() == 5
    view = db.sql(f"SELECT row_id, features, label, split FROM {info.view} ORDER BY row_id").fetchall()
    assert [r[0] for r in view] == list(range(70))
    for split in ("train", "validation", "test"):
        want_x, want_y, want_ids = expected_split((x, y), split, seed=2, train=0.6, validation=0.2)
        for options in ({"cache": False}, {"cache": tmp_path / split, "block_rows": 7}):
            ds = db.training_set("big", split, **options)
            for _ in range(2):  # with a cache: the second pass reads only LMDB
                got_x, got_y = ds.arrays()
                assert got_x.shape == (len(want_y), 4, 64, 64)
                assert got_x.reshape(len(want_y), -1).tobytes() == want_x.tobytes()
                assert got_y.dtype == np.float32 and got_y.tobytes() == want_y.tobytes()
            ds.close()
        rows = view[int(want_ids.min()):int(want_ids.max()) + 1]
        assert {r[3] for r in rows} == {split}
        assert b"".join(bytes(r[1]) if blocked else np.asarray(r[1], np.float32).tobytes() for r in rows) == \
            want_x.tobytes()
        assert np.array_equal(np.array([r[2] for r in rows], np.float32), want_y)
    # a sequential DataLoader pass: the read-ahead thread brings each block once, in order
    ds = db.training_set("big", None, block_rows=16, cache=tmp_path / "seq")
    got = [(bx, by) for bx, by in DataLoader(ds, batch_size=8)]
    assert torch.cat([b[0] for b in got]).numpy().tobytes() == x[order_to_source(np.arange(70), 0.6, 0.2, 2)].tobytes()
    assert ds.store.rows_read == 70 and ds.cache.count() == 5
    ds.close()
    stream = db.training_set("big", None, shuffle=True, seed=1, batch_size=8, block_rows=16, cache=False)
    for workers in (1, 2):
        order = np.concatenate([stream.order(w, workers) for w in range(workers)])
        assert np.array_equal(np.sort(order), np.arange(70))
        got_x, got_y = stream.store.rows(order)
        assert got_x.tobytes() == x[order_to_source(order, 0.6, 0.2, 2)].tobytes()
    batches = list(stream)
    assert torch.cat([b[1] for b in batches]).numpy().tobytes() == y[order_to_source(stream.order(), 0.6, 0.2, 2)
                                                                      ].tobytes()
    if blocked:  # a block taken away behind dbdl's back is an error, not a short epoch
        db.sql(f"DELETE FROM {info.table} WHERE block_id = 2")
        with pytest.raises(dbdl.QueryError, match="missing blocks"):
            db.training_set("big", None, cache=False).arrays()


def order_to_source(row_ids: np.ndarray, train: float, validation: float, seed: int) -> np.ndarray:
    """The source positions of row ids (train_export numbers the splits one after another)."""
    ids, _, _ = assign_splits(70, train, validation, seed)
    position = np.empty(70, np.int64)
    position[ids] = np.arange(70)
    return position[row_ids]


# -- exactness and the way back ---------------------------------------------------------------------


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def train(loader, epochs=2, seed=0) -> tuple[SmallCNN, list[float]]:
    torch.manual_seed(seed)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x / 16.0), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return model, losses


@DM8_NO_ARRAYS
@pytest.mark.parametrize("workers", [0, 2])
def test_training_curve_equals_the_in_memory_one(url, digits, workers, tmp_path):
    db = dbdl.connect(url)
    load(db, digits)
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits", shape=(1, 8, 8), seed=5)
    ds = db.training_set("digits", cache=tmp_path)
    if workers:
        release_for_workers(db)  # DuckDB: DataLoader workers open the file read-only
    want_x, want_y, _ = expected_split(digits, "train", seed=5)
    memory = TensorDataset(torch.from_numpy(want_x.reshape(-1, 1, 8, 8)), torch.from_numpy(want_y))

    def loader(dataset):
        return DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                          generator=torch.Generator().manual_seed(11))

    _, from_db = train(loader(ds))
    _, in_memory = train(loader(memory))
    assert len(from_db) == 2 * 23
    assert from_db == in_memory  # bitwise, at every step
    db.close()


@DM8_NO_ARRAYS
def test_trained_model_goes_back_and_predicts_in_sql(db, digits, tmp_path):
    load(db, digits)
    db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits", shape=(1, 8, 8))
    ds = db.training_set("digits", cache=tmp_path)
    model, losses = train(DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)),
                          epochs=4)
    scaled = torch.nn.Sequential(ScaleBy(1 / 16.0), model).eval()
    assert db.models.register("digits_cnn", scaled, dataset="digits") == 1
    assert db.models.get("digits_cnn").description == "trained on dataset digits@1"
    # (whole numbers: Spark's 1.0 is a decimal, whose avg keeps four places)
    accuracy = db.sql("SELECT avg(CASE WHEN predict_class('digits_cnn', features) = label THEN 1 ELSE 0 END) "
                      f"FROM {db.backend.data_schema}.ds_digits WHERE split = 'test'").fetchall()[0][0]
    x, y = db.training_set("digits", "test", cache=False).arrays()
    with torch.no_grad():
        expected = (scaled(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert float(accuracy) == pytest.approx(expected, abs=1e-9)
    assert float(accuracy) > 0.85


class ScaleBy(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_psql_call_train_export(pg_server, digits, tmp_path):
    from test_postgres import psql

    url = pg_server.create_database("dbdl_train_psql")
    try:
        dbdl.connect(url).close()
        x, y = digits
        rows = "\n".join(f"{i}\t{{{','.join(str(int(v)) for v in x[i])}}}\t{y[i]}" for i in range(200))
        out = psql(pg_server, "dbdl_train_psql", f"""
CREATE TABLE px (id int, pixels real[], digit int);
COPY px FROM STDIN;
{rows}
\\.
CALL dbdl.train_export('SELECT pixels, digit FROM px ORDER BY id', 'px', label_column => 'digit',
                  shape => ARRAY[1, 8, 8], seed => 2);
SELECT name, version, shape, n_rows, n_train, n_validation, n_test FROM dbdl.datasets;
SELECT split, count(*), min(row_id) FROM dbdl_data.ds_px GROUP BY split ORDER BY 3;
SELECT length(features) FROM dbdl_data.ds_px LIMIT 1;
""").stdout.splitlines()
        assert out == ["px|1|[1, 8, 8]|200|160|20|20", "train|160|0", "validation|20|160", "test|20|180", "256"]
        bad = psql(pg_server, "dbdl_train_psql", "CALL dbdl.train_export('SELECT pixels, digit FROM px', 'px');",
                   check=False)
        assert "dbdl.QueryError" in bad.stderr and "label" in bad.stderr
        db = dbdl.connect(url)
        got_x, got_y = db.training_set("px", "train", cache=False).arrays()
        want_x, want_y, _ = expected_split((x[:200], y[:200]), "train", seed=2)
        assert np.array_equal(got_x.reshape(-1, 64), want_x) and np.array_equal(got_y, want_y)
        db.close()
    finally:
        pg_server.drop_database("dbdl_train_psql")


def test_cli_datasets(tmp_path, digits, capsys):
    import json

    from dbdl.cli import main

    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    with dbdl.connect(url) as db:
        load(db, digits)
        db.train_export("SELECT pixels, label FROM digits", "digits", shape=(1, 8, 8))
    assert main(["datasets", "list", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["shape"], d["counts"]) for d in listed] == [
        ("digits", [1, 8, 8], {"train": 1438, "validation": 180, "test": 179})]
    assert main(["datasets", "show", url, "digits"]) == 0
    assert "SELECT pixels, label FROM digits" in capsys.readouterr().out
    assert main(["datasets", "drop", url, "digits"]) == 0
    assert main(["datasets", "show", url, "digits"]) == 2
    assert "DatasetNotFound" in capsys.readouterr().err
