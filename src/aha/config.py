"""Typed dataclass configs: YAML files plus dotted command-line overrides, checked at start-up.

A run should fail in its first second, with a message naming the key and the fix, rather than after an
hour of training on a misspelt option. So every value is checked against the field's annotation and
every unknown key is an error (with a "did you mean" suggestion).

Conventions for config classes:
- declare every field with `option(..., help=...)` so `aha <cmd> --help` can explain it;
- nested sections are fields whose type is another dataclass;
- cross-field checks go in a `validate(self) -> None` method that raises `ConfigError`; `load_config`
  calls it on every (nested) dataclass and prefixes the section's key path to the message;
- a class may supply defaults that depend on what was given with a classmethod
  `base_options(given_tree) -> dict` (`aha eval RUN_DIR` takes the run's settings); given keys win;
- an option that was removed or renamed goes in a `removed_options: ClassVar[dict[str, tuple[str, str]]]`
  of its class (old name -> (the option to set instead, why)), so an old config fails naming the new one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from aha.config_location import key_lines, located

T = TypeVar("T")
MISSING = dataclasses.MISSING
COMMAND_LINE = "the command line"


# A bare `dict` / `list` annotation (e.g. one reward function's options: `dict[str, dict]`) holds any
# YAML values, as its parametrised form with `Any` would.
_BARE_CONTAINERS: dict[Any, Any] = {dict: dict[Any, Any], list: list[Any]}


class ConfigError(ValueError):
    """A config value is unknown, mistyped or inconsistent. The message names the dotted key and the fix."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    choices: tuple | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with help text (shown by `--help`) and optional allowed values.

    Mutable defaults (lists, dicts, dataclass instances) are copied per instance automatically.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None}
    if default_factory is not None:
        if default is not MISSING:
            raise TypeError("option(): give either default or default_factory, not both")
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        frozen_default = copy.deepcopy(default)
        return dataclasses.field(default_factory=lambda: copy.deepcopy(frozen_default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------------------
# YAML: PyYAML follows YAML 1.1, where `1e-5` is a *string*. Learning rates are written that way, so we
# also resolve exponent floats without a dot (as YAML 1.2 does).


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader subclasses SafeLoader: no arbitrary objects


def _read_yaml_file(path: Path) -> tuple[dict, dict[str, int]]:
    """The file's mapping, and the line (1-based) of each dotted key in it, for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"{path}: not a UTF-8 YAML file: {e}") from None
    try:
        data = _parse_yaml(text)
        lines = key_lines(yaml.compose(text, Loader=_Loader))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data, lines


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from an optional YAML file and `key.sub=value` overrides (values parsed as YAML)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    file_source = str(path) if path is not None else COMMAND_LINE
    tree, lines = _read_yaml_file(Path(path)) if path is not None else ({}, {})
    loader = _Builder(file_source)
    for item in overrides:
        key, raw, value = _parse_override(item)
        _set_dotted(tree, key, value)
        loader.cli_raw[key] = raw
    base_options = getattr(cls, "base_options", None)
    try:
        if base_options is not None:
            tree = _tree_over(cls, base_options(tree), tree)
        cfg = loader.build(cls, tree, prefix="")
        _validate_tree(cfg, "")
    except ConfigError as e:
        raise ConfigError(located(str(e), loader.file_source, lines, loader.cli_raw)) from None
    return cfg


_NAME = re.compile(r"[A-Za-z_]\w*")  # one part of a dotted option key


def _parse_override(item: str) -> tuple[str, str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"malformed override {item!r}: expected key=value, e.g. train.lr=1e-5")
    if not all(_NAME.fullmatch(part) for part in key.split(".")):
        raise ConfigError(f"malformed override {item!r}: the key before '=' must look like section.name")
    try:
        value = _parse_yaml(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return key, raw, value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            section = ".".join(parts[: i + 1])
            raise ConfigError(f"override {key}=...: {section} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


class _Builder:
    """Turns a nested dict into nested dataclasses, checking types; remembers where values came from."""

    def __init__(self, file_source: str) -> None:
        self.file_source = file_source
        self.cli_raw: dict[str, str] = {}  # dotted key -> override text, for str fields given as `x=123`

    def source(self, key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.cli_raw:
                return COMMAND_LINE
        return self.file_source

    def build(self, cls: type, data: Any, prefix: str) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(
                f"{prefix.rstrip('.') or 'config'}: expected a mapping of options, got {_show(data)}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for name in data:
            if name not in fields:
                self._unknown_key(cls, str(name), prefix)
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, f in fields.items():
            key = f"{prefix}{name}"
            if name in data:
                value = self._nested_with_default(f, hints[name], data[name])
                kwargs[name] = self.coerce(value, hints[name], key)
                _check_choices(kwargs[name], f.metadata.get("choices"), key)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(
                    f"{key}: missing required value; set it in the YAML file or on the command line as {key}=..."
                )
        return cls(**kwargs)

    def _nested_with_default(self, f: dataclasses.Field, tp: Any, value: Any) -> Any:
        """A partial section merges over the field's default instance, not just over the class defaults."""
        if not (isinstance(value, dict) and _dataclass_in(tp)):
            return value
        default = _field_default(f)
        return _merge_over(default, value) if dataclasses.is_dataclass(default) else value

    def _unknown_key(self, cls: type, name: str, prefix: str) -> None:
        key = f"{prefix}{name}"
        removed = getattr(cls, "removed_options", {}).get(name)
        if removed is not None:
            replacement, why = removed
            raise ConfigError(
                f"{key} (from {self.source(key)}) is no longer an option: set {prefix}{replacement} instead; {why}"
            )
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            hint = f"did you mean {prefix}{close[0]}?"
        else:
            hint = f"the options of {prefix.rstrip('.') or cls.__name__} are: {', '.join(known)}"
        raise ConfigError(f"unknown option {key} (from {self.source(key)}); {hint}")

    def coerce(self, value: Any, tp: Any, key: str) -> Any:
        tp = _BARE_CONTAINERS.get(tp, tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.build(tp, value, prefix=f"{key}.")
        if origin in (Union, types.UnionType):
            return self._coerce_union(value, tp, args, key)
        if origin is Literal:
            if any(value == a and type(value) is type(a) for a in args):
                return value
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {_show(value)}")
        if origin in (list, tuple, Sequence):
            return self._coerce_sequence(value, tp, origin, args, key)
        if origin is dict:
            if not isinstance(value, dict):
                raise self._type_error(key, tp, value)
            kt, vt = args or (Any, Any)
            return {
                self.coerce(k, kt, f"{key}.{k}"): self.coerce(v, vt, f"{key}.{k}") for k, v in value.items()
            }
        return self._coerce_scalar(value, tp, key)

    def _coerce_union(self, value: Any, tp: Any, args: tuple, key: str) -> Any:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return self.coerce(value, options[0], key)
            except ConfigError as e:
                if str(e).startswith(f"{key}: expected {_type_name(options[0])},"):
                    raise self._type_error(key, tp, value) from None  # say that null is allowed too
                raise
        for option_type in options:
            try:
                return self.coerce(value, option_type, key)
            except ConfigError:
                continue
        raise self._type_error(key, tp, value)

    def _coerce_sequence(self, value: Any, tp: Any, origin: Any, args: tuple, key: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise self._type_error(key, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(
                    f"{key}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}: {value!r}"
                )
            return tuple(
                self.coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_type = args[0] if args else Any
        items = [self.coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items

    def _coerce_scalar(self, value: Any, tp: Any, key: str) -> Any:
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):  # YAML's .nan / .inf: no option means anything by them
                    raise ConfigError(f"{key}: expected a finite number, got {value!r}")
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
            if key in self.cli_raw and isinstance(value, (int, float, bool)):
                return self.cli_raw[key].strip()  # `name=123` on the command line means the text "123"
        elif tp is Path:
            if isinstance(value, (str, Path)):
                return Path(value)
        else:
            raise TypeError(f"{key}: config annotation {tp!r} is not supported by aha.config")
        raise self._type_error(key, tp, value)

    @staticmethod
    def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
        hint = ""
        if tp is str or (typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp)):
            hint = ' (quote it in YAML: key: "...")'
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {_show(value)}{hint}")


def _validate_tree(value: Any, key: str) -> None:
    """Call `validate()` on every dataclass in the tree, innermost first, including default sections."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _validate_tree(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
        validate = getattr(value, "validate", None)
        if callable(validate):
            try:
                validate()
            except ConfigError as e:
                if key and not re.match(rf"{re.escape(key)}[.:\[ ]", str(e)):
                    raise ConfigError(f"{key}: {e}") from None
                raise
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _validate_tree(item, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            _validate_tree(item, f"{key}.{k}")


def _check_choices(value: Any, choices: tuple | None, key: str) -> None:
    if choices is None or value is None:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v not in choices:
            raise ConfigError(f"{key}: {v!r} is not one of: {', '.join(map(str, choices))}")


def _tree_over(cls: type, base: dict, given: dict) -> dict:
    """`given` (a config tree) over `base`, recursing into the sections of `cls` only: a given mapping for a
    dict-typed option replaces the base's."""
    merged = dict(base)
    hints = typing.get_type_hints(cls)
    for k, v in given.items():
        section = _section_type(hints.get(k)) if isinstance(k, str) else None
        if section is not None and isinstance(v, dict) and isinstance(base.get(k), dict):
            merged[k] = _tree_over(section, base[k], v)
        else:
            merged[k] = v
    return merged


def _merge_over(default: Any, given: dict) -> dict:
    """`given` over the dict of a default section instance, recursing into sub-sections only (a given
    mapping for a dict-typed option replaces the default mapping)."""
    merged = config_to_dict(default)
    for k, v in given.items():
        sub = getattr(default, k, None)
        is_section = dataclasses.is_dataclass(sub) and not isinstance(sub, type)
        merged[k] = _merge_over(sub, v) if is_section and isinstance(v, dict) else v
    return merged


def _dataclass_in(tp: Any) -> bool:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return True
    return typing.get_origin(tp) in (Union, types.UnionType) and any(
        _dataclass_in(a) for a in typing.get_args(tp)
    )


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(tp, type):
        return "section" if dataclasses.is_dataclass(tp) else tp.__name__
    return str(tp)


# ---------------------------------------------------------------------------------------------------------
# Saving and describing


def config_to_dict(cfg: Any) -> dict:
    """Plain YAML-safe dict (tuples become lists, paths strings); `load_config` turns it back into `cfg`."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (every run directory gets one, so a run can be reproduced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(cfg))
    return path


def describe_options(cls: type) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every option, nested sections flattened, for `--help`.

    Raises TypeError for an option without help text, so a test calling this catches undocumented knobs.
    """
    rows: list[tuple[str, str, str, str]] = []
    _describe(cls, "", None, rows, sections={})
    return rows


def describe_sections(cls: type) -> dict[str, str]:
    """Help text of the nested sections that have some (dotted key -> help), for `--help` headings."""
    sections: dict[str, str] = {}
    _describe(cls, "", None, [], sections)
    return sections


def _describe(cls: type, prefix: str, instance: Any, rows: list, sections: dict[str, str]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = f"{prefix}{f.name}", hints[f.name]
        help_text = f.metadata.get("help")
        default = getattr(instance, f.name) if instance is not None else _field_default(f)
        section_type = _section_type(tp)
        if section_type is not None:  # a section's own help is optional: its options carry the details
            if help_text:
                sections[key] = help_text
            sub = default if dataclasses.is_dataclass(default) else None
            _describe(section_type, f"{key}.", sub, rows, sections)
            continue
        if not help_text:
            raise TypeError(
                f"{cls.__name__}.{f.name} has no help text: declare it with aha.config.option(..., help=...)"
            )
        choices = f.metadata.get("choices")
        if choices:
            help_text = f"{help_text} Choices: {', '.join(map(str, choices))}."
        rows.append((key, _type_name(tp), _format_default(default), help_text))


def _section_type(tp: Any) -> type | None:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def _format_default(value: Any) -> str:
    """Defaults in YAML flow syntax, so they can be pasted into an override."""
    if value is MISSING:
        return "(required)"
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()
