"""Data specs → splits, and the preprocessing / augmentation of batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snptool.config import DataConfig, InputSpec
from snptool.core.files import sha256_file
from snptool.data.datasets import (
    SPEC_KINDS,
    augment_batch,
    load_data,
    prepare_batch,
    stratified_split,
)
from snptool.errors import DataError, InputFileError, UsageError
from tests.conftest import assert_one_error, invoke

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _images(split) -> torch.Tensor:
    return split.images.images


# --- digits -----------------------------------------------------------------------------------


def test_digits_all() -> None:
    data = load_data("digits", "all")
    assert len(data) == 1797
    assert data.class_names == [str(i) for i in range(10)]
    assert data.native_shape == (1, 8, 8)
    assert _images(data).dtype == torch.uint8 and _images(data).shape == (1797, 1, 8, 8)
    assert int(_images(data).max()) == 255 and int(_images(data).min()) == 0
    assert sorted(torch.unique(data.labels).tolist()) == list(range(10))


def test_digits_split_is_stratified_deterministic_disjoint_and_complete() -> None:
    everything = load_data("digits", "all")
    labels = everything.labels.numpy()
    train_idx, test_idx = stratified_split(labels, 0.2, 0)

    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(1797))
    for label in range(10):
        members = int((labels == label).sum())
        assert int((labels[test_idx] == label).sum()) == round(members * 0.2)

    train, test = load_data("digits", "train"), load_data("digits", "test")
    assert (len(train), len(test)) == (len(train_idx), len(test_idx))
    assert len(train) + len(test) == 1797
    assert abs(len(test) / 1797 - 0.2) < 0.01
    assert torch.equal(_images(train), _images(everything)[torch.as_tensor(train_idx)])
    assert torch.equal(_images(test), _images(everything)[torch.as_tensor(test_idx)])
    assert torch.equal(test.labels, everything.labels[torch.as_tensor(test_idx)])

    again = load_data("digits", "test")
    assert torch.equal(_images(again), _images(test)) and torch.equal(again.labels, test.labels)


def test_split_seed_and_fraction_change_the_split() -> None:
    labels = load_data("digits", "all").labels.numpy()
    seed0, seed1 = stratified_split(labels, 0.2, 0)[1], stratified_split(labels, 0.2, 1)[1]
    assert len(seed0) == len(seed1) and not np.array_equal(seed0, seed1)
    other = load_data("digits", "test", DataConfig(split_seed=1))
    assert torch.equal(other.labels, torch.from_numpy(labels[seed1]))
    half = load_data("digits", "test", DataConfig(test_fraction=0.5))
    assert len(half) == pytest.approx(1797 / 2, abs=10)


def test_stratified_split_keeps_one_of_each_class_on_both_sides() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    train, test = stratified_split(labels, 0.1, 0)
    assert set(labels[train]) == set(labels[test]) == {0, 1, 2}


def test_bad_split_and_fraction() -> None:
    with pytest.raises(UsageError, match="unknown split 'validation'"):
        load_data("digits", "validation")
    with pytest.raises(UsageError, match="test fraction"):
        DataConfig(test_fraction=1.0)


# --- npz --------------------------------------------------------------------------------------


def test_npz_without_test_mask_splits_per_class(synthetic_npz: Path) -> None:
    train = load_data(f"npz:{synthetic_npz}", "train")
    test = load_data(f"npz:{synthetic_npz}", "test")
    assert (len(train), len(test)) == (48, 12)
    assert train.class_names == test.class_names == ["a", "b", "c"]
    assert torch.bincount(test.labels).tolist() == [4, 4, 4]
    assert train.native_shape == (3, 32, 32)
    assert _images(train).shape == (48, 3, 32, 32) and _images(train).dtype == torch.uint8
    with np.load(synthetic_npz) as archive:
        first = torch.from_numpy(archive["images"][0]).permute(2, 0, 1)
    everything = load_data(f"npz:{synthetic_npz}", "all")
    assert torch.equal(_images(everything)[0], first)
    record = train.record()
    assert record["spec"] == f"npz:{synthetic_npz}" and record["samples"] == 48
    assert len(record["sha256"]) == 64


def test_npz_test_mask_decides_the_split(make_npz: Callable[..., Path]) -> None:
    mask = np.zeros(60, dtype=bool)
    mask[:10] = True
    path = make_npz(test=mask)
    test = load_data(f"npz:{path}", "test")
    train = load_data(f"npz:{path}", "train")
    assert (len(train), len(test)) == (50, 10)
    assert test.labels.tolist() == [i % 3 for i in range(10)]
    assert test.class_names == ["0", "1", "2"]  # no class_names array: the label numbers


def test_npz_grayscale_nhw(make_npz: Callable[..., Path]) -> None:
    images = np.zeros((60, 8, 8), dtype=np.uint8)
    data = load_data(f"npz:{make_npz(images=images)}", "all")
    assert _images(data).shape == (60, 1, 8, 8)
    assert data.native_shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        ({"images": np.zeros((60, 32, 32, 3), dtype=np.float32)}, "must be uint8 NHWC"),
        ({"images": np.zeros((60, 2, 32, 32, 3), dtype=np.uint8)}, "must be uint8 NHWC"),
        ({"labels": np.arange(59) % 3}, "60 images but 59 labels"),
        ({"labels": np.arange(60) % 3 - 1}, "labels must be 0, 1, 2"),
        ({"class_names": np.array(["a", "b"])}, "label 2 has no entry in 'class_names'"),
        ({"test": np.zeros(10, dtype=bool)}, "'test' has 10 entries for 60 images"),
    ],
)
def test_npz_bad_content(make_npz: Callable[..., Path], arrays: dict, pattern: str) -> None:
    path = make_npz(**arrays)
    with pytest.raises(DataError, match=pattern):
        load_data(f"npz:{path}", "all")


def test_npz_missing_labels(tmp_path: Path) -> None:
    path = tmp_path / "no_labels.npz"
    np.savez(path, images=np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="has no 'labels' array"):
        load_data(f"npz:{path}")


def test_npz_empty_split(make_npz: Callable[..., Path]) -> None:
    path = make_npz(test=np.zeros(60, dtype=bool))
    assert len(load_data(f"npz:{path}", "train")) == 60
    with pytest.raises(DataError, match="the test split of npz:.* holds no images"):
        load_data(f"npz:{path}", "test")


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_npz_without_images(tmp_path: Path, split: str) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, images=np.zeros((0, 32, 32, 3), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(DataError, match=f"the {split} split of npz:.* holds no images"):
        load_data(f"npz:{path}", split)


def test_npz_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="npz needs a file"):
        load_data("npz:")
    with pytest.raises(InputFileError, match="does not exist"):
        load_data(f"npz:{tmp_path / 'absent.npz'}")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(InputFileError, match="not a readable .npz file"):
        load_data(f"npz:{garbage}")


# --- image folders ----------------------------------------------------------------------------


def _write_class_folders(root: Path, classes: dict[str, int], size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.full((size[1], size[0], 3), 60 * index, dtype=np.uint8)
            pixels[0, 0] = rng.integers(0, 256, 3)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_split_is_seeded(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "flat", {"cat": 5, "dog": 5, "emu": 5})
    spec = f"imagefolder:{tmp_path / 'flat'}"
    train, test = load_data(spec, "train"), load_data(spec, "test")
    assert train.class_names == ["cat", "dog", "emu"]
    assert (len(train), len(test)) == (12, 3)
    assert sorted(test.labels.tolist()) == [0, 1, 2]
    assert train.native_shape is None

    images, labels = next(test.batches(InputSpec(height=16, width=16), batch_size=8))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    # Every image of class k is the flat colour 60·k (but for one corner pixel).
    for image, label in zip(images, labels, strict=True):
        assert int(image[:, 8, 8].float().mean()) == pytest.approx(60 * int(label), abs=1)
    again = next(load_data(spec, "test").batches(InputSpec(height=16, width=16), batch_size=8))
    assert torch.equal(again[0], images)


def test_imagefolder_train_and_test_folders(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "tree" / "train", {"a": 4, "b": 3})
    _write_class_folders(tmp_path / "tree" / "test", {"a": 2, "b": 1})
    spec = f"imagefolder:{tmp_path / 'tree'}"
    assert len(load_data(spec, "train")) == 7
    test = load_data(spec, "test")
    assert test.labels.tolist() == [0, 0, 1] and test.class_names == ["a", "b"]
    assert len(load_data(spec, "all")) == 10
    gray, _ = next(test.batches(InputSpec(channels=1, height=8, width=8), batch_size=2))
    assert gray.shape == (2, 1, 8, 8)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'absent'}")
    with pytest.raises(DataError, match="holds no class folders"):
        load_data(f"imagefolder:{tmp_path}")
    with pytest.raises(DataError, match="imagefolder needs a folder"):
        load_data("imagefolder")


# --- CIFAR-10 ---------------------------------------------------------------------------------


def test_cifar10_npz(cifar_npz: Path) -> None:
    spec = f"npz:{cifar_npz}"
    train, test = load_data(spec, "train"), load_data(spec, "test")
    assert (len(train), len(test)) == (8000, 2000)
    assert test.class_names == CIFAR_CLASSES
    assert torch.bincount(test.labels).tolist() == [200] * 10
    assert _images(test).shape == (2000, 3, 32, 32)


def test_cifar10_folder_without_data_asks_for_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--download"):
        load_data(f"cifar10:{tmp_path}", "test")


def test_unknown_spec_kind_lists_kinds() -> None:
    with pytest.raises(DataError) as error:
        load_data("mnist", "train")
    assert "unknown data spec 'mnist'" in str(error.value)
    assert all(kind in str(error.value) for kind in SPEC_KINDS)


# --- preprocessing and augmentation -----------------------------------------------------------


def test_prepare_batch_scales_and_normalises() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 4, 4)
    spec = InputSpec(height=4, width=4, mean=(0.5, 0.2, 0.0), std=(0.5, 0.1, 2.0))
    x = prepare_batch(images.contiguous(), spec)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 4, 4)
    expected = torch.tensor(
        [[-1.0, -2.0, 0.0], [-0.6, 0.0, 0.1], [1.0, 8.0, 0.5]]
    )  # rows: pixel 0, 51, 255; columns: channels
    torch.testing.assert_close(x[:, :, 2, 2], expected, rtol=0, atol=1e-5)


def test_prepare_batch_gray_to_rgb_and_resize() -> None:
    gray = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    gray[1] = 0
    x = prepare_batch(gray, InputSpec(height=32, width=32))
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0], torch.ones(3, 32, 32), rtol=0, atol=1e-5)
    torch.testing.assert_close(x[1], -torch.ones(3, 32, 32), rtol=0, atol=1e-5)


def test_prepare_batch_rgb_to_gray() -> None:
    rgb = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 0] = 255  # pure red
    x = prepare_batch(rgb, InputSpec(channels=1, height=4, width=4, mean=(0.0,), std=(1.0,)))
    assert x.shape == (1, 1, 4, 4)
    torch.testing.assert_close(x, torch.full((1, 1, 4, 4), 0.299), rtol=0, atol=1e-6)


def test_augment_identity_without_translation_or_flip() -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, translate=0, flip=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, x)


def test_augment_translation_shifts_content_and_fills_zeros() -> None:
    batch, size, shift = 16, 32, 4
    x = torch.zeros(batch, 2, size, size)
    x[:, 0, 16, 16] = 1.0  # a dot in channel 0, all ones in channel 1
    x[:, 1] = 1.0
    out = augment_batch(x, shift, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape

    moves = set()
    for image in out:
        dots = torch.nonzero(image[0])
        assert len(dots) == 1 and float(image[0].sum()) == 1.0
        dy, dx = (int(v) - 16 for v in dots[0])
        assert abs(dy) <= shift and abs(dx) <= shift
        moves.add((dy, dx))
        # The same shift moves the all-ones channel: |dy| rows and |dx| columns become 0.
        assert float(image[1].sum()) == (size - abs(dy)) * (size - abs(dx))
        rows = image[1].sum(1)
        if dy > 0:
            assert float(rows[:dy].sum()) == 0.0
        if dy < 0:
            assert float(rows[dy:].sum()) == 0.0
    assert len(moves) > 1


def test_augment_flip() -> None:
    x = torch.arange(16 * 4, dtype=torch.float32).view(16, 1, 1, 4)
    out = augment_batch(x, translate=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_augment_is_seeded() -> None:
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    first = augment_batch(x, 3, True, torch.Generator().manual_seed(5))
    second = augment_batch(x, 3, True, torch.Generator().manual_seed(5))
    other = augment_batch(x, 3, True, torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def _write_npz(path, labels, names=("a", "b", "c"), **extra):
    images = np.random.default_rng(len(labels)).integers(0, 256, (len(labels), 4, 4, 3))
    np.savez(
        path,
        images=images.astype(np.uint8),
        labels=np.asarray(labels),
        **extra,
        class_names=np.asarray(names),
    )
    return path


def test_npz_train_and_test_files(tmp_path):
    train = _write_npz(tmp_path / "train.npz", [0, 1, 2, 0, 1, 2])
    test = _write_npz(tmp_path / "test.npz", [2, 1, 0])
    spec = f"npz:{train},{test}"
    train_split, test_split = load_data(spec, "train"), load_data(spec, "test")
    assert train_split.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert test_split.labels.tolist() == [2, 1, 0]
    assert load_data(spec, "all").labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 1, 0]
    assert test_split.class_names == ["a", "b", "c"]
    with np.load(test) as archive:
        assert torch.equal(
            test_split.images.images, torch.from_numpy(archive["images"]).permute(0, 3, 1, 2)
        )
    record = test_split.record()
    assert record["sha256"] == sha256_file(test)
    assert record["test_fraction"] is None and record["split_seed"] is None


def test_npz_pair_refuses_mismatch_and_masks(tmp_path):
    train = _write_npz(tmp_path / "train.npz", [0, 1, 2])
    other = _write_npz(tmp_path / "other.npz", [0, 1], names=("x", "y"))
    masked = _write_npz(tmp_path / "masked.npz", [0, 1], test=np.array([0, 1]))
    with pytest.raises(DataError, match="differ in class names"):
        load_data(f"npz:{train},{other}", "all")
    with pytest.raises(DataError, match="'test' mask"):
        load_data(f"npz:{train},{masked}", "test")
    with pytest.raises(DataError, match="one file or two"):
        load_data(f"npz:{train},{other},{masked}", "test")


# --- class subsets ----------------------------------------------------------------------------


def test_class_subset_keeps_the_data_sets_names_and_order(tmp_path):
    labels = [0, 1, 2, 3, 0, 1, 2, 3, 3]
    path = _write_npz(tmp_path / "four.npz", labels, names=("cat", "dog", "emu", "fox"))
    everything = load_data(f"npz:{path}", "all")
    config = DataConfig(classes=("fox", "dog"))  # named out of order: the data set's order wins
    subset = load_data(f"npz:{path}", "all", config)
    assert subset.class_names == ["dog", "fox"] and subset.num_classes == 2
    kept = [i for i, label in enumerate(labels) if label in (1, 3)]
    assert subset.labels.tolist() == [0 if labels[i] == 1 else 1 for i in kept]
    assert torch.equal(_images(subset), _images(everything)[kept])
    assert subset.record()["classes"] == ["dog", "fox"]
    assert "classes" not in everything.record()
    by_index = load_data(f"npz:{path}", "all", DataConfig(classes=("3", "1")))
    assert by_index.class_names == ["dog", "fox"] and torch.equal(by_index.labels, subset.labels)
    first = load_data(f"npz:{path}", "all", DataConfig(num_classes_subset=3))
    assert first.class_names == ["cat", "dog", "emu"]
    assert first.labels.tolist() == [label for label in labels if label < 3]


def test_class_subset_test_split_is_the_full_splits_restriction() -> None:
    full = load_data("digits", "test")
    subset = load_data("digits", "test", DataConfig(classes=("2", "7", "9")))
    keep = np.isin(full.labels.numpy(), [2, 7, 9])
    assert torch.equal(_images(subset), _images(full)[torch.from_numpy(keep)])
    assert subset.labels.tolist() == [[2, 7, 9].index(v) for v in full.labels[keep].tolist()]


def test_class_subset_errors(tmp_path):
    path = _write_npz(tmp_path / "three.npz", [0, 1, 2], names=("cat", "dog", "emu"))
    with pytest.raises(DataError, match="no class 'dgo'; did you mean dog"):
        load_data(f"npz:{path}", "all", DataConfig(classes=("cat", "dgo")))
    with pytest.raises(DataError, match="named twice"):
        load_data(f"npz:{path}", "all", DataConfig(classes=("cat", "0")))
    with pytest.raises(DataError, match="exceeds the 3 classes"):
        load_data(f"npz:{path}", "all", DataConfig(num_classes_subset=4))
    with pytest.raises(UsageError, match="at least 2 classes"):
        DataConfig(classes=("cat",))
    with pytest.raises(UsageError, match="not both"):
        DataConfig(classes=("cat", "dog"), num_classes_subset=2)
    inherited = DataConfig().inherit({"training": {"test_data": {"classes": ["cat", "emu"]}}})
    assert inherited.classes == ("cat", "emu")
    own = DataConfig(num_classes_subset=2).inherit(
        {"training": {"test_data": {"classes": ["cat", "emu"]}}}
    )
    assert own.classes is None and own.num_classes_subset == 2


# --- through the command line ---------------------------------------------------------------------


@pytest.fixture
def empty_npz(tmp_path: Path) -> Path:
    path = tmp_path / "empty.npz"
    np.savez(path, images=np.zeros((0, 32, 32, 3), np.uint8), labels=np.zeros(0, np.int64))
    return path


def test_empty_data_set(checkpoint_path: Path, empty_npz: Path, tmp_path: Path) -> None:
    assert_one_error(
        invoke("evaluate", checkpoint_path, "--data", f"npz:{empty_npz}"),
        f"the test split of npz:{empty_npz} holds no images; check the data set.",
    )
    out = tmp_path / "x.safetensors"
    result = invoke("train", "--arch", "tiny_vgg", "--data", f"npz:{empty_npz}", "-o", out)
    assert_one_error(result, contains="holds no images")
    assert not out.exists()


def test_unknown_data_spec(checkpoint_path: Path) -> None:
    line = assert_one_error(invoke("evaluate", checkpoint_path, "--data", "mnist"))
    assert line.startswith("error: unknown data spec 'mnist'; use one of digits, cifar10")
