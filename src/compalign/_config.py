"""One `to_dict` / `from_dict` for every config dataclass (trainers' configs and architectures).

`to_dict` is JSON-ready (tuples become lists, nested dataclasses dicts); `from_dict` refuses
unknown keys with a message naming them, so a typo in a preset or a `--set` never goes unnoticed.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="DictConfig")


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


class DictConfig:
    """Mixin for config dataclasses; `_fields_name` words the unknown-field error."""

    _fields_name = "config fields"

    def to_dict(self) -> dict:
        return _json_ready(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict) -> T:
        unknown = set(d) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls._fields_name}: {sorted(unknown)}")
        return cls(**d)
