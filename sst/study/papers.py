"""Published tables shipped as data, and sst's runs matched to their cells.

Each table is a YAML file in ``sst/paper_tables/`` (package data, so a wheel has them): its
source (paper, table, setting), the preset that reproduces it (``experiment``), the metric
its numbers are (``final`` or ``best`` test accuracy, see ``METRIC_TEXT``), and rows of
published values keyed by sparsity (or by density, ``axis: density``), each row with the
settings a run must have to count for it. A run matches a cell when it finished and every key
of the table's and the row's ``match`` has the given value in the run
(``sst.results.Run.value``: ``dataset``, ``model``, ``method``, ``distribution`` or a dotted
config path such as ``sparsity.gamma_sal``) and its density is the cell's. A list as a
match value means any of its items. A row's ``match`` holds the settings that tell the
paper's recipe apart from the other presets' (``trainer.batch_size: 512`` for SRigL's
ResNet-50, not the RigL preset's 4096), so a cell never averages another recipe's runs.

sst's side of a cell is always the table's own metric, so the difference compares like with
like; another metric asked for (``sst-table --metric``) is carried beside it (``Cell.also``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from .results import METRICS, Run, Stat, mixed_settings, same_value, sort_key

TABLE_AXES = ("sparsity", "density")
# What each metric is, as the published side and sst's summary.json (METRICS) both mean it.
METRIC_TEXT = {
    "final": "final top-1 test accuracy (%), at the end of training",
    "best": "best top-1 test accuracy (%) reached during training",
}


@dataclass
class PaperRow:
    label: str
    match: dict[str, Any]
    values: dict[float, float]  # density -> published value


@dataclass
class PaperTable:
    name: str
    title: str
    source: dict[str, str]
    experiment: str | None
    metric: str  # a key of METRICS: what the published numbers are
    axis: str
    match: dict[str, Any]
    rows: list[PaperRow]
    digits: int = 2  # decimals the source prints

    def criteria(self, row: PaperRow) -> dict[str, Any]:
        """Every setting a run needs to count for ``row``: the table's, then the row's."""
        return {**self.match, **row.match}


@dataclass
class Cell:
    """One published value beside sst's runs that match it."""

    row: str
    density: float
    published: float
    accuracy: Stat  # the runs' value of ``metric``, the table's own
    runs: list[Run]
    unfinished: list[Run]
    mixed: list[str]
    metric: str = "final"
    match: dict[str, Any] = field(default_factory=dict)  # the settings the runs matched on
    also: dict[str, Stat] = field(default_factory=dict)  # other metrics asked for, not compared

    @property
    def sparsity(self) -> float:
        return round(1.0 - self.density, 10)

    @property
    def difference(self) -> float | None:
        """sst's mean minus the published value, both in the table's metric; None where no
        run finished."""
        return None if self.accuracy.mean is None else self.accuracy.mean - self.published


def _table_files() -> dict[str, Any]:
    folder = resources.files("sst") / "paper_tables"
    return {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}


def paper_table_names() -> list[str]:
    """The names ``sst-table --paper`` accepts."""
    return sorted(_table_files())


def check_metric(metric: str, where: str = "metric") -> str:
    if metric not in METRICS:
        raise ValueError(f"{where}={metric!r} is unknown: allowed values are {sorted(METRICS)}")
    return metric


def load_paper_table(name: str) -> PaperTable:
    """The published table ``name`` (see ``paper_table_names``)."""
    files = _table_files()
    if name not in files:
        raise ValueError(
            f"--paper {name!r} is unknown: allowed values are {', '.join(sorted(files))}"
        )
    return parse_paper_table(name, yaml.safe_load(files[name].read_text()))


def parse_paper_table(name: str, data: dict[str, Any]) -> PaperTable:
    """A table from its YAML mapping (see the module docstring)."""
    axis = data.get("axis", "sparsity")
    if axis not in TABLE_AXES:
        raise ValueError(f"{name}: axis={axis!r} is unknown: allowed values are {TABLE_AXES}")

    def density(key: float) -> float:
        return round(float(key) if axis == "density" else 1.0 - float(key), 10)

    rows = [
        PaperRow(
            label=row["label"],
            match=dict(row.get("match") or {}),
            values={density(k): float(v) for k, v in row["values"].items()},
        )
        for row in data["rows"]
    ]
    return PaperTable(
        name=name,
        title=data["title"],
        source=dict(data["source"]),
        experiment=data.get("experiment"),
        metric=check_metric(data["metric"], f"{name}: metric"),
        axis=axis,
        match=dict(data.get("match") or {}),
        rows=rows,
        digits=int(data.get("digits", 2)),
    )


def run_matches(run: Run, criteria: dict[str, Any], density: float) -> bool:
    """Whether ``run`` has every value of ``criteria`` and the density ``density``."""
    run_density = run.value("density")
    if run_density is None or not same_value(float(run_density), density):
        return False
    return all(same_value(run.value(key), value) for key, value in criteria.items())


def metric_stat(runs: Sequence[Run], metric: str) -> Stat:
    """``metric`` (``final`` or ``best``) of ``runs`` over their seeds."""
    return Stat.of([(r.summary or {}).get(METRICS[metric]) for r in runs])


def fill(
    table: PaperTable,
    runs: Sequence[Run],
    unfinished: Sequence[Run] = (),
    *,
    metric: str | None = None,
) -> list[Cell]:
    """Every published cell of ``table`` with the finished ``runs`` that match it, their
    value of the table's metric aggregated over seeds, and the ``unfinished`` runs that would
    match it. ``metric`` (``final`` or ``best``, see ``sst.results.METRICS``) is one more
    metric to carry beside it where it is not the table's (``Cell.also``): the difference
    is always taken in the table's metric."""
    extra = [] if metric is None or metric == table.metric else [check_metric(metric)]
    cells = []
    for row in table.rows:
        criteria = table.criteria(row)
        for density, published in sorted(row.values.items(), key=lambda kv: -kv[0]):
            found = [r for r in runs if run_matches(r, criteria, density)]
            pending = [r for r in unfinished if r.config and run_matches(r, criteria, density)]
            cells.append(
                Cell(
                    row=row.label,
                    density=density,
                    published=published,
                    accuracy=metric_stat(found, table.metric),
                    runs=sorted(found, key=lambda r: sort_key(r.value("seed"))),
                    unfinished=pending,
                    mixed=mixed_settings(found),
                    metric=table.metric,
                    match=criteria,
                    also={m: metric_stat(found, m) for m in extra},
                )
            )
    return cells


def show_match(criteria: dict[str, Any]) -> str:
    """``{"method": "rigl", "sparsity.delta_t": 800}`` -> ``method=rigl, sparsity.delta_t=800``
    (a list reads ``a|b``: any of them)."""

    def text(value: Any) -> str:
        if isinstance(value, list):
            return "|".join(text(v) for v in value)
        if isinstance(value, bool):
            return str(value).lower()  # as the YAML tables write it
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{key}={text(value)}" for key, value in criteria.items())
