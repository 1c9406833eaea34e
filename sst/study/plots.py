"""Figures from run folders, sized for one column of a paper (3.5 in wide, 8 pt text) and
written as PNG and PDF from the same data.

- ``accuracy_vs_sparsity``: mean test accuracy over seeds per method, the seed spread as a
  band (one standard deviation) and error bar, or with ``ci=True`` the 95% confidence
  interval of the mean (Student's t over the seeds); the x axis is the density 1 - s on a log
  scale, reversed, labelled by sparsity (90%, 99%, ...), as the RigL and SRigL papers draw
  high sparsities apart. Dense runs are a dashed horizontal line.
- ``layer_densities``: the per-layer density of one or more runs (``summary.json``
  ``layers``), e.g. ERK against uniform.
- ``neurons_over_training``: the fraction of each layer's neurons that are active over the
  steps of a run (``metrics.jsonl`` ``active_neurons/<layer>``, ``ablated_neurons/<layer>``),
  SRigL's neuron ablation.
- ``training_curves``: ``train/loss`` and ``test/acc`` against the step, one line per run.
- ``mask_image``: one layer's mask from ``checkpoints/last.pt`` as an image (rows are output
  neurons, columns the flattened fan-in; black is an active weight).

Importing this module leaves matplotlib's backend alone (``sst-plot`` picks Agg); accuracy
axes end at 100%.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # the backend is the caller's: sst-plot chooses Agg
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from sst.runs.checkpoint import load_latest
from sst.runs.folder import RunFolder

from .compare import t_quantile
from .results import Group, Run, Stat, read_run

COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper
MAX_MARKED_POINTS = 30  # a curve with more points is drawn without markers
FIGURE_FORMATS = ("png", "pdf", "svg")  # what --formats accepts
DEFAULT_FORMATS = ("png", "pdf")  # what it writes unless told
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}


def figure(height: float = 2.4, width: float = COLUMN_WIDTH, **subplots: Any) -> tuple:
    with plt.rc_context(STYLE):
        return plt.subplots(figsize=(width, height), **subplots)


def save(fig: Figure, stem: str | Path, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Writes ``<stem>.<format>`` for each format and closes the figure; a stem that ends
    in a format's suffix (``-o fig.png``) loses it, rather than giving ``fig.png.png``."""
    unknown = set(formats) - set(FIGURE_FORMATS)
    if unknown:
        raise ValueError(f"figure formats {sorted(unknown)} unknown: allowed are {FIGURE_FORMATS}")
    stem = Path(stem)
    if stem.suffix.lower().lstrip(".") in FIGURE_FORMATS:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context(STYLE):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path)
            paths.append(path)
    plt.close(fig)
    return paths


def _label(values: dict[str, Any]) -> str:
    """``srigl, gamma_sal=0.3``; a key the run does not have (None) is left out."""
    return ", ".join(
        str(v) if k in ("method", "dataset", "model") else f"{k.split('.')[-1]}={v}"
        for k, v in values.items()
        if v is not None
    )


def band_half_width(stat: Stat, ci: bool = False) -> float:
    """Half the height of a point's band and error bar: the sample standard deviation s of
    its n seeds, or with ``ci`` the 95% confidence interval of the mean,
    t_{0.975, n-1} · s / sqrt(n) (Student's t); 0 for one seed."""
    if stat.std is None or stat.n < 2:
        return 0.0
    if not ci:
        return stat.std
    return t_quantile(0.975, stat.n - 1) * stat.std / math.sqrt(stat.n)


def _sparsity_axis(ax: Any, densities: Sequence[float]) -> None:
    """x: the density on a log axis, reversed (sparser to the right), labelled by sparsity."""
    limits = (max(densities) * 1.4, min(densities) / 1.4)
    ax.set_xlim(*limits)  # first: one density alone would give identical limits to log
    ax.set_xscale("log")
    ax.set_xlim(*limits)
    ax.xaxis.set_major_locator(FixedLocator(densities))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 * (1 - d):.4g}" for d in densities])
    ax.set_xlabel("sparsity (%), log scale of density 1 - s")


def cap_at_100(ax: Any) -> None:
    """An accuracy axis (%) never runs past 100."""
    low, high = ax.get_ylim()
    if high > 100:
        ax.set_ylim(low, 100)


def _dense_lines(ax: Any, dense: Sequence[Group]) -> None:
    for group in dense:
        ax.axhline(group.accuracy.mean, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"dense (n={group.accuracy.n})",
            (1.0, group.accuracy.mean),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=6.5,
        )


def accuracy_vs_sparsity(
    groups: Sequence[Group],
    *,
    series_keys: Sequence[str] = ("method",),
    metric: str = "final",
    ci: bool = False,
) -> Figure:
    """Mean accuracy against sparsity, one series per value of ``series_keys`` (groups from
    ``sst.results.aggregate``, which must include ``sparsity``); the band and error bars are
    one standard deviation, or with ``ci`` the 95% confidence interval of the mean
    (``band_half_width``)."""
    series: dict[str, list[Group]] = {}
    dense: list[Group] = []
    for group in groups:
        if group.accuracy.mean is None:
            continue
        if group.key.get("sparsity") in (0, 0.0):
            dense.append(group)
            continue
        label = _label({k: group.key.get(k) for k in series_keys})
        series.setdefault(label, []).append(group)
    if not series:
        raise ValueError("no sparse runs with an accuracy to plot")
    fig, ax = figure()
    with plt.rc_context(STYLE):
        markers = "osD^v<>p*h"
        for i, (label, members) in enumerate(sorted(series.items())):
            members = sorted(members, key=lambda g: g.key["sparsity"])
            x = np.array([1.0 - g.key["sparsity"] for g in members])
            mean = np.array([g.accuracy.mean for g in members])
            half = np.array([band_half_width(g.accuracy, ci) for g in members])
            seeds = sorted({g.accuracy.n for g in members})
            n = f"n={seeds[0]}" if len(seeds) == 1 else f"n={min(seeds)}-{max(seeds)}"
            line = ax.errorbar(
                x,
                mean,
                yerr=half,
                marker=markers[i % len(markers)],
                capsize=2,
                label=f"{label} ({n})",
            )
            ax.fill_between(x, mean - half, mean + half, alpha=0.15, color=line[0].get_color())
        _dense_lines(ax, dense)
        _sparsity_axis(ax, sorted({1.0 - g.key["sparsity"] for s in series.values() for g in s}))
        ax.margins(y=0.12)
        cap_at_100(ax)
        ax.set_ylabel(f"{metric} test accuracy (%)")
        band = "bands: 95% CI of the mean (t)" if ci else "bands: ±1 std over seeds"
        ax.legend(loc="lower left", frameon=False, title=band, title_fontsize=6.5)
    return fig


def layer_densities(runs: Sequence[Run], labels: Sequence[str] | None = None) -> Figure:
    """Grouped bars: the density of every masked layer of each run (``summary.json``)."""
    tables = []
    for run in runs:
        layers = (run.summary or {}).get("layers")
        if not layers:
            raise ValueError(f"{run.source} has no per-layer table (summary.json 'layers')")
        tables.append({row["layer"]: row["density"] for row in layers})
    names = list(dict.fromkeys(name for table in tables for name in table))
    labels = list(labels) if labels else [_run_label(r) for r in runs]
    height = 2.4 if len(names) <= 12 else 2.4 + 0.02 * len(names)
    fig, ax = figure(height=height)
    with plt.rc_context(STYLE):
        width = 0.8 / len(tables)
        x = np.arange(len(names))
        for i, (table, label) in enumerate(zip(tables, labels, strict=True)):
            values = [table.get(name, np.nan) for name in names]
            ax.bar(x + (i - (len(tables) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=90 if len(names) > 6 else 0, fontsize=6)
        ax.set_xlabel("layer")
        ax.set_ylabel("density (kept fraction)")
        ax.set_ylim(0, 1.05)
        ax.legend(frameon=False)
    return fig


def _run_label(run: Run) -> str:
    density = run.value("density")
    parts = [str(run.value("method")), str(run.value("distribution") or "")]
    if density is not None:
        parts.append(f"{100 * (1 - float(density)):.4g}% sparse")
    return " ".join(p for p in parts if p)


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points, strict=True)
    return np.array(steps), np.array(values, dtype=float)


def neurons_over_training(run_dir: str | Path) -> Figure:
    """The active fraction of each layer's output neurons against the step."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder: give a run folder")
    records = RunFolder(run_dir).metrics()
    layers = sorted(
        {k.split("/", 1)[1] for r in records for k in r if k.startswith("active_neurons/")}
    )
    if not layers:
        raise ValueError(f"{run_dir}: metrics.jsonl has no active_neurons/<layer> records")
    fig, ax = figure()
    with plt.rc_context(STYLE):
        fractions = {layer: _active_fraction(records, layer) for layer in layers}
        if all(np.all(f == 1) for _, f in fractions.values()):
            _nothing_ablated(ax, len(layers))
            return fig
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
        for color, (layer, (steps, fraction)) in zip(colors, fractions.items(), strict=True):
            ax.plot(steps, fraction, color=color, label=layer)
        ax.set_xlabel("step")
        ax.set_ylabel("active neurons (fraction of layer)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(
            frameon=False, ncol=1 + len(layers) // 8, fontsize=5.5, loc="lower left", title="layer"
        )
    return fig


def _active_fraction(records: Sequence[dict[str, Any]], layer: str) -> tuple[np.ndarray, Any]:
    """(steps, active fraction of the layer's neurons) from ``metrics.jsonl``."""
    steps, active = _series(records, f"active_neurons/{layer}")
    _, ablated = _series(records, f"ablated_neurons/{layer}")
    total = active + ablated if len(ablated) == len(active) else np.full_like(active, 1)
    return steps, np.divide(active, total, out=np.ones_like(active), where=total > 0)


def _nothing_ablated(ax: Any, layers: int) -> None:
    """The neurons figure of a run that ablated no neuron: one sentence, not a line per
    layer stacked at 1.0."""
    ax.text(
        0.5,
        0.5,
        f"no neuron ablated\n(all {layers} layers keep every neuron active)",
        ha="center",
        va="center",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def training_curves(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> Figure:
    """``train/loss`` (top) and ``test/acc`` (bottom) against the step."""
    fig, (loss_ax, acc_ax) = figure(height=3.6, nrows=2, sharex=True)
    labels = list(labels) if labels else [_run_label(read_run(d)) for d in run_dirs]
    plotted = 0
    with plt.rc_context(STYLE):
        for run_dir, label in zip(run_dirs, labels, strict=True):
            records = RunFolder(run_dir).metrics()
            steps, loss = _series(records, "train/loss")
            if len(steps):
                loss_ax.plot(steps, loss, label=label)
            steps, acc = _series(records, "test/acc")
            if len(steps):
                marker = "." if len(steps) <= MAX_MARKED_POINTS else None
                acc_ax.plot(steps, acc, marker=marker, label=label)
                plotted += 1
        if not plotted:
            raise ValueError("no test/acc records in the runs' metrics.jsonl")
        loss_ax.set_ylabel("train loss")
        acc_ax.set_xlabel("step")
        acc_ax.set_ylabel("test accuracy (%)")
        cap_at_100(acc_ax)
        acc_ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def load_mask(run_dir: str | Path, layer: str) -> torch.Tensor:
    """A layer's mask from the run's checkpoint as a 2-D boolean tensor (out, fan-in)."""
    folder = RunFolder(run_dir)
    found = load_latest(folder.checkpoint_path)  # last.pt, else prev.pt
    if found is None:
        raise FileNotFoundError(f"{folder.path} has no checkpoint: {folder.checkpoint_path}")
    masks = (found[0].get("sparsity") or {}).get("masks") or {}
    if layer not in masks:
        raise ValueError(
            f"layer {layer!r} has no mask in {folder.checkpoint_path}: "
            f"masked layers are {', '.join(masks) or 'none'}"
        )
    mask = masks[layer].bool()
    return mask.reshape(mask.shape[0], -1) if mask.dim() > 1 else mask.reshape(1, -1)


def mask_image(run_dir: str | Path, layer: str) -> Figure:
    """The mask of ``layer`` as a black-and-white image."""
    mask = load_mask(run_dir, layer).numpy()
    rows, cols = mask.shape
    aspect = rows / cols
    fig, ax = figure(height=min(max(COLUMN_WIDTH * aspect, 1.2), 4.5))
    with plt.rc_context(STYLE):
        ax.imshow(mask, cmap="gray_r", interpolation="nearest", aspect="auto", vmin=0, vmax=1)
        ax.grid(False)
        ax.set_xlabel(f"input (fan-in {cols})")
        ax.set_ylabel(f"output neuron ({rows})")
        ax.set_title(f"{layer}: density {mask.mean():.3f}, {int((~mask.any(1)).sum())} empty rows")
    return fig


def read_latency_table(path: str | Path) -> dict[str, Any]:
    """A ``latency_table.json`` written by ``sst-export --latency-table``, checked for rows."""
    document = json.loads(Path(path).read_text())
    if not isinstance(document, dict) or not document.get("rows"):
        raise ValueError(
            f"{path} is not a latency table (no 'rows'): write one with sst-export --latency-table"
        )
    return document


def latency_speedups(document: dict[str, Any], target: float | None = None) -> Figure:
    """Speed-up (dense median / sparse median) against sparsity, one line per layer, with
    the target (``target``, else the table's own) as a dashed line and 1x (break-even) as a
    dotted one; a filled marker shows each layer's lowest sparsity that meets the target."""
    target = target if target is not None else document.get("target")
    layers: dict[str, list[tuple[float, float]]] = {}
    for row in document["rows"]:
        layers.setdefault(row["name"], []).append((row["sparsity"], row["speedup"]))
    fig, ax = figure(height=2.8)
    with plt.rc_context(STYLE):
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
        for colour, (name, points) in zip(colours, layers.items(), strict=True):
            points.sort()
            x, y = [100 * p[0] for p in points], [p[1] for p in points]
            ax.plot(x, y, marker=".", color=colour, label=name)
            met = [p for p in points if target is not None and p[1] >= target]
            if met:
                ax.plot(100 * met[0][0], met[0][1], "o", color=colour, markersize=5)
        ax.axhline(1.0, color="black", linestyle=":", linewidth=0.8)
        if target is not None:
            ax.axhline(
                target, color="black", linestyle="--", linewidth=0.8, label=f"target {target:g}x"
            )
        settings = document.get("settings", {})
        ax.set_title(
            f"{settings.get('model', '')}: batch {settings.get('batch', '?')}, "
            f"{settings.get('threads', '?')} thread(s)"
        )
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speed-up over dense (x)")
        ax.legend(frameon=False, fontsize=5, ncol=2 if len(layers) > 8 else 1)
    return fig
