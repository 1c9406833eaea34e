"""Published tables shipped as data, and sst's runs matched to their cells.

Each table is a YAML file in ``sst/paper_tables/`` (package data, so a wheel has them): its
source (paper, table, setting), the preset that reproduces it (``experiment``), the metric,
and rows of published values keyed by sparsity (or by density, ``axis: density``), each row
with the settings a run must have to count for it. A run matches a cell when it finished and
every key of the table's and the row's ``match`` has the given value in the run
(``sst.results.Run.value``: ``dataset``, ``model``, ``method``, ``distribution`` or a dotted
config path such as ``sparsity.gamma_sal``) and its density is the cell's. A list as a
match value means any of its items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from .results import METRICS, Run, Stat, mixed_settings, same_value, sort_key

TABLE_AXES = ("sparsity", "density")


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
    metric: str
    axis: str
    match: dict[str, Any]
    rows: list[PaperRow]
    digits: int = 2  # decimals the source prints


@dataclass
class Cell:
    """One published value beside sst's runs that match it."""

    row: str
    density: float
    published: float
    accuracy: Stat
    runs: list[Run]
    unfinished: list[Run]
    mixed: list[str]

    @property
    def sparsity(self) -> float:
        return round(1.0 - self.density, 10)

    @property
    def difference(self) -> float | None:
        """sst's mean minus the published value; None where no run finished."""
        return None if self.accuracy.mean is None else self.accuracy.mean - self.published


def _table_files() -> dict[str, Any]:
    folder = resources.files("sst") / "paper_tables"
    return {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}


def paper_table_names() -> list[str]:
    """The names ``sst-table --paper`` accepts."""
    return sorted(_table_files())


def load_paper_table(name: str) -> PaperTable:
    """The published table ``name`` (see ``paper_table_names``)."""
    files = _table_files()
    if name not in files:
        raise ValueError(
            f"--paper {name!r} is unknown: allowed values are {', '.join(sorted(files))}"
        )
    data = yaml.safe_load(files[name].read_text())
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
        metric=data.get("metric", "final top-1 test accuracy (%)"),
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


def fill(
    table: PaperTable,
    runs: Sequence[Run],
    unfinished: Sequence[Run] = (),
    *,
    metric: str = "final",
) -> list[Cell]:
    """Every published cell of ``table`` with the finished ``runs`` that match it, their
    ``metric`` (``final`` or ``best`` test accuracy, see ``sst.results.METRICS``) aggregated
    over seeds, and the ``unfinished`` runs that would match it."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown: allowed values are {sorted(METRICS)}")
    cells = []
    for row in table.rows:
        criteria = {**table.match, **row.match}
        for density, published in sorted(row.values.items(), key=lambda kv: -kv[0]):
            found = [r for r in runs if run_matches(r, criteria, density)]
            pending = [r for r in unfinished if r.config and run_matches(r, criteria, density)]
            cells.append(
                Cell(
                    row=row.label,
                    density=density,
                    published=published,
                    accuracy=Stat.of([(r.summary or {}).get(METRICS[metric]) for r in found]),
                    runs=sorted(found, key=lambda r: sort_key(r.value("seed"))),
                    unfinished=pending,
                    mixed=mixed_settings(found),
                )
            )
    return cells
