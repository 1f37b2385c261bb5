"""The head report: labels per head, heads per label, overlaps (METHODS.md §7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snptool.analysis.heads import label_overlap, mean_overlap, overlap_matrix, run_heads
from snptool.config import HeadsConfig
from snptool.errors import LayerError, UsageError
from tests.conftest import assert_ok, assert_one_error, invoke

HEAD_LAYER = "blocks.0.attn.heads:head"  # as in conftest's head_matrices


def test_label_overlap_measures() -> None:
    assert label_overlap({1, 2}, {2, 3}, "jaccard") == pytest.approx(1 / 3)
    assert label_overlap({1, 2}, {2, 3, 4, 5}, "coefficient") == pytest.approx(1 / 2)
    assert label_overlap({1}, set(), "jaccard") == 0.0
    assert label_overlap({1}, set(), "coefficient") is None  # 0 / min(1, 0)
    assert label_overlap(set(), set(), "jaccard") is None
    overlaps = overlap_matrix([{0}, {0, 1}, set()], "jaccard")
    assert overlaps == [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, None]]
    assert mean_overlap(overlaps) == pytest.approx(0.5 / 3)
    assert mean_overlap([[1.0]]) is None  # one head: no pairs


def test_head_report_of_a_hand_built_file(head_matrices: Path) -> None:
    result = run_heads(head_matrices)
    assert result.matrices == str(head_matrices)
    (row,) = result.to_json()  # the conv layer is not a head layer
    third = 1 / 3
    assert row == {
        "layer": HEAD_LAYER,
        "module": "blocks.0.attn.heads",
        "threshold": pytest.approx(0.3),
        "accuracy": 0.75,
        "overlap_measure": "jaccard",
        "heads": [
            {"head": "blocks.0.attn.heads:h0", "labels": ["a", "b"], "clusters": [["a", "b"]]},
            {"head": "blocks.0.attn.heads:h1", "labels": ["b", "c"], "clusters": [["b"], ["c"]]},
            {"head": "blocks.0.attn.heads:h2", "labels": [], "clusters": []},
        ],
        "label_heads": {"a": [0], "b": [0, 1], "c": [1], "d": [], "e": []},
        "labels_without_heads": ["d", "e"],
        "labels_per_head": pytest.approx(4 / 3),
        "heads_per_label": pytest.approx(4 / 5),
        "overlap": [
            [1.0, pytest.approx(third), 0.0],
            [pytest.approx(third), 1.0, 0.0],
            [0.0, 0.0, None],
        ],
        "mean_overlap": pytest.approx(third / 3),
    }


def test_overlap_coefficient(head_matrices: Path) -> None:
    (row,) = run_heads(head_matrices, HeadsConfig(overlap="coefficient")).to_json()
    assert row["overlap_measure"] == "coefficient"
    assert row["overlap"] == [[1.0, 0.5, None], [0.5, 1.0, None], [None, None, None]]
    assert row["mean_overlap"] == 0.5


def test_layer_selection_and_errors(head_matrices: Path, make_matrix_file) -> None:
    assert [r.layer for r in run_heads(head_matrices, layers=[HEAD_LAYER] * 2).layers] == [
        HEAD_LAYER
    ]
    with pytest.raises(
        LayerError,
        match=f"layer conv of .* holds channel units, not heads; its head layers are {HEAD_LAYER}.",
    ):
        run_heads(head_matrices, layers=["conv"])
    with pytest.raises(LayerError, match="the matrix file has no layer 'fc'"):
        run_heads(head_matrices, layers=["fc"])
    plain = make_matrix_file({"conv": np.eye(3, dtype=np.float32)[None]}, ["x", "y", "z"], "c.h5")
    with pytest.raises(LayerError, match="has no head layers; probe a HeadOutputs layer as"):
        run_heads(plain)
    unclustered = make_matrix_file(
        {HEAD_LAYER: np.ones((2, 3, 3), np.float32)},
        ["x", "y", "z"],
        "u.h5",
        attrs={HEAD_LAYER: {"unit": "head"}},
    )
    with pytest.raises(UsageError, match="no clusters yet; run `snptool clusters"):
        run_heads(unclustered)
    with pytest.raises(UsageError, match="unknown overlap 'cosine'; use one of jaccard, coeff"):
        HeadsConfig(overlap="cosine")


# --- the command ------------------------------------------------------------------------------


def test_heads(head_matrices: Path) -> None:
    result = invoke("heads", head_matrices, "--json")
    assert_ok(result)
    (row,) = json.loads(result.stdout)
    assert row["layer"] == "blocks.0.attn.heads:head" and row["overlap_measure"] == "jaccard"
    assert [head["labels"] for head in row["heads"]] == [["a", "b"], ["b", "c"], []]
    assert row["labels_without_heads"] == ["d", "e"] and row["overlap"][2] == [0.0, 0.0, None]
    assert "blocks.0.attn.heads:head: 3 heads, layer acc 0.75, threshold 0.3" in result.stderr
    assert "mean jaccard overlap 0.1111\n" in result.stderr
    assert "heads per label: a 1, b 2, c 1, d 0, e 0" in result.stderr
    assert "labels served by no head: d, e" in result.stderr
    quiet = invoke("--quiet", "heads", head_matrices, "--overlap", "coefficient", "--json")
    assert_ok(quiet)
    assert quiet.stderr == "" and json.loads(quiet.stdout)[0]["mean_overlap"] == 0.5


def test_heads_errors(head_matrices: Path, named_matrices: Path, tmp_path: Path) -> None:
    assert_one_error(
        invoke("heads", named_matrices),
        f"{named_matrices} has no head layers; probe a HeadOutputs layer as LAYER:head "
        "(see `snptool layers CHECKPOINT`), then run matrix and clusters.",
    )
    assert_one_error(
        invoke("heads", head_matrices, "--layer", "conv"),
        f"layer conv of {head_matrices} holds channel units, not heads; "
        "its head layers are blocks.0.attn.heads:head.",
    )
    assert_one_error(
        invoke("heads", head_matrices, "--overlap", "cosine"),
        "unknown overlap 'cosine'; use one of jaccard, coefficient.",
    )
    absent = tmp_path / "absent.h5"
    assert_one_error(
        invoke("heads", absent), f"matrix file {absent} does not exist; check the path."
    )
