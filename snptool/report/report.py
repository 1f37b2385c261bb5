"""`snptool report`: draw what the pipeline wrote into one self-contained HTML file.

Inputs, any subset, recognised by their content: matrix files with clusters (layer profile,
unit heat maps, cluster sizes, head × label maps), probe files (probe accuracy along the
layers), pruned checkpoints and `prune --json` (dilution per layer), `latency --json` (p50 bars
with p90–p99 whiskers), `export --json` (size and parity table), `committee --json` (members vs
committee), `heads --json` (head × label maps) and `sweep --json` / sweep.json (the power law).
Figures are PNGs inlined as data URIs: the file needs no network and no JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snptool.config import ReportConfig
from snptool.core.files import atomic_path, check_output_path, provenance, write_bytes_atomic
from snptool.core.matrix_file import (
    class_names,
    layer_group,
    layer_names,
    open_matrix_file,
    read_layer_clusters,
    read_layer_statistics,
)
from snptool.errors import UsageError
from snptool.report import figures
from snptool.report.inputs import KINDS, ReportInput, read_input

HEAD_UNIT = "head"


@dataclass(frozen=True)
class Figure:
    """One drawn figure: `key` names its PNG file."""

    key: str
    title: str
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    figures: list[Figure] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None  # (header, rows)


@dataclass(frozen=True)
class ReportResult:
    output: str
    png_dir: str | None
    inputs: list[dict[str, str]]
    figures: list[dict[str, str]]
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def run_report(
    inputs: list[str | Path],
    output: str | Path,
    config: ReportConfig | None = None,
    *,
    png_dir: str | Path | None = None,
) -> ReportResult:
    """Read every input, draw its figures and write the HTML report (and PNGs) atomically."""
    config = config or ReportConfig()
    started = time.perf_counter()
    if not inputs:
        raise UsageError(f"give the report something to draw: {KINDS}.")
    check_output_path(output, *inputs)
    read = [read_input(path) for path in inputs]
    sections = [section for group in _group(read) for section in _draw(group, config)]
    record = provenance({f"input{i}": item.path for i, item in enumerate(read)})
    document = render_html(config.title, sections, record)
    with atomic_path(output) as temporary:
        temporary.write_text(document, encoding="utf-8")
    drawn = [figure for section in sections for figure in section.figures]
    files = {}
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for figure in drawn:
            target = Path(png_dir) / f"{figure.key}.png"
            write_bytes_atomic(target, figure.png)
            files[figure.key] = str(target)
    return ReportResult(
        output=str(output),
        png_dir=None if png_dir is None else str(png_dir),
        inputs=[{"path": str(i.path), "kind": i.kind} for i in read],
        figures=[{"key": f.key, "title": f.title, "png": files.get(f.key, "")} for f in drawn],
        bytes=len(document.encode()),
        seconds=time.perf_counter() - started,
    )


def _group(read: list[ReportInput]) -> list[tuple[str, list[ReportInput]]]:
    """Inputs by kind, in a fixed order: analysis first, then pruning and deployment."""
    order = ["matrices", "probes", "heads", "prune", "pruned", "export", "latency", "committee"]
    order.append("sweep")
    merged = {"pruned": "prune"}
    groups: dict[str, list[ReportInput]] = {}
    for item in read:
        groups.setdefault(merged.get(item.kind, item.kind), []).append(item)
    return [(kind, groups[kind]) for kind in order if kind in groups]


def _draw(group: tuple[str, list[ReportInput]], config: ReportConfig) -> list[Section]:
    kind, items = group
    drawers: dict[str, Callable[..., list[Section]]] = {
        "matrices": lambda: [s for item in items for s in matrix_sections(item.path, config)],
        "probes": lambda: [probe_section(items)],
        "heads": lambda: [s for item in items for s in heads_sections(item)],
        "prune": lambda: [pruning_section(items)],
        "export": lambda: [export_section(items)],
        "latency": lambda: [latency_section(item) for item in items],
        "committee": lambda: [committee_section(item) for item in items],
        "sweep": lambda: [sweep_section(item) for item in items],
    }
    return drawers[kind]()


# --- sections ---------------------------------------------------------------------------------


def _figure(key: str, title: str, caption: str, drawn) -> Figure:
    return Figure(key, title, caption, figures.png_bytes(drawn))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def matrix_sections(path: Path, config: ReportConfig) -> list[Section]:
    """Layer profile, unit heat maps, cluster sizes and head × label maps of one matrix file."""
    stem = _slug(path.stem)
    with open_matrix_file(path) as handle:
        names = class_names(handle)
        layers = layer_names(handle)
        rows, sizes, heat_maps, head_maps = [], {}, [], []
        wanted = _units_by_layer(config.units, layers, path)
        for layer in layers:
            group = layer_group(handle, layer)
            dataset = group["matrix"]
            clusters = read_layer_clusters(group)
            statistics = read_layer_statistics(group)
            rows.append((layer, float(dataset.attrs.get("accuracy", np.nan)), statistics))
            sizes[layer] = np.diff(clusters.cluster_offsets)
            units = wanted.get(layer) if config.units else _default_units(clusters)
            for role, unit in units or []:
                if unit >= dataset.shape[0]:
                    raise UsageError(
                        f"layer {layer} of {path} has units 0..{dataset.shape[0] - 1}; "
                        f"--unit {layer}:{unit} is not one."
                    )
                title = f"{layer} unit {unit}" + (f" ({role})" if role else "")
                found = clusters.clusters_of(unit)
                caption = "clusters: " + (
                    "; ".join("{" + ", ".join(names[j] for j in c) + "}" for c in found) or "none"
                )
                caption += f"; signal {clusters.signal[unit]}, noise {clusters.noise[unit]}"
                drawn = figures.unit_matrix(dataset[unit], names, found, title)
                heat_maps.append(
                    _figure(f"{stem}-{_slug(layer)}-unit{unit}", title, caption, drawn)
                )
            if str(dataset.attrs.get("unit", "")) == HEAD_UNIT:
                serves = np.zeros((len(clusters.count), len(names)), dtype=bool)
                for head, labels in enumerate(clusters.label_sets()):
                    serves[head, sorted(labels)] = True
                heads = [f"h{h}" for h in range(len(serves))]
                drawn = figures.head_label_map(serves, heads, names, f"{layer}: heads × labels")
                caption = "filled: the head's clusters hold the label"
                head_maps.append(_figure(f"{stem}-{_slug(layer)}-heads", layer, caption, drawn))
    series = {
        "layer accuracy": [r[1] for r in rows],
        "SNR": [r[2]["snr"] for r in rows],
        "noise per unit": [r[2]["noise_per_unit"] for r in rows],
        "mean cluster size": [r[2]["mean_cluster_size"] for r in rows],
    }
    profile = figures.layer_profile(layers, series, f"{path.name}: along the layers")
    table_rows = [
        [layer, _number(acc), str(s["units"]), str(s["units_without_clusters"]),
         _number(s["mean_cluster_size"]), _number(s["clusters_per_unit"]),
         _number(s["labels_per_unit"]), _number(s["noise_per_unit"]), _number(s["snr"])]
        for layer, acc, s in rows
    ]  # fmt: skip
    header = ["layer", "accuracy", "units", "no clusters", "cluster size", "clusters/unit"]
    header += ["labels/unit", "noise/unit", "SNR"]
    caption = "averages over the units with clusters (METHODS.md §6)"
    sections = [
        Section(
            f"Along the layers ({path.name})",
            [_figure(f"{stem}-layers", "along the layers", caption, profile)],
            (header, table_rows),
        ),
        Section(f"Unit matrices ({path.name})", heat_maps),
        Section(
            f"Cluster sizes ({path.name})",
            [
                _figure(
                    f"{stem}-cluster-sizes",
                    "cluster sizes",
                    "clusters of each size, per layer",
                    figures.cluster_sizes(sizes, len(names), "cluster sizes per layer"),
                )
            ],
        ),
    ]
    if head_maps:
        sections.append(Section(f"Heads and labels ({path.name})", head_maps))
    return [s for s in sections if s.figures]


def _units_by_layer(units: tuple[str, ...], layers: list[str], path: Path) -> dict[str, list]:
    """`--unit LAYER:INDEX` choices by layer, checked against the file."""
    chosen: dict[str, list] = {}
    for spec in units:
        layer, _, index = spec.rpartition(":")
        if not layer or not index.isdigit():
            raise UsageError(f"--unit {spec!r} must be LAYER:INDEX, e.g. features.6:12.")
        if layer not in layers:
            raise UsageError(f"{path} has no layer {layer!r}; its layers: {', '.join(layers)}.")
        chosen.setdefault(layer, []).append(("", int(index)))
    return chosen


def _default_units(clusters) -> list[tuple[str, int]]:
    """The strongest (most signal) and the noisiest unit of a layer; one if they coincide."""
    strongest, noisiest = int(np.argmax(clusters.signal)), int(np.argmax(clusters.noise))
    if strongest == noisiest:
        return [("strongest and noisiest", strongest)]
    return [("strongest", strongest), ("noisiest", noisiest)]


def probe_section(items: list[ReportInput]) -> Section:
    drawn = []
    for item in items:
        taps = item.content["taps"]
        layers = [tap["name"] for tap in taps]
        series = {
            "test accuracy": [tap.get("test_accuracy") for tap in taps],
            "train accuracy": [tap.get("train_accuracy") for tap in taps],
        }
        title = f"{item.path.name}: probe accuracy along the layers"
        caption = "accuracy of the probe fitted on each layer (the layer accuracy)"
        profile = figures.layer_profile(layers, series, title)
        drawn.append(_figure(f"{_slug(item.path.stem)}-probes", title, caption, profile))
    return Section("Probes", drawn)


def heads_sections(item: ReportInput) -> list[Section]:
    drawn = []
    for layer in item.content:
        names = list(layer["label_heads"])
        heads = [head["head"] for head in layer["heads"]]
        serves = np.array([[name in head["labels"] for name in names] for head in layer["heads"]])
        title = f"{layer['layer']}: heads × labels"
        caption = f"{layer['labels_per_head']:.2f} labels per head, "
        caption += f"{layer['heads_per_label']:.2f} heads per label"
        key = f"{_slug(item.path.stem)}-{_slug(layer['layer'])}-heads"
        drawn.append(
            _figure(key, title, caption, figures.head_label_map(serves, heads, names, title))
        )
    return [Section(f"Heads and labels ({item.path.name})", drawn)]


def pruning_section(items: list[ReportInput]) -> Section:
    """Dilution per layer, one bar per pruning, and the accuracies in a table; a `prune --json`
    and the checkpoint it wrote count once."""
    prunings: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}
    for item in items:
        if item.kind == "prune":
            record = item.content
            dilution = {layer["module"]: layer["dilution"] for layer in record["layers"]}
            written = Path(record["output"]).name
        else:
            record = item.content["pruning"]
            order = [c["module"] for c in record.get("connections", [])]
            order += [m for m in record["dilution"] if m not in order]
            dilution = {m: record["dilution"][m] for m in order if m in record["dilution"]}
            written = item.path.name
        prunings.setdefault(f"{record['method']} ({written})", (dilution, record))
    rows = [
        [name, _number(record["dense_accuracy"]), _number(record["accuracy_before"]),
         _number(record["accuracy_after"])]
        for name, (_, record) in prunings.items()
    ]  # fmt: skip
    modules = list(dict.fromkeys(m for dilution, _ in prunings.values() for m in dilution))
    series = {name: [d.get(m) for m in modules] for name, (d, _) in prunings.items()}
    drawn = figures.grouped_bars(
        modules, series, "dilution (weights removed)", "dilution per layer"
    )
    caption = "share of each layer's weights the pruning removed"
    header = ["pruning", "dense accuracy", "pruned", "fine-tuned"]
    return Section(
        "Pruning", [_figure("dilution", "dilution per layer", caption, drawn)], (header, rows)
    )


def export_section(items: list[ReportInput]) -> Section:
    header = ["ONNX graph", "params", "MACs", "max |diff|", "argmax agreement"]
    rows = [
        [Path(i.content.get("output", i.path.name)).name, f"{i.content['params']:,}",
         f"{i.content['macs']:,}", f"{i.content['max_abs_diff']:.2e}",
         _number(i.content.get("argmax_agreement"))]
        for i in items
    ]  # fmt: skip
    return Section("Exports", [], (header, rows))


def latency_section(item: ReportInput) -> Section:
    drawn = []
    for batch in dict.fromkeys(row["batch"] for row in item.content):
        rows = [row for row in item.content if row["batch"] == batch]
        models = [Path(row["path"]).name for row in rows]
        title = f"onnxruntime latency, batch {batch}"
        bars = figures.latency_bars(
            models,
            [r["p50_ms"] for r in rows],
            [r["p90_ms"] for r in rows],
            [r["p99_ms"] for r in rows],
            [None if i == 0 else r["ratio"] for i, r in enumerate(rows)],
            title,
        )
        caption = f"p50 with p90–p99 whiskers; ×ratio = p50 / {models[0]}'s p50"
        drawn.append(_figure(f"{_slug(item.path.stem)}-batch{batch}", title, caption, bars))
    return Section(f"Latency ({item.path.name})", drawn)


def committee_section(item: ReportInput) -> Section:
    content = item.content
    members = {Path(m["path"]).name: m["accuracy"] for m in content["members"]}
    title = f"committee of {len(members)} on {content['data']} ({content['split']})"
    caption = (
        f"gain over the best member {content['committee_accuracy'] - max(members.values()):+.4f}"
    )
    drawn = figures.committee_bars(members, content["committee_accuracy"], title)
    return Section(
        f"Committee ({item.path.name})",
        [_figure(f"{_slug(item.path.stem)}-committee", title, caption, drawn)],
    )


def sweep_section(item: ReportInput) -> Section:
    content = item.content
    fit = content["fit"]
    points = content["points"]
    title = f"error ∝ d1^(−ρ): ρ = {fit['rho']:.3f}"
    interval = fit.get("rho_ci")
    caption = f"{len(points)} runs; fit over {fit.get('method', 'runs')}"
    if interval:
        caption += (
            f"; {fit['confidence']:.0%} bootstrap interval [{interval[0]:.3f}, {interval[1]:.3f}]"
        )
    drawn = figures.power_law([p["d1"] for p in points], [p["error"] for p in points],
                              fit["prefactor"], fit["rho"], title)  # fmt: skip
    return Section(
        f"Power law ({item.path.name})",
        [_figure(f"{_slug(item.path.stem)}-power-law", title, caption, drawn)],
    )


def _number(value: float | None) -> str:
    return (
        "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.4f}"
    )


# --- HTML -------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; margin-top: 2em; }
figure { display: inline-block; margin: 0.5em 1em 1.5em 0; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.provenance { font-size: 0.8em; color: #666; }
"""


def render_html(title: str, sections: list[Section], record: dict[str, Any]) -> str:
    """One self-contained page: inline CSS, PNGs as data URIs, provenance at the end."""
    escape = html.escape
    body = [f"<h1>{escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        if section.table is not None:
            header, rows = section.table
            body.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                body.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
            body.append("</table>")
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            body.append(
                f'<figure id="{escape(figure.key)}"><img alt="{escape(figure.title)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{escape(figure.caption)}'
                "</figcaption></figure>"
            )
    inputs = "".join(
        f"<li>{escape(role)}: {escape(f['path'])} (sha256 {f['sha256']})</li>"
        for role, f in record["inputs"].items()
    )
    body.append(
        f'<div class="provenance"><h2>Provenance</h2><ul>{inputs}</ul>'
        f"<p>command: <code>{escape(record['command'])}</code>; snptool "
        f"{escape(record['snptool_version'])}; {escape(record['time'])}</p></div>"
    )
    meta = escape(json.dumps(record, sort_keys=True), quote=True)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="snptool-provenance" content="{meta}"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


__all__ = ["ReportResult", "read_input", "run_report"]
