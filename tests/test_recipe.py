"""The transformer recipe of `train`: AdamW, cosine schedule with warm-up, label smoothing,
mixup and CutMix, and resuming such a run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from snptool.cli import app
from snptool.config import TrainConfig
from snptool.core.checkpoint import read_checkpoint, read_metadata
from snptool.data.mixing import MixDraw, apply_mix, cutmix_box, draw_mix, mixing_rng
from snptool.errors import UsageError
from snptool.training.train import (
    LEGACY_MOMENTUM_PREFIX,
    OPTIMIZER_PREFIX,
    InputOverrides,
    TrainResult,
    _optimizer_extras,
    _restore_optimizer,
    build_optimizer,
    learning_rate_at,
    run_train,
    training_loss,
)

RECIPE = {
    "optimizer": "adamw",
    "learning_rate": 3e-3,
    "weight_decay": 3e-2,
    "schedule": "cosine",
    "min_lr": 1e-4,
    "label_smoothing": 0.1,
    "decay_norm_bias": False,
}


def _tensors(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


# --- the learning-rate schedule -----------------------------------------------------------------


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


# --- the loss -----------------------------------------------------------------------------------


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


# --- mixing -------------------------------------------------------------------------------------


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 1×4×4 images of constant values 1, 2, 3, labels 0, 1, 2."""
    x = torch.arange(1.0, 4.0).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    return x, torch.tensor([0, 1, 2])


def test_mixup_equals_hand_computation() -> None:
    x, labels = _images()
    mixed, targets = apply_mix(x, labels, 4, MixDraw("mixup", 0.75))
    # Image i is mixed with image 2 − i.
    assert torch.equal(mixed[:, 0, 0, 0], torch.tensor([0.75 + 0.75, 2.0, 2.25 + 0.25]))
    assert torch.equal(mixed, mixed[:, :, :1, :1].expand_as(mixed))
    expected = torch.tensor([[0.75, 0, 0.25, 0], [0, 1, 0, 0], [0.25, 0, 0.75, 0]])
    assert torch.equal(targets, expected)
    unmixed, one_hot = apply_mix(x, labels, 4, None)
    assert unmixed is x and torch.equal(one_hot, torch.eye(4)[:3])


def test_cutmix_equals_hand_computation() -> None:
    x, labels = _images()
    # A 2×2 box (rows 1–2, columns 2–3) of 16 pixels: each image keeps 12 / 16.
    mixed, targets = apply_mix(x, labels, 3, MixDraw("cutmix", 0.75, (1, 3, 2, 4)))
    box = torch.zeros(4, 4, dtype=torch.bool)
    box[1:3, 2:4] = True
    for i, partner in enumerate([2, 1, 0]):
        expected = torch.where(box, x[partner, 0], x[i, 0])
        assert torch.equal(mixed[i, 0], expected)
    assert torch.equal(targets, torch.tensor([[0.75, 0, 0.25], [0, 1, 0], [0.25, 0, 0.75]]))
    assert torch.equal(x[:, 0, 0, 0], torch.tensor([1.0, 2.0, 3.0]))  # the input is untouched


def test_cutmix_box_and_its_lambda() -> None:
    replay = np.random.default_rng(5)  # the centre: row, then column, uniform on 0..7
    cy, cx = int(replay.integers(8)), int(replay.integers(8))
    # λ 0.75 → side √0.25 = ½ of 8 → a 4×4 box about (cy, cx), clipped to the image.
    expected = (max(cy - 2, 0), min(cy + 2, 8), max(cx - 2, 0), min(cx + 2, 8))
    assert cutmix_box(0.75, 8, 8, np.random.default_rng(5)) == expected
    assert cutmix_box(1.0, 8, 8, np.random.default_rng(5)) == (cy, cy, cx, cx)  # empty box

    for seed in range(20):
        draw = draw_mix(0.0, 1.0, 1.0, 8, 8, np.random.default_rng(seed))
        top, bottom, left, right = draw.box
        assert draw.kind == "cutmix"
        assert draw.lam == 1 - (bottom - top) * (right - left) / 64  # the kept share exactly


def test_mix_draws_are_seeded_and_pick_one_kind_per_batch() -> None:
    def draws(seed: int, epoch: int) -> list[MixDraw | None]:
        rng = mixing_rng(seed, epoch)
        return [draw_mix(0.8, 1.0, 0.5, 32, 32, rng) for _ in range(400)]

    first = draws(0, 3)
    assert first == draws(0, 3)
    assert first != draws(0, 4) and first != draws(1, 3)
    kinds = [d.kind if d else "none" for d in first]
    assert 150 < kinds.count("none") < 250  # mix prob ½
    assert 50 < kinds.count("mixup") < 150 and 50 < kinds.count("cutmix") < 150
    assert all(0 <= d.lam <= 1 for d in first if d)
    assert draw_mix(0.0, 0.0, 1.0, 32, 32, mixing_rng(0, 0)) is None
    assert all(draw_mix(0.8, 1.0, 0.0, 32, 32, mixing_rng(0, e)) is None for e in range(20))
    only_mixup = [draw_mix(0.8, 0.0, 1.0, 32, 32, mixing_rng(0, e)) for e in range(20)]
    assert {d.kind for d in only_mixup} == {"mixup"}


# --- training -----------------------------------------------------------------------------------


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
    resumed = run_train(
        None, None, tmp_path / "resumed.safetensors", config, resume=tmp_path / "first.safetensors"
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
        run_train(None, None, tmp_path / "x.safetensors", sgd, resume=straight.output)


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
    result = CliRunner().invoke(app, ["train", "--arch", "tiny_vgg", *flags, "-o", str(out)])
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
