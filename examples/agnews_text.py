"""AG News with the PyTorch tutorial's TextClassificationModel through dbdl, end to end
(docs/examples.md walks through it).

    table of token lists  ->  CALL train_export(..., ragged => true)  ->  DataLoader over
    db.training_set(..., collate='offsets')  ->  the tutorial's training loop  ->  db.models.register
    ->  SQL predict_class over the application's table  ->  accuracy computed in SQL, checked
    against the same accuracy computed in torch

The model is the one of PyTorch's "Text classification with the torchtext library" tutorial:
``EmbeddingBag(vocab, 64) + Linear(64, 4)``, fed the flat tokens of a batch plus each row's start
offset. The news items are synthetic (nothing is downloaded): token lists of 8 to 48 ids over the
tutorial's vocabulary size (95,811), 4 classes, each class with its own topic words mixed with
words drawn from the whole vocabulary, so a few training steps already beat chance (25 %).

    python examples/agnews_text.py                                       # embedded DuckDB, in memory
    python examples/agnews_text.py --url postgresql://me@localhost/db --rows 20000 --epochs 3
"""

from __future__ import annotations

import argparse
import io
import warnings
from typing import Any

import numpy as np
import sqlglot
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader

import dbdl

VOCAB = 95_811  # len(vocab) of the tutorial's AG_NEWS vocabulary
CLASSES = 4  # World, Sports, Business, Sci/Tec
EMBED_DIM = 64
TOPIC_WORDS = 50  # per class


# -- data ----------------------------------------------------------------------------------------


def synthetic_news(rows: int, seed: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """``rows`` token lists (8..48 ids in 1..VOCAB-1) and labels 0..3: about half of each row's
    tokens are its class's topic words, the rest any word of the vocabulary."""
    rng = np.random.default_rng(seed)
    topics = rng.choice(np.arange(1, VOCAB), size=(CLASSES, TOPIC_WORDS), replace=False)
    labels = rng.integers(0, CLASSES, size=rows)
    texts = []
    for label in labels:
        n = int(rng.integers(8, 49))
        topical = rng.random(n) < 0.5
        tokens = np.where(topical, rng.choice(topics[label], size=n), rng.integers(1, VOCAB, size=n))
        texts.append(tokens.tolist())
    return texts, labels.astype(np.int64)


def load_table(db: dbdl.Database, rows: int, seed: int = 0, test_fraction: float = 0.2,
               table: str = "news") -> int:
    """``news(id, tokens INTEGER[] / int[], label, part)``: ``part`` marks the held-out rows the
    application scores later ('test'); the rest ('train') is what the model learns from."""
    texts, labels = synthetic_news(rows, seed)
    part = np.where(np.random.default_rng(seed + 1).random(rows) < test_fraction, "test", "train")
    return db.create_table(table, {"id": pa.array(np.arange(rows)), "tokens": pa.array(texts, pa.list_(pa.int32())),
                                   "label": pa.array(labels), "part": pa.array(part.tolist())}, replace=True)


# -- the model: the tutorial's, unchanged ------------------------------------------------------------


class TextClassificationModel(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, num_class: int):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, sparse=False)
        self.fc = nn.Linear(embed_dim, num_class)
        self.init_weights()

    def init_weights(self) -> None:
        initrange = 0.5
        self.embedding.weight.data.uniform_(-initrange, initrange)
        self.fc.weight.data.uniform_(-initrange, initrange)
        self.fc.bias.data.zero_()

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(text, offsets)
        return self.fc(embedded)


def export_onnx(model: nn.Module) -> bytes:
    """``torch.onnx.export`` with the inputs named ``text`` and ``offsets`` and both lengths dynamic:
    dbdl recognises the (tokens, offsets) pair by the second input's name and feeds each SQL row's
    token list into it."""
    text, offsets = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (text, offsets), buf, dynamo=False, input_names=["text", "offsets"],
                          output_names=["logits"],
                          dynamic_axes={"text": {0: "tokens"}, "offsets": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def batch_tensors(texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's collate_batch for token lists: flat tokens and each row's start offset."""
    text = torch.tensor([t for row in texts for t in row], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(row) for row in texts[:-1]], dtype=torch.int64).cumsum(0)
    return text, offsets


# -- the workload ----------------------------------------------------------------------------------


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), disable=not enabled)


def main(url: str = "duckdb:///:memory:", rows: int = 4000, epochs: int = 2, batch_size: int = 64,
         lr: float = 5.0, seed: int = 0, progress: bool = True, model_name: str = "agnews",
         dataset: str = "agnews") -> dict[str, Any]:
    """Run the whole workload on the database at ``url``; returns what it measured."""
    torch.manual_seed(seed)
    db = dbdl.connect(url)
    try:
        # 1. the news as a table; its training part -> a ragged dataset table (every row in 'train')
        load_table(db, rows, seed)
        db.sql(f"CALL dbdl.train_export('SELECT tokens, label FROM news WHERE part = ''train'' ORDER BY id', "
               "?, ragged => true, train_fraction => 1.0, validation_fraction => 0.0, seed => ?)", [dataset, seed])
        info = db.datasets.get(dataset)

        # 2. dataset -> DataLoader: batches as the tutorial's collate_batch makes them
        train = db.training_set(dataset, "train", collate="offsets")
        loader = DataLoader(train, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))

        # 3. the tutorial's training loop
        model = TextClassificationModel(VOCAB, EMBED_DIM, CLASSES)
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.1)
        losses = []
        with _progress(progress) as bar:
            for epoch in range(epochs):
                task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=len(loader), status="")
                model.train()
                for label, text, offsets in loader:
                    optimizer.zero_grad()
                    loss = criterion(model(text, offsets), label)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                    optimizer.step()
                    losses.append(loss.item())
                    bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
                if epoch + 1 < epochs:
                    scheduler.step()
        model.eval()

        # 4. into the registry
        db.models.register(model_name, export_onnx(model), description=f"trained on dataset {dataset}@{info.version}")

        # 5. accuracy in torch over the application's held-out rows (read with plain SQL) ...
        test = db.sql("SELECT tokens, label FROM news WHERE part = 'test' ORDER BY id").fetchall()
        text, offsets = batch_tensors([list(r[0]) for r in test])
        with torch.no_grad():
            predicted = model(text, offsets).argmax(1).numpy()
        correct_torch = int((predicted == np.array([r[1] for r in test])).sum())
        # ... and the same computed in SQL, predict_class over the table itself
        ref = sqlglot.exp.Literal.string(model_name).sql()  # the name as a SQL string literal, quoted by sqlglot
        sql = (f"SELECT count(*) AS n, sum(CASE WHEN predict_class({ref}, tokens) = label THEN 1 ELSE 0 END) "
               f"AS correct, avg(CASE WHEN predict_class({ref}, tokens) = label THEN 1.0 ELSE 0.0 END) "
               "AS accuracy FROM news WHERE part = 'test'")
        n, correct_sql, accuracy_sql = db.sql(sql).fetchall()[0]
        # the planner chose how predict_class ran; each strategy that can run this model gives the same count
        by_strategy = {s: int(db.sql(sql, strategy=s).fetchall()[0][1]) for s in ("udf", "dl")}

        result = {
            "backend": db.backend.name, "rows": rows, "train_rows": info.n_train, "test_rows": int(n),
            "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
            "correct_sql": int(correct_sql), "correct_torch": correct_torch, "correct_by_strategy": by_strategy,
            "accuracy_sql": float(accuracy_sql), "accuracy_torch": correct_torch / len(test), "chance": 1 / CLASSES,
        }
        if progress:
            print(f"{db.backend.name}: {info.n_train} training rows, {len(losses)} steps, loss {losses[0]:.3f} -> "
                  f"{losses[-1]:.3f}; held-out accuracy SQL {result['accuracy_sql']:.3f}, torch "
                  f"{result['accuracy_torch']:.3f} ({int(n)} rows, chance {1 / CLASSES:.2f})")
        return result
    finally:
        db.close()


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="duckdb:///:memory:", help="database URL (default: in-memory DuckDB)")
    p.add_argument("--rows", type=int, default=4000, help="synthetic news items (default 4000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


if __name__ == "__main__":
    a = _args()
    main(url=a.url, rows=a.rows, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
