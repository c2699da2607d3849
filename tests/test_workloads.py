"""The seeds' two workloads end to end, on every backend: examples/cifar10_resnet20.py (ResNet-20 on
uint8 3x32x32 images) and examples/agnews_text.py (the PyTorch tutorial's EmbeddingBag text model on
ragged token lists over a 95,811-word vocabulary), each run small:

table -> CALL train_export -> DataLoader over db.training_set -> a few training steps ->
db.models.register -> SQL predict_class -> accuracy computed in SQL, which must equal the accuracy
torch computes on the same rows, and be clearly above chance (the synthetic data is learnable).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import agnews_text  # noqa: E402
import cifar10_resnet20  # noqa: E402


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DBDL_CACHE_DIR", str(tmp_path / "dbdl-cache"))


def check(result: dict) -> None:
    assert result["test_rows"] > 0
    assert result["correct_sql"] == result["correct_torch"], result
    assert result["correct_by_strategy"] == {"udf": result["correct_torch"], "dl": result["correct_torch"]}, result
    assert result["accuracy_sql"] == result["accuracy_torch"], result
    assert result["last_loss"] < result["first_loss"], result
    assert result["accuracy_sql"] >= 2 * result["chance"], result


def test_cifar10_resnet20_end_to_end(url):
    result = cifar10_resnet20.main(url=url, rows=200, epochs=1, batch_size=32, progress=False)
    assert (result["train_rows"], result["test_rows"], result["steps"]) == (160, 20, 5)
    check(result)


def test_agnews_text_classification_end_to_end(url):
    result = agnews_text.main(url=url, rows=400, epochs=1, batch_size=32, progress=False)
    assert result["train_rows"] + result["test_rows"] == 400 and result["steps"] == -(-result["train_rows"] // 32)
    check(result)


def test_resnet20_is_resnet20():
    """3 stages x 3 basic blocks at 16/32/64 channels with option-A shortcuts: 0.27 M parameters
    (He et al. 2016, table 6)."""
    model = cifar10_resnet20.ResNet20()
    blocks = [m for m in model.modules() if isinstance(m, cifar10_resnet20.BasicBlock)]
    assert len(blocks) == 9 and [b.conv2.out_channels for b in blocks] == [16] * 3 + [32] * 3 + [64] * 3
    convs = [m for m in model.modules() if isinstance(m, cifar10_resnet20.nn.Conv2d)]
    assert len(convs) + 1 == 20  # 19 convolutions + the classifier: 20 weighted layers
    assert 269_000 < sum(p.numel() for p in model.parameters()) < 273_000
