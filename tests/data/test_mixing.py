"""Mixup and CutMix: the mixed batches and targets by hand, the CutMix box, seeded draws."""

from __future__ import annotations

import numpy as np
import torch

from snptool.data.mixing import MixDraw, apply_mix, cutmix_box, draw_mix, mixing_rng


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
