"""Training (METHODS.md §3 recipe), resuming, and evaluation of the result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from snptool.config import DataConfig, EvaluateConfig, InputSpec, TrainConfig
from snptool.core.checkpoint import read_checkpoint, read_metadata
from snptool.data.datasets import load_data
from snptool.errors import DataError, UsageError
from snptool.training.evaluate import run_evaluate
from snptool.training.train import (
    OPTIMIZER_PREFIX,
    InputOverrides,
    TrainResult,
    best_output_path,
    learning_rate_at,
    run_train,
)


def _tensors(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def test_short_training_beats_chance(trained: TrainResult, tiny_train: TrainConfig) -> None:
    assert len(trained.history) == tiny_train.epochs
    assert trained.final_accuracy > 0.5  # chance is 0.1
    assert trained.best_accuracy == max(r.test_accuracy for r in trained.history)
    assert trained.history[-1].loss < trained.history[0].loss
    assert [r.learning_rate for r in trained.history] == [0.05, 0.05]
    assert trained.config == dataclasses.asdict(tiny_train)


def test_last_and_best_files(trained: TrainResult, tiny_train: TrainConfig) -> None:
    assert Path(trained.best_output) == best_output_path(trained.output)
    assert Path(trained.best_output).name == "tiny_vgg.best.safetensors"
    last, best = read_metadata(trained.output), read_metadata(trained.best_output)

    assert last["training"]["saved"] == "last"
    assert [r["epoch"] for r in last["training"]["history"]] == [1, 2]
    assert last["training"]["epochs_done"] == 2
    assert last["training"]["final_accuracy"] == trained.final_accuracy
    assert best["training"]["saved"] == "best"
    assert best["training"]["saved_epoch"] == trained.best_epoch
    assert len(best["training"]["history"]) == trained.best_epoch  # written at that epoch
    assert best["training"]["best_accuracy"] == trained.best_accuracy

    for metadata in (last, best):
        assert metadata["arch"] == {"spec": "tiny_vgg", "kwargs": {"num_classes": 10}}
        assert metadata["class_names"] == [str(i) for i in range(10)]
        assert metadata["data"] == "digits"
        assert metadata["input"]["channels"] == 3 and metadata["input"]["height"] == 32
        assert metadata["training"]["test_data"]["samples"] == 359
        assert metadata["training"]["train_data"]["samples"] == 1438
        assert metadata["training"]["config"]["learning_rate"] == tiny_train.learning_rate
        assert metadata["provenance"]["command"]

    momentum = {k for k in _tensors(trained.output) if k.startswith(OPTIMIZER_PREFIX)}
    parameters = {n for n, _ in read_checkpoint(trained.output).model.named_parameters()}
    assert momentum == {f"{OPTIMIZER_PREFIX}momentum_buffer/{name}" for name in parameters}
    assert not any("/" in k for k in _tensors(trained.best_output))


def test_resume_repeats_an_uninterrupted_run(tiny_train: TrainConfig, tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_train, flip=True)  # every seeded draw: shuffle, shift, flip
    straight = run_train("tiny_vgg", "digits", tmp_path / "straight.safetensors", config)
    first = dataclasses.replace(config, epochs=1)
    run_train("tiny_vgg", "digits", tmp_path / "first.safetensors", first)
    resumed = run_train(
        None, None, tmp_path / "resumed.safetensors", config, resume=tmp_path / "first.safetensors"
    )

    assert [r.epoch for r in resumed.history] == [1, 2]
    for ours, theirs in zip(resumed.history, straight.history, strict=True):
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-6)
        assert ours.test_accuracy == theirs.test_accuracy
    # On one CPU the two runs do the same float operations, so the weights are bit-identical.
    expected, actual = _tensors(straight.output), _tensors(resumed.output)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    metadata = read_metadata(resumed.output)
    assert metadata["data"] == "digits"
    assert metadata["provenance"]["inputs"]["resume"]["path"] == str(tmp_path / "first.safetensors")


def test_resume_errors(trained: TrainResult, tiny_train: TrainConfig, tmp_path: Path) -> None:
    out = tmp_path / "more.safetensors"
    with pytest.raises(UsageError, match="already trained 2 epochs; raise --epochs above 2"):
        run_train(None, None, out, tiny_train, resume=trained.output)
    with pytest.raises(UsageError, match="--arch tiny_lenet differs"):
        run_train("tiny_lenet", None, out, tiny_train, resume=trained.output)
    with pytest.raises(UsageError, match="not the last state"):
        run_train(None, None, out, tiny_train, resume=trained.best_output)
    with pytest.raises(UsageError, match="is also an input"):
        run_train(None, None, trained.output, tiny_train, resume=trained.output)
    assert not out.exists()


def test_resume_on_data_with_other_classes_is_refused(
    trained: TrainResult, tiny_train: TrainConfig, synthetic_npz: Path, tmp_path: Path
) -> None:
    config = dataclasses.replace(tiny_train, epochs=3)
    with pytest.raises(DataError, match="has 3 classes but the checkpoint has 10"):
        run_train(
            None, f"npz:{synthetic_npz}", tmp_path / "x.safetensors", config, resume=trained.output
        )


def test_train_needs_an_arch_or_resume(tiny_train: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give --arch"):
        run_train(None, "digits", tmp_path / "x.safetensors", tiny_train)


def test_model_that_does_not_fit_the_input_is_a_usage_error(
    tiny_train: TrainConfig, tmp_path: Path
) -> None:
    # digits are 1×8×8; a spec outside the registry takes the data's own shape.
    with pytest.raises(UsageError, match=r"does not run on a 1x8x8 input .*--channels"):
        run_train("model_defs.vgg:tiny_vgg", "digits", tmp_path / "x.safetensors", tiny_train)
    assert not (tmp_path / "x.safetensors").exists()


def test_one_channel_input(
    make_npz: Callable[..., Path], tiny_train: TrainConfig, tmp_path: Path
) -> None:
    result = run_train(
        "tiny_lenet",
        f"npz:{make_npz()}",
        tmp_path / "gray.safetensors",
        dataclasses.replace(tiny_train, epochs=1, batch_size=8),
        arch_kwargs={"in_channels": 1},
        inputs=InputOverrides(channels=1),
    )
    checkpoint = read_checkpoint(result.output)
    assert checkpoint.input_spec == InputSpec(channels=1, mean=(0.5,), std=(0.5,))
    assert checkpoint.metadata["input"]["mean"] == [0.5]
    assert checkpoint.class_names == ["0", "1", "2"]


@pytest.mark.gpu
def test_train_on_cuda_and_evaluate_on_cpu(tiny_train: TrainConfig, tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_train, device="cuda")
    result = run_train("tiny_vgg", "digits", tmp_path / "cuda.safetensors", config)
    assert result.final_accuracy > 0.5
    on_cpu = run_evaluate(result.output, config=EvaluateConfig(device="cpu"))
    assert on_cpu.accuracy == pytest.approx(result.final_accuracy, abs=2 / 359)


def test_learning_rate_schedule() -> None:
    config = TrainConfig(learning_rate=0.1, lr_decay=0.5, lr_step=3)
    rates = [learning_rate_at(epoch, config) for epoch in range(8)]
    expected = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert learning_rate_at(100, TrainConfig(lr_decay=1.0)) == TrainConfig().learning_rate
    assert learning_rate_at(20, TrainConfig()) == pytest.approx(0.01 * 0.6)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("epochs", 0, "epochs must be at least 1"),
        ("learning_rate", 0.0, "learning rate must be positive"),
        ("momentum", 1.0, "momentum must lie in"),
        ("lr_decay", 0.0, "lr decay must"),
        ("device", "tpu", "unknown device 'tpu'"),
    ],
)
def test_train_config_validation(field: str, value, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        TrainConfig(**{field: value})
    with pytest.raises(UsageError, match="Nesterov needs a momentum"):
        TrainConfig(momentum=0.0)


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
    with pytest.raises(DataError, match="has 3 classes but the checkpoint has 10"):
        run_evaluate(trained.output, f"npz:{synthetic_npz}")
