"""Result files are standard JSON: no NaN or Infinity tokens (browsers' JSON.parse refuses them)."""

import json
import math

import numpy as np
import pytest

from patronus.utils.json_files import finite_json


def strict_loads(text: str):
    def refuse(token: str):
        raise ValueError(f"not standard JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_everywhere():
    data = {
        "nan": math.nan,
        "inf": [1.5, math.inf, -math.inf],
        "nested": {"pair": (np.float64("nan"), 2), "ok": 0.25, "text": "NaN", "none": None},
    }
    assert strict_loads(finite_json(data)) == {
        "nan": None,
        "inf": [1.5, None, None],
        "nested": {"pair": [None, 2], "ok": 0.25, "text": "NaN", "none": None},
    }
    assert finite_json([math.nan], indent=None) == "[null]"
    with pytest.raises(ValueError, match="not standard JSON: NaN"):
        strict_loads(json.dumps([math.nan]))  # what json.dumps alone writes
