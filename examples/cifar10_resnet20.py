"""CIFAR-10 with ResNet-20 through dbdl, end to end (docs/examples.md walks through it).

    table of uint8 images  ->  CALL train_export  ->  DataLoader over db.training_set
    ->  a short training of ResNet-20  ->  db.models.register  ->  SQL predict_class
    ->  test accuracy computed in SQL, checked against the same accuracy computed in torch

The images are synthetic (nothing is downloaded) but have CIFAR-10's shape and storage: 3x32x32
uint8 pixels, 3,072 bytes a row, in a BLOB (DuckDB) / bytea (PostgreSQL) column, 10 classes. Each
class has its own colour and stripe pattern under heavy noise, so a few training steps already
beat chance (10 %) clearly.

    python examples/cifar10_resnet20.py                                  # embedded DuckDB, in memory
    python examples/cifar10_resnet20.py --url postgresql://me@localhost/db --rows 5000 --epochs 3
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import sqlglot
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import dbdl

CLASSES = 10
SHAPE = (3, 32, 32)


# -- data ----------------------------------------------------------------------------------------


def synthetic_cifar(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` uint8 images [rows, 3, 32, 32] and labels 0..9: a colour and a stripe frequency
    per class, plus Gaussian noise (std 40 of 255)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=rows)
    colours = rng.uniform(50, 205, size=(CLASSES, 3, 1, 1))
    freq = np.arange(1, CLASSES + 1)[:, None, None, None]  # stripes: class c has c + 1 periods
    axis = np.arange(32)[None, None, None, :]
    stripes = 40 * np.sin(2 * np.pi * freq * axis / 32)  # [10, 1, 1, 32], along the width
    templates = colours + stripes  # [10, 3, 1, 32] -> broadcast over the rows of each image
    images = templates[labels] + rng.normal(0, 40, size=(rows, *SHAPE))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def load_table(db: dbdl.Database, rows: int, seed: int = 0, table: str = "cifar") -> int:
    """The images as a table ``cifar(id, pixels, label)``: one BLOB / bytea of 3,072 bytes per image."""
    images, labels = synthetic_cifar(rows, seed)
    pixels = [img.tobytes() for img in images]  # C order: channel, row, column — what [3, 32, 32] reshapes
    return db.create_table(table, {"id": np.arange(rows), "pixels": pixels, "label": labels}, replace=True)


# -- the model: ResNet-20 (He et al. 2016, section 4.2: 3 stages x 3 basic blocks, 16/32/64 channels) --


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU. Where the block halves the size and
    doubles the channels, the shortcut is the paper's option A: subsample and zero-pad channels."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = CLASSES, blocks: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class Normalize(nn.Module):
    """Raw pixel values (0..255, as stored) to roughly zero mean and unit variance. Part of the model,
    so SQL predict feeds the stored bytes as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - 0.5) / 0.25


def recalibrate_batchnorm(model: nn.Module, loader) -> None:
    """BatchNorm's running statistics after only a few steps still remember their initial values;
    recompute them over the training data (a forward pass, no gradients) before evaluating."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
    model.eval()


# -- the workload ----------------------------------------------------------------------------------


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), disable=not enabled)


def main(url: str = "duckdb:///:memory:", rows: int = 2000, epochs: int = 2, batch_size: int = 64,
         lr: float = 0.05, seed: int = 0, progress: bool = True, model_name: str = "resnet20",
         dataset: str = "cifar10") -> dict[str, Any]:
    """Run the whole workload on the database at ``url``; returns what it measured."""
    torch.manual_seed(seed)
    db = dbdl.connect(url)
    try:
        postgres = db.backend.name == "postgres"

        # 1. the images as a table, then SQL -> dataset table (80/10/10 split, seeded)
        load_table(db, rows, seed)
        shape = "ARRAY[3, 32, 32]" if postgres else "[3, 32, 32]"
        db.sql(f"CALL dbdl.train_export('SELECT pixels, label FROM cifar ORDER BY id', ?, shape => {shape}, seed => ?)",
               [dataset, seed])
        info = db.datasets.get(dataset)

        # 2. dataset -> DataLoader: uint8 rows as float32 tensors [B, 3, 32, 32]
        train = db.training_set(dataset, "train", dtype="float32")
        loader = DataLoader(train, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))

        # 3. train ResNet-20 (normalisation inside the model)
        model = nn.Sequential(Normalize(), ResNet20())
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        losses = []
        with _progress(progress) as bar:
            for epoch in range(epochs):
                task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=len(loader), status="")
                model.train()
                for x, y in loader:
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                    bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
        recalibrate_batchnorm(model, loader)

        # 4. into the registry (exported with an example of the dataset's shape), served by SQL at once
        db.models.register(model_name, model, dataset=dataset)

        # 5. test accuracy in SQL, over the dataset table's test split
        ref = sqlglot.exp.Literal.string(model_name).sql()  # the name as a SQL string literal, quoted by sqlglot
        sql = (f"SELECT count(*) AS n, sum(CASE WHEN predict_class({ref}, features) = label THEN 1 ELSE 0 END) "
               f"AS correct, avg(CASE WHEN predict_class({ref}, features) = label THEN 1.0 ELSE 0.0 END) "
               f"AS accuracy FROM {info.view} WHERE split = 'test'")
        n, correct_sql, accuracy_sql = db.sql(sql).fetchall()[0]
        # the planner chose how predict_class ran; each strategy that can run this model gives the same count
        by_strategy = {s: int(db.sql(sql, strategy=s).fetchall()[0][1]) for s in ("udf", "dl")}

        # ... and the same in torch, on the same rows read back through the dataset
        x, y = db.training_set(dataset, "test", dtype="float32").arrays()
        with torch.no_grad():
            predicted = model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
        correct_torch = int((predicted == y).sum())
        result = {
            "backend": db.backend.name, "rows": rows, "train_rows": info.n_train, "test_rows": int(n),
            "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
            "correct_sql": int(correct_sql), "correct_torch": correct_torch, "correct_by_strategy": by_strategy,
            "accuracy_sql": float(accuracy_sql), "accuracy_torch": correct_torch / len(y), "chance": 1 / CLASSES,
        }
        if progress:
            print(f"{db.backend.name}: {info.n_train} training rows, {len(losses)} steps, loss {losses[0]:.3f} -> "
                  f"{losses[-1]:.3f}; test accuracy SQL {result['accuracy_sql']:.3f}, torch "
                  f"{result['accuracy_torch']:.3f} ({int(n)} rows, chance {1 / CLASSES:.2f})")
        return result
    finally:
        db.close()


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="duckdb:///:memory:", help="database URL (default: in-memory DuckDB)")
    p.add_argument("--rows", type=int, default=2000, help="synthetic images (default 2000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


if __name__ == "__main__":
    a = _args()
    main(url=a.url, rows=a.rows, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
