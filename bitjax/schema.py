"""The one schema mechanism of every config section (model, data, train, mesh, optim).

A section is a frozen dataclass derived from `Section`: each field has a type and a
default, and `field(...)` may add the values it allows or a `Rule` its value must
meet. From the dataclass come both the `ml_collections.ConfigDict` section with its
defaults (`config_dict`) and its validation: constructing the dataclass from the
section (`from_mapping`) refuses unknown fields and checks every field's type, allowed
values and rule, then the cross-field checks a subclass adds in `__post_init__`.
Every error names `config.SECTION.FIELD=value` and what is allowed.

This module imports no ml_collections at module level: model configs are sections
too, and `bitjax.models` must import without it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar


def field_error(path: str, value, requirement: str) -> ValueError:
  """The one message format for a bad config value: `config.PATH=value requirement`."""
  return ValueError(f"config.{path}={value!r} {requirement}")


def check_one_of(name: str, value, allowed) -> None:
  """The one "must be one of" check of bitjax, for config fields ("config.model.norm")
  and function arguments ("backend") alike: ValueError naming `name`, the value and the
  allowed values."""
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def check_known(path: str, names, known) -> None:
  """Refuse names (fields of a section, keys of a table) that are not among `known`."""
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"config.{path} has unknown fields {unknown}; known: {sorted(known)}")


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field's value must be beyond its type: `test(value)` holds. `allowed` says so
  after "must be" ("a positive integer"); it replaces the type's own wording."""

  test: Callable[[Any], bool]
  allowed: str


POSITIVE_INT = Rule(lambda v: v > 0, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: v >= 0, "an integer >= 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
NON_EMPTY_STR = Rule(bool, "a non-empty string")


def field(default=dataclasses.MISSING, *, allowed=None, rule: Rule | None = None,
          default_factory=dataclasses.MISSING):
  """A section field with its default and either the values it `allowed` or a `rule`."""
  return dataclasses.field(default=default, default_factory=default_factory,
                           metadata={"allowed": allowed, "rule": rule})


def optional(field_type: type):
  """A None config default that keeps a type, so `--config.x=...` can still set it."""
  import ml_collections  # Deferred: only configs need it, not models.

  return ml_collections.FieldReference(None, field_type=field_type)


_TYPE_WORDS = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
_PLURAL_WORDS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _type_word(hint) -> str:
  origin = typing.get_origin(hint)
  if origin is tuple:
    return f"a tuple of {_PLURAL_WORDS[typing.get_args(hint)[0]]}"
  if origin is dict or hint is dict:
    return "a mapping"
  return _TYPE_WORDS[hint]


def _has_type(value, hint) -> bool:
  origin = typing.get_origin(hint)
  if origin is tuple:
    return isinstance(value, (tuple, list)) and all(
        _has_type(v, typing.get_args(hint)[0]) for v in value)
  if origin is dict or hint is dict:
    return isinstance(value, Mapping)
  if isinstance(value, bool) and hint is not bool:
    return False
  return isinstance(value, (int, float) if hint is float else hint)


def _all_finite(value) -> bool:
  """No nan or inf in a float value, nor in the floats of a tuple or mapping: a non-finite
  rate or constant would train to NaN (or stay silent) rather than fail up front."""
  if isinstance(value, float):
    return math.isfinite(value)
  if isinstance(value, Mapping):
    return all(_all_finite(v) for v in value.values())
  if isinstance(value, (tuple, list)):
    return all(_all_finite(v) for v in value)
  return True


def _split_optional(hint) -> tuple[Any, bool]:
  """(the type, whether None is allowed) of an annotation such as `int | None`."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0], len(args) < len(typing.get_args(hint))
  return hint, False


def _plain(value):
  """A ConfigDict value as plain Python: nested sections become dicts."""
  return value.to_dict() if hasattr(value, "to_dict") else value


@dataclasses.dataclass(frozen=True)
class Section:
  """A config section's schema. `section` is its name in `config` (model, data, ...)."""

  section: ClassVar[str]

  def __post_init__(self):
    hints = _hints(type(self))
    for f in dataclasses.fields(self):
      value = _plain(getattr(self, f.name))
      hint, can_be_none = _split_optional(hints[f.name])
      if typing.get_origin(hint) is tuple and isinstance(value, list):
        value = tuple(value)
      object.__setattr__(self, f.name, value)
      if value is None and can_be_none:
        continue
      if not _all_finite(value):
        raise self.error(f.name, "must be finite (no nan or inf anywhere in it)", value)
      allowed, rule = f.metadata.get("allowed"), f.metadata.get("rule")
      if allowed is not None:
        check_one_of(f"config.{self.section}.{f.name}", value, allowed)
      elif not _has_type(value, hint) or (rule is not None and not rule.test(value)):
        word = rule.allowed if rule is not None else _type_word(hint)
        raise self.error(f.name, f"must be {'None or ' if can_be_none else ''}{word}", value)

  def error(self, name: str, requirement: str, value=dataclasses.MISSING) -> ValueError:
    """`config.SECTION.NAME=value requirement`; `value` defaults to the field's."""
    value = getattr(self, name) if value is dataclasses.MISSING else value
    return field_error(f"{self.section}.{name}", value, requirement)

  @classmethod
  def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]):
    """From a config section (a ConfigDict or dict); unknown fields are an error and
    missing ones take their defaults."""
    check_known(cls.section, fields, cls.field_names())
    return cls(**{name: fields[name] for name in fields})

  @classmethod
  def config_dict(cls):
    """The section's ConfigDict with its defaults; a None default keeps its declared type,
    so `--config.SECTION.FIELD=...` can set it."""
    import ml_collections  # Deferred: only configs need it, not models.

    hints = _hints(cls)
    section = {}
    for f in dataclasses.fields(cls):
      value = f.default_factory() if f.default is dataclasses.MISSING else f.default
      if value is None:
        value = optional(_split_optional(hints[f.name])[0])
      section[f.name] = value
    return ml_collections.ConfigDict(section)


@functools.cache
def _hints(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)
