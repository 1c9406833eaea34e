"""``sst-export RUN_FOLDER [--out FILE] [--dtype bf16]``: a finished run's model as a
condensed safetensors file, checked against the masked model, with its size table printed.

``sst-export --latency-table (RUN_FOLDER | --model NAME) --input-shape C,H,W [--target 1.5]
--out DIR``: the per-layer latency table (``latency.py``) saved as JSON and CSV, with the
lowest sparsity per layer that meets the target and the ``sparsity.densities`` setting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import sst.models
from sst import __version__
from sst.command_line import parse_assignments
from sst.runs.checkpoint import CorruptCheckpoint
from sst.runs.load import load_run

from . import latency
from .cpu import kernel_info
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
    parser.add_argument(
        "run_folder", type=Path, nargs="?", default=None, help="a run folder under outputs/runs/"
    )
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
        choices=("fp32", "bf16", "int8"),
        default="fp32",
        help="value type of the condensed layers (bf16: half the value bytes, each weight "
        "within a relative 2^-8; int8: every sparse layer as int8 CSR with per-row scales; "
        "inputs, outputs and sums stay fp32)",
    )
    add_latency_arguments(parser)
    return parser.parse_args(argv)


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "latency table",
        "--latency-table times every eligible layer dense and sparse at each sparsity "
        "(of RUN_FOLDER's model and masked layers, or of --model) and writes "
        "DIR/latency_table.json and .csv (--out DIR, default RUN_FOLDER)",
    )
    group.add_argument("--latency-table", action="store_true", help="build the latency table")
    group.add_argument("--model", default=None, help="an sst.models builder, e.g. mobilenet_v1")
    group.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a builder option, e.g. --model-arg stem=cifar --model-arg width=0.5",
    )
    group.add_argument("--num-classes", type=int, default=1000, help="with --model")
    group.add_argument("--threads", type=int, default=1, help="intra-op threads to time with")
    group.add_argument(
        "--sparsities", default=",".join(f"{s:g}" for s in latency.SPARSITIES), help="comma list"
    )
    group.add_argument(
        "--layer-types",
        default=None,
        help="comma list of sparsity.layer_types, e.g. PointwiseConv2d (default: RUN_FOLDER's "
        "masked layers, else Linear,Conv2d)",
    )
    group.add_argument("--structure", choices=latency.STRUCTURES, default="unstructured")
    group.add_argument("--repeats", type=int, default=15, help="interleaved rounds per median")
    group.add_argument(
        "--target", type=float, default=None, help="speed-up a layer must reach, e.g. 1.5"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.latency_table:
        return latency_main(args)
    if args.run_folder is None:
        print("sst-export: give a RUN_FOLDER (or --latency-table with --model)", file=sys.stderr)
        return 2
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


def builder_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["stem=cifar", "width=0.5"]`` -> ``{"stem": "cifar", "width": 0.5}`` (YAML values)."""
    return parse_assignments(pairs, "--model-arg", "stem=cifar")


def latency_model(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[int, ...], Any]:
    """(model, input shape, layer names or None) for the latency table: RUN_FOLDER's model
    and masked layers, or the ``--model`` builder's untrained model."""
    if (args.run_folder is None) == (args.model is None):
        raise ValueError("--latency-table needs exactly one of RUN_FOLDER and --model NAME")
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    if args.model is not None:
        builders = list(sst.models.__all__)
        if args.model not in builders:
            raise ValueError(f"--model {args.model!r} is unknown: allowed values are {builders}")
        if shape is None:
            raise ValueError("--model needs --input-shape C,H,W (e.g. 3,224,224)")
        model = getattr(sst.models, args.model)(
            args.num_classes, shape, **builder_options(args.model_arg)
        )
        return model, shape, None
    run = load_run(args.run_folder)
    shape = shape or find_input_shape(run.config, run)
    if shape is None:
        raise ValueError("the run's input shape is unknown; pass --input-shape C,H,W")
    return run.model, shape, None if args.layer_types else list(run.masks)


def print_choice(rows: list[latency.LayerLatency], target: float) -> None:
    choice = latency.meets_target(rows, target)
    print()
    print(f"Lowest sparsity per layer with a speed-up >= {target:g}x:")
    print()
    print("| layer | sparsity |")
    print("|---|---|")
    for name, sparsity in choice.items():
        print(f"| {name} | {'none (stays dense)' if sparsity is None else f'{sparsity:g}'} |")
    dense_us, chosen_us = latency.chosen_time(rows, choice)
    print()
    speedup = dense_us / chosen_us
    print(f"These layers together: {dense_us:,.0f} us dense -> {chosen_us:,.0f} us at the "
          f"choice ({speedup:.2f}x; the layers alone, not the whole model)")  # fmt: skip
    print()
    print("Training settings for this choice (1.0: kept dense):")
    print(f"  sparsity.distribution=explicit '{latency.densities_override(choice)}'")


def latency_main(args: argparse.Namespace) -> int:
    """``sst-export --latency-table``: build, print and save the table."""
    try:
        model, shape, names = latency_model(args)
        sparsities = [float(v) for v in args.sparsities.split(",")]
        types = args.layer_types.split(",") if args.layer_types else ["Linear", "Conv2d"]
        out = args.out or args.run_folder
        if out is None:
            raise ValueError("--latency-table with --model needs --out DIR")
        rows = latency.latency_table(
            model, shape, batch=args.batch, threads=args.threads, sparsities=sparsities,
            layer_types=types, structure=args.structure, repeats=args.repeats, names=names,
            dtype=args.dtype,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, CorruptCheckpoint) as error:
        print(f"sst-export: {error}", file=sys.stderr)
        return 2
    settings = {
        "model": args.model or str(args.run_folder),
        "model_args": builder_options(args.model_arg),
        "input_shape": list(shape),
        "batch": args.batch,
        "threads": args.threads,
        "structure": args.structure,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "kernels": kernel_info(),
    }
    print(f"Latency table: {settings['model']}, input {shape}, batch {args.batch}, "
          f"{args.threads} thread(s), {args.structure} masks, {args.repeats} rounds")  # fmt: skip
    print()
    print(latency.table_markdown(rows))
    if args.target is not None:
        print_choice(rows, args.target)
    json_path, csv_path = latency.save_table(rows, Path(out), settings, args.target)
    print()
    print(f"wrote {json_path} and {csv_path}; plot: sst-plot latency {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
