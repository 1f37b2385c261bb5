"""`snptool report`: the HTML page from real pipeline files, its errors, and the page as a person
sees it in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.config import ExportConfig, FinetuneConfig, LatencyConfig, PruneConfig, ReportConfig
from snptool.deploy.committee import run_committee
from snptool.deploy.export import run_export
from snptool.deploy.latency import run_latency
from snptool.errors import InputFileError, UsageError
from snptool.pruning.prune import run_prune
from snptool.report.report import read_input, run_report
from tests.conftest import invoke


@pytest.fixture(scope="module")
def pipeline(checkpoint_path: Path, probes_path: Path, tmp_path_factory) -> dict[str, Path]:
    """Real outputs of the steps after `probe` on the tiny trained VGG."""
    out = tmp_path_factory.mktemp("report-pipeline")
    matrices = out / "matrices.h5"
    run_matrix(checkpoint_path, probes_path, matrices)
    run_clusters(matrices)
    pruned = out / "pruned.safetensors"
    config = PruneConfig(finetune=FinetuneConfig(epochs=1), device="cpu")
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

    result = invoke("report", tmp_path / "other.json", "-o", "r.html")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    result = invoke("report", pipeline["matrices"], "--unit", "features.10:99999")
    assert result.exit_code == 2


def test_cli_report_json(pipeline: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    args = ["report", str(pipeline["latency"]), str(pipeline["prune"]), "-o", str(output), "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["output"] == str(output) and payload["bytes"] == output.stat().st_size
    assert [i["kind"] for i in payload["inputs"]] == ["latency", "prune"]
    assert "figures from 2 inputs" in result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is absent (apt-get install chromium)"
)
@pytest.mark.long
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
