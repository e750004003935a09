"""Strict JSON for what the tools print and write: JSON has no NaN or Infinity (Python's `json`
writes them anyway, and strict parsers such as Node's `JSON.parse` reject the document), so an
undefined number is written as null."""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def none_to_nan(x: float | None) -> float:
    """Back from strict JSON: its null (an undefined number) as NaN."""
    return math.nan if x is None else float(x)


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON: NaN and Infinity become null; anything else that is not JSON is an error."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False)


def message_to_plain(message: Message) -> dict[str, Any]:
    """A protobuf message as plain values, every field present (zeros included; an unset
    message field is None), enums by
    name, and non-finite doubles as None: protobuf's own JSON mapping writes them as the
    strings "NaN" and "Infinity", which a client would have to special-case."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _plain(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_plain(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            # Absent, not a message of zeros (which a recursive type would never end).
            out[field.name] = None
        else:
            out[field.name] = _plain(field, value)
    return out


def _plain(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode(errors="replace")
    return finite_or_none(value)
