"""`snptool report`: each figure from known inputs, the HTML page from real pipeline files, its
errors, and the page as a person sees it in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image
from typer.testing import CliRunner

from snptool.analysis.clusters import run_clusters
from snptool.analysis.heads import run_heads
from snptool.analysis.matrix import run_matrix
from snptool.cli import app
from snptool.config import ExportConfig, LatencyConfig, PruneConfig, ReportConfig
from snptool.deploy.committee import run_committee
from snptool.deploy.export import run_export
from snptool.deploy.latency import run_latency
from snptool.errors import InputFileError, UsageError
from snptool.pruning.prune import run_prune
from snptool.report import figures
from snptool.report.report import read_input, run_report

runner = CliRunner()


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


@pytest.fixture(scope="module")
def pipeline(checkpoint_path: Path, probes_path: Path, tmp_path_factory) -> dict[str, Path]:
    """Real outputs of the steps after `probe` on the tiny trained VGG."""
    out = tmp_path_factory.mktemp("report-pipeline")
    matrices = out / "matrices.h5"
    run_matrix(checkpoint_path, probes_path, matrices)
    run_clusters(matrices)
    pruned = out / "pruned.safetensors"
    config = PruneConfig(finetune_epochs=1, device="cpu")
    result = run_prune(
        checkpoint_path, matrices, pruned, config, layers=["features.10", "classifier.1"]
    )
    (out / "prune.json").write_text(json.dumps(result.to_json()))
    exports = []
    for name, source in (("dense", checkpoint_path), ("pruned", pruned)):
        export = run_export(source, out / f"{name}.onnx", ExportConfig(parity_samples=8))
        (out / f"export-{name}.json").write_text(json.dumps(export.to_json()))
        exports.append(out / f"{name}.onnx")
    latency = run_latency(exports, LatencyConfig(warmup=1, runs=5))
    (out / "latency.json").write_text(json.dumps(latency.to_json()))
    committee = run_committee([checkpoint_path, pruned])
    (out / "committee.json").write_text(json.dumps(committee.to_json()))
    return {
        "matrices": matrices,
        "probes": probes_path,
        "pruned": pruned,
        "prune": out / "prune.json",
        "export": out / "export-pruned.json",
        "latency": out / "latency.json",
        "committee": out / "committee.json",
    }


def test_report_of_real_pipeline_files(pipeline: dict[str, Path], tmp_path: Path) -> None:
    assert {k: read_input(p).kind for k, p in pipeline.items()} == {
        "matrices": "matrices",
        "probes": "probes",
        "pruned": "pruned",
        "prune": "prune",
        "export": "export",
        "latency": "latency",
        "committee": "committee",
    }
    output, png_dir = tmp_path / "report.html", tmp_path / "png"
    result = run_report(list(pipeline.values()), output, png_dir=png_dir)
    page = output.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(result.figures) >= 8
    for encoded, figure in zip(images, result.figures, strict=True):
        assert base64.b64decode(encoded) == Path(figure["png"]).read_bytes()
        assert Image.open(Path(figure["png"])).size[0] > 200
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for heading in ("Along the layers", "Unit matrices", "Cluster sizes", "Probes", "Pruning"):
        assert heading in page
    assert "Latency" in page and "Exports" in page and "Committee" in page
    assert "(strongest)" in page and "(noisiest)" in page
    assert f"{json.loads(pipeline['prune'].read_text())['accuracy_after']:.4f}" in page
    assert result.bytes == len(page.encode()) and sorted(png_dir.iterdir())
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name or p.name.startswith(".")] == []

    renamed = tmp_path / "probes.h5"  # recognised by content, whatever the name says
    renamed.write_bytes(pipeline["probes"].read_bytes())
    assert read_input(renamed).kind == "probes"

    chosen = run_report(
        [pipeline["matrices"]], tmp_path / "one.html", ReportConfig(units=("features.10:3",))
    )
    assert [f["title"] for f in chosen.figures if "unit" in f["title"]] == ["features.10 unit 3"]


def test_report_errors(pipeline: dict[str, Path], make_matrix_file, tmp_path: Path) -> None:
    unclustered = make_matrix_file({"conv": np.eye(3)[None]}, ["a", "b", "c"])
    with pytest.raises(UsageError, match="no clusters yet"):
        run_report([unclustered], tmp_path / "r.html")
    with pytest.raises(UsageError, match="no layer 'nope'"):
        run_report([pipeline["matrices"]], tmp_path / "r.html", ReportConfig(units=("nope:1",)))
    with pytest.raises(UsageError, match="LAYER:INDEX"):
        run_report([pipeline["matrices"]], tmp_path / "r.html", ReportConfig(units=("x",)))
    (tmp_path / "other.json").write_text('{"accuracy": 1}')
    with pytest.raises(InputFileError, match="JSON of a kind"):
        read_input(tmp_path / "other.json")
    (tmp_path / "bytes.bin").write_bytes(bytes(range(256)))
    with pytest.raises(InputFileError, match="neither HDF5, safetensors nor JSON"):
        read_input(tmp_path / "bytes.bin")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(pipeline["matrices"].read_bytes()[:2000])
    with pytest.raises(InputFileError, match="truncated"):
        read_input(truncated)
    assert not (tmp_path / "r.html").exists()

    result = runner.invoke(app, ["report", str(tmp_path / "other.json"), "-o", "r.html"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    result = runner.invoke(
        app, ["report", str(pipeline["matrices"]), "--unit", "features.10:99999"]
    )
    assert result.exit_code == 2


def test_cli_report_json(pipeline: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    args = ["report", str(pipeline["latency"]), str(pipeline["prune"]), "-o", str(output), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["output"] == str(output) and payload["bytes"] == output.stat().st_size
    assert [i["kind"] for i in payload["inputs"]] == ["latency", "prune"]
    assert "figures from 2 inputs" in result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is absent (apt-get install chromium)"
)
def test_the_page_in_headless_chromium(pipeline: dict[str, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    output = tmp_path / "report.html"
    run_report(list(pipeline.values()), output)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(output.as_uri())
        page.wait_for_load_state("load")
        loaded = page.evaluate(
            "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
        )
        screenshot = page.screenshot(full_page=True)
        browser.close()
    assert loaded and all(loaded)
    image = np.asarray(Image.open(io.BytesIO(screenshot)).convert("L"))
    assert image.shape[0] > 2000  # the full page, figures one below another
    assert image.std() > 20 and (image < 128).mean() > 0.01  # not blank: dark ink on the page
