"""RunConfig to and from files: YAML or JSON in, command-line overrides on top, the resolved config out.

Usage:
    raw = read_config_file("run.yaml")                          # a dict (ConfigError naming the file and line)
    raw = apply_overrides(raw, ["generate.n=512", "quantize.*.preset=fast"])
    config = config_from_mapping(raw, "run.yaml")               # RunConfig; unknown keys and wrong types named
    text = resolved_yaml(config)                                # every key, defaults filled in
    digest = config_hash(config)                                # sha256 of what decides the outputs

Overrides are KEY.PATH=VALUE with VALUE read as YAML (`4`, `true`, `null`, `[0.5, 0.5]`); list entries are
addressed by index (`quantize.1.w_bits=2`) or all at once (`quantize.*.preset=fast`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from toolchain.errors import ConfigError
from toolchain.pipeline.config import CalibrationReader, RunConfig

# What does not change the outputs: the folder they go to, and whether an old one may be replaced.
UNHASHED_KEYS = ("run_dir", "overwrite")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .yaml/.yml/.json file; ConfigError naming the file (and line) when it is not one."""
    import yaml  # deferred: yaml loads only when this runs (start-up time)

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; write one (README 'toolchain run') or run without it "
                          "for the built-in default")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: expected .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys (model:, quantize:, ...), "
                          f"not a {type(data).__name__}")
    return data


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`raw` with each KEY.PATH=VALUE set (a deep copy; `raw` is not changed)."""

    import yaml  # deferred: yaml loads only when this runs (start-up time)

    data = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set generate.n=512")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set_path(data, key.strip().split("."), value, item)
    return data


def _set_path(node: Any, parts: list[str], value: Any, item: str) -> None:
    head, rest = parts[0], parts[1:]
    if head == "quantize" and isinstance(node, dict) and "quantize" not in node and rest:
        node["quantize"] = [dataclasses.asdict(spec) for spec in RunConfig().quantize]  # overriding the default list
    if isinstance(node, list):
        if head == "*":
            targets = list(range(len(node)))
        elif head.isdigit() and int(head) < len(node):
            targets = [int(head)]
        else:
            raise ConfigError(f"--set {item!r}: {head!r} is not an entry of a list of {len(node)}; use 0..{len(node) - 1} or *")
        for index in targets:
            if rest:
                _set_path(node[index], rest, value, item)
            else:
                node[index] = value
        return
    if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {head!r} is below a value, not a section")
    if not rest:
        node[head] = value
        return
    if node.get(head) is None:
        node[head] = {}
    _set_path(node[head], rest, value, item)


def config_from_mapping(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """The RunConfig `raw` describes; ConfigError naming the key path for unknown keys and wrong types."""
    config = _build(RunConfig, raw, "", source)
    config.validate()
    return config


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where or 'the config'} must be a mapping of keys, not {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{source}: unknown key {where}{key!r}; {hint}known keys here: {', '.join(names)}")
        values[key] = _coerce(hints[key], value, f"{where}{key}", source)
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str, source: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        failures = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where, source)
            except ConfigError as err:
                failures.append(err)
        if len(failures) == 1:
            raise failures[0]
        raise ConfigError(f"{source}: {where} is {_shown(value)}: expected {_type_name(hint)}")
    if origin is tuple:
        items = value if isinstance(value, list) else [value] if not isinstance(value, (dict, type(None))) else None
        if items is None:
            raise ConfigError(f"{source}: {where} is {_shown(value)}: expected a list of {_type_name(args[0])}")
        if args[-1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(f"{source}: {where} is {_shown(value)}: expected {len(args)} values")
        return tuple(_coerce(a, v, f"{where}[{i}]", source) for i, (a, v) in enumerate(zip(args, items)))
    if typing.get_origin(hint) is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: {where} is {_shown(value)}: choose one of {', '.join(map(str, args))}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.", source)
    if hint is CalibrationReader:
        raise ConfigError(f"{source}: {where} is {_shown(value)}: expected a path")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. cache_budget: 512M written as a number of bytes
    elif hint is type(None) and value is None:
        return None
    raise ConfigError(f"{source}: {where} is {_shown(value)}: expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {_type_name(args[0])}"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def config_to_mapping(config: RunConfig) -> dict[str, Any]:
    """Every key of `config`, as YAML/JSON values (a CalibrationDataReader is named, not stored)."""
    data = dataclasses.asdict(config)
    if isinstance(config.calibration, CalibrationReader):
        data["calibration"] = f"<CalibrationDataReader {type(config.calibration).__name__}>"
    return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolved_yaml(config: RunConfig) -> str:
    import yaml  # deferred: yaml loads only when this runs (start-up time)

    header = "# The resolved config of this run: every key, defaults filled in. `toolchain run THIS_FILE` repeats it.\n"
    return header + yaml.safe_dump(config_to_mapping(config), sort_keys=False, default_flow_style=False, width=110)


def config_hash(config: RunConfig) -> str:
    """sha256 of the resolved config without UNHASHED_KEYS: equal hashes, equal outputs (on one machine)."""
    data = {k: v for k, v in config_to_mapping(config).items() if k not in UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
