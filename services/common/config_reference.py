"""Every setting of a set of settings classes, read from the classes themselves: its env name,
its key in the configuration file, its type, default and docstring; and, for `rlmf config
--show`, the value in force and where it came from. Nested groups (the trainer's recipe, gate
and canary) are listed field by field, as their env names (RLMF_TRAINER_RECIPE__PPO__SEED)
set them."""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import json
import os
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from services.common.settings import config_file, config_table

UNSET = "unset"


@dataclass(frozen=True)
class Setting:
    env: str
    """RLMF_TRAINER_RECIPE__PPO__SEED."""
    key: str
    """Its place in the configuration file: trainer.recipe.ppo.seed ([trainer.recipe.ppo] seed)."""
    path: tuple[str, ...]
    """The attributes from the settings object down to the value: recipe, ppo, seed."""
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class OldName:
    env: str
    """The deprecated variable, e.g. RLMF_TRAINER_PPO_STEPS."""
    new: str
    """What replaces it, e.g. RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS."""
    deprecated_on: str


@dataclass(frozen=True)
class Section:
    cls: type[BaseSettings]
    settings: tuple[Setting, ...]
    old_names: tuple[OldName, ...] = ()

    @property
    def table(self) -> str:
        return ".".join(config_table(self.cls))


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def section(cls: type[BaseSettings], old_names: tuple[OldName, ...] = ()) -> Section:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    table = config_table(cls)
    default = _defaults(cls)
    settings = tuple(_settings(cls, default, prefix, delimiter, table, ()))
    return Section(cls, settings, old_names)


def _defaults(cls: type[BaseSettings]) -> dict[str, Any]:
    """Each field's default, without reading the environment or the file."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in cls.model_fields.items()
    }


def _settings(
    cls: type,
    defaults: Mapping[str, Any],
    prefix: str,
    delimiter: str,
    table: tuple[str, ...],
    path: tuple[str, ...],
) -> Iterator[Setting]:
    docs = attribute_docs(cls)
    for name, annotation in _fields(cls).items():
        value = defaults[name]
        if _is_group(annotation):
            nested = {n: getattr(value, n) for n in _fields(annotation)}
            group_prefix = f"{prefix}{name.upper()}{delimiter}"
            yield from _settings(annotation, nested, group_prefix, delimiter, table, (*path, name))
            continue
        yield Setting(
            env=f"{prefix}{name.upper()}",
            key=".".join((*table, *path, name)),
            path=(*path, name),
            type=type_name(annotation, _constraints(cls, name)),
            default=show(_relative(value)),
            doc=docs.get(name, ""),
        )


def _fields(cls: type) -> dict[str, Any]:
    """A settings class's, a pydantic model's or a dataclass's fields and their types."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: field.annotation for name, field in cls.model_fields.items()}
    hints = typing.get_type_hints(cls)
    assert dataclasses.is_dataclass(cls), cls  # _is_group admits models and dataclasses
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_group(annotation: Any) -> bool:
    """A nested model or dataclass, set field by field (a group of its own)."""
    if not isinstance(annotation, type):
        return False
    return issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)


def _constraints(cls: type, name: str) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        return []
    found = []
    for item in cls.model_fields[name].metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                found.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            found.append(f"one of {item.pattern.strip('^$()').replace('|', ', ')}")
    return found


def type_name(annotation: Any, constraints: list[str] | None = None) -> str:
    """`int, >= 10`, `Path or unset`, `list of str`: a type as a user reads it."""
    text = _type_text(annotation)
    return ", ".join([text, *(constraints or [])])


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (types.UnionType, typing.Union):
        kept = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in kept)
        return f"{text} or unset" if len(kept) < len(args) else text
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return "one of " + ", ".join(str(m.value) for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _relative(value: Any) -> Any:
    """A default path under the working directory, relative to it: the reference then reads
    the same in every checkout (docs/configuration.md is generated from the repository root)."""
    if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(Path.cwd()):
        return value.relative_to(Path.cwd())
    return value


def show(value: Any) -> str:
    """A value as it is written in the environment."""
    if value is None:
        return UNSET
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, PurePath | str | int | float):
        return str(value)
    return json.dumps(value, default=str)


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a class body (the project documents settings so),
    read from the class's source; pydantic's use_attribute_docstrings reads the same, but only
    for pydantic models, and the trainer's groups include dataclasses."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__module__.startswith(("pydantic", "builtins")):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue  # no source (a class made at run time): no docstrings to read
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        for node, following in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


# ---------------------------------------------------------------------------------------------
# The values in force
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effective:
    setting: Setting
    value: str
    origin: str
    """env, env (deprecated NAME), file PATH, or default."""


def effective(sec: Section) -> list[Effective]:
    """Each setting's value in force, read through the class as a service reads it, and
    where it came from. Raises the class's own error when the values do not validate."""
    current = sec.cls()
    path = config_file()
    file_values = _file_table(path, config_table(sec.cls))
    environ = {name.upper(): value for name, value in os.environ.items()}
    old_by_new = {old.new: old for old in sec.old_names}
    rows = []
    for setting in sec.settings:
        value: Any = current
        for part in setting.path:
            value = getattr(value, part)
        rows.append(
            Effective(
                setting,
                show(value),
                _origin(setting, environ, file_values, path, old_by_new),
            )
        )
    return rows


def _origin(
    setting: Setting,
    environ: Mapping[str, str],
    file_values: Mapping[str, Any],
    path: Path | None,
    old_by_new: Mapping[str, OldName],
) -> str:
    # A group set whole (RLMF_TRAINER_RECIPE='{...}') counts for each of its fields.
    prefixes = [setting.env]
    parts = setting.env.split("__")
    prefixes += ["__".join(parts[:i]) for i in range(1, len(parts))]
    if any(name in environ for name in prefixes):
        return "env"
    old = old_by_new.get(setting.env)
    if old is not None and old.env in environ:
        return f"env (deprecated {old.env})"
    node: Any = file_values
    for part in setting.path:
        if not isinstance(node, Mapping) or part not in node:
            return "default"
        node = node[part]
    return f"file {path}"


def _file_table(path: Path | None, table: tuple[str, ...]) -> Mapping[str, Any]:
    if path is None:
        return {}
    data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    for key in table:
        data = data.get(key, {}) if isinstance(data, Mapping) else {}
    return data if isinstance(data, Mapping) else {}


def unknown_file_keys(sections: list[Section], path: Path) -> list[str]:
    """Keys and tables of the file that no setting reads: a misspelt name would otherwise be
    ignored without a word."""
    known = {s.key for sec in sections for s in sec.settings}
    tables = {".".join(key.split(".")[:i]) for key in known for i in range(1, key.count(".") + 1)}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return list(_unknown(data, (), known, tables))


def _unknown(
    data: Mapping[str, Any], above: tuple[str, ...], known: set[str], tables: set[str]
) -> Iterator[str]:
    for name, value in data.items():
        key = ".".join((*above, name))
        if isinstance(value, Mapping) and key in tables:
            yield from _unknown(value, (*above, name), known, tables)
        elif key not in known:
            yield key
