"""The report's figures, drawn with matplotlib's object API (no pyplot state, Agg canvas).

Every function takes plain numbers (arrays, lists, dicts) and returns a `Figure`; `png_bytes`
renders one. Label axes scale their font and the figure's size with the number of labels, so a
100-label matrix stays legible.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FormatStrFormatter, NullFormatter

DPI = 100
HEAT_MAP = "viridis"
CLUSTER_COLOURS = ("#ff3b30", "#ffffff", "#ff9500", "#34c759", "#ff2d55", "#5ac8fa")


def new_figure(width: float, height: float) -> Figure:
    """A figure of that size (inches) on an Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def label_font_size(labels: int) -> float:
    """Tick-label font size (points) for an axis of `labels` class names."""
    return float(np.clip(260 / max(labels, 1), 4.0, 9.0))


def _label_axes(ax, names: Sequence[str], *, x: bool = True, y: bool = True) -> None:
    size = label_font_size(len(names))
    ticks = np.arange(len(names))
    if x:
        ax.set_xticks(ticks, labels=names, rotation=90, fontsize=size)
    if y:
        ax.set_yticks(ticks, labels=names, fontsize=size)


def _layer_axis(ax, layers: Sequence[str]) -> None:
    ax.set_xticks(range(len(layers)), labels=layers, rotation=45, ha="right", fontsize=8)
    ax.grid(alpha=0.3)


def layer_profile(
    layers: Sequence[str], series: dict[str, Sequence[float | None]], title: str
) -> Figure:
    """One small panel per series (layer accuracy, SNR, noise per unit, …) along the layers;
    None (not measured) leaves a gap."""
    figure = new_figure(max(6.0, 0.6 * len(layers) + 3), 2.4 * len(series))
    axes = figure.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        y = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.plot(range(len(layers)), y, marker="o")
        ax.set_ylabel(name, fontsize=9)
        _layer_axis(ax, layers)
    axes[0].set_title(title)
    figure.tight_layout()
    return figure


def unit_matrix(
    matrix: np.ndarray, names: Sequence[str], clusters: Sequence[Sequence[int]], title: str
) -> Figure:
    """Heat map of one unit's labels × labels matrix (rows true label, columns output label),
    each cluster's cells outlined in its own colour."""
    labels = len(names)
    side = float(np.clip(0.14 * labels + 2.5, 4.5, 14.0))
    figure = new_figure(side + 1.2, side)
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap=HEAT_MAP, interpolation="nearest", aspect="equal")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean field to the output label")
    width = max(0.8, 2.5 - labels / 50)
    for index, cluster in enumerate(clusters):
        colour = CLUSTER_COLOURS[index % len(CLUSTER_COLOURS)]
        for i in cluster:
            for j in cluster:
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=colour, lw=width)
                )
    _label_axes(ax, names)
    ax.set_xlabel("output label")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def cluster_sizes(sizes: dict[str, np.ndarray], labels: int, title: str) -> Figure:
    """Histogram of cluster sizes (1 … labels), one panel per layer."""
    columns = min(4, len(sizes))
    rows = math.ceil(len(sizes) / columns)
    figure = new_figure(3.2 * columns, 2.4 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    largest = max([labels] + [int(s.max()) for s in sizes.values() if len(s)])
    for ax, (layer, layer_sizes) in zip(axes, sizes.items(), strict=False):
        counts = np.bincount(np.asarray(layer_sizes, dtype=int), minlength=largest + 1)[1:]
        shown = max(1, int(np.max(np.nonzero(counts)[0], initial=0)) + 1)
        ax.bar(np.arange(1, shown + 1), counts[:shown])
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("cluster size", fontsize=8)
        ax.set_ylabel("clusters", fontsize=8)
    for ax in axes[len(sizes) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def head_label_map(serves: np.ndarray, heads: Sequence[str], names: Sequence[str], title: str):
    """Which head serves which label: a heads × labels grid, filled where a head serves it."""
    labels = len(names)
    width = float(np.clip(0.14 * labels + 2.5, 5.0, 16.0))
    figure = new_figure(width, 1.0 + 0.35 * len(heads))
    ax = figure.add_subplot()
    ax.imshow(
        serves.astype(float),
        cmap=ListedColormap(["#f2f2f2", "#1f77b4"]),
        vmin=0,
        vmax=1,
        aspect="auto",
        interpolation="nearest",
    )
    _label_axes(ax, names, y=False)
    ax.set_yticks(range(len(heads)), labels=heads, fontsize=8)
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def grouped_bars(
    groups: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str, title: str
) -> Figure:
    """Bars per group (e.g. dilution per layer), one bar per series (e.g. per pruning)."""
    figure = new_figure(max(6.0, 0.5 * len(groups) * max(1, len(series)) + 3), 3.6)
    ax = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        y = [np.nan if v is None else v for v in values]
        ax.bar(
            np.arange(len(groups)) + (index - (len(series) - 1) / 2) * width, y, width, label=name
        )
    ax.set_ylabel(ylabel)
    _layer_axis(ax, groups)
    ax.legend(fontsize=8)
    ax.set_title(title)
    figure.tight_layout()
    return figure


def latency_bars(
    models: Sequence[str], p50: Sequence[float], p90: Sequence[float], p99: Sequence[float],
    ratios: Sequence[float | None], title: str,
) -> Figure:  # fmt: skip
    """p50 latency bars with a whisker from p90 to p99, each labelled with its ratio to the
    reference (first) model."""
    figure = new_figure(max(5.0, 1.2 * len(models) + 2), 3.8)
    ax = figure.add_subplot()
    x = np.arange(len(models))
    ax.bar(x, p50, color="#1f77b4", label="p50")
    ax.vlines(x, p90, p99, color="black", lw=2, label="p90–p99")
    ax.scatter(x, p90, marker="_", color="black", s=120)
    ax.scatter(x, p99, marker="_", color="black", s=120)
    for xi, value, ratio in zip(x, p50, ratios, strict=True):
        text = f"{value:.3g} ms" + ("" if ratio is None else f"\n×{ratio:.2f}")
        ax.annotate(text, (xi, value), xytext=(0, -4), textcoords="offset points", ha="center",
                    va="top", color="white", fontsize=8)  # fmt: skip
    ax.set_xticks(x, labels=models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    figure.tight_layout()
    return figure


def committee_bars(members: dict[str, float], committee: float, title: str) -> Figure:
    """Each member's accuracy beside the committee's, the best member as a dashed line."""
    names = [*members, "committee"]
    values = [*members.values(), committee]
    figure = new_figure(max(5.0, 1.0 * len(names) + 2), 3.6)
    ax = figure.add_subplot()
    colours = ["#9e9e9e"] * len(members) + ["#2ca02c"]
    ax.bar(range(len(names)), values, color=colours)
    ax.axhline(max(members.values()), color="black", ls="--", lw=1, label="best member")
    low = min(values)
    ax.set_ylim(max(0.0, low - 0.1 * (1 - low) - 0.02), min(1.0, max(values) + 0.02))
    for x, value in enumerate(values):
        ax.annotate(f"{value:.4f}", (x, value), xytext=(0, 2), textcoords="offset points",
                    ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(names)), labels=names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(title)
    figure.tight_layout()
    return figure


def power_law(
    d1: Sequence[float], errors: Sequence[float], prefactor: float, rho: float, title: str
) -> Figure:
    """Error against first-layer filters on log–log axes, with the fitted c·d1^(−ρ)."""
    figure = new_figure(5.5, 4.0)
    ax = figure.add_subplot()
    ax.loglog(d1, errors, "o", alpha=0.7, label="runs")
    line = np.geomspace(min(d1), max(d1), 50)
    ax.loglog(line, prefactor * line ** (-rho), "-", label=f"fit: {prefactor:.3g}·d1^(−{rho:.3f})")
    ticks = sorted(set(d1))
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.set_xlabel("first-layer filters d1")
    ax.set_ylabel("test error")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title)
    figure.tight_layout()
    return figure
