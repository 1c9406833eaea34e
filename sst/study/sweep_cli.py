"""``sst-sweep``: a Hydra sweep (an experiment's ``hydra.sweeper.params`` plus ad-hoc grids
from the command line) as a W&B sweep whose agents run ``python -m sst.train`` with the
sweep's values as Hydra overrides.

sst-sweep experiment=srigl_resnet18_cifar10 --project sst -o sweep.yaml
sst-sweep experiment=srigl_gamma_sal_study seed=0,1,2 --project sst --create   # online
wandb agent ENTITY/PROJECT/SWEEP_ID                 # one agent here; start more anywhere
sst-sweep ... --slurm-array 16 --partition gpu      # an sbatch script: 16 agents on SLURM
sst-sweep 'sparsity.density=interval(0.02,0.3)' 'optimizer.lr=tag(log, interval(0.01,0.5))' \
    --method bayes                                  # W&B's uniform / log_uniform_values

Every agent's run composes like ``sst-train`` with the same overrides, so it lands in the
same run folder (a finished cell is skipped, an interrupted one resumes) and joins the sweep's
W&B run (sst takes the agent's ``WANDB_RUN_ID``). Runs log online (``logger.mode=online``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override

from sst import __version__
from sst.config import CONFIG_DIR, runtime
from sst.config.keys import check_command_line

SEARCH_METHODS = ("grid", "random", "bayes")
AGENT_COMMAND = ["${env}", "${interpreter}", "-m", "sst.train"]


def _typed(text: str) -> Any:
    """A sweep value as YAML reads it (``0.1`` a number, ``rigl`` a string)."""
    value = yaml.safe_load(text)
    return text if isinstance(value, (dict, list)) else value


def wandb_parameter(override: Override) -> dict[str, Any]:
    """The W&B sweep parameter of one swept override: a list (``a,b``, ``choice``,
    ``range``) gives ``values``; Hydra's ``interval(lo, hi)`` W&B's ``uniform``,
    ``tag(log, interval(lo, hi))`` ``log_uniform_values`` and ``tag(int, ...)`` the
    integer forms ``int_uniform`` / ``q_log_uniform_values`` (q = 1)."""
    sweep = override.value()
    if not isinstance(sweep, IntervalSweep):
        return {"values": [_typed(v) for v in override.sweep_string_iterator()]}
    key, tags = override.get_key_element(), set(sweep.tags or ())
    low, high = sweep.start, sweep.end
    if low is None or high is None or not low < high:
        raise ValueError(f"{key}=interval({low}, {high}): the start must be below the end")
    if "log" in tags and low <= 0:
        raise ValueError(f"{key}=tag(log, interval({low}, {high})): a log scale needs a start > 0")
    if "int" in tags:
        if "log" in tags:
            return {"distribution": "q_log_uniform_values", "min": low, "max": high, "q": 1}
        return {"distribution": "int_uniform", "min": int(low), "max": int(high)}
    kind = "log_uniform_values" if "log" in tags else "uniform"
    return {"distribution": kind, "min": float(low), "max": float(high)}


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Command-line overrides -> (swept key -> its W&B parameter, fixed overrides)."""
    parser = OverridesParser.create()
    swept: dict[str, dict[str, Any]] = {}
    fixed: list[str] = []
    for override, text in zip(parser.parse_overrides(list(overrides)), overrides, strict=True):
        if override.is_sweep_override():
            swept[override.get_key_element()] = wandb_parameter(override)
        else:
            fixed.append(text)
    return swept, fixed


def sweep_grid(overrides: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The sweep ``sst-train -m <overrides>`` would run, as W&B parameters: the
    experiment's ``hydra.sweeper.params`` (command-line sweeps take precedence) and the
    fixed overrides."""
    swept, fixed = split_overrides(overrides)
    cfg = runtime.compose(fixed)
    preset = dict(cfg.hydra.sweeper.get("params") or {})
    grid: dict[str, dict[str, Any]] = {}
    for key, text in preset.items():
        from_preset, _ = split_overrides([f"{key}={text}"])
        grid.update(from_preset or {key: {"values": [_typed(str(text))]}})
    grid.update(swept)
    return grid, fixed


def sweep_config(
    overrides: Sequence[str],
    *,
    method: str = "grid",
    project: str | None = None,
    entity: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The W&B sweep configuration (a dict to dump as YAML or pass to ``wandb.sweep``)."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"--method {method!r} is unknown: allowed values are {SEARCH_METHODS}")
    grid, fixed = sweep_grid(overrides)
    if not grid:
        raise ValueError(
            "nothing to sweep: the experiment has no hydra.sweeper.params and no override "
            "lists values (e.g. seed=0,1,2)"
        )
    sampled = [key for key, parameter in grid.items() if "values" not in parameter]
    if method == "grid" and sampled:
        raise ValueError(
            f"--method grid needs lists of values, but {', '.join(sampled)} is an interval: "
            "use --method random or --method bayes"
        )
    logger = ["logger=wandb", "logger.mode=online"]
    if project:
        logger.append(f"logger.project={project}")
    if entity:
        logger.append(f"logger.entity={entity}")
    config: dict[str, Any] = {
        "name": name or " ".join(fixed) or "sst sweep",
        "program": "sst.train",
        "method": method,
        "metric": {"name": "test/acc", "goal": "maximize"},
        "parameters": grid,
        "command": [*AGENT_COMMAND, *agent_fixed(fixed), *logger, "${args_no_hyphens}"],
    }
    if project:
        config["project"] = project
    if entity:
        config["entity"] = entity
    return config


def agent_fixed(fixed: Sequence[str]) -> list[str]:
    """The fixed overrides an agent's run takes: all but ``hparams_search=...``, whose
    parameters are now the W&B sweep's (with it the run would start a Hydra sweep)."""
    return [o for o in fixed if o.split("=", 1)[0].lstrip("+~") != "hparams_search"]


def agent_overrides(config: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The Hydra overrides an agent passes for one combination of ``values``, as W&B
    renders the sweep's ``command`` (``${args_no_hyphens}`` is ``key=value`` per
    parameter)."""
    args: list[str] = []
    for part in config["command"]:
        if part == "${args_no_hyphens}":
            args += [f"{key}={_render(value)}" for key, value in values.items()]
        elif not part.startswith("${") and part not in ("-m", "sst.train"):
            args.append(part)
    return args


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} agents: give at least 1")
    return value


def slurm_array_script(
    sweep_id: str, count: int, *, partition: str | None, gpus: int, cpus: int, time_min: int
) -> str:
    """An sbatch script that starts ``count`` W&B agents as a SLURM job array, each running
    one sweep cell at a time until the sweep is done. A cell cut off by the time limit keeps
    its last epoch checkpoint: ``sst-train`` with the same overrides (or ``-m`` on a
    submitit launcher) resumes it; the W&B grid does not hand it out again."""
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=sst-sweep",
        f"#SBATCH --array=0-{count - 1}",
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --time={time_min}",
        "#SBATCH --output=sst-sweep-%A_%a.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["", f"exec wandb agent {shlex.quote(sweep_id)}", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sst-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="sst-train overrides; a,b,c lists sweep")
    parser.add_argument("--version", action="version", version=f"sst {__version__}")
    parser.add_argument("--method", choices=SEARCH_METHODS, default="grid")
    parser.add_argument("--project", help="W&B project of the sweep and its runs")
    parser.add_argument("--entity", help="W&B entity (team or user)")
    parser.add_argument("--name", help="sweep name (default: the fixed overrides)")
    parser.add_argument("-o", "--output", type=Path, help="write the sweep YAML here")
    parser.add_argument("--create", action="store_true", help="register the sweep (online)")
    parser.add_argument(
        "--sweep-id", help="an existing sweep (ENTITY/PROJECT/ID) for --slurm-array"
    )
    parser.add_argument(
        "--slurm-array", type=positive_int, metavar="N", help="print an sbatch script (N >= 1)"
    )
    parser.add_argument("--partition")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=8)
    parser.add_argument("--time-min", type=int, default=1440)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sweep_id = args.sweep_id
    if args.sweep_id is None or args.overrides:
        try:
            check_command_line(list(args.overrides), CONFIG_DIR)  # close matches for typos
            config = sweep_config(
                args.overrides,
                method=args.method,
                project=args.project,
                entity=args.entity,
                name=args.name,
            )
        except ValueError as error:
            print(f"sst-sweep: {error}", file=sys.stderr)
            return 2
        text = yaml.safe_dump(config, sort_keys=False)
        if args.output:
            args.output.write_text(text)
            print(f"sst-sweep: wrote {args.output} (start it: wandb sweep {args.output})")
        elif not args.create and not args.slurm_array:
            print(text, end="")
        if args.create:
            import wandb

            created = wandb.sweep(config, project=args.project, entity=args.entity)
            project = args.project or os.environ.get("WANDB_PROJECT")
            # ENTITY/PROJECT/ID, or PROJECT/ID; an entity without its project is no path
            where = [args.entity, project] if project else []
            sweep_id = "/".join(filter(None, [*where, created]))
            print(f"sst-sweep: created sweep {sweep_id}; start agents: wandb agent {sweep_id}")
    if args.slurm_array:
        if not sweep_id:
            print("sst-sweep: --slurm-array needs --create or --sweep-id", file=sys.stderr)
            return 2
        print(
            slurm_array_script(
                sweep_id,
                args.slurm_array,
                partition=args.partition,
                gpus=args.gpus,
                cpus=args.cpus,
                time_min=args.time_min,
            ),
            end="",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
