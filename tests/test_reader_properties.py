"""Property tests of the file readers: a valid small file, truncated anywhere, with bits flipped
anywhere, or replaced by arbitrary bytes, or with any field of its metadata replaced by any JSON
value, either loads or raises an SnpError (never another exception)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from snptool.analysis.clusters import run_clusters
from snptool.config import DataConfig, LatencyConfig
from snptool.core.checkpoint import read_checkpoint
from snptool.core.probe_file import ProbeFile
from snptool.data.datasets import load_data
from snptool.deploy.latency import open_model
from snptool.deploy.onnx_file import read_onnx
from snptool.errors import SnpError
from snptool.report.report import run_report
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


# --- metadata records with any field replaced by any JSON value ---------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


def paths_of(document: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON document (list items by index), the root's children first."""
    if not isinstance(document, dict | list):
        return []
    found = []
    items = document.items() if isinstance(document, dict) else enumerate(document)
    for key, value in items:
        found.append((*prefix, key))
        found += paths_of(value, (*prefix, key))
    return found


def replaced(document: object, path: tuple, value: object) -> object:
    copy = json.loads(json.dumps(document))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


def write_metadata_file(kind: str, inputs: Inputs, document: object, folder: Path) -> Path:
    """A copy of the valid file of `kind` whose snptool document is `document`."""
    if kind == "onnx":
        graph = onnx.load(str(inputs.exported))
        for prop in graph.metadata_props:
            if prop.key == "snptool":
                prop.value = json.dumps(document)
        path = folder / "model.onnx"
        onnx.save(graph, str(path))
        return path
    source = {"checkpoint": inputs.checkpoint, "probes": inputs.probes}[kind]
    with safe_open(str(source), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        header = dict(handle.metadata())
    header["snptool"] = json.dumps(document)
    path = folder / f"{kind}.safetensors"
    save_file(tensors, str(path), metadata=header)
    return path


def original_document(kind: str, inputs: Inputs) -> dict:
    if kind == "onnx":
        props = {p.key: p.value for p in onnx.load(str(inputs.exported)).metadata_props}
        return json.loads(props["snptool"])
    source = {"checkpoint": inputs.checkpoint, "probes": inputs.probes}[kind]
    with safe_open(str(source), framework="pt") as handle:
        return json.loads(handle.metadata()["snptool"])


def use_onnx(path: Path) -> None:
    file = read_onnx(path)
    file.input_spec()
    file.data()


RECORD_READERS = {
    "checkpoint": read_checkpoint,
    "probes": lambda path: ProbeFile(path).tap_names,
    "onnx": use_onnx,
}


@pytest.mark.parametrize("kind", list(RECORD_READERS))
def test_any_field_of_any_value_loads_or_refuses(kind: str, valid: Inputs) -> None:
    document = original_document(kind, valid)
    paths = paths_of(document)

    @PROPERTY
    @given(index=st.integers(0, len(paths) - 1), value=JSON)
    def check(index: int, value: object) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = write_metadata_file(
                kind, valid, replaced(document, paths[index], value), Path(folder)
            )
            try:
                RECORD_READERS[kind](path)
            except SnpError as error:
                assert str(error).strip() and "\n" not in str(error).strip()

    check()


def test_any_report_json_loads_or_refuses() -> None:
    """JSON of the shapes report reads, with any field replaced, is drawn or refused."""
    latency = [{"path": "a.onnx", "batch": 1, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0,
                "ratio": 1.0}]  # fmt: skip
    paths = paths_of(latency)

    @PROPERTY
    @given(index=st.integers(0, len(paths) - 1), value=JSON)
    def check(index: int, value: object) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "latency.json"
            path.write_text(json.dumps(replaced(latency, paths[index], value)))
            try:
                run_report([path], Path(folder) / "report.html")
            except SnpError as error:
                assert str(error).strip() and "\n" not in str(error).strip()

    check()
