"""Bad flags, data sets and output paths through the real CLI (issue 33, points 3–7): each is
refused before any work with one line and exit 2, writes nothing and changes no input; and
what the points say is handled (NCHW and RGBA images, links in image folders, an explicit
--ignore-class-names, a tap that folds the batch) works.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FOLDING_NET, Inputs, assert_ok, invoke, part_files
from tests.test_bad_inputs import digests

TRAIN = ["train", "--arch", "tiny_vgg", "--epochs", "1", "--batch-size", "32"]
FOLDING = ["train", "--arch", FOLDING_NET, "--epochs", "1", "--channels", "3", "--input-size", "8"]


def npz(folder: Path, images: np.ndarray, labels: np.ndarray, **arrays) -> Path:
    path = folder / "data.npz"
    np.savez(path, images=images, labels=labels, **arrays)
    return path


def _images(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _labels(n: int = 60, classes: int = 3) -> np.ndarray:
    return np.arange(n) % classes


def image_tree(root: Path, layout: dict[str, int]) -> Path:
    """Folders of 8×8 PNGs: {"a": 4, "train/b": 3, …}."""
    rng = np.random.default_rng(0)
    for name, count in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def bomb_folder(folder: Path) -> Path:
    root = image_tree(folder / "images", {"a": 3, "b": 3})
    Image.new("1", (14_000, 14_000)).save(root / "a" / "bomb.png")  # 196 Mpx: PIL refuses it
    return root


def hard_link_in_both_splits(folder: Path) -> Path:
    root = image_tree(folder / "images", {"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1})
    os.link(root / "train" / "a" / "0.png", root / "test" / "b" / "twice.png")
    return root


# name → (command line from (inputs, folder, output), the words the error line must hold)
Case = tuple[Callable[[Inputs, Path, Path], list], str]
CASES: dict[str, Case] = {
    "negative_seed": (lambda i, f, o: [*TRAIN, "--seed", "-1", "-o", o], "--seed"),
    "negative_split_seed": (lambda i, f, o: [*TRAIN, "--split-seed", "-2", "-o", o], "--split"),
    "eval_batch_size_zero": (lambda i, f, o: [*TRAIN, "--eval-batch-size", "0", "-o", o], "at"),
    "lr_nan": (lambda i, f, o: [*TRAIN, "--lr", "nan", "-o", o], "finite"),
    "lr_overflowing": (lambda i, f, o: [*TRAIN, "--lr", "1e400", "-o", o], "finite"),
    "weight_decay_inf": (lambda i, f, o: [*TRAIN, "--weight-decay", "inf", "-o", o], "finite"),
    "mixup_inf": (lambda i, f, o: [*TRAIN, "--mixup", "inf", "-o", o], "finite"),
    "memory_budget_overflowing": (
        lambda i, f, o: ["probe", i.checkpoint, "--all", "--memory-budget", "1e400", "-o", o],
        "memory size",
    ),
    "budget_seconds_inf": (
        lambda i, f, o: ["latency", i.exported, "--budget-seconds", "inf"],
        "finite",
    ),
    "latency_batch_beyond_memory": (
        lambda i, f, o: ["latency", i.exported, "--batch", "100000000", "--runs", "1"],
        "GiB",
    ),
    "opset_unknown": (lambda i, f, o: ["export", i.checkpoint, "--opset", "99", "-o", o], "99"),
    "two_channel_images": (
        lambda i, f, o: [
            *TRAIN,
            "-o",
            o,
            "--data",
            f"npz:{npz(f, _images(60, 8, 8, 2), _labels())}",
        ],
        "channels",
    ),
    "one_class": (
        lambda i, f, o: [
            *TRAIN,
            "-o",
            o,
            "--data",
            f"npz:{npz(f, _images(60, 8, 8, 3), _labels(60, 1))}",
        ],
        "at least two",
    ),
    "duplicate_class_names": (
        lambda i, f, o: [
            *TRAIN,
            "-o",
            o,
            "--data",
            f"npz:{npz(f, _images(60, 8, 8, 3), _labels(), class_names=np.array(['a', 'a', 'b']))}",
        ],
        "distinct",
    ),
    "empty_class_name": (
        lambda i, f, o: [
            *TRAIN,
            "-o",
            o,
            "--data",
            f"npz:{npz(f, _images(60, 8, 8, 3), _labels(), class_names=np.array(['a', '', 'b']))}",
        ],
        "non-empty",
    ),
    "decompression_bomb": (
        lambda i, f, o: [*TRAIN, "--data", f"imagefolder:{bomb_folder(f)}", "-o", o],
        "bomb.png",
    ),
    "one_file_in_both_splits": (
        lambda i, f, o: [*TRAIN, "--data", f"imagefolder:{hard_link_in_both_splits(f)}", "-o", o],
        "one file",
    ),
    "data_with_other_class_names": (
        lambda i, f, o: [
            "evaluate",
            i.checkpoint,
            "--data",
            f"npz:{npz(f, _images(40, 8, 8, 1), _labels(40, 10), class_names=np.arange(10) + 100)}",
        ],
        "--ignore-class-names",
    ),
    "fifo_checkpoint": (lambda i, f, o: ["evaluate", _fifo(f / "model.safetensors")], "FIFO"),
    "fifo_npz": (lambda i, f, o: [*TRAIN, "--data", f"npz:{_fifo(f / 'd.npz')}", "-o", o], "FIFO"),
    "output_dev_null": (lambda i, f, o: ["export", i.checkpoint, "-o", "/dev/null"], "system"),
    "output_dev_stdout": (lambda i, f, o: ["export", i.checkpoint, "-o", "/dev/stdout"], "system"),
    "output_fifo": (lambda i, f, o: ["export", i.checkpoint, "-o", _fifo(f / "o.onnx")], "FIFO"),
    "output_symlink_loop": (lambda i, f, o: ["export", i.checkpoint, "-o", _loop(f)], "symbolic"),
    "output_read_only": (
        lambda i, f, o: ["export", i.checkpoint, "-o", _read_only(f / "old.onnx")],
        "read-only",
    ),
    "report_over_its_input": (
        lambda i, f, o: ["report", _copy(i.clustered, f), "-o", f / "m.h5"],
        "also an input",
    ),
    "folded_tap": (
        lambda i, f, o: ["probe", _folding_checkpoint(f), "--layer", "block.inner", "-o", o],
        "not the batch",
    ),
}


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _loop(folder: Path) -> Path:
    (folder / "loop.onnx").symlink_to("loop.onnx")
    return folder / "loop.onnx"


def _read_only(path: Path) -> Path:
    path.write_bytes(b"an earlier export")
    path.chmod(0o444)
    return path


def _copy(source: Path, folder: Path) -> Path:
    target = folder / "m.h5"
    target.write_bytes(source.read_bytes())
    return target


def _folding_checkpoint(folder: Path) -> Path:
    path = folder / "folding.safetensors"
    assert_ok(invoke(*FOLDING, "-o", path))
    for extra in folder.glob("folding*"):
        extra.chmod(0o444)  # inputs of the case: digests checked below
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument(name: str, valid: Inputs, tmp_path: Path) -> None:
    folder, out_dir = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out_dir.mkdir()
    make, words = CASES[name]
    args = [str(a) for a in make(valid, folder, out_dir / "out.file")]
    before = {p: digests(p) for p in folder.rglob("*") if p.is_file() and not p.is_fifo()}
    result = invoke(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 2, (result.exit_code, result.stderr[-1500:], result.exception)
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert list(out_dir.iterdir()) == [] and part_files(folder) == []
    assert {p: digests(p) for p in before} == before
    assert Path("/dev/null").is_char_device() and Path("/dev/stdout").is_symlink()


# --- what the points say is handled, not refused ---------------------------------------------


@pytest.mark.parametrize(
    ("layout", "images"),
    [("nchw", _images(60, 3, 8, 8)), ("rgba", _images(60, 8, 8, 4))],
)
def test_nchw_and_rgba_images_are_converted(layout: str, images, tmp_path: Path) -> None:
    from snptool.data.datasets import load_data

    data = load_data(f"npz:{npz(tmp_path, images, _labels())}", "all")
    expected = images.transpose(0, 2, 3, 1) if layout == "nchw" else images[..., :3]
    np.testing.assert_array_equal(data.images.images.permute(0, 2, 3, 1).numpy(), expected)


def test_an_image_folder_follows_no_link_and_reads_no_fifo(tmp_path: Path) -> None:
    """A link back into the folder (`a/loop -> ..`) once read 12 files as 252 images."""
    from snptool.data.datasets import load_data

    root = image_tree(tmp_path / "images", {"a": 6, "b": 6})
    (root / "a" / "loop").symlink_to("..")
    (root / "b" / "outside.png").symlink_to(root / "a" / "0.png")
    os.mkfifo(root / "b" / "pipe.png")
    result = invoke(*TRAIN, "--data", f"imagefolder:{root}", "--input-size", "32", "-o",
                    tmp_path / "m.safetensors", "--json")  # fmt: skip
    assert_ok(result)
    assert "3 symbolic links and special files were not read" in result.stderr
    sizes = [len(load_data(f"imagefolder:{root}", split)) for split in ("train", "test")]
    assert sum(sizes) == 12


def test_other_class_names_are_used_when_asked(valid: Inputs, tmp_path: Path) -> None:
    data = npz(tmp_path, _images(40, 8, 8, 1), _labels(40, 10), class_names=np.arange(10) + 100)
    result = invoke("evaluate", valid.checkpoint, "--data", f"npz:{data}", "--ignore-class-names")
    assert_ok(result)


def test_a_folding_tap_is_listed_as_not_probeable(tmp_path: Path) -> None:
    path = tmp_path / "folding.safetensors"
    assert_ok(invoke(*FOLDING, "-o", path))
    rows = json.loads(invoke("layers", path, "--json").stdout)
    folded = {r["layer"]: r for r in rows if not r["probeable"]}
    assert "block.inner" in folded and "not the batch" in folded["block.inner"]["not_probeable"]
    assert "block" not in folded  # the block around it gives the image back its own axis
    assert_ok(invoke("probe", path, "--all", "--epochs", "1", "-o", tmp_path / "p.safetensors"))


# --- the file system ---------------------------------------------------------------------------

WRITERS = {
    "train": lambda i, o: [*TRAIN, "-o", o],
    "export": lambda i, o: ["export", i.checkpoint, "-o", o],
    "matrix": lambda i, o: ["matrix", i.checkpoint, i.probes, "-o", o],
    "clusters": lambda i, o: ["clusters", i.matrices, "-o", o],
    "quantize": lambda i, o: ["quantize", i.exported, "--data", "digits", "-o", o],
    "report": lambda i, o: ["report", i.clustered, "-o", o],
}


def _limit_file_size() -> None:
    """In the child: files may not grow past 4 KiB (writes then fail with EFBIG, as a full
    disk fails them with ENOSPC), and SIGXFSZ does not kill it."""
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.long
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_that_fails_is_one_line_and_leaves_nothing(
    writer: str, valid: Inputs, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "result.file"
    output.parent.mkdir()
    inputs = [valid.checkpoint, valid.probes, valid.matrices, valid.exported, valid.clustered]
    before = {p: digests(p) for p in inputs}
    args = [str(a) for a in WRITERS[writer](valid, output)]
    done = subprocess.run(
        [sys.executable, "-m", "snptool", *args],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, done.stderr[-1500:]
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), done.stderr[-1500:]
    assert "size limit" in lines[0], lines[0]  # matrix and clusters check it before writing
    assert list(output.parent.iterdir()) == []
    assert {p: digests(p) for p in inputs} == before


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A read-only tmpfs mounted in tmp_path (root only; skipped where mounting is refused)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if os.geteuid() != 0 or mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs root and mount (here it was refused)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("writer", ["train", "export", "matrix", "clusters", "report"])
def test_a_read_only_file_system_is_one_line(
    writer: str, valid: Inputs, read_only_folder: Path
) -> None:
    output = read_only_folder / "result.file"
    result = invoke(*[str(a) for a in WRITERS[writer](valid, output)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2, result.stderr[-1500:]
    assert len(errors) == 1 and "read-only" in errors[0], errors
    assert list(read_only_folder.iterdir()) == []
