"""Property tests of the file readers: a valid small file, truncated anywhere, with bits flipped
anywhere, or replaced by arbitrary bytes, either loads or raises an SnpError (never another
exception)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snptool.analysis.clusters import run_clusters
from snptool.config import DataConfig, LatencyConfig
from snptool.core.checkpoint import read_checkpoint
from snptool.core.probe_file import ProbeFile
from snptool.data.datasets import load_data
from snptool.deploy.latency import open_model
from snptool.errors import SnpError
from snptool.training.importer import read_foreign_weights
from tests.conftest import Inputs

pytestmark = pytest.mark.long  # hundreds of damaged files per reader

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` truncated at a random offset, with 1–8 random bits flipped, or random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "flip_header", "arbitrary"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "arbitrary":
        return draw(st.binary(max_size=2048))
    damaged = bytearray(data)
    limit = min(len(data), 4096) if kind == "flip_header" else len(data)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, limit - 1))
        damaged[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(damaged)


def loads_or_refuses(read: Callable[[Path], object], data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        try:
            read(path)
        except SnpError as error:
            assert str(error).strip() and "\n" not in str(error).strip()


def read_probes(path: Path) -> None:
    probes = ProbeFile(path)
    for key in sorted(probes.keys):
        probes.tensor(key)


def cluster_copy(path: Path) -> None:
    run_clusters(path, output=path.with_name("clustered.h5"))


READERS = {
    "checkpoint": ("checkpoint", ".safetensors", read_checkpoint),
    "probe_file": ("probes", ".safetensors", read_probes),
    "matrix_file": ("matrices", ".h5", cluster_copy),
    "npz": ("npz", ".npz", lambda path: load_data(f"npz:{path}", "train", DataConfig())),
    "foreign_pt": ("pt", ".pt", read_foreign_weights),
    "onnx": ("onnx", ".onnx", lambda path: open_model(path, LatencyConfig())),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_damaged_file_loads_or_refuses(reader: str, valid: Inputs) -> None:
    which, suffix, read = READERS[reader]
    original = getattr(valid, which).read_bytes()

    @PROPERTY
    @given(data=damaged(original))
    def check(data: bytes) -> None:
        loads_or_refuses(read, data, suffix)

    check()


def test_valid_files_load(valid: Inputs) -> None:
    """The undamaged originals load, so the properties above test damage, not a broken file."""
    for which, suffix, read in READERS.values():
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"input{suffix}"
            path.write_bytes(getattr(valid, which).read_bytes())
            read(path)


def test_arbitrary_npz_arrays(valid: Inputs) -> None:
    """npz files of arbitrary label arrays (any integers, any length) load or are refused."""

    @PROPERTY
    @given(
        labels=st.lists(st.integers(-3, 5), max_size=12),
        classes=st.integers(0, 4),
    )
    def check(labels: list[int], classes: int) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "data.npz"
            arrays = {
                "images": np.zeros((len(labels), 4, 4, 1), np.uint8),
                "labels": np.array(labels, dtype=np.int64),
                "class_names": np.array([f"c{i}" for i in range(classes)]),
            }
            np.savez(path, **arrays)
            try:
                data = load_data(f"npz:{path}", "all", DataConfig())
            except SnpError:
                return
            assert set(data.labels.tolist()) == set(range(data.num_classes))

    check()
