"""The CIFAR-10 / CIFAR-100 binary batches, read without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from snptool.data.datasets import (
    load_data,
)
from snptool.errors import DataError


def _images(split) -> torch.Tensor:
    return split.images.images


def _write_cifar_binary(folder: Path, name: str, images: np.ndarray, labels: list[list[int]]):
    """Records as the CIFAR authors wrote them: label byte(s), then the R, G and B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    rows = np.concatenate([np.array(labels, dtype=np.uint8), planes], axis=1)
    (folder / name).write_bytes(rows.astype(np.uint8).tobytes())


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_binary_batches_are_read_without_pickle(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from snptool.data.cifar_binary import LAYOUT

    layout = LAYOUT[kind]
    folder = tmp_path / layout["folder"]
    folder.mkdir()
    rng = np.random.default_rng(0)
    classes = layout["classes"]
    written = {}
    for split in ("train", "test"):
        for index, name in enumerate(layout[split]):
            images = rng.integers(0, 256, (classes, 32, 32, 3), dtype=np.uint8)
            fine = [(3 * index + i + (split == "test")) % classes for i in range(classes)]
            labels = [[f] if layout["label_bytes"] == 1 else [f % 20, f] for f in fine]
            _write_cifar_binary(folder, name, images, labels)
            written.setdefault(split, []).append((images, fine))
    names = [f"class{i}" for i in range(classes)]
    (folder / layout["names"]).write_text("\n".join(names) + "\n\n")

    def refuse(*args, **kwargs):
        raise AssertionError("the binary batches were unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for split in ("train", "test"):
        loaded = load_data(f"{kind}:{tmp_path}", split)
        images = np.concatenate([i for i, _ in written[split]])
        labels = sum((f for _, f in written[split]), [])
        assert loaded.class_names == names
        assert torch.equal(_images(loaded), torch.from_numpy(images).permute(0, 3, 1, 2))
        assert loaded.labels.tolist() == labels
    assert len(load_data(f"{kind}:{tmp_path}", "all")) == classes * (len(layout["train"]) + 1)

    last = folder / layout["test"][0]
    last.write_bytes(last.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated or not a CIFAR binary batch"):
        load_data(f"{kind}:{tmp_path}", "test")
