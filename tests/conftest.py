"""Shared fixtures: seeded synthetic data, the real CIFAR-10 npz, one tiny trained checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from snptool.config import TrainConfig
from snptool.train import TrainResult, run_train

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_NPZ = SHARED / "data" / "cifar10_test.npz"
SHARED_CHECKPOINTS = SHARED / "checkpoints"

# Tiny models run faster on one thread, and a second one only fights other jobs on small CI
# machines (a 2-core box under load was 15× slower with two threads).
torch.set_num_threads(1)

# The trained fixture: 2 epochs of tiny_vgg on digits reach ~0.88 test accuracy in ~1 s.
TINY_TRAIN = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, flip=False, device="cpu")


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
