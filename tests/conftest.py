"""Shared fixtures: seeded synthetic data, the real CIFAR-10 npz, one tiny trained checkpoint
and its probe file, valid files of every reader; and the helpers that run the command line
(invoke, assert_ok, assert_one_error), which test modules import from here."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner, Result

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import ProbeResult, run_probe
from snptool.cli import app
from snptool.config import (
    ClustersConfig,
    ExportConfig,
    InputSpec,
    MatrixConfig,
    ProbeConfig,
    TrainConfig,
)
from snptool.core.architectures import build_model
from snptool.core.checkpoint import make_metadata, write_checkpoint
from snptool.core.files import sha256_file
from snptool.core.matrix_file import create_layer, create_matrix_file
from snptool.core.trust import trust_code
from snptool.deploy.export import run_export
from snptool.training.train import InputOverrides, TrainResult, run_train

TESTS = Path(__file__).resolve().parent  # the helper files (_tiny_resnet.py, …) lie here
REPO_ROOT = TESTS.parent
SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_NPZ = SHARED / "data" / "cifar10_test.npz"
SHARED_CHECKPOINTS = SHARED / "checkpoints"

# Tiny models run faster on one thread, and a second one only fights other jobs on small CI
# machines (a 2-core box under load was 15× slower with two threads).
torch.set_num_threads(1)

# The trained fixture: 2 epochs of tiny_vgg on digits reach ~0.88 test accuracy in ~1 s.
TINY_TRAIN = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, flip=False, device="cpu")
# The probed fixture: two conv taps and one FC tap of that model, 5 probe epochs (~1 s).
PROBE_LAYERS = ["features.2", "features.10", "classifier.1"]
TINY_PROBE = ProbeConfig(epochs=5, device="cpu")

# A tiny torchvision ViT (2 blocks, 2 heads, 16 tokens of 8×8 patches + the class token); its
# nn.MultiheadAttention is swapped for the head-exposing one when snptool builds it.
TINY_VIT = "torchvision.models.vision_transformer:VisionTransformer"
TINY_VIT_KWARGS = {
    "image_size": 32,
    "patch_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 16,
    "mlp_dim": 32,
}
TINY_VIT_TRAIN = TrainConfig(
    epochs=2, batch_size=32, learning_rate=0.1, augment=False, lr_step=100, device="cpu"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run it")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device available")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


THIRD_PARTY = REPO_ROOT / "examples" / "third_party"
TINY_RESNET = f"{TESTS / '_tiny_resnet.py'}:tiny_resnet"
TINY_CONVNEXT = f"{TESTS / '_tiny_convnext.py'}:tiny_convnext"
FIXED_WIDTH = f"{TESTS / '_fixed_width.py'}:fixed_width"
FOLDING_NET = f"{TESTS / '_folding.py'}:folding_net"
# The code specs of the project's own test helpers and examples: a checkpoint may make snptool
# run a module or file factory only when the user trusts it (core/trust.py), and every test
# trusts these, as a user passing `--arch SPEC` would. tests/core/test_trust.py checks that
# other specs are refused.
TRUSTED_SPECS = (
    TINY_VIT,
    TINY_RESNET,
    TINY_CONVNEXT,
    FIXED_WIDTH,
    FOLDING_NET,
    *(
        f"{THIRD_PARTY / name}"
        for name in ("cifar_resnet.py:resnet20", "cifar_resnet.py:resnet56", "tutorial_net.py:net")
    ),
)


@pytest.fixture(scope="session", autouse=True)
def _trust_the_test_helpers() -> Iterator[None]:
    with trust_code(*TRUSTED_SPECS):
        yield


@pytest.fixture(scope="session")
def tiny_train() -> TrainConfig:
    """The training settings of the `trained` fixture."""
    return TINY_TRAIN


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """tiny_vgg trained on digits (last + best files); treat the files as read-only."""
    directory = tmp_path_factory.mktemp("trained")
    return run_train("tiny_vgg", "digits", directory / "tiny_vgg.safetensors", TINY_TRAIN)


@pytest.fixture(scope="session")
def checkpoint_path(trained: TrainResult) -> Path:
    """The last state of the trained fixture; copy it before changing it."""
    return Path(trained.output)


@pytest.fixture(scope="session")
def tiny_vit() -> tuple[str, dict]:
    """The tiny torchvision ViT's architecture spec and keyword arguments."""
    return TINY_VIT, dict(TINY_VIT_KWARGS)


@pytest.fixture(scope="session")
def trained_vit(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """TINY_VIT trained on digits at 32×32 RGB for 2 epochs (~2 s); treat it as read-only."""
    directory = tmp_path_factory.mktemp("trained_vit")
    return run_train(
        TINY_VIT,
        "digits",
        directory / "tiny_vit.safetensors",
        TINY_VIT_TRAIN,
        arch_kwargs=TINY_VIT_KWARGS,
        inputs=InputOverrides(channels=3, size=(32, 32)),
    )


@pytest.fixture(scope="session")
def tiny_probe() -> ProbeConfig:
    """The probe settings of the `probe_result` fixture."""
    return TINY_PROBE


@pytest.fixture(scope="session")
def probe_result(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ProbeResult:
    """Probes of PROBE_LAYERS on the trained fixture (TINY_PROBE); treat the file as read-only."""
    output = tmp_path_factory.mktemp("probes") / "tiny_vgg.probes.safetensors"
    return run_probe(checkpoint_path, PROBE_LAYERS, output, TINY_PROBE)


@pytest.fixture(scope="session")
def probes_path(probe_result: ProbeResult) -> Path:
    return Path(probe_result.output)


@pytest.fixture(scope="session")
def cifar_npz_path() -> Path:
    """Where the real CIFAR-10 test set lies (it may be absent)."""
    return CIFAR_NPZ


@pytest.fixture(scope="session")
def cifar_npz(cifar_npz_path: Path) -> Path:
    if not cifar_npz_path.is_file():
        pytest.skip(f"real CIFAR-10 data not found at {cifar_npz_path} (see shared/data/README.md)")
    return cifar_npz_path


def synthetic_images(
    n: int = 60, classes: int = 3, size: int = 32, channels: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose mean brightness depends on the class, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    means = np.linspace(40, 215, classes)[labels]
    noise = rng.normal(0.0, 20.0, size=(n, size, size, channels))
    images = np.clip(means[:, None, None, None] + noise, 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture
def make_npz(tmp_path: Path) -> Callable[..., Path]:
    """Write a synthetic npz data set: make_npz(name, n=60, classes=3, test=None, **arrays)."""

    def make(
        name: str = "synthetic.npz",
        *,
        n: int = 60,
        classes: int = 3,
        size: int = 32,
        test: np.ndarray | None = None,
        class_names: list[str] | None = None,
        seed: int = 0,
        **arrays: np.ndarray,
    ) -> Path:
        images, labels = synthetic_images(n, classes, size, seed=seed)
        content = {"images": images, "labels": labels, **arrays}
        if test is not None:
            content["test"] = test
        if class_names is not None:
            content["class_names"] = np.array(class_names)
        path = tmp_path / name
        np.savez(path, **content)
        return path

    return make


@pytest.fixture
def synthetic_npz(make_npz: Callable[..., Path]) -> Path:
    """60 RGB 32×32 images in 3 classes named a, b, c (no test mask)."""
    return make_npz(class_names=["a", "b", "c"])


@pytest.fixture
def make_matrix_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a matrix file of hand-made [U, C, C] matrices: make_matrix_file({tap: M}, names);
    `attrs` {tap: {...}} overrides a layer's attributes (unit "channel", accuracy 0.5, …);
    `checkpoint` is recorded as the checkpoint they belong to."""

    def make(
        layers: dict[str, np.ndarray],
        class_names: list[str],
        name: str = "matrices.h5",
        attrs: dict[str, dict] | None = None,
        checkpoint: Path | None = None,
    ) -> Path:
        path = tmp_path / name
        record: dict[str, Any] = {"split": "train"}
        if checkpoint is not None:
            record["checkpoint"] = {"path": str(checkpoint), "sha256": sha256_file(checkpoint)}
        with h5py.File(path, "w") as handle:
            create_matrix_file(handle, class_names, record)
            for order, (tap, matrices) in enumerate(layers.items()):
                units = len(matrices)
                defaults = {"unit": "channel", "units": units, "positions": 1, "accuracy": 0.5}
                attrs_of_tap = {"layer": tap, **defaults, **(attrs or {}).get(tap, {})}
                dataset = create_layer(handle, tap, units, len(class_names), attrs_of_tap)
                dataset[...] = matrices
                dataset.parent.attrs["order"] = order
        return path

    return make


HEAD_LAYER = "blocks.0.attn.heads:head"
HEAD_CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def head_matrices(make_matrix_file: Callable[..., Path]) -> Path:
    """A clustered matrix file with one conv layer and one head layer of 3 heads over 5 labels:
    h0 serves the cluster {a, b}, h1 the clusters {b} and {c}, h2 nothing; no head serves d, e."""
    heads = np.zeros((3, 5, 5), dtype=np.float32)
    heads[0, :2, :2] = 1.0
    heads[1, 1, 1] = heads[1, 2, 2] = 1.0
    heads[2] = -1.0  # maximum <= 0: no clusters
    conv = np.eye(5, dtype=np.float32)[None]
    attrs = {HEAD_LAYER: {"unit": "head", "layer": "blocks.0.attn.heads", "accuracy": 0.75}}
    path = make_matrix_file({"conv": conv, HEAD_LAYER: heads}, HEAD_CLASSES, "heads.h5", attrs)
    run_clusters(path, ClustersConfig(threshold=0.3))
    return path


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Write an untrained checkpoint of a registered arch for digits (10 classes, 3×32×32, or
    3×input_size²): untrained_checkpoint("tiny_cct", conv_blocks=1) → path. BatchNorm
    statistics are first moved by two train-mode passes of random images, so they are not the
    trivial 0 and 1."""

    def write(arch: str, *, input_size: int = 32, **arch_kwargs) -> Path:
        torch.manual_seed(0)
        model, record = build_model(arch, arch_kwargs, num_classes=10)
        with torch.no_grad():
            for _ in range(2):
                model.train()(torch.rand(8, 3, input_size, input_size) * 2 - 1)
        metadata = make_metadata(
            arch=record,
            class_names=[str(i) for i in range(10)],
            input_spec=InputSpec(height=input_size, width=input_size),
            data="digits",
            provenance={},
        )
        stem = re.sub(r"[^\w.-]+", "_", arch)  # a file spec holds slashes
        path = tmp_path_factory.mktemp("untrained") / f"{stem}.safetensors"
        write_checkpoint(path, model.eval(), metadata)
        return path

    return write


@pytest.fixture
def images() -> torch.Tensor:
    """Two seeded 3×32×32 inputs for forward passes of the model families."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- files the commands read ----------------------------------------------------------------------


@pytest.fixture
def foreign_weights(tmp_path: Path) -> Path:
    """A torch.save'd, DataParallel-style state dict of a real tiny_vgg."""
    torch.manual_seed(0)
    model, _ = build_model("tiny_vgg", num_classes=10)
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def named_matrices(make_matrix_file) -> Path:
    """One layer of 3 units over 4 labels; unit 1 serves {cat, dog} and {truck}."""
    matrices = np.zeros((3, 4, 4), dtype=np.float32)
    matrices[0] = np.eye(4)
    matrices[1, :2, :2] = 1.0
    matrices[1, 3, 3] = 0.8
    matrices[2] = -1.0
    return make_matrix_file({"conv": matrices}, ["cat", "dog", "ship", "truck"])


# --- the valid inputs of the bad-input corpus (test_bad_inputs, test_reader_properties) -----------


@dataclass
class Inputs:
    """The valid files the corpus is made from (read-only)."""

    checkpoint: Path
    probes: Path
    matrices: Path
    onnx: Path
    npz: Path
    pt: Path
    clustered: Path  # the matrices with clusters
    exported: Path  # the checkpoint exported to ONNX (with snptool metadata)


@pytest.fixture(scope="session")
def valid(checkpoint_path: Path, probes_path: Path, tmp_path_factory) -> Inputs:
    directory = tmp_path_factory.mktemp("valid_inputs")
    matrices = directory / "matrices.h5"
    run_matrix(checkpoint_path, probes_path, matrices, MatrixConfig(device="cpu"))
    clustered = directory / "clustered.h5"
    run_clusters(matrices, ClustersConfig(), output=clustered)
    exported = directory / "exported.onnx"
    run_export(checkpoint_path, exported, ExportConfig(device="cpu", parity_samples=8))
    return Inputs(
        checkpoint_path,
        probes_path,
        matrices,
        write_tiny_onnx(directory / "tiny.onnx"),
        write_npz(directory / "data.npz"),
        write_pt(directory / "foreign.pt"),
        clustered,
        exported,
    )


def write_tiny_onnx(path: Path) -> Path:
    """A real one-node ONNX model (Relu of a [N, 3, 8, 8] float input)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def npz_arrays(n: int = 60, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % classes
    images = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    return {"images": images, "labels": labels, "class_names": np.array(["a", "b", "c"])}


def write_npz(path: Path, **overrides) -> Path:
    arrays = {**npz_arrays(), **overrides}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model, _ = build_model("tiny_vgg", num_classes=10)
    return model.state_dict()


def write_pt(path: Path, state: object | None = None) -> Path:
    torch.save(tiny_state_dict() if state is None else state, path)
    return path


# --- the command line -----------------------------------------------------------------------------
# Test modules import these: `from tests.conftest import assert_ok, assert_one_error, invoke`.


def invoke(*args: object, **kwargs: Any) -> Result:
    """Run `snptool ARGS…` in this process (each argument as str) with typer's CliRunner, which
    keeps stdout and stderr apart; `kwargs` go to CliRunner.invoke (env=…, catch_exceptions=…)."""
    return CliRunner().invoke(app, [str(arg) for arg in args], **kwargs)


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def assert_one_error(result: Result, expected: str | None = None, *, contains: str = "") -> str:
    """Exit 2, nothing on stdout, exactly one non-empty stderr line `error: …`; returns it.
    `expected` is the whole message after `error: `, `contains` a part of it."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    if expected is not None:
        assert lines[0] == f"error: {expected}"
    assert contains in lines[0], lines[0]
    return lines[0]


def part_files(directory: Path) -> list[Path]:
    """The `*.part` files that an atomic write left behind in `directory`."""
    return sorted(directory.glob("*.part"))


@pytest.fixture(scope="session")
def invoke_json() -> Callable[..., Any]:
    """Run the CLI, require exit 0 and return what it printed on stdout as JSON."""

    def invoke_and_read(*args: object) -> Any:
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return invoke_and_read
