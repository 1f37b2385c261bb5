"""SIGINT and SIGTERM during every writing command, and two writers of one output at once.

Each command runs in a subprocess on a small job; once it is at work (a log line, its
temporary output file, or torch loaded) it gets a signal. It must exit non-zero with one
`error:` line and no traceback, leave no temporary or half-written file, and leave its inputs
byte-for-byte as they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.core.checkpoint import read_checkpoint
from snptool.core.files import sha256_file
from snptool.core.interrupts import (
    held_interrupts,
    install_interrupt_handlers,
    interrupt_reported,
    work_limit,
)
from snptool.core.matrix_file import create_layer, create_matrix_file, layer_names, open_matrix_file
from snptool.errors import Terminated, UsageError
from tests.conftest import REPO_ROOT

PRUNE_LAYERS = ["features.2", "features.6", "features.10", "classifier.1"]
WAIT_SECONDS = 120  # a generous bound on a loaded machine; never asserted as a duration

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not Path("/proc/self/maps").exists(),
    reason="needs POSIX signals and /proc",
)


class Running:
    """`python -m snptool ARGS` in a subprocess, its stderr collected by a thread."""

    def __init__(self, args: list[object], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("SNPTOOL_DEBUG", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "snptool", *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_for(self, condition: Callable[[], bool]) -> None:
        """Poll until `condition()` holds; fail if the process ends first."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"ended (rc {self.process.returncode}) first: {''.join(self.stderr)}")
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail("the condition never held")
            time.sleep(0.005)

    def torch_loaded(self) -> bool:
        """torch is imported, so the command body (and the CLI's handlers) is running."""
        try:
            return "libtorch" in Path(f"/proc/{self.process.pid}/maps").read_text()
        except OSError:
            return False

    def logged(self, text: str) -> Callable[[], bool]:
        return lambda: any(text in line for line in self.stderr)

    def finish(self) -> tuple[int, list[str]]:
        returncode = self.process.wait(timeout=WAIT_SECONDS)
        self._reader.join(timeout=10)
        return returncode, [line for line in self.stderr if line.strip()]


def part_file(folder: Path) -> Callable[[], bool]:
    return lambda: any(folder.glob(".*.part"))


def digests(*paths: Path) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in paths}


def assert_interrupted(run: Running, sent: signal.Signals, out_dir: Path, inputs: dict) -> None:
    returncode, lines = run.finish()
    assert returncode == 128 + sent, (returncode, lines)
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]] and errors[0].startswith("error: interrupted"), lines
    assert not any("Traceback" in line for line in lines), lines
    assert not list(out_dir.glob(".*.part")), list(out_dir.iterdir())
    assert digests(*map(Path, inputs)) == inputs


@pytest.fixture(scope="module")
def clustered(checkpoint_path: Path, tiny_probe, tmp_path_factory) -> dict[str, Path]:
    """Probes, matrices and clusters of four consecutive layers of the trained fixture."""
    folder = tmp_path_factory.mktemp("interrupt_inputs")
    probes = folder / "probes.safetensors"
    run_probe(checkpoint_path, PRUNE_LAYERS, probes, tiny_probe)
    matrices = folder / "matrices.h5"
    run_matrix(checkpoint_path, probes, matrices)
    run_clusters(matrices)
    return {"probes": probes, "matrices": matrices}


def write_random_matrices(path: Path, units: int) -> Path:
    """A matrix file of `units` random units over 10 labels (30,000 take a while to cluster)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        create_matrix_file(handle, [str(i) for i in range(10)], {"split": "train"})
        attrs = {"layer": "big", "unit": "channel", "units": units, "positions": 1}
        dataset = create_layer(handle, "big", units, 10, {**attrs, "accuracy": 0.5})
        dataset[...] = rng.normal(size=(units, 10, 10)).astype(np.float32)
    return path


@pytest.fixture(scope="module")
def big_matrices(tmp_path_factory) -> Path:
    return write_random_matrices(tmp_path_factory.mktemp("big") / "big.h5", 30_000)


@pytest.fixture(scope="module")
def big_probes(checkpoint_path: Path, probes_path: Path, tmp_path_factory) -> Path:
    """The fixture's probe file with one extra tap of 5,000 units (random weights and means)."""
    path = tmp_path_factory.mktemp("big_probes") / "probes.safetensors"
    with safe_open(str(probes_path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        metadata = json.loads(handle.metadata()["snptool"])
    generator = torch.Generator().manual_seed(0)
    shape = (10, 5_000, 1)
    tensors["probe/big"] = torch.randn(shape, generator=generator)
    for split in ("train", "test"):
        tensors[f"mean/{split}/big"] = torch.randn(shape, generator=generator)
    tap = {**metadata["taps"][0], "name": "big", "units": 5_000, "positions": 1}
    metadata["taps"].append(tap)
    save_file(tensors, str(path), metadata={"snptool": json.dumps(metadata)})
    return path


@pytest.mark.long
def test_train_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    output = out / "model.safetensors"
    run = Running(
        ["train", "--arch", "tiny_vgg", "--epochs", "300", "--batch-size", "32", "-o", output],
        tmp_path,
    )
    run.wait_for(run.logged("epoch 1/"))
    run.process.send_signal(signal.SIGTERM)
    assert_interrupted(run, signal.SIGTERM, out, {})
    # an epoch's checkpoint may be there; if so, it is whole
    for path in out.glob("*.safetensors"):
        read_checkpoint(path)


@pytest.mark.long
def test_probe_sigint(checkpoint_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inputs = digests(checkpoint_path)
    run = Running(
        ["probe", checkpoint_path, "--layer", "features.2", "--epochs", "500"]
        + ["--memory-budget", "1KiB", "--device", "cpu", "-o", out / "probes.safetensors"],
        tmp_path,
    )
    run.wait_for(run.logged("streaming"))
    run.process.send_signal(signal.SIGINT)
    assert_interrupted(run, signal.SIGINT, out, inputs)
    assert list(out.iterdir()) == []


@pytest.mark.long
def test_matrix_sigterm_while_writing(checkpoint_path: Path, big_probes: Path, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inputs = digests(checkpoint_path, big_probes)
    run = Running(
        ["matrix", checkpoint_path, big_probes, "--units-per-chunk", "1", "-o", out / "m.h5"],
        tmp_path,
    )
    run.wait_for(part_file(out))
    run.process.send_signal(signal.SIGTERM)
    assert_interrupted(run, signal.SIGTERM, out, inputs)
    assert list(out.iterdir()) == []


@pytest.mark.long
def test_clusters_in_place_sigint_keeps_the_input(big_matrices: Path, tmp_path: Path) -> None:
    matrices = tmp_path / "big.h5"
    matrices.write_bytes(big_matrices.read_bytes())
    inputs = digests(matrices)
    run = Running(["clusters", matrices], tmp_path)
    run.wait_for(part_file(tmp_path))
    run.process.send_signal(signal.SIGINT)
    assert_interrupted(run, signal.SIGINT, tmp_path, inputs)
    with open_matrix_file(matrices) as handle:
        assert "clusters" not in handle["layers/big"]


@pytest.mark.long
def test_prune_sigterm(checkpoint_path: Path, clustered: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inputs = digests(checkpoint_path, clustered["matrices"])
    run = Running(
        ["prune", checkpoint_path, "--clusters", clustered["matrices"], "--method", "afcc"]
        + ["--finetune-epochs", "300", "--device", "cpu", "-o", out / "pruned.safetensors"],
        tmp_path,
    )
    run.wait_for(run.torch_loaded)
    time.sleep(1.0)  # well into reading inputs or fine-tuning; any moment must be safe
    run.process.send_signal(signal.SIGTERM)
    assert_interrupted(run, signal.SIGTERM, out, inputs)
    assert list(out.iterdir()) == []


@pytest.mark.long
def test_export_sigint(checkpoint_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inputs = digests(checkpoint_path)
    run = Running(["export", checkpoint_path, "-o", out / "model.onnx"], tmp_path)
    run.wait_for(run.torch_loaded)
    run.process.send_signal(signal.SIGINT)
    assert_interrupted(run, signal.SIGINT, out, inputs)
    assert list(out.iterdir()) == []


@pytest.mark.long
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_starting_up_is_one_line(sent: signal.Signals, tmp_path: Path) -> None:
    """Before torch is loaded (typer and the commands are still being imported)."""
    run = Running(["train", "--arch", "tiny_vgg", "-o", tmp_path / "m.safetensors"], tmp_path)
    time.sleep(0.05)
    run.process.send_signal(sent)
    returncode, lines = run.finish()
    assert returncode == (130 if sent == signal.SIGINT else 143), lines
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), lines
    assert list(tmp_path.iterdir()) == []


AFTER_THE_WRITE = """
import os, signal, sys
from snptool.cli import main
from snptool.core import console

emit = console.emit_json


def emit_then_signal(value):  # --json prints after the output was renamed into place
    emit(value)
    os.kill(os.getpid(), signal.SIGTERM)


console.emit_json = emit_then_signal
sys.argv = ["snptool", *sys.argv[1:]]
main()
"""


@pytest.mark.long
def test_a_signal_after_the_output_is_written_exits_143(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-c", AFTER_THE_WRITE, "export", str(checkpoint_path), "-o", str(output)]
        + ["--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=WAIT_SECONDS,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 143, done.stderr[-1500:]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert json.loads(done.stdout)["output"] == str(output)  # the whole result was written
    onnx_bytes = output.read_bytes()
    assert onnx_bytes and not list(tmp_path.glob(".*.part"))


@pytest.mark.long
def test_two_writers_of_one_output(tmp_path: Path) -> None:
    """Both finish; the output is one of their whole files, and no temporary file is left."""
    matrices = write_random_matrices(tmp_path / "matrices.h5", 3_000)
    output = tmp_path / "clustered.h5"
    inputs = digests(matrices)
    runs = [
        Running(["clusters", matrices, "--threshold", t, "-o", output], tmp_path)
        for t in ("0.3", "0.5")
    ]
    for run in runs:
        returncode, lines = run.finish()
        assert returncode == 0, lines
    assert not list(tmp_path.glob(".*.part"))
    assert digests(matrices) == inputs
    with open_matrix_file(output) as handle:
        assert layer_names(handle) == ["big"]
        clusters = handle["layers/big/clusters"]
        assert clusters.attrs["threshold"] in (0.3, 0.5)
        assert len(clusters["count"]) == 3_000


@pytest.fixture
def handlers():
    """The CLI's interrupt handlers in this process, restored afterwards."""
    names = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    previous = {name: signal.getsignal(name) for name in names}
    hook = sys.unraisablehook
    install_interrupt_handlers()
    yield
    interrupt_reported()
    for name, handler in previous.items():
        signal.signal(name, handler)
    sys.unraisablehook = hook


def test_a_held_step_finishes_before_the_interrupt(handlers) -> None:
    steps = []
    with pytest.raises(Terminated), held_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here and postpones the interrupt
        steps.append("finished")
    assert steps == ["finished"]


class SwallowsInterrupts:
    def __del__(self) -> None:
        time.sleep(0.3)  # the signal lands here, where Python ignores what is raised


def test_an_interrupt_swallowed_in_del_is_raised_again(handlers) -> None:
    victim = SwallowsInterrupts()
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        del victim
        time.sleep(5)  # raised again within REPEAT_SECONDS


def test_work_limit_stops_code_that_swallows_exceptions() -> None:
    started = time.process_time()
    limit = work_limit(0.5, 1 << 40, UsageError("limit"))
    with pytest.raises(UsageError, match="limit"), limit:
        while True:
            try:  # noqa: SIM105 - as a third-party search that catches errors
                sum(range(10_000))
            except Exception:
                pass
    assert 0.5 <= time.process_time() - started < 5


def test_work_limit_stops_growing_memory() -> None:
    grown = []
    limit = work_limit(60, 64 << 20, UsageError("memory"))
    with pytest.raises(UsageError, match="memory"), limit:
        while len(grown) < 4096:  # 4 GiB: the limit must come first
            grown.append(bytearray(1 << 20))
            sum(range(20_000))
    assert len(grown) < 4096
