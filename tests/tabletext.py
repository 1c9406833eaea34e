"""Markdown tables as text: ``unpadded`` strips the padding of ``sst-table``'s columns, so
a test can look for a row's cells whatever the other rows' widths."""

from __future__ import annotations


def unpadded(text: str) -> str:
    """``text`` with each Markdown table line's cells stripped of padding
    (``| a   |  1 |`` -> ``| a | 1 |``); other lines unchanged."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line[1:-1].split("|")]
            line = "| " + " | ".join(cells) + " |"
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")
