"""Reading run folders that are damaged or missing: the reader names the file, the tables
list the run under the table and print the rest, a relaunch repairs what it can."""

from __future__ import annotations

from pathlib import Path

import pytest
from fabricated import make_run

from sst.condensed.cli import main as sst_export
from sst.runs.folder import RunFolder, finished_summary
from sst.study.plots import neurons_over_training
from sst.study.results import aggregate, collect
from sst.study.table_cli import main as sst_table


def broken_study(root: Path) -> Path:
    for seed, acc in enumerate([90.0, 92.0]):
        make_run(root, seed=seed, acc=acc)
    broken = make_run(root, seed=2, acc=94.0)
    (broken / "summary.json").write_text('{"finished": tr')  # cut short
    return broken


def test_an_unreadable_summary_names_the_file(tmp_path):
    broken = broken_study(tmp_path)
    with pytest.raises(ValueError, match=rf"{broken / 'summary.json'} cannot be read"):
        _ = RunFolder(broken).summary
    assert finished_summary(broken) is None  # a relaunch resumes and writes it again


def test_sst_table_lists_an_unreadable_run_and_prints_the_rest(tmp_path, capsys):
    broken = broken_study(tmp_path)
    found = collect([tmp_path])
    assert len(found.runs) == 2
    (problem,) = found.problems
    assert problem.status.startswith("unreadable") and "summary.json" in problem.status
    (group,) = aggregate(found.runs)
    assert group.accuracy.n == 2 and group.accuracy.mean == pytest.approx(91.0)
    assert sst_table([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "91.00" in out and str(broken) in out and "cannot be read" in out


def test_the_neurons_figure_of_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        neurons_over_training(tmp_path / "nope")


def test_sst_export_of_a_missing_or_unfinished_run_is_one_line(tmp_path, capsys):
    unfinished = make_run(tmp_path, acc=None)
    for folder in (tmp_path / "nope", unfinished):
        assert sst_export([str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sst-export: ") and str(folder) in err[0]
