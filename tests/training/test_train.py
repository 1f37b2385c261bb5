"""Training: the classic recipe (METHODS.md §3), the transformer recipe (AdamW, cosine schedule
with warm-up, label smoothing, mixing), resuming, and `snptool train`."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from snptool.config import EvaluateConfig, InputSpec, TrainConfig
from snptool.core.checkpoint import read_checkpoint, read_metadata
from snptool.errors import DataError, UsageError
from snptool.training.evaluate import run_evaluate
from snptool.training.train import (
    LEGACY_MOMENTUM_PREFIX,
    OPTIMIZER_PREFIX,
    InputOverrides,
    TrainResult,
    _optimizer_extras,
    _restore_optimizer,
    best_output_path,
    build_optimizer,
    learning_rate_at,
    run_train,
    training_loss,
)
from tests.conftest import assert_ok, assert_one_error, invoke, part_files


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
    with pytest.raises(DataError, match="has 3 classes but checkpoint .* has 10"):
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


# --- the transformer recipe: AdamW, cosine schedule with warm-up, label smoothing, mixing ---------


RECIPE = {
    "optimizer": "adamw",
    "learning_rate": 3e-3,
    "weight_decay": 3e-2,
    "schedule": "cosine",
    "min_lr": 1e-4,
    "label_smoothing": 0.1,
    "decay_norm_bias": False,
}


# --- its learning-rate schedule -------------------------------------------------------------------


def test_cosine_with_warmup_equals_hand_computation() -> None:
    config = TrainConfig(
        epochs=10, learning_rate=0.1, schedule="cosine", min_lr=0.001, warmup_epochs=2
    )
    expected = {
        0.0: 0.001,  # the warm-up starts at min_lr
        0.5: 0.001 + 0.099 * 0.25,  # per step: a quarter of the way up
        1.0: 0.001 + 0.099 * 0.5,
        2.0: 0.1,  # warm-up done: the cosine's start
        4.0: 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi / 4)),  # 2 of its 8 epochs
        6.0: 0.001 + 0.099 * 0.5,
        9.5: 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 7.5 / 8)),
        10.0: 0.001,
    }
    for epoch, rate in expected.items():
        assert learning_rate_at(epoch, config) == pytest.approx(rate, rel=1e-12), epoch


def test_cosine_without_warmup_and_step_with_warmup() -> None:
    cosine = TrainConfig(epochs=4, learning_rate=0.2, schedule="cosine", min_lr=0.0)
    rates = [learning_rate_at(epoch, cosine) for epoch in range(5)]
    assert rates == pytest.approx([0.2, 0.2 * (1 + 0.5**0.5) / 2, 0.1, 0.2 * (1 - 0.5**0.5) / 2, 0])
    step = TrainConfig(learning_rate=0.1, lr_decay=0.5, lr_step=1, warmup_epochs=2, min_lr=0.0)
    # The warm-up scales the step schedule's own value: epoch 1 is already decayed once.
    assert learning_rate_at(0.5, step) == pytest.approx(0.1 * 0.25)
    assert learning_rate_at(1.0, step) == pytest.approx(0.05 * 0.5)
    assert learning_rate_at(1.5, step) == pytest.approx(0.05 * 0.75)
    assert learning_rate_at(2.0, step) == pytest.approx(0.025)
    # Within an epoch the step schedule stays put.
    assert learning_rate_at(2.99, step) == learning_rate_at(2.0, step)


# --- its loss -------------------------------------------------------------------------------------


def test_label_smoothing_equals_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    log_p = torch.log_softmax(logits, 1)
    eps, classes = 0.3, 3
    per_image = [
        -((1 - eps) * log_p[i, labels[i]] + eps / classes * log_p[i].sum()) for i in range(2)
    ]
    assert training_loss(logits, labels, eps).item() == pytest.approx(
        float(sum(per_image) / 2), rel=1e-12
    )
    plain = float(-(log_p[0, 0] + log_p[1, 2]) / 2)
    assert training_loss(logits, labels).item() == pytest.approx(plain, rel=1e-12)
    assert training_loss(logits, labels, eps).item() > plain  # these logits favour the labels

    # Mixed targets are smoothed the same way: (1 − ε)·t + ε/K.
    soft = torch.tensor([[0.7, 0.0, 0.3], [0.3, 0.0, 0.7]], dtype=torch.float64)
    smoothed = (1 - eps) * soft + eps / classes
    hand = float(-(smoothed * log_p).sum(1).mean())
    assert training_loss(logits, soft, eps).item() == pytest.approx(hand, rel=1e-12)


# --- training and resuming with it ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_cct(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, TrainConfig]:
    """tiny_cct (64 tokens) trained on digits with AdamW and a cosine schedule for 2 epochs."""
    config = TrainConfig(epochs=2, batch_size=32, flip=False, device="cpu", **RECIPE)
    out = tmp_path_factory.mktemp("cct") / "cct.safetensors"
    return run_train("tiny_cct", "digits", out, config, arch_kwargs={"conv_layers": 2}), config


def test_adamw_trains_a_cct_and_records_the_recipe(trained_cct) -> None:
    result, config = trained_cct
    assert result.history[-1].loss < result.history[0].loss
    assert [r.learning_rate for r in result.history] == pytest.approx([3e-3, (3e-3 + 1e-4) / 2])
    metadata = read_metadata(result.output)
    recorded = metadata["training"]["config"]
    assert recorded == dataclasses.asdict(config)
    assert {k: recorded[k] for k in RECIPE} == RECIPE
    assert recorded["mixup"] == 0.0 and recorded["warmup_epochs"] == 0

    # AdamW's moments and step count of every parameter travel with the last state.
    tensors = _tensors(result.output)
    parameters = [n for n, _ in read_checkpoint(result.output).model.named_parameters()]
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert {k for k in tensors if k.startswith(f"{OPTIMIZER_PREFIX}{key}/")} == {
            f"{OPTIMIZER_PREFIX}{key}/{name}" for name in parameters
        }
    steps = 2 * math.ceil(1438 / 32)
    assert tensors[f"{OPTIMIZER_PREFIX}step/{parameters[0]}"].item() == steps


def test_no_decay_for_norm_and_bias_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    config = TrainConfig(optimizer="adamw", weight_decay=0.1, decay_norm_bias=False)
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, exempt = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([2, 3])]
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert len(exempt["params"]) == 3  # the linear bias, the norm's weight and bias
    everything = build_optimizer(model, dataclasses.replace(config, decay_norm_bias=True))
    assert len(everything.param_groups) == 1
    assert everything.param_groups[0]["betas"] == (0.9, 0.999)
    sgd = build_optimizer(model, TrainConfig())
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]


INTERRUPTING_VGG = """
from pathlib import Path

from model_defs.vgg import tiny_vgg

FLAG = Path({flag!r})


def factory(num_classes=10):
    # tiny_vgg that stops its run at epoch 2's first batch while FLAG exists (once).
    model = tiny_vgg(num_classes=num_classes)
    seen = [0]

    def interrupt(module, inputs):
        if module.training:
            seen[0] += 1
            if seen[0] > {batches} and FLAG.exists():
                FLAG.unlink()
                raise KeyboardInterrupt

    model.register_forward_pre_hook(interrupt)
    return model
"""


def test_resume_of_a_mixed_adamw_cosine_run_repeats_it(tmp_path: Path) -> None:
    """A run stopped after epoch 1 of 3 and resumed equals an uninterrupted one: the cosine
    (which depends on the total epochs) and the warm-up continue per step, the mixing draws
    repeat, and AdamW's moments come back."""
    config = TrainConfig(
        epochs=3,
        batch_size=64,
        flip=True,
        device="cpu",
        warmup_epochs=1,
        mixup=0.8,
        cutmix=1.0,
        mix_prob=0.8,
        **RECIPE,
    )
    flag, arch_file = tmp_path / "interrupt", tmp_path / "interrupting.py"
    arch_file.write_text(INTERRUPTING_VGG.format(flag=str(flag), batches=math.ceil(1438 / 64)))
    arch, inputs = f"{arch_file}:factory", InputOverrides(channels=3, size=(32, 32))
    straight = run_train(arch, "digits", tmp_path / "straight.safetensors", config, inputs=inputs)
    flag.touch()
    with pytest.raises(KeyboardInterrupt):
        run_train(arch, "digits", tmp_path / "first.safetensors", config, inputs=inputs)
    assert read_metadata(tmp_path / "first.safetensors")["training"]["epochs_done"] == 1
    resumed = run_train(  # naming the file factory trusts it in the resumed checkpoint
        arch, None, tmp_path / "resumed.safetensors", config, resume=tmp_path / "first.safetensors"
    )
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    for ours, theirs in zip(resumed.history, straight.history, strict=True):
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-6)
        assert ours.learning_rate == theirs.learning_rate
        assert ours.test_accuracy == theirs.test_accuracy
    expected, actual = _tensors(straight.output), _tensors(resumed.output)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    # The first epoch only warms up, the last two cosine down: the schedule as recorded.
    assert [r.learning_rate for r in straight.history] == pytest.approx(
        [1e-4, 3e-3, 1e-4 + (3e-3 - 1e-4) * 0.5]
    )
    assert straight.final_accuracy > 0.3  # chance is 0.1

    sgd = dataclasses.replace(config, optimizer="sgd", epochs=4)
    with pytest.raises(UsageError, match="trained with --optimizer adamw; resume it with the same"):
        run_train(arch, None, tmp_path / "x.safetensors", sgd, resume=straight.output)


def test_files_with_the_older_momentum_keys_resume_their_momentum() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    optimizer = build_optimizer(model, TrainConfig())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    extras = _optimizer_extras(model, optimizer)
    prefix = f"{OPTIMIZER_PREFIX}momentum_buffer/"
    legacy = {LEGACY_MOMENTUM_PREFIX + k.removeprefix(prefix): v for k, v in extras.items()}
    assert len(legacy) == 4
    for saved in (extras, legacy):
        fresh = build_optimizer(model, TrainConfig())
        _restore_optimizer(model, fresh, saved)
        for parameter in model.parameters():
            torch.testing.assert_close(
                fresh.state[parameter]["momentum_buffer"],
                optimizer.state[parameter]["momentum_buffer"],
                rtol=0,
                atol=0,
            )


# --- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "adam"}, "unknown optimizer 'adam'; use one of sgd, adamw."),
        ({"schedule": "linear"}, "unknown schedule 'linear'; use one of step, cosine."),
        ({"warmup_epochs": 30}, "warm-up epochs (30) must be fewer than epochs (30)."),
        ({"warmup_epochs": -1}, "warm-up epochs must be >= 0, not -1."),
        ({"label_smoothing": 1.0}, "label smoothing must lie in [0, 1), not 1.0."),
        ({"mixup": -0.2}, "mixup alpha must be >= 0 (0: off), not -0.2."),
        ({"cutmix": -1.0}, "cutmix alpha must be >= 0 (0: off), not -1.0."),
        ({"mix_prob": 1.5}, "mix prob must lie in [0, 1], not 1.5."),
        ({"min_lr": -1e-3}, "min lr must be >= 0, not -0.001."),
        (
            {"schedule": "cosine", "min_lr": 0.1},
            "min lr 0.1 must not exceed the learning rate 0.01.",
        ),
    ],
)
def test_bad_recipe_values(settings: dict, message: str) -> None:
    with pytest.raises(UsageError) as error:
        TrainConfig(**settings)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--optimizer", "adam"], "unknown optimizer 'adam'"),
        (["--warmup-epochs", "3", "--epochs", "3"], "warm-up epochs (3) must be fewer"),
        (["--label-smoothing", "-0.1"], "label smoothing must lie in [0, 1)"),
        (["--mixup", "-1"], "mixup alpha must be >= 0"),
    ],
)
def test_bad_recipe_flags_exit_2_with_one_line(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    out = tmp_path / "x.safetensors"
    result = invoke("train", "--arch", "tiny_vgg", *flags, "-o", out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


@pytest.mark.gpu
def test_mixed_adamw_run_trains_and_resumes_on_cuda(tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=64, device="cuda", mixup=0.8, cutmix=1.0, **RECIPE)
    first = run_train("tiny_vgg", "digits", tmp_path / "first.safetensors", config)
    resumed = run_train(
        None,
        None,
        tmp_path / "resumed.safetensors",
        dataclasses.replace(config, epochs=2),
        resume=first.output,
    )
    assert resumed.final_accuracy > 0.3
    step = _tensors(resumed.output)[f"{OPTIMIZER_PREFIX}step/features.0.weight"]
    assert step.item() == 2 * math.ceil(1438 / 64)  # AdamW's step count went on from epoch 1


# --- the command ------------------------------------------------------------------------------


def test_train(synthetic_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = invoke(
        "train",
        "--arch",
        "tiny_vgg",
        "--data",
        f"npz:{synthetic_npz}",
        "--epochs",
        2,
        "--batch-size",
        8,
        "--lr",
        0.05,
        "--device",
        "cpu",
        "-o",
        out,
        "--json",
    )
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "output",
        "best_output",
        "best_epoch",
        "best_accuracy",
        "final_accuracy",
        "history",
        "config",
    }
    assert payload["output"] == str(out)
    assert payload["best_output"] == str(tmp_path / "model.best.safetensors")
    assert [r["epoch"] for r in payload["history"]] == [1, 2]
    assert payload["config"]["batch_size"] == 8 and payload["config"]["learning_rate"] == 0.05
    assert out.is_file() and Path(payload["best_output"]).is_file()
    assert read_metadata(out)["class_names"] == ["a", "b", "c"]
    assert "epoch 2/2" in result.stderr and "best test accuracy" in result.stderr
    assert part_files(tmp_path) == []


@pytest.mark.parametrize(
    ("flags", "contains"),
    [
        (["--arch-kwargs", "{bad"], "--arch-kwargs '{bad' is not valid JSON"),
        (["--input-size", "0"], "--input-size '0' must be S or HxW"),
        (["--mean", "a,b"], "--mean 'a,b' must be comma-separated numbers"),
        (["--std", "0.5,0.5"], "input std has 2 values but the input has 3 channels"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--test-fraction", "1.5"], "test fraction must lie in (0, 1)"),
    ],
)
def test_bad_train_flags(tmp_path: Path, flags: list[str], contains: str) -> None:
    out = tmp_path / "x.safetensors"
    assert_one_error(invoke("train", "--arch", "tiny_vgg", *flags, "-o", out), contains=contains)
    assert not out.exists()


@pytest.mark.parametrize("arch", ["tiny_vg", "model_defs.vgg:tiny_vgg"])
def test_failed_train_leaves_existing_output(tmp_path: Path, arch: str) -> None:
    # Both fail after the data is loaded: an unknown name, and a model that does not fit the
    # digits' native 1×8×8 input.
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an earlier result")
    assert_one_error(invoke("train", "--arch", arch, "--data", "digits", "-o", out))
    assert out.read_bytes() == b"an earlier result"
    assert not (tmp_path / "model.best.safetensors").exists()
    assert part_files(tmp_path) == []
