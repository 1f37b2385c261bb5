"""Evaluation of a checkpoint: per-class accuracy, other splits and data, `snptool evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from snptool.config import DataConfig, EvaluateConfig
from snptool.data.datasets import load_data
from snptool.errors import DataError
from snptool.training.evaluate import run_evaluate
from snptool.training.train import (
    TrainResult,
)
from tests.conftest import assert_ok, invoke


def test_evaluate_per_class_is_consistent(trained: TrainResult) -> None:
    result = run_evaluate(trained.output, config=EvaluateConfig(device="cpu"))
    assert result.data == "digits" and result.split == "test"
    assert result.samples == 359
    assert list(result.per_class) == [str(i) for i in range(10)]
    counts = torch.bincount(load_data("digits", "test").labels, minlength=10).tolist()
    weighted = sum(acc * n for acc, n in zip(result.per_class.values(), counts, strict=True))
    assert result.accuracy == pytest.approx(weighted / sum(counts), abs=1e-12)
    assert all(0.0 <= acc <= 1.0 for acc in result.per_class.values())
    # The same split and weights as the last epoch's test.
    assert result.accuracy == pytest.approx(trained.final_accuracy, abs=1e-12)
    assert result.loss == pytest.approx(trained.history[-1].test_loss, rel=1e-5)
    assert set(result.to_json()) >= {"accuracy", "per_class", "samples", "loss"}


def test_evaluate_other_splits_and_data(trained: TrainResult, synthetic_npz: Path) -> None:
    everything = run_evaluate(trained.output, config=EvaluateConfig(split="all", device="cpu"))
    train = run_evaluate(trained.output, config=EvaluateConfig(split="train", device="cpu"))
    assert everything.samples == 1797 and train.samples == 1438
    test_hits = round(trained.final_accuracy * 359)
    assert round(everything.accuracy * 1797) == round(train.accuracy * 1438) + test_hits
    # A different split seed gives another test set of the same size.
    other = run_evaluate(trained.output, data_config=DataConfig(split_seed=3))
    assert other.samples == 359
    with pytest.raises(DataError, match="has 3 classes but checkpoint .* has 10"):
        run_evaluate(trained.output, f"npz:{synthetic_npz}")


def test_evaluate(trained: TrainResult) -> None:
    result = invoke("evaluate", trained.output, "--device", "cpu", "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert {"accuracy", "per_class", "samples"} <= set(payload)
    assert payload["samples"] == 359 and payload["split"] == "test" and payload["data"] == "digits"
    assert payload["accuracy"] == pytest.approx(trained.final_accuracy)
    assert list(payload["per_class"]) == [str(i) for i in range(10)]
    assert f"accuracy {payload['accuracy']:.4f} on 359 images" in result.stderr

    train_split = invoke("evaluate", trained.output, "--split", "train", "--json")
    assert_ok(train_split)
    assert json.loads(train_split.stdout)["samples"] == 1438
