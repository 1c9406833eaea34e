"""Config errors and the check that every key of a composed config is a real setting.

Hydra refuses an unknown key on the command line, but a preset (``experiment=...``) may add
any key, and a misspelled one (``trainer.epochz``) would be silently ignored. ``check_keys``
compares every group's keys with the settings the group accepts: the keyword arguments of
its ``_target_`` (followed through ``**kwargs`` to the base classes), or the fields of its
schema in ``sst.config.schema``; an unknown key is an error that names the close matches.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """A config that cannot run; the message names the setting and the allowed values."""


def unknown_key_error(path: str, known: Iterable[str]) -> ConfigError:
    """The error for a setting that does not exist, with the close matches."""
    group, _, key = path.rpartition(".")
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    prefix = f"{group}." if group else ""
    hint = f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return ConfigError(
        f"{path} is not a setting.{hint} The settings of {group or 'the run'} are: "
        f"{', '.join(known)}"
    )


def forwarded_functions(target: Callable) -> list[Callable]:
    """The functions that receive ``target``'s keyword arguments: ``target`` itself, or a
    class's ``__init__`` followed, while it takes ``**kwargs``, by its bases' ``__init__``
    in method resolution order (the one walk behind both the key and the type check)."""
    if not inspect.isclass(target):
        return [target]
    functions = []
    for cls in inspect.getmro(target):
        function = cls.__init__
        if function is object.__init__:
            break
        if functions and function is functions[-1]:  # inherited, not its own
            continue
        functions.append(function)
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            break
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return functions


def accepted_keywords(target: Callable) -> set[str] | None:
    """Keyword arguments ``target`` accepts; None when it takes arbitrary ``**kwargs`` that
    no base class accounts for (then any key may be right)."""
    names: set[str] = set()
    for function in forwarded_functions(target):
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        open_ended = False
        for parameter in parameters:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                names.add(parameter.name)
        if not open_ended:
            return names - {"self"}
    return None


def check_group_keys(group: str, node: DictConfig, schema_fields: set[str] | None) -> None:
    """Raises ``ConfigError`` for a key of ``node`` that its target or schema does not take."""
    keys = {str(k) for k in node if str(k) not in HYDRA_KEYS}
    if "_target_" in node:
        try:
            known = accepted_keywords(get_object(node._target_))
        except Exception:  # an unimportable target is reported when it is instantiated
            return
    else:
        known = schema_fields
    if known is None:
        return
    for key in sorted(keys - known):
        raise unknown_key_error(f"{group}.{key}", known)


def check_keys(cfg: DictConfig, schemas: dict[str, Any], top_level: Iterable[str]) -> None:
    """Every group of ``cfg`` against its target or its dataclass schema in ``schemas``,
    and the top-level keys against ``top_level`` plus the groups."""
    groups = {str(k) for k in cfg if isinstance(cfg[k], DictConfig)}
    for key in sorted({str(k) for k in cfg} - groups - set(top_level)):
        raise unknown_key_error(key, set(top_level) | groups)
    for group in sorted(groups):
        schema = schemas.get(group)
        fields = set(schema.__dataclass_fields__) if schema is not None else None
        check_group_keys(group, cfg[group], fields)


def search_path_folders(entries: Iterable[str]) -> list[Path] | None:
    """The config folders of ``hydra.searchpath`` entries (``file://DIR``, ``pkg://PACKAGE``);
    None when one cannot be found here (then Hydra alone judges the options)."""
    import importlib.util

    folders = []
    for entry in entries:
        scheme, _, where = str(entry).partition("://")
        if scheme == "file":
            folders.append(Path(where))
        elif scheme == "pkg":
            try:
                spec = importlib.util.find_spec(where)
            except (ImportError, ValueError):
                return None
            if spec is None or not spec.submodule_search_locations:
                return None
            folders.extend(Path(p) for p in spec.submodule_search_locations)
        else:
            return None
    return folders


def _command_line_search_path(overrides: list) -> list[Path] | None:
    """The folders of the command line's ``hydra.searchpath`` ([] when it sets none; None
    when one cannot be found here)."""
    for override in overrides:
        if override.key_or_group == "hydra.searchpath" and not override.is_sweep_override():
            return search_path_folders(override.value() or [])
    return []


def check_group_choice(
    group: str, option: str, config_dir: str, search_path: Iterable[Path] = ()
) -> None:
    """Raises ``ConfigError`` when no ``<group>/<option>.yaml`` exists in ``conf/`` or the
    ``search_path`` folders, naming the close matches: Hydra quietly composes the default
    for an unknown option of an ``optional`` group (``experiment``)."""
    folders = [f / group for f in (Path(config_dir), *search_path) if (f / group).is_dir()]
    if not folders or option in ("null", "None"):
        return
    options = sorted(
        {str(p.relative_to(f).with_suffix("")) for f in folders for p in f.rglob("*.yaml")}
    )
    if option in options:
        return
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(f'{group}={c}' for c in close)}?" if close else ""
    raise ConfigError(
        f"{group}={option} is not an option.{hint} The options of {group} are: {', '.join(options)}"
    )


def command_line_overrides(args: list[str]) -> list[str] | None:
    """The overrides of an ``sst-train`` command line, Hydra's own flags and their values
    set apart as Hydra's argument parser does; None for a command that runs no job
    (``--shell-completion``, ``--help``, ``--hydra-help``, ``--info``)."""
    from hydra._internal.utils import get_args_parser

    try:
        parsed = get_args_parser().parse_args(args)
    except SystemExit:  # Hydra reports its own usage errors
        return None
    if parsed.shell_completion or parsed.help or parsed.hydra_help or parsed.info:
        return None
    return list(parsed.overrides)


def check_command_line(args: list[str], config_dir: str) -> None:
    """Raises ``ConfigError`` for a ``group=option`` whose option does not exist, or a
    ``key=value`` argument whose key is no setting of the config that the command's group
    choices compose, naming the close matches (Hydra alone says only that the key is "not in
    struct"). Arguments this check cannot judge (sweeps over groups for the keys, ``+``/``~``
    overrides, Hydra's own keys, syntax errors) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    lines = command_line_overrides(args)
    if not lines:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except Exception as error:  # Hydra's grammar: say which argument, in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"the command line does not parse ({first}); quote values with special characters, "
            "e.g. 'distill.teacher_run=[\"sparsity=dense\"]'"
        ) from error
    search_path = _command_line_search_path(overrides)
    if search_path is None:
        return
    group_args = [o.input_line for o in overrides if o.key_or_group == "hydra.searchpath"]
    keys = []
    roots = [f for f in (Path(config_dir), *search_path) if f.is_dir()]
    groups = {p.name for f in roots for p in f.iterdir() if p.is_dir()}
    for override in overrides:
        key = override.key_or_group
        if override.type is not OverrideType.CHANGE or key.startswith("hydra"):
            continue
        if key in groups or "/" in key or "@" in key:
            if key in groups:
                values = (
                    list(override.sweep_string_iterator())
                    if override.is_sweep_override()
                    else [override.value()]
                )
                for option in values:
                    check_group_choice(key, str(option), config_dir, search_path)
            if override.is_sweep_override():
                return
            group_args.append(override.input_line)
        else:
            keys.append(key)
    if not keys:
        return
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose("config", overrides=group_args)
    except Exception:
        return
    for key in keys:
        check_key_exists(cfg, key)


def check_key_exists(cfg: DictConfig, key: str) -> None:
    """Raises ``ConfigError`` when the dotted ``key`` is no setting of ``cfg`` (a mandatory
    ``???`` key is one), naming the close matches."""
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig):
        raise unknown_key_error(parent, [str(k) for k in cfg])
    if leaf not in {str(k) for k in node}:
        raise unknown_key_error(key, [str(k) for k in node])
