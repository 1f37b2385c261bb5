"""A corpus of bad inputs for every file reader, each run through the real CLI.

Every case must end with exit status 2, exactly one `error: …` line on stderr, no traceback,
no output file (nor a temporary one) and its input files byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from snptool.core.checkpoint import METADATA_KEY
from tests.conftest import Inputs, invoke, npz_arrays, tiny_state_dict, write_npz, write_pt

# --- corruptions of bytes ---------------------------------------------------------------------


def byte_variants(data: bytes, offsets: tuple[float, ...]) -> dict[str, bytes]:
    """Empty, truncated at several offsets (fractions of the length or byte counts), garbage."""
    variants = {"empty": b""}
    for offset in offsets:
        cut = int(len(data) * offset) if offset < 1 else int(offset)
        variants[f"truncated_{offset}"] = data[:cut]
    variants["truncated_last_byte"] = data[:-1]
    variants["garbage"] = np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes()
    return variants


def huge_header(data: bytes) -> bytes:
    """A safetensors file whose 8-byte header length claims 2**60 bytes."""
    return struct.pack("<Q", 2**60) + data[8:]


def edit_safetensors(source: Path, target: Path, edit: Callable[[dict, dict], None]) -> Path:
    """Copy a safetensors file through `edit(tensors, header)`, which changes them in place."""
    with safe_open(str(source), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        header = dict(handle.metadata() or {})
    edit(tensors, header)
    save_file(tensors, str(target), metadata=header)
    return target


def edit_metadata(change: Callable[[dict], None]) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, header: dict) -> None:
        document = json.loads(header[METADATA_KEY])
        change(document)
        header[METADATA_KEY] = json.dumps(document)

    return edit


def edit_first(kind: str, key_prefix: str = "") -> Callable[[dict, dict], None]:
    """Put NaN / Inf into, reshape, retype or drop the first float tensor under key_prefix."""

    def edit(tensors: dict, header: dict) -> None:
        key = next(
            k for k, v in tensors.items() if k.startswith(key_prefix) and v.is_floating_point()
        )
        value = tensors[key].clone()
        if kind == "nan":
            value.view(-1)[0] = float("nan")
        elif kind == "inf":
            value.view(-1)[-1] = float("inf")
        elif kind == "shape":
            value = torch.zeros(value.numel() + 1)
        elif kind == "dtype":
            value = value.to(torch.int32)
        elif kind == "drop":
            del tensors[key]
            return
        tensors[key] = value.contiguous()

    return edit


def edit_h5(source: Path, target: Path, edit: Callable[[h5py.File], None]) -> Path:
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as handle:
        edit(handle)
    return target


def first_layer(handle: h5py.File) -> h5py.Group:
    return handle["layers"][next(iter(handle["layers"]))]


def replace_matrix(make: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def edit(handle: h5py.File) -> None:
        group = first_layer(handle)
        matrix = group["matrix"][()]
        attrs = dict(group["matrix"].attrs)
        del group["matrix"]
        dataset = group.create_dataset("matrix", data=make(matrix))
        for key, value in attrs.items():
            if key not in ("DIMENSION_LIST", "DIMENSION_LABELS"):
                dataset.attrs[key] = value

    return edit


def set_matrix_value(value: float) -> Callable[[h5py.File], None]:
    def edit(handle: h5py.File) -> None:
        first_layer(handle)["matrix"][0, 0, 0] = value

    return edit


# --- the corpus ---------------------------------------------------------------------------------

# Each case: (reader, name, make(inputs, folder) -> the bad input path). The reader decides the
# command line (COMMANDS) that reads it.
Case = tuple[str, str, Callable[[Inputs, Path], Path]]


def from_bytes(name: str, data: Callable[[Inputs], bytes]) -> Callable[[Inputs, Path], Path]:
    def make(inputs: Inputs, folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data(inputs))
        return path

    return make


def bytes_cases(
    reader: str, source: str, name: str, offsets: tuple[float, ...], valid_bytes: Callable
) -> list[Case]:
    """The generic byte corruptions of one valid file (offsets known without reading it)."""
    labels = ["empty"] + [f"truncated_{o}" for o in offsets] + ["truncated_last_byte", "garbage"]
    cases = []
    for label in labels:

        def data(inputs: Inputs, label=label) -> bytes:
            return byte_variants(valid_bytes(inputs), offsets)[label]

        cases.append((reader, f"{source}_{label}", from_bytes(name, data)))
    return cases


def other_kind(name: str, which: str) -> Callable[[Inputs, Path], Path]:
    return from_bytes(name, lambda inputs: getattr(inputs, which).read_bytes())


def directory(name: str) -> Callable[[Inputs, Path], Path]:
    def make(inputs: Inputs, folder: Path) -> Path:
        path = folder / name
        path.mkdir()
        return path

    return make


def st_edit(which: str, name: str, edit) -> Callable[[Inputs, Path], Path]:
    return lambda inputs, folder: edit_safetensors(getattr(inputs, which), folder / name, edit)


def h5_edit(name: str, edit) -> Callable[[Inputs, Path], Path]:
    return lambda inputs, folder: edit_h5(inputs.matrices, folder / name, edit)


def npz_case(**overrides) -> Callable[[Inputs, Path], Path]:
    return lambda inputs, folder: write_npz(folder / "bad.npz", **overrides)


def pt_case(state: Callable[[], object]) -> Callable[[Inputs, Path], Path]:
    return lambda inputs, folder: write_pt(folder / "bad.pt", state())


class Unpicklable:  # a class torch.load(weights_only=True) refuses to build
    pass


def nan_state() -> dict:
    state = tiny_state_dict()
    key = next(iter(state))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    return state


def retyped_state() -> dict:
    state = tiny_state_dict()
    key = next(iter(state))
    state[key] = state[key].to(torch.int64)
    return state


def reshaped_state() -> dict:
    state = tiny_state_dict()
    key = next(iter(state))
    state[key] = torch.zeros(3)
    return state


def image_folder(layout: dict[str, int], corrupt: bool = False) -> Callable[[Inputs, Path], Path]:
    """A folder of class folders ("train/a": 3 images, …); `corrupt` adds a broken .png."""

    def make(inputs: Inputs, folder: Path) -> Path:
        root = folder / "images"
        root.mkdir()
        rng = np.random.default_rng(0)
        for name, count in layout.items():
            (root / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / name / f"{i}.png")
        if corrupt:
            first = root / next(iter(layout)) / "0.png"
            first.write_bytes(first.read_bytes()[:30])
        return root

    return make


CHECKPOINT_CASES: list[Case] = [
    *bytes_cases(
        "checkpoint",
        "ckpt",
        "bad.safetensors",
        (1, 7, 8, 100, 0.5),
        lambda inputs: inputs.checkpoint.read_bytes(),
    ),
    (
        "checkpoint",
        "huge_header",
        from_bytes("bad.safetensors", lambda i: huge_header(i.checkpoint.read_bytes())),
    ),
    ("checkpoint", "hdf5_file", other_kind("bad.safetensors", "matrices")),
    ("checkpoint", "onnx_file", other_kind("bad.safetensors", "onnx")),
    ("checkpoint", "npz_file", other_kind("bad.safetensors", "npz")),
    ("checkpoint", "probe_file", other_kind("bad.safetensors", "probes")),
    ("checkpoint", "directory", directory("bad.safetensors")),
    (
        "checkpoint",
        "no_metadata",
        st_edit("checkpoint", "bad.safetensors", lambda t, h: h.pop(METADATA_KEY)),
    ),
    (
        "checkpoint",
        "corrupt_json",
        st_edit(
            "checkpoint", "bad.safetensors", lambda t, h: h.update({METADATA_KEY: "{not json"})
        ),
    ),
    (
        "checkpoint",
        "metadata_not_object",
        st_edit("checkpoint", "bad.safetensors", lambda t, h: h.update({METADATA_KEY: "[1, 2]"})),
    ),
    (
        "checkpoint",
        "future_format",
        st_edit(
            "checkpoint", "bad.safetensors", edit_metadata(lambda d: d.update(format_version=99))
        ),
    ),
    (
        "checkpoint",
        "no_arch",
        st_edit("checkpoint", "bad.safetensors", edit_metadata(lambda d: d.pop("arch"))),
    ),
    (
        "checkpoint",
        "unknown_arch",
        st_edit(
            "checkpoint",
            "bad.safetensors",
            edit_metadata(lambda d: d["arch"].update(spec="no_such_model")),
        ),
    ),
    (
        "checkpoint",
        "no_input",
        st_edit("checkpoint", "bad.safetensors", edit_metadata(lambda d: d.pop("input"))),
    ),
    (
        "checkpoint",
        "no_class_names",
        st_edit("checkpoint", "bad.safetensors", edit_metadata(lambda d: d.pop("class_names"))),
    ),
    (
        "checkpoint",
        "class_names_short",
        st_edit(
            "checkpoint",
            "bad.safetensors",
            edit_metadata(lambda d: d.update(class_names=["a", "b"])),
        ),
    ),
    ("checkpoint", "nan_weight", st_edit("checkpoint", "bad.safetensors", edit_first("nan"))),
    ("checkpoint", "inf_weight", st_edit("checkpoint", "bad.safetensors", edit_first("inf"))),
    ("checkpoint", "wrong_shape", st_edit("checkpoint", "bad.safetensors", edit_first("shape"))),
    ("checkpoint", "wrong_dtype", st_edit("checkpoint", "bad.safetensors", edit_first("dtype"))),
    ("checkpoint", "missing_tensor", st_edit("checkpoint", "bad.safetensors", edit_first("drop"))),
]

PROBE_CASES: list[Case] = [
    *bytes_cases(
        "probe_file",
        "probes",
        "bad.safetensors",
        (1, 8, 100, 0.5),
        lambda inputs: inputs.probes.read_bytes(),
    ),
    (
        "probe_file",
        "huge_header",
        from_bytes("bad.safetensors", lambda i: huge_header(i.probes.read_bytes())),
    ),
    ("probe_file", "checkpoint_file", other_kind("bad.safetensors", "checkpoint")),
    ("probe_file", "hdf5_file", other_kind("bad.safetensors", "matrices")),
    ("probe_file", "directory", directory("bad.safetensors")),
    (
        "probe_file",
        "corrupt_json",
        st_edit("probes", "bad.safetensors", lambda t, h: h.update({"snptool": "{"})),
    ),
    (
        "probe_file",
        "no_taps",
        st_edit("probes", "bad.safetensors", edit_metadata(lambda d: d.pop("taps"))),
    ),
    (
        "probe_file",
        "no_checkpoint_record",
        st_edit("probes", "bad.safetensors", edit_metadata(lambda d: d.pop("checkpoint"))),
    ),
    (
        "probe_file",
        "no_class_names",
        st_edit("probes", "bad.safetensors", edit_metadata(lambda d: d.pop("class_names"))),
    ),
    (
        "probe_file",
        "missing_probe",
        st_edit("probes", "bad.safetensors", edit_first("drop", "probe/")),
    ),
    (
        "probe_file",
        "missing_counts",
        st_edit(
            "probes",
            "bad.safetensors",
            lambda t, h: [t.pop(k) for k in list(t) if k.startswith("count/")],
        ),
    ),
    (
        "probe_file",
        "wrong_shape",
        st_edit("probes", "bad.safetensors", edit_first("shape", "probe/")),
    ),
    (
        "probe_file",
        "wrong_dtype",
        st_edit("probes", "bad.safetensors", edit_first("dtype", "probe/")),
    ),
    ("probe_file", "nan_probe", st_edit("probes", "bad.safetensors", edit_first("nan", "probe/"))),
    (
        "probe_file",
        "inf_mean",
        st_edit("probes", "bad.safetensors", edit_first("inf", "mean/train/")),
    ),
]

MATRIX_CASES: list[Case] = [
    *bytes_cases(
        "matrix_file", "h5", "bad.h5", (8, 100, 0.5), lambda inputs: inputs.matrices.read_bytes()
    ),
    ("matrix_file", "onnx_file", other_kind("bad.h5", "onnx")),
    ("matrix_file", "checkpoint_file", other_kind("bad.h5", "checkpoint")),
    ("matrix_file", "directory", directory("bad.h5")),
    ("matrix_file", "no_layers", h5_edit("bad.h5", lambda h: h.__delitem__("layers"))),
    (
        "matrix_file",
        "no_format_version",
        h5_edit("bad.h5", lambda h: h.attrs.__delitem__("format_version")),
    ),
    (
        "matrix_file",
        "future_format",
        h5_edit("bad.h5", lambda h: h.attrs.__setitem__("format_version", 99)),
    ),
    (
        "matrix_file",
        "no_class_names",
        h5_edit("bad.h5", lambda h: h.attrs.__delitem__("class_names")),
    ),
    (
        "matrix_file",
        "corrupt_json",
        h5_edit("bad.h5", lambda h: h.attrs.__setitem__("snptool", "{")),
    ),
    (
        "matrix_file",
        "layer_without_matrix",
        h5_edit("bad.h5", lambda h: first_layer(h).__delitem__("matrix")),
    ),
    ("matrix_file", "wrong_class_count", h5_edit("bad.h5", replace_matrix(lambda m: m[:, :3, :3]))),
    ("matrix_file", "wrong_ndim", h5_edit("bad.h5", replace_matrix(lambda m: m[:, 0]))),
    (
        "matrix_file",
        "wrong_dtype",
        h5_edit("bad.h5", replace_matrix(lambda m: np.full(m.shape, b"x", dtype="S1"))),
    ),
    ("matrix_file", "nan_matrix", h5_edit("bad.h5", set_matrix_value(float("nan")))),
    ("matrix_file", "inf_matrix", h5_edit("bad.h5", set_matrix_value(float("inf")))),
]

ONNX_CASES: list[Case] = [
    *bytes_cases("onnx", "onnx", "bad.onnx", (4, 0.5), lambda inputs: inputs.onnx.read_bytes()),
    ("onnx", "checkpoint_file", other_kind("bad.onnx", "checkpoint")),
    ("onnx", "hdf5_file", other_kind("bad.onnx", "matrices")),
    ("onnx", "directory", directory("bad.onnx")),
]

NPZ_CASES: list[Case] = [
    *bytes_cases("npz", "npz", "bad.npz", (10, 0.5), lambda inputs: inputs.npz.read_bytes()),
    ("npz", "checkpoint_file", other_kind("bad.npz", "checkpoint")),
    ("npz", "directory", directory("bad.npz")),
    ("npz", "no_images", npz_case(images=None)),
    ("npz", "no_labels", npz_case(labels=None)),
    ("npz", "float_images", npz_case(images=npz_arrays()["images"].astype(np.float32))),
    ("npz", "flat_images", npz_case(images=np.zeros((60, 64), np.uint8))),
    ("npz", "float_labels_nan", npz_case(labels=np.full(60, np.nan))),
    ("npz", "negative_label", npz_case(labels=np.r_[-1, np.arange(59) % 3])),
    ("npz", "label_out_of_range", npz_case(labels=np.r_[7, np.arange(59) % 3])),
    ("npz", "length_mismatch", npz_case(labels=np.arange(59) % 3)),
    (
        "npz",
        "zero_samples",
        npz_case(images=np.zeros((0, 8, 8, 1), np.uint8), labels=np.zeros(0, np.int64)),
    ),
    (
        "npz",
        "class_absent_from_test",
        npz_case(test=(np.arange(60) % 3 != 2) & (np.arange(60) >= 30)),
    ),
    ("npz", "pickled_object_array", lambda inputs, folder: _pickled_npz(folder / "bad.npz")),
]


def _pickled_npz(path: Path) -> Path:
    arrays = npz_arrays()
    arrays["class_names"] = np.array([{"a": 1}, "b", "c"], dtype=object)
    np.savez(path, **arrays)
    return path


IMAGE_FOLDER_CASES: list[Case] = [
    ("imagefolder", "empty_folder", image_folder({})),
    ("imagefolder", "class_folders_without_images", image_folder({"a": 0, "b": 0})),
    ("imagefolder", "corrupt_image", image_folder({"a": 4, "b": 4}, corrupt=True)),
    ("imagefolder", "test_lacks_a_class", image_folder({"train/a": 3, "train/b": 3, "test/a": 2})),
    ("imagefolder", "class_absent_from_test", image_folder({"a": 4, "b": 1})),
]

FOREIGN_CASES: list[Case] = [
    *bytes_cases(
        "foreign_pt", "pt", "bad.pt", (4, 100, 0.5), lambda inputs: inputs.pt.read_bytes()
    ),
    ("foreign_pt", "hdf5_file", other_kind("bad.pt", "matrices")),
    ("foreign_pt", "directory", directory("bad.pt")),
    ("foreign_pt", "pickled_class", from_bytes("bad.pt", lambda i: pickle.dumps(Unpicklable()))),
    ("foreign_pt", "a_list", pt_case(lambda: [1, 2, 3])),
    ("foreign_pt", "no_tensors", pt_case(lambda: {"epoch": 3, "lr": 0.1})),
    ("foreign_pt", "nan_weight", pt_case(nan_state)),
    ("foreign_pt", "wrong_dtype", pt_case(retyped_state)),
    ("foreign_pt", "wrong_shape", pt_case(reshaped_state)),
]

CASES = (
    CHECKPOINT_CASES
    + PROBE_CASES
    + MATRIX_CASES
    + ONNX_CASES
    + NPZ_CASES
    + IMAGE_FOLDER_CASES
    + FOREIGN_CASES
)


def command(reader: str, bad: Path, inputs: Inputs, output: Path) -> list[str]:
    """The command line that reads `bad` with `reader` and would write `output`."""
    train = ["train", "--arch", "tiny_vgg", "--epochs", "1", "--batch-size", "32", "-o", output]
    return [
        str(a)
        for a in {
            "checkpoint": ["probe", bad, "--layer", "features.2", "--epochs", "1", "-o", output],
            "probe_file": ["matrix", inputs.checkpoint, bad, "-o", output],
            "matrix_file": ["clusters", bad, "-o", output],
            "onnx": ["latency", bad, "--runs", "3", "--warmup", "0"],
            "npz": [*train, "--data", f"npz:{bad}"],
            "imagefolder": [*train, "--data", f"imagefolder:{bad}", "--input-size", "32"],
            "foreign_pt": [
                "import",
                bad,
                "--arch",
                "tiny_vgg",
                "--num-classes",
                "10",
                "-o",
                output,
            ],
        }[reader]
    ]


def digests(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize(
    ("reader", "make"), [(c[0], c[2]) for c in CASES], ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_bad_input(reader: str, make: Callable, valid: Inputs, tmp_path: Path) -> None:
    inputs_dir = tmp_path / "in"
    inputs_dir.mkdir()
    bad = make(valid, inputs_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / (
        "out.h5" if reader == "matrix_file" or reader == "probe_file" else "out.safetensors"
    )
    before = digests(bad)
    result = invoke(*command(reader, bad, valid, output))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []
    assert digests(bad) == before
