"""Typed configs from YAML + dotlist overrides: one grammar for every stage's dataclass config.

A config is a (nested) dataclass. `load_structured(cls, path, overrides)` reads the YAML file (OmegaConf's loader,
so `1e-3` is a number), parses `section.key=value` overrides with `OmegaConf.from_dotlist` (the grammar EasyR1 and
Hydra use), checks each layer against the dataclass before merging, and builds the dataclass. Every problem is one
`ConfigError` line naming the source (the file, or `override 'x=y'`), the dotted key and the value:

- unknown keys (with the known ones listed), a mapping where a value belongs or the reverse;
- types, strictly: a bool field takes only true/false (`use_kl_loss: "no"` is refused, not read as truthy), an int
  field only integers (`rollout.n: 2.5` or `four` refused), a float field any number;
- ranges and choices declared on the field: `setting(8, ge=1)`, `setting("auto", choices=(...))`;
- YAML syntax errors, with the file and line.

A nested dataclass is a nested mapping (`reward: {propagator: {checkpoint: ...}}`, `--set reward.propagator.name=x`):
its keys are checked like the top level's, and a layer that sets some of them keeps the others at the enclosing
field's default (which may differ from the nested class's own defaults).

Field metadata may also carry a `key` (the name the same value has in another program's config, e.g. verl's), read
by the code that translates the config (`veason_r1.rl.config.verl_key_map`; a nested dataclass field's key is the
mapping its fields are written under).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from veason_r1.errors import BadInput

_MISSING = dataclasses.MISSING


class ConfigError(BadInput):
    """A bad config value: the message names the source, the key and the value (a `UserError`: one line and exit 2
    at the CLI). Raised with one message, "<source>: <what is wrong>"."""

    def __init__(self, message: str, what: str | None = None, hint: str | None = None):
        if what is None:  # ConfigError("file.yaml: key: ...") -> where "file.yaml", what "key: ..."
            message, _, what = message.partition(": ")
        super().__init__(message, what or "bad config", hint)


def setting(default: Any = _MISSING, *, factory: Any = _MISSING, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: tuple | None = None, key: Any = None,
            doc: str = "") -> Any:
    """A dataclass field with its validation rules (and optionally the foreign key it maps to)."""
    rules = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "key": key, "doc": doc}
    meta = {k: v for k, v in rules.items() if v not in (None, "")}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------------------------
# reading


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping (OmegaConf's loader: YAML 1.2 numbers) with the file named on every error."""
    import yaml
    from omegaconf import OmegaConf

    from veason_r1.errors import MissingInput

    path = Path(path)
    if not path.is_file():
        raise MissingInput(path, "config file not found", hint="check the path (--config / --rl-config)")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    except Exception as e:  # noqa: BLE001 - OmegaConf wraps some parse errors in its own types
        raise ConfigError(f"{path}: cannot be read as YAML: {str(e).splitlines()[0]}") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got a list")
    if len(loaded) == 0:  # an empty file would silently mean "all defaults" (and a run on no data)
        raise ConfigError(f"{path}: is empty: expected a mapping of keys to values")
    return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, dict]]:
    """[(the override text, its nested mapping)] from `section.key=value` strings (OmegaConf dotlist values)."""
    from omegaconf import OmegaConf

    out = []
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"override {item!r}: {str(e).splitlines()[0]}") from None
        out.append((item, parsed))
    return out


# ---------------------------------------------------------------------------------------------------------------
# checking


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        return f"a list ({hint})"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} keys"
    return getattr(hint, "__name__", str(hint))


def _type_ok(hint: Any, value: Any) -> bool:
    """Strict check of one value against a field annotation."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(a, value) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_type_ok(args[0], v) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(args[0], v) for v in value)
        return len(value) == len(args) and all(_type_ok(a, v) for a, v in zip(args, value))
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _rule_problem(meta: Mapping, value: Any) -> str:
    """'' when `value` obeys the field's declared range / choices, else why not."""
    if value is None:
        return ""
    if "choices" in meta and value not in meta["choices"]:
        return "must be one of " + ", ".join(repr(c) for c in meta["choices"])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for rule, ok, text in (("ge", lambda b: value >= b, ">="), ("gt", lambda b: value > b, ">"),
                               ("le", lambda b: value <= b, "<="), ("lt", lambda b: value < b, "<")):
            if rule in meta and not ok(meta[rule]):
                return f"must be {text} {meta[rule]}"
    return ""


def nested_dataclass(hint: Any):
    """The dataclass type of a field annotated `SomeConfig` (or `SomeConfig | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for a in typing.get_args(hint):
        if dataclasses.is_dataclass(a):
            return a
    return None


def check_layer(cls, values: Any, source: str, prefix: str = "") -> None:
    """Refuse unknown keys, wrong types and out-of-range values in one mapping layer (a file or one override)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {dotted!r} (known in {prefix.rstrip('.') or 'the top level'}: "
                              f"{', '.join(sorted(fields))})")
        hint = hints[key]
        sub = nested_dataclass(hint)
        if sub is not None and (isinstance(value, Mapping) or value is not None):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted}: expected a mapping of {sub.__name__} keys, got {value!r}")
            check_layer(sub, value, source, f"{dotted}.")
            continue
        if not _type_ok(hint, value):
            raise ConfigError(f"{source}: {dotted}: expected {_describe(hint)}, got {value!r}")
        problem = _rule_problem(fields[key].metadata, value)
        if problem:
            raise ConfigError(f"{source}: {dotted} = {value!r}: {problem}")


def merge_layers(base: Mapping, layer: Mapping) -> dict:
    """`layer` over `base`, nested mappings merged key by key (the order YAML, then overrides, are applied)."""
    out = dict(base)
    for k, v in layer.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_layers(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return None if f.default is _MISSING else f.default


def build(cls, values: Mapping, base: Any = None):
    """The dataclass from an already checked mapping (nested dataclasses built recursively, lists to tuples where the
    field is a tuple). A nested mapping overrides its field's default key by key: `reward: {propagator: {checkpoint:
    x}}` keeps the name of the `propagator` default the enclosing class declares, not the nested class's own default
    (`base`: the instance whose values stand for keys the mapping leaves out)."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in values:
            if base is not None:
                kwargs[f.name] = getattr(base, f.name)
            continue
        value, hint = values[f.name], hints[f.name]
        sub = nested_dataclass(hint)
        if sub is not None and isinstance(value, Mapping):
            default = None
            if {g.name for g in dataclasses.fields(sub) if g.init} - set(value):  # a partial mapping
                default = getattr(base, f.name) if base is not None else _field_default(f)
            value = build(sub, value, default if isinstance(default, sub) else None)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def as_dict(config) -> dict:
    """The nested plain-Python mapping of a config (tuples as lists, as YAML writes them)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: leaf} (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_structured(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    base: Mapping | None = None):
    """`cls` built from its defaults, then `base` (a mapping), then the YAML at `path`, then each override; every
    layer checked on its own so an error names where the bad value came from. Then `config.validate(source=...)`
    (checks across fields) when the class defines it."""
    merged: dict = {}
    layers: list[tuple[str, Mapping]] = []
    if base:
        layers.append(("config", base))
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    layers += [(f"override {text!r}", parsed) for text, parsed in parse_overrides(list(overrides))]
    for source, layer in layers:
        check_layer(cls, layer, source)
        merged = merge_layers(merged, layer)
    config = build(cls, merged)
    validate = getattr(config, "validate", None)
    if callable(validate):
        sources = [s for s, _ in layers if s != "config"]
        validate(source=" + ".join(sources) if sources else "config")
    return config


__all__ = ["ConfigError", "as_dict", "build", "check_layer", "flatten", "load_structured", "merge_layers",
           "nested_dataclass", "parse_overrides", "read_yaml", "setting"]
