"""Commands chained through their files: the README's main job run as a user runs it
(subprocesses, files, --json) on tiny settings, and shorter chains in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors import safe_open

from snptool.data.datasets import load_data
from snptool.training.train import TrainResult
from tests.conftest import REPO_ROOT, assert_ok, assert_one_error, invoke, part_files


@pytest.mark.long
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
        ["bash", str(REPO_ROOT / "examples" / "pipeline.sh"), str(out)],
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
    variants = ["dense.onnx", "pruned.onnx", "dense.int8.onnx", "pruned.int8.onnx"]
    assert [row["path"] for row in latency] == [str(out / name) for name in variants]
    assert latency[0]["ratio"] == 1.0
    for kind in ("dense", "pruned"):
        quantized = json.loads((out / f"quantize-{kind}.json").read_text())
        assert quantized["method"] == "static" and quantized["calibration"] == 256
        assert quantized["argmax_agreement"] >= 0.9
    for name in ("dense fp32", "pruned fp32", "dense int8", "pruned int8"):
        assert f"\n{name}" in completed.stdout

    with safe_open(str(out / "model.best.safetensors"), "pt") as handle:
        metadata = json.loads(handle.metadata()["snptool"])
    assert metadata["arch"]["spec"] == "tiny_vgg"
    assert metadata["provenance"]["command"].startswith("snptool train --arch tiny_vgg")
    assert metadata["training"]["saved"] == "best"


# --- in process: commands chained through their files ---------------------------------------------


def test_probe_matrix_clusters(checkpoint_path: Path, trained: TrainResult, tmp_path: Path) -> None:
    probes = tmp_path / "probes.safetensors"
    result = invoke(
        "probe", checkpoint_path, "--all", "--epochs", 2, "--device", "cpu", "-o", probes, "--json"
    )
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "output",
        "checkpoint",
        "data",
        "mode",
        "model_accuracy",
        "layers",
        "seconds",
    }
    assert (payload["output"], payload["data"], payload["mode"]) == (
        str(probes),
        "digits",
        "cached",
    )
    assert payload["model_accuracy"] == pytest.approx(trained.final_accuracy)
    taps = ["features.2", "features.6", "features.10", "classifier.1"]
    assert [layer["name"] for layer in payload["layers"]] == taps
    for layer in payload["layers"]:
        assert {"layer", "unit", "units", "positions", "train_accuracy"} <= set(layer)
        assert 0.2 < layer["test_accuracy"] <= 1.0
    assert "layer accuracy" in result.stderr
    assert f"model accuracy {payload['model_accuracy']:.4f}" in result.stderr
    assert probes.is_file() and part_files(tmp_path) == []

    matrices = tmp_path / "matrices.h5"
    args = ["matrix", checkpoint_path, probes, "--split", "test", "--device", "cpu"]
    result = invoke(*args, "-o", matrices, "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert (payload["output"], payload["split"]) == (str(matrices), "test")
    assert [layer["layer"] for layer in payload["layers"]] == taps
    assert {(x["samples"], x["classes"], x["source"]) for x in payload["layers"]} == {
        (359, 10, "probe file")
    }
    assert "matrices (test split)" in result.stderr

    result = invoke("clusters", matrices, "--json")
    assert_ok(result)
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and [row["layer"] for row in rows] == taps
    keys = {
        "layer",
        "units",
        "units_without_clusters",
        "accuracy",
        "mean_cluster_size",
        "clusters_per_unit",
        "labels_per_unit",
        "noise_per_unit",
        "snr",
    }
    probed = probe_taps(probes)
    for row in rows:
        assert keys <= set(row)
        assert row["units"] == probed[row["layer"]]["units"]
        assert row["accuracy"] == pytest.approx(probed[row["layer"]]["test_accuracy"])
        assert 0 <= row["units_without_clusters"] <= row["units"]
    assert f"clusters (threshold 0.3) → {matrices}" in result.stderr
    with h5py.File(matrices, "r") as handle:
        for row in rows:
            clusters = handle[f"layers/{row['layer']}/clusters"]
            assert int((clusters["count"][()] == 0).sum()) == row["units_without_clusters"]


def probe_taps(probes: Path) -> dict[str, dict]:
    """The probe file's tap records by name (read with safetensors, not snptool)."""
    with safe_open(str(probes), framework="pt") as handle:
        return {tap["name"]: tap for tap in json.loads(handle.metadata()["snptool"])["taps"]}


def test_class_subset_is_inherited_along_the_pipeline(tmp_path: Path) -> None:
    model, probes, matrices = (tmp_path / n for n in ("m.safetensors", "p.safetensors", "m.h5"))
    common = ["--device", "cpu", "--json"]
    train = ["train", "--arch", "tiny_vgg", "--epochs", 2, "--lr", 0.05, "-o", model]
    assert_ok(invoke(*train, "--classes", "7,1,4", *common))
    result = invoke("evaluate", model, *common)
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert list(payload["per_class"]) == ["1", "4", "7"]
    full_test = load_data("digits", "test").labels
    assert payload["samples"] == int(np.isin(full_test.numpy(), [1, 4, 7]).sum())
    assert_ok(invoke("probe", model, "--layer", "classifier.1", "--epochs", 1, "-o", probes))
    result = invoke("matrix", model, probes, "--split", "test", "-o", matrices, *common)
    assert_ok(result)
    assert json.loads(result.stdout)["layers"][0]["classes"] == 3
    assert_one_error(invoke("evaluate", model, "--classes", "1,4,8"), contains="trained on 1, 4, 7")
    assert_one_error(invoke("evaluate", model, "--classes", "1,x"), contains="no class 'x'")
    assert_one_error(invoke("evaluate", model, "--num-classes-subset", 1), contains="at least 2")
