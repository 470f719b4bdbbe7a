"""Result files as standard JSON (RFC 8259 has no NaN or Infinity, which Python's json writes
and browsers' ``JSON.parse`` refuses): a number that is not finite is written as ``null``."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_json(data: Any, indent: int | None = 2) -> str:
    """``data`` (dicts, lists, tuples, numbers, strings, None) as JSON; NaN and +-inf -> null."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
