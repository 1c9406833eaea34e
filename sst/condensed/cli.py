"""``sst-export RUN_FOLDER [--out FILE]``: a finished run's model as a condensed
safetensors file, checked against the masked model, with its size table printed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .export import FORMATS, export_model
from .size import format_size_table, size_report


def find_input_shape(config: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The first ``input_shape`` entry found in a (nested) run config."""
    stack: list[Any] = [config]
    while stack:
        item = stack.pop(0)
        if isinstance(item, Mapping):
            if "input_shape" in item and item["input_shape"] is not None:
                return tuple(int(v) for v in item["input_shape"])
            stack.extend(item.values())
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sst-export", description=__doc__)
    parser.add_argument("run_folder", type=Path, help="a run folder under outputs/runs/")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default RUN_FOLDER/condensed.safetensors)",
    )
    parser.add_argument(
        "--input-shape",
        default=None,
        help="C,H,W of one example, for the per-layer timing and the output check "
        "(default: the run config's input_shape)",
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size to time layers at")
    parser.add_argument("--formats", choices=FORMATS, default="auto")
    parser.add_argument("--compress", action="store_true", help="delta-code indices (zlib)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from sst.runs import load_run  # the run reader; imported here, when it is needed

    run = load_run(args.run_folder)
    if args.input_shape:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    else:
        shape = find_input_shape(run.config)
    if shape is None:
        print("sst-export: no input_shape in the run config; pass --input-shape C,H,W",
              file=sys.stderr)  # fmt: skip
        return 2
    example = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    out = args.out or args.run_folder / "condensed.safetensors"
    result = export_model(
        run.model,
        run.masks,
        out,
        example_input=example,
        compress=args.compress,
        formats=args.formats,
        metadata={"run_folder": str(args.run_folder)},
    )
    print(f"wrote {result.path} ({result.file_bytes / 1024:,.1f} KiB); max |error| "
          f"{result.max_abs_error:.2e} at output scale {result.reference_scale:.3g}")  # fmt: skip
    print()
    print("| layer | kind | density | format |")
    print("|---|---|---|---|")
    for layer in result.layers:
        print(f"| {layer.name} | {layer.kind} | {layer.density:.3f} | {layer.format} |")
    print()
    print(format_size_table(size_report(run.masks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
