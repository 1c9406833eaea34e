"""The bad-command drill: every command of ``tests/drill/bad_commands.txt`` (one a line:
CLI | arguments | the error it must give) ends with exit code 2 and one line on stderr that
starts with ``sst:`` (``sst-table:`` and so on) and matches the expected text, with no
traceback and no file or folder made. The commands run in-process through each CLI's main
function."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import sst.train
from sst.condensed.cli import main as export_main
from sst.study.plot_cli import main as plot_main
from sst.study.sweep_cli import main as sweep_main
from sst.study.table_cli import main as table_main

CASES_FILE = Path(__file__).parent / "drill" / "bad_commands.txt"
MAINS = {"sst-table": table_main, "sst-plot": plot_main, "sst-sweep": sweep_main}
MAINS["sst-export"] = export_main


def cases() -> list[tuple[str, str, str]]:
    out = []
    for line in CASES_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            cli, args, expected = (part.strip() for part in line.split("|", 2))
            out.append((cli, args, expected))
    return out


def run_cli(cli: str, args: list[str], out: Path, monkeypatch) -> int:
    if cli == "sst-train":
        flags = args[:1] if args[:1] == ["-m"] else []  # Hydra's flags before overrides
        rest = args[len(flags) :]
        monkeypatch.setattr("sys.argv", [cli, *flags, f"output_dir={out}", "logger=none", *rest])
        try:
            sst.train.main()
        except SystemExit as stop:
            return stop.code
        return 0
    try:
        return MAINS[cli](args)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize(("cli", "args", "expected"), cases(), ids=lambda v: str(v)[:60])
def test_a_bad_command_fails_in_one_line(cli, args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # files a CLI would make by mistake land here
    out = tmp_path / "out"
    code = run_cli(cli, shlex.split(args), out, monkeypatch)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}; stderr: {captured.err}"
    prefix = "sst: " if cli == "sst-train" else f"{cli}: "
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    assert re.search(expected, lines[0]), lines[0]
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert made == [], f"files left: {made}"


def test_the_drill_has_sixty_commands_over_every_cli():
    found = cases()
    assert len(found) >= 60
    assert {cli for cli, _, _ in found} == {"sst-train", *MAINS}
