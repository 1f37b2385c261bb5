"""CIFAR-10 / CIFAR-100 in the authors' binary format, read without pickle.

The "binary version" (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html) stores each image as its label byte(s) followed
by 3,072 bytes, 1,024 per colour plane (red, green, blue) in row-major 32×32 order. CIFAR-10
has one label byte (files `data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`, names in
`batches.meta.txt`); CIFAR-100 has two, coarse then fine (`train.bin`, `test.bin`, names in
`fine_label_names.txt`); snptool uses the fine label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snptool.errors import DataError

PIXELS = 3 * 32 * 32
LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-bin",
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
        "names": "batches.meta.txt",
        "label_bytes": 1,
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-binary",
        "train": ["train.bin"],
        "test": ["test.bin"],
        "names": "fine_label_names.txt",
        "label_bytes": 2,
        "classes": 100,
    },
}


def binary_folder(kind: str, root: Path) -> Path | None:
    """The folder of `kind`'s binary batches under `root` (or `root` itself), if there is one."""
    layout = LAYOUT[kind]
    for folder in (root / layout["folder"], root):
        if (folder / layout["test"][0]).is_file():
            return folder
    return None


def read_binary_batches(
    kind: str, folder: Path, train: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images [N, 32, 32, 3], int64 labels [N] and the class names of one split."""
    layout = LAYOUT[kind]
    record = layout["label_bytes"] + PIXELS
    images, labels = [], []
    for name in layout["train" if train else "test"]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{kind} binary batch {path} is missing; unpack the whole archive.")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(
                f"{path} holds {raw.size} bytes, not a whole number of {record}-byte {kind} "
                "records; it is truncated or not a CIFAR binary batch."
            )
        rows = raw.reshape(-1, record)
        labels.append(rows[:, layout["label_bytes"] - 1].astype(np.int64))
        images.append(rows[:, layout["label_bytes"] :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    label_array = np.concatenate(labels)
    if label_array.max() >= layout["classes"]:
        raise DataError(
            f"{folder} has label {int(label_array.max())}, but {kind} has {layout['classes']} "
            "classes; the files are not CIFAR binary batches of that kind."
        )
    return np.concatenate(images), label_array, _class_names(kind, folder)


def _class_names(kind: str, folder: Path) -> list[str]:
    layout = LAYOUT[kind]
    path = folder / layout["names"]
    count = layout["classes"]
    if not path.is_file():
        return [str(i) for i in range(count)]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != count:
        raise DataError(f"{path} lists {len(names)} class names; {kind} has {count}.")
    return names
