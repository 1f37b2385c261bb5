"""Data specs → splits of labelled images, and the preprocessing a checkpoint asks for.

Specs: `digits` (scikit-learn, embedded; the default), `cifar10[:DIR]`, `cifar100[:DIR]` (the
binary batches, read without pickle, or torchvision's pickled python batches),
`flowers102[:DIR]`, `imagenet:DIR`, `imagefolder:DIR`, `npz:FILE`, `npz:TRAIN,TEST` (a training
and a test file). Splits: `train`, `test`, `all`. Where a data set has no test split it is split
per class, seeded (DataConfig). `DataConfig.classes` / `num_classes_subset` then keep some labels
only (`restrict_classes`), so a label-count study reuses the full data set's split.

Images travel as uint8 [B, C, H, W] batches; `prepare_batch` turns them into what the model
was trained on (channels, size, [0, 1] scaling, mean/std) and `augment_batch` applies the
research's augmentation (translation up to ±N px with zero fill, horizontal flip).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from snptool.config import DataConfig, InputSpec, check_split
from snptool.core import console
from snptool.core.files import require_file, sha256_file
from snptool.data.cifar_binary import binary_folder, read_binary_batches
from snptool.errors import DataError, InputFileError, first_line

DEFAULT_ROOT = Path.home() / ".cache" / "snptool" / "data"
SPEC_KINDS = ("digits", "cifar10", "cifar100", "flowers102", "imagenet", "imagefolder", "npz")


class ArrayImages:
    """Images held in memory as uint8 [N, C, H, W] with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArrayImages:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ArrayImages(self.images[index], self.labels[index])

    def relabelled(self, labels: torch.Tensor) -> ArrayImages:
        return ArrayImages(self.images, labels)

    def batches(self, order: np.ndarray, batch_size: int, spec: InputSpec, workers: int):
        for start in range(0, len(order), batch_size):
            index = torch.as_tensor(order[start : start + batch_size], dtype=torch.long)
            yield self.images[index], self.labels[index]


class FileImages(torch.utils.data.Dataset):
    """Images read from files (or a torchvision data set) one by one, resized with PIL."""

    def __init__(self, load: Callable[[int], Any], labels: np.ndarray) -> None:
        self._load = load  # index -> PIL image
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self._spec: InputSpec | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = resize_pil(self._load(index), self._spec)
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1), self.labels[index]

    def subset(self, indices: np.ndarray) -> FileImages:
        indices = np.asarray(indices)
        return FileImages(lambda i: self._load(int(indices[i])), self.labels.numpy()[indices])

    def relabelled(self, labels: torch.Tensor) -> FileImages:
        return FileImages(self._load, labels.numpy())

    def batches(self, order: np.ndarray, batch_size: int, spec: InputSpec, workers: int):
        self._spec = spec
        sampler = [int(i) for i in order]
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to a GPU async
        )
        yield from loader


def resize_pil(image: Any, spec: InputSpec | None) -> Any:
    """Convert a PIL image to the spec's channels and size (shorter side, centre crop)."""
    from PIL import Image

    image = image.convert("L" if spec is not None and spec.channels == 1 else "RGB")
    if spec is None:
        return image
    if spec.resize:
        scale = spec.resize / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
        left = (image.width - spec.width) // 2
        top = (image.height - spec.height) // 2
        return image.crop((left, top, left + spec.width, top + spec.height))
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.BILINEAR)
    return image


@dataclass
class DataSplit:
    """One split of a data set: its images, class names and where it came from."""

    spec: str
    split: str
    images: ArrayImages | FileImages
    class_names: list[str]
    native_shape: tuple[int, int, int] | None
    config: DataConfig
    source_file: Path | None = None
    fixed_split: bool = False  # the split comes from separate files, not from test_fraction
    class_subset: bool = False  # class_names are a subset of the data set's (DataConfig.classes)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> torch.Tensor:
        return self.images.labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batches(
        self,
        spec: InputSpec,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        workers: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 image batches [B, C, H, W] and int64 labels, in order or shuffled by seed."""
        return self.images.batches(
            self.order(shuffle=shuffle, seed=seed),
            batch_size,
            spec,
            self.config.workers if workers is None else workers,
        )

    def order(self, *, shuffle: bool = False, seed: int = 0) -> np.ndarray:
        """The sample order `batches` follows: as stored, or the permutation seeded by `seed`."""
        if shuffle:
            return np.random.default_rng(seed).permutation(len(self))
        return np.arange(len(self))

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def record(self) -> dict[str, Any]:
        """What to store in an output's metadata to name this data exactly."""
        record: dict[str, Any] = {
            "spec": self.spec,
            "split": self.split,
            "samples": len(self),
            "test_fraction": None if self.fixed_split else self.config.split_fraction,
            "split_seed": None if self.fixed_split else self.config.seed,
        }
        if self.class_subset:
            record["classes"] = list(self.class_names)
        if self.source_file is not None:
            record["sha256"] = sha256_file(self.source_file)
        return record


def load_data(spec: str, split: str = "train", config: DataConfig | None = None) -> DataSplit:
    """Load one split (`train`, `test` or `all`) of the data set a spec names."""
    config = config or DataConfig()
    check_split(split)
    kind, _, argument = spec.partition(":")
    loader = _LOADERS.get(kind)
    if loader is None:
        raise DataError(
            f"unknown data spec {spec!r}; use one of {', '.join(SPEC_KINDS)} (e.g. npz:FILE)."
        )
    data = restrict_classes(loader(spec, argument, split, config), config)
    if len(data) == 0:
        raise DataError(f"the {split} split of {spec} holds no images; check the data set.")
    if data.num_classes < 2:
        raise DataError(
            f"{spec} has {data.num_classes} class{'es' if data.num_classes != 1 else ''} "
            f"({', '.join(data.class_names) or 'none'}); a classifier needs at least two."
        )
    counts = np.bincount(data.labels.numpy(), minlength=data.num_classes)
    if (counts == 0).any():
        empty = [data.class_names[i] for i in np.flatnonzero(counts == 0)[:3]]
        raise DataError(
            f"the {split} split of {spec} has no image of class {', '.join(map(repr, empty))}; "
            "give every class images in each split, or leave it out with --classes."
        )
    return data


def restrict_classes(data: DataSplit, config: DataConfig) -> DataSplit:
    """Keep the images of the classes `config` names, relabelled 0…k−1 in the data set's order.

    The split is made first, so a subset's test images are those of the full data set's split.
    """
    wanted = chosen_classes(data.class_names, config, data.spec)
    if wanted is None:
        return data
    labels = data.labels.numpy()
    keep = np.flatnonzero(np.isin(labels, wanted))
    new_label = np.full(len(data.class_names), -1, dtype=np.int64)
    new_label[wanted] = np.arange(len(wanted))
    images = data.images.subset(keep)
    images = images.relabelled(torch.from_numpy(new_label[labels[keep]]))
    names = [data.class_names[i] for i in wanted]
    return dataclasses.replace(data, images=images, class_names=names, class_subset=True)


def chosen_classes(names: list[str], config: DataConfig, spec: str) -> list[int] | None:
    """Indices of the classes `config` keeps, in the data set's order; None keeps them all."""
    if config.num_classes_subset is not None:
        if config.num_classes_subset > len(names):
            raise DataError(
                f"--num-classes-subset {config.num_classes_subset} exceeds the "
                f"{len(names)} classes of {spec}."
            )
        return list(range(config.num_classes_subset))
    if config.classes is None:
        return None
    chosen = []
    for item in config.classes:
        if item in names:
            index = names.index(item)
        elif item.isdigit() and int(item) < len(names):
            index = int(item)
        else:
            close = difflib.get_close_matches(item, names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise DataError(
                f"{spec} has no class {item!r}; {hint}its classes: {', '.join(names)} "
                f"(or their indices 0–{len(names) - 1})."
            )
        if index in chosen:
            raise DataError(f"class {names[index]!r} is named twice in --classes; name it once.")
        chosen.append(index)
    return sorted(chosen)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split into (train indices, test indices), both sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    if not train:  # no labels at all: two empty splits (load_data reports them)
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _select(
    images, labels: np.ndarray, split: str, config: DataConfig, test_mask: np.ndarray | None = None
):
    if split == "all":
        return images
    if test_mask is None:
        train_idx, test_idx = stratified_split(labels, config.split_fraction, config.seed)
    else:
        train_idx, test_idx = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    return images.subset(train_idx if split == "train" else test_idx)


def _digits(spec: str, argument: str, split: str, config: DataConfig) -> DataSplit:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    full = ArrayImages(torch.from_numpy(images), torch.from_numpy(labels))
    names = [str(n) for n in bunch.target_names]
    return DataSplit(spec, split, _select(full, labels, split, config), names, (1, 8, 8), config)


def _npz(spec: str, argument: str, split: str, config: DataConfig) -> DataSplit:
    """`npz:FILE` (split per class unless it has a 'test' mask) or `npz:TRAIN,TEST`."""
    if not argument:
        raise DataError("npz needs a file: --data npz:path/to/file.npz (or npz:TRAIN,TEST).")
    paths = argument.split(",")
    if len(paths) > 2 or not all(paths):
        raise DataError(f"npz:{argument} must name one file or two: npz:TRAIN.npz,TEST.npz.")
    if len(paths) == 2:
        return _npz_pair(spec, paths, split, config)
    full, labels, names, shape, test_mask, path = _read_npz(paths[0])
    chosen = _select(full, labels, split, config, test_mask)
    return DataSplit(spec, split, chosen, names, shape, config, source_file=path)


def _npz_pair(spec: str, paths: list[str], split: str, config: DataConfig) -> DataSplit:
    """A training file and a test file: `train` and `test` are the files, `all` both."""
    wanted = {"train": [0], "test": [1], "all": [0, 1]}[split]
    parts = [_read_npz(paths[i]) for i in wanted]
    for part in parts:
        if part[4] is not None:
            raise DataError(
                f"{part[5]} has a 'test' mask, but npz:TRAIN,TEST already names the test file; "
                "give one file with the mask or two files without."
            )
    if split == "all":
        (train, *_, train_shape, _, train_path), (test, *_, test_shape, _, test_path) = parts
        if parts[0][2] != parts[1][2] or train_shape != test_shape:
            raise DataError(
                f"{train_path} and {test_path} differ in class names or image shape; "
                "give the training and test files of one data set."
            )
        images = ArrayImages(
            torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])
        )
        return DataSplit(spec, split, images, parts[0][2], train_shape, config, fixed_split=True)
    full, _, names, shape, _, path = parts[0]
    return DataSplit(spec, split, full, names, shape, config, source_file=path, fixed_split=True)


def _read_npz(argument: str):
    """One npz file → (images, labels, class names, (C, H, W), test mask or None, path)."""
    path = require_file(argument, "data file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not a zip archive of arrays")
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        reason = (
            "it holds pickled objects, which snptool never loads"
            if "pickle" in str(error)
            else first_line(error)
        )
        raise InputFileError(
            f"{path} is not a readable .npz file ({reason}); save plain arrays with numpy.savez."
        ) from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(
                f"{path} has no {key!r} array; an npz data set needs 'images' and 'labels'."
            )
    images, labels = arrays["images"], arrays["labels"].reshape(-1)
    if labels.dtype.kind not in "iu" and not (
        labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == labels.round()).all()
    ):
        raise DataError(f"{path}: 'labels' must be integers 0, 1, 2, …, not {labels.dtype} values.")
    labels = labels.astype(np.int64)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: 'images' must be uint8 NHWC (or NHW), not {images.dtype} {images.shape}."
        )
    images = _as_nhwc(images, path)
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels.")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: labels must be 0, 1, 2, …; found {labels.min()}.")
    if images.ndim == 3:
        images = images[..., None]
    if "class_names" in arrays:
        names = [str(n) for n in arrays["class_names"].reshape(-1)]
        if not all(names) or len(set(names)) != len(names):
            raise DataError(
                f"{path}: 'class_names' must be distinct and non-empty, not {names[:6]}…."
            )
    else:
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if len(labels) and labels.max() >= len(names):
        raise DataError(
            f"{path}: label {labels.max()} has no entry in 'class_names' ({len(names)} names)."
        )
    test_mask = arrays["test"].astype(bool).reshape(-1) if "test" in arrays else None
    if test_mask is not None and len(test_mask) != len(labels):
        raise DataError(f"{path}: 'test' has {len(test_mask)} entries for {len(labels)} images.")
    full = ArrayImages(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        torch.from_numpy(labels),
    )
    shape = (images.shape[3], images.shape[1], images.shape[2])
    return full, labels, names, shape, test_mask, path


def _as_nhwc(images: np.ndarray, path: Path) -> np.ndarray:
    """uint8 images as N×H×W×C with C 1 or 3: NCHW turned round where that is unambiguous (C
    first and not last), RGBA's alpha dropped; anything else refused."""
    if images.ndim == 3:
        return images
    if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3, 4):
        images = images.transpose(0, 2, 3, 1)  # NCHW, as torch stores images
    if images.shape[-1] == 4:
        images = images[..., :3]  # RGBA: the colour, without the alpha channel
    if images.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: 'images' {list(images.shape)} has neither 1, 3 nor 4 channels, last "
            "(NHWC) or after the count (NCHW); give grey, RGB or RGBA images."
        )
    return np.ascontiguousarray(images)


def _cifar(spec: str, argument: str, split: str, config: DataConfig) -> DataSplit:
    """The binary batches when DIR holds them (no pickle); else torchvision's python batches,
    which torchvision unpickles: use those only from a source you trust."""
    kind = spec.partition(":")[0]
    root = Path(argument) if argument else Path(config.root or DEFAULT_ROOT)
    trains = [True] if split == "train" else [False] if split == "test" else [True, False]
    folder = binary_folder(kind, root)
    if folder is not None:
        parts = [read_binary_batches(kind, folder, train) for train in trains]
    else:
        parts = [_torchvision_cifar(kind, root, train, config) for train in trains]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.concatenate([p[1] for p in parts]), dtype=torch.long)
    return DataSplit(
        spec, split, ArrayImages(images.contiguous(), labels), parts[0][2], (3, 32, 32), config
    )


def _torchvision_cifar(
    kind: str, root: Path, train: bool, config: DataConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images [N, 32, 32, 3], labels and class names of one split, through torchvision."""
    import torchvision.datasets as datasets

    dataset_class = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        part = dataset_class(str(root), train=train, download=config.download)
    except RuntimeError:
        raise DataError(
            f"{kind.upper()} is not in {root}; pass --download to fetch it (needs network) "
            f"or give the folder that holds it as --data {kind}:DIR."
        ) from None
    return part.data, np.asarray(part.targets), list(part.classes)


def _flowers102(spec: str, argument: str, split: str, config: DataConfig) -> DataSplit:
    import torchvision.datasets as datasets

    root = Path(argument) if argument else Path(config.root or DEFAULT_ROOT)
    names = {"train": ["train", "val"], "test": ["test"], "all": ["train", "val", "test"]}[split]
    parts = []
    for name in names:
        try:
            parts.append(datasets.Flowers102(str(root), split=name, download=config.download))
        except RuntimeError:
            raise DataError(
                f"Flowers-102 is not in {root}; pass --download to fetch it (needs network) "
                "or give its folder as --data flowers102:DIR."
            ) from None
    dataset = torch.utils.data.ConcatDataset(parts)
    labels = np.concatenate([np.asarray(p._labels) for p in parts])
    images = FileImages(lambda i: dataset[i][0], labels)
    return DataSplit(spec, split, images, [str(i) for i in range(102)], None, config)


def _imagefolder(spec: str, argument: str, split: str, config: DataConfig) -> DataSplit:
    kind = spec.partition(":")[0]
    if not argument:
        raise DataError(f"{kind} needs a folder: --data {kind}:DIR.")
    root = Path(argument)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; check the path in --data.")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = scan_image_folder(root / "train"), scan_image_folder(test_dir)
        _same_classes(train, test)
        _disjoint(train, test)
        folders = {"train": [train], "test": [test], "all": [train, test]}[split]
        samples = [s for f in folders for s in f.samples]
        classes = train.classes
        images = _file_images(samples)
    elif kind == "imagenet":
        raise DataError(f"imagenet:{root} needs train/ and val/ subfolders of class folders.")
    else:
        folder = scan_image_folder(root)
        classes, samples = folder.classes, folder.samples
        labels = np.array([label for _, label in samples], dtype=np.int64)
        images = _select(_file_images(samples), labels, split, config)
    return DataSplit(spec, split, images, list(classes), None, config)


@dataclass(frozen=True)
class ImageFolder:
    """A folder of class folders: class names (sorted) and (image path, label) samples, with
    each file's (device, inode) so that no file is counted twice."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    files: dict[tuple[int, int], str]


def scan_image_folder(root: Path) -> ImageFolder:
    """The class folders of `root` and their image files, found without following symbolic
    links (none may lead out of the folder or back into it; a warning counts them), every file
    once however often it is hard-linked, special files (FIFOs, devices) left out."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    samples, files, skipped = [], {}, 0
    for label, name in enumerate(classes):
        for folder, subfolders, names in os.walk(root / name):  # followlinks=False
            subfolders.sort()
            skipped += sum(os.path.islink(os.path.join(folder, d)) for d in subfolders)
            for file_name in sorted(names):
                path = os.path.join(folder, file_name)
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    skipped += 1
                    continue
                key = (info.st_dev, info.st_ino)
                if file_name.lower().endswith(IMG_EXTENSIONS) and key not in files:
                    files[key] = path
                    samples.append((path, label))
    found = {label for _, label in samples}
    empty = [name for label, name in enumerate(classes) if label not in found]
    if not classes or empty:
        raise DataError(
            f"{root} holds no class folders of images"
            + (f" (no image in {', '.join(empty[:3])})" if empty else "")
            + f"; give folders of {', '.join(IMG_EXTENSIONS[:4])}… files, one per class."
        )
    if skipped:
        console.log(
            f"warning: {root}: {skipped} symbolic links and special files were not read; "
            "copy the images into the folder to use them."
        )
    return ImageFolder(root, classes, samples, files)


def _same_classes(train: ImageFolder, test: ImageFolder) -> None:
    """Refuse train/ and test/ folders whose class folders differ (labels would not agree)."""
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))[:3]
        raise DataError(
            f"{train.root} and {test.root} hold different class folders ({', '.join(only)} in "
            "one only); give both the same classes."
        )


def _disjoint(train: ImageFolder, test: ImageFolder) -> None:
    """No image file may be both a training and a test image (a hard link in both folders)."""
    shared = train.files.keys() & test.files.keys()
    if shared:
        first = next(iter(shared))
        raise DataError(
            f"{train.files[first]} and {test.files[first]} are one file, in both the training "
            f"and the test images ({len(shared)} such files); keep each image in one split."
        )


def _file_images(samples: list[tuple[str, int]]) -> FileImages:
    from PIL import Image

    paths = [path for path, _ in samples]

    def load(index: int):
        try:
            with Image.open(paths[index]) as image:
                image.load()
                return image
        except (OSError, Image.DecompressionBombError) as error:  # and UnidentifiedImageError
            raise DataError(
                f"{paths[index]} is not a readable image ({first_line(error)}); "
                "replace or remove it."
            ) from None

    return FileImages(load, np.array([label for _, label in samples], dtype=np.int64))


_LOADERS = {
    "digits": _digits,
    "npz": _npz,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "flowers102": _flowers102,
    "imagefolder": _imagefolder,
    "imagenet": _imagefolder,
}


def prepare_batch(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 [B, C, H, W] → float model input: channels, size, [0, 1] scaling, mean/std."""
    x = images.float().div_(255.0)
    if x.shape[1] != spec.channels:
        if spec.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(1, keepdim=True)
    if x.shape[-2:] != (spec.height, spec.width):
        x = F.interpolate(
            x, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=True
        )
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def augment_batch(
    x: torch.Tensor, translate: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random translation by up to ±`translate` px (vacated pixels 0) and a horizontal flip (p ½).

    Applied after normalisation, so the fill is 0 in model-input space, as in the papers.
    """
    batch, _, height, width = x.shape
    if translate > 0:
        padded = F.pad(x, (translate, translate, translate, translate))
        shifts = torch.randint(0, 2 * translate + 1, (2, batch), generator=generator).to(x.device)
        rows = shifts[0][:, None] + torch.arange(height, device=x.device)
        cols = shifts[1][:, None] + torch.arange(width, device=x.device)
        index = torch.arange(batch, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = (torch.rand(batch, generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    return x
