"""``sst-export RUN_FOLDER [--out FILE] [--dtype bf16]``: a finished run's model as a
condensed safetensors file, checked against the masked model, with its size table printed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sst import __version__
from sst.runs.checkpoint import CorruptCheckpoint
from sst.runs.load import load_run

from .export import FORMATS, export_model
from .size import format_size_table, size_report

# Input shapes of the datasets whose config does not state one (sst/data).
DATASET_SHAPES = {
    "sst.data.cifar10": (3, 32, 32),
    "sst.data.cifar100": (3, 32, 32),
    "sst.data.digits": (1, 8, 8),
}


def find_input_shape(config: Mapping[str, Any], run: object = None) -> tuple[int, ...] | None:
    """(C, H, W) of one example: the run's ``input_shape`` attribute, else the dataset config's
    ``input_shape``, ``image_size`` (3 channels) or its known builder, else None."""
    shape = getattr(run, "input_shape", None)
    if shape is not None:
        return tuple(int(v) for v in shape)
    dataset = config.get("dataset") or {}
    if dataset.get("input_shape") is not None:
        return tuple(int(v) for v in dataset["input_shape"])
    if dataset.get("image_size") is not None:
        return (3, int(dataset["image_size"]), int(dataset["image_size"]))
    return DATASET_SHAPES.get(str(dataset.get("_target_")))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sst-export",
        description="Export a finished run's model as a condensed safetensors file, checked "
        "against the masked model, and print its per-layer formats and sizes.",
    )
    parser.add_argument("run_folder", type=Path, help="a run folder under outputs/runs/")
    parser.add_argument("--version", action="version", version=f"sst {__version__}")
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
        "(default: from the run's dataset)",
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size to time layers at")
    parser.add_argument("--formats", choices=FORMATS, default="auto")
    parser.add_argument("--compress", action="store_true", help="delta-code indices (zlib)")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="value type of the condensed layers (bf16: half the value bytes, each weight "
        "within a relative 2^-8; inputs, outputs and sums stay fp32)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run = load_run(args.run_folder)
    except (FileNotFoundError, ValueError, CorruptCheckpoint) as error:
        print(f"sst-export: {error}", file=sys.stderr)
        return 2
    if args.input_shape:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    else:
        shape = find_input_shape(run.config, run)
    if shape is None:
        print("sst-export: the run's input shape is unknown; pass --input-shape C,H,W",
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
        metadata={"run_folder": str(args.run_folder), "dtype": args.dtype},
        dtype=args.dtype,
    )
    print(f"wrote {result.path} ({result.file_bytes / 1024:,.1f} KiB); max |error| "
          f"{result.max_abs_error:.2e} at output scale {result.reference_scale:.3g}")  # fmt: skip
    print()
    print("| layer | kind | density | format |")
    print("|---|---|---|---|")
    for layer in result.layers:
        print(f"| {layer.name} | {layer.kind} | {layer.density:.3f} | {layer.format} |")
    print()
    print(f"Sizes with {args.dtype} values:")
    print()
    print(format_size_table(size_report(run.masks, dtype=args.dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
