"""Array parameters and array results for set-based SQL on PostgreSQL.

A matching round sends and reads columns of tens of thousands of values. psycopg adapts a Python
list element by element in Python (Django's client-side binding then quotes the result), which
costs more than the statement itself at that size; these helpers build and parse PostgreSQL's
array text form in one pass instead. Values still travel as bound parameters, never as SQL text:
the server parses the literal and a bad element is an error, not an injection.
"""
from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import numpy as np


def int_array(values: Iterable[int] | np.ndarray) -> str:
    """A PostgreSQL array literal of integers (``{1,2,3}``), for a ``%s::bigint[]`` (or ``int[]``)
    parameter."""
    if isinstance(values, np.ndarray):  # tolist() gives Python ints already
        return "{" + ",".join(map(str, values.astype(np.int64, copy=False).tolist())) + "}"
    return "{" + ",".join(map(str, map(int, values))) + "}"


def decimal_array(values: Iterable[Decimal]) -> str:
    """A PostgreSQL array literal of exact decimals, for a ``%s::numeric[]`` parameter."""
    return "{" + ",".join(str(Decimal(v)) for v in values) + "}"


def bool_array(values: Iterable[bool] | np.ndarray) -> str:
    """A PostgreSQL array literal of booleans, for a ``%s::boolean[]`` parameter."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return "{" + ",".join("t" if v else "f" for v in values) + "}"


def int_columns(text: str | None, columns: int) -> np.ndarray:
    """Parse integers a query returned as one comma-separated text (``string_agg``), ``columns`` per
    row, into an int64 array of shape (rows, columns). ``None`` (no rows) gives an empty array."""
    if not text:
        return np.zeros((0, columns), dtype=np.int64)
    flat = np.fromstring(text, dtype=np.int64, sep=",")  # text mode: not the deprecated binary one
    if flat.size % columns:
        raise ValueError("a column list that does not split into whole rows")
    return flat.reshape(-1, columns)
