"""The README's main job, run as a user runs it (subprocesses, files, --json), on tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


def test_examples_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ARCH": "tiny_vgg",
        "EPOCHS": "3",
        "PROBE_EPOCHS": "3",
        "FINETUNE_EPOCHS": "1",
        "ROUND_TO": "4",  # tiny_vgg's layers are 8 and 16 wide
        "MIN_CHANNELS": "4",
    }
    completed = subprocess.run(
        ["bash", str(ROOT / "examples" / "pipeline.sh"), str(out)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "best test accuracy" in completed.stdout

    train = json.loads((out / "train.json").read_text())
    evaluation = json.loads((out / "evaluate.json").read_text())
    layers = json.loads((out / "layers.json").read_text())
    assert [r["epoch"] for r in train["history"]] == [1, 2, 3]
    assert evaluation["accuracy"] == train["best_accuracy"]
    assert evaluation["samples"] == 359  # the seeded 20 % test split of 1,797 digits
    assert [layer["layer"] for layer in layers] == [
        "features.2",
        "features.6",
        "features.10",
        "classifier.1",
    ]

    probe = json.loads((out / "probe.json").read_text())
    clusters = json.loads((out / "clusters.json").read_text())
    taps = ["features.2", "features.6", "features.10", "classifier.1"]
    assert [tap["name"] for tap in probe["layers"]] == taps
    assert probe["model_accuracy"] == evaluation["accuracy"]
    assert [row["layer"] for row in clusters] == taps
    with h5py.File(out / "matrices.h5") as handle:
        assert handle["layers/features.10/matrix"].shape == (16, 10, 10)
        assert "clusters" in handle["layers/features.10"]

    prune = json.loads((out / "prune.json").read_text())
    assert prune["method"] == "units" and prune["layers"]
    pruned = json.loads((out / "export-pruned.json").read_text())
    dense = json.loads((out / "export-dense.json").read_text())
    assert pruned["max_abs_diff"] <= 1e-4 and dense["max_abs_diff"] <= 1e-4
    assert pruned["params"] < dense["params"]  # whole channels removed: a smaller graph
    assert pruned["macs"] <= 0.5 * dense["macs"]
    assert "pruning buys a" in completed.stdout
    latency = json.loads((out / "latency.json").read_text())
    assert [row["path"] for row in latency] == [str(out / "dense.onnx"), str(out / "pruned.onnx")]
    assert latency[0]["ratio"] == 1.0

    with safe_open(str(out / "model.best.safetensors"), "pt") as handle:
        metadata = json.loads(handle.metadata()["snptool"])
    assert metadata["arch"]["spec"] == "tiny_vgg"
    assert metadata["provenance"]["command"].startswith("snptool train --arch tiny_vgg")
    assert metadata["training"]["saved"] == "best"
