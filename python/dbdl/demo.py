"""``dbdl demo``: the product end to end on real data that ships with scikit-learn.

Loads the handwritten digits (1,797 8x8 images) into a DuckDB table, trains a small torch MLP on
the training split read back with SQL, registers it, scores the whole table with SQL predict and
computes the accuracy in SQL.
"""

from __future__ import annotations

import time


def run_demo(url: str = "duckdb:///:memory:", epochs: int = 60, seed: int = 0) -> int:
    import numpy as np
    import pyarrow as pa
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.syntax import Syntax
    from rich.table import Table
    from sklearn.datasets import load_digits

    import dbdl

    console = Console()
    started = time.perf_counter()
    console.rule("[bold]dbdl demo: handwritten digits, from a table to SQL predict")

    def show_sql(sql: str) -> None:
        console.print(Syntax(sql.strip(), "sql", theme="ansi_dark", word_wrap=True))

    db = dbdl.connect(url)
    console.print(f"1. connected to {db.url} (dbdl schema installed by migrations)")

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    split = np.where(np.random.default_rng(seed).random(len(y)) < 0.8, "train", "test")
    images = pa.table({
        "id": np.arange(len(y)), "pixels": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64),
        "label": y, "split": split,
    })
    db.sql("DROP TABLE IF EXISTS digit_scores")
    db.create_table("digits", images, replace=True)  # a fixed-size list column: FLOAT[64]
    counts = dict(db.sql("SELECT split, count(*) FROM digits GROUP BY split").fetchall())
    console.print(f"2. loaded scikit-learn's digits into table [bold]digits[/]: {counts.get('train', 0)} train, "
                  f"{counts.get('test', 0)} test rows of FLOAT[64] pixels")

    train = db.sql("SELECT pixels, label FROM digits WHERE split = 'train' ORDER BY id").arrow()
    xt = torch.from_numpy(train.column("pixels").combine_chunks().flatten().to_numpy().reshape(-1, 64).copy())
    yt = torch.from_numpy(train.column("label").to_numpy().astype(np.int64))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    with Progress(TextColumn("3. training an MLP 64-64-10"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=epochs, loss="")
        for _ in range(epochs):
            for batch in torch.randperm(len(xt), generator=generator).split(128):
                optimizer.zero_grad()
                loss = loss_fn(model(xt[batch]), yt[batch])
                loss.backward()
                optimizer.step()
            progress.update(task, advance=1, loss=f"loss {loss.item():.4f}")

    with console.status("4. registering the model (export to ONNX, check, store)"):
        version = db.models.register("digits", model, example=torch.zeros(1, 64), description="demo MLP")
    info = db.models.get("digits")
    console.print(f"4. registered [bold]digits@{version}[/]: {info.n_params:,} parameters, "
                  f"{info.flops_per_row:,} FLOPs per row")

    score_sql = """
CREATE TABLE digit_scores AS
SELECT id, label, split, predict_class('digits', pixels) AS predicted
FROM digits"""
    show_sql(score_sql)
    t0 = time.perf_counter()
    db.sql(score_sql)
    console.print(f"5. scored {sum(counts.values())} rows in SQL in {time.perf_counter() - t0:.3f} s")

    accuracy_sql = """
SELECT split, count(*) AS rows, avg(CAST(predicted = label AS DOUBLE)) AS accuracy
FROM digit_scores GROUP BY split ORDER BY split DESC"""
    show_sql(accuracy_sql)
    table = Table(title="6. accuracy computed in SQL")
    for col in ("split", "rows", "accuracy"):
        table.add_column(col)
    for split_name, rows, acc in db.sql(accuracy_sql).fetchall():
        table.add_row(split_name, str(rows), f"{acc:.3f}")
    console.print(table)

    example_sql = "SELECT id, label, predict_array('digits', pixels) AS logits FROM digits WHERE split = 'test' LIMIT 1"
    show_sql(example_sql)
    row = db.sql(example_sql).fetchall()[0]
    console.print(f"   row {row[0]} (label {row[1]}): logits {np.round(row[2], 2).tolist()}")
    console.rule(f"done in {time.perf_counter() - started:.1f} s")
    db.close()
    return 0
