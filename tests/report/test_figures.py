"""The report's figures, each from known inputs: heat maps, latency bars, the power law and head
maps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from snptool.analysis.heads import run_heads
from snptool.report import figures
from snptool.report.report import read_input, run_report


def _pixels(figure) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(figures.png_bytes(figure))).convert("RGB"))


def _pixel_at(figure, image: np.ndarray, x: float, y: float) -> np.ndarray:
    """The rendered pixel of data point (x, y) of the figure's first axes."""
    px, py = figure.axes[0].transData.transform((x, y))
    return image[int(round(image.shape[0] - py)), int(round(px))].astype(int)


def test_heat_map_pixels_follow_the_matrix() -> None:
    matrix = np.arange(16, dtype=np.float32).reshape(4, 4) / 15.0
    figure = figures.unit_matrix(matrix, ["a", "b", "c", "d"], [[1, 2]], "unit")
    image = _pixels(figure)
    colours = colormaps[figures.HEAT_MAP]
    for i in range(4):
        for j in range(4):
            expected = np.array(colours(matrix[i, j])[:3]) * 255
            assert np.abs(_pixel_at(figure, image, j, i) - expected).max() <= 3, (i, j)
    edge = _pixel_at(figure, image, 1.0, 1.5)  # on the border between cells (1, 1) and (2, 1)
    outline = np.array(Image.new("RGB", (1, 1), figures.CLUSTER_COLOURS[0]).getpixel((0, 0)))
    assert np.abs(edge - outline).max() <= 40
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ["a", "b", "c", "d"]


def test_a_hundred_labels_stay_legible() -> None:
    names = [f"label{i:02d}" for i in range(100)]
    figure = figures.unit_matrix(np.eye(100), names, [], "100 labels")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    ticks = figure.axes[0].get_yticklabels()
    assert [t.get_text() for t in ticks] == names
    assert min(t.get_fontsize() for t in ticks) >= 4
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.y0)
    assert all(lower.y1 <= upper.y0 + 0.5 for lower, upper in zip(boxes, boxes[1:], strict=False))


def test_latency_bars_and_committee_from_known_numbers() -> None:
    figure = figures.latency_bars(["dense", "pruned"], [2.0, 1.0], [2.5, 1.2], [3.0, 1.5],
                                  [None, 0.5], "latency")  # fmt: skip
    ax = figure.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches] == [2.0, 1.0]
    whiskers = ax.collections[0].get_segments()
    assert [tuple(s[:, 1]) for s in whiskers] == [(2.5, 3.0), (1.2, 1.5)]
    assert any("×0.50" in t.get_text() for t in ax.texts)
    figure = figures.committee_bars({"a": 0.8, "b": 0.85}, 0.9, "committee")
    assert [round(p.get_height(), 6) for p in figure.axes[0].patches] == [0.8, 0.85, 0.9]


def test_power_law_line_is_the_fit(tmp_path: Path) -> None:
    d1, errors = [2, 4, 8, 16], [0.6, 0.5, 0.42, 0.35]
    figure = figures.power_law(d1, errors, 0.8, 0.25, "sweep")
    points, line = figure.axes[0].get_lines()
    assert list(points.get_ydata()) == errors
    x, y = line.get_data()
    assert np.allclose(y, 0.8 * x**-0.25) and (x[0], x[-1]) == (2, 16)
    sweep = {
        "points": [{"d1": d, "error": e} for d, e in zip(d1, errors, strict=True)],
        "fit": {"rho": 0.25, "prefactor": 0.8, "rho_ci": [0.2, 0.3], "confidence": 0.95},
    }
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    result = run_report([tmp_path / "sweep.json"], tmp_path / "sweep.html")
    assert [f["key"] for f in result.figures] == ["sweep-power-law"]
    assert "95% bootstrap interval [0.200, 0.300]" in (tmp_path / "sweep.html").read_text()


def test_head_label_map_fills_the_served_labels(head_matrices: Path) -> None:
    result = run_report([head_matrices], head_matrices.parent / "heads.html")
    keys = [f["key"] for f in result.figures]
    assert "heads-blocks.0.attn.heads-head-heads" in keys
    serves = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    figure = figures.head_label_map(serves, ["h0", "h1", "h2"], list("abcde"), "heads")
    image = _pixels(figure)
    filled = np.array([31, 119, 180])
    for head in range(3):
        for label in range(5):
            pixel = _pixel_at(figure, image, label, head)
            assert (np.abs(pixel - filled).max() <= 3) == serves[head, label], (head, label)
    heads_json = head_matrices.parent / "heads.json"
    heads_json.write_text(json.dumps(run_heads(head_matrices).to_json()))
    assert read_input(heads_json).kind == "heads"
