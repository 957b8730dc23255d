"""A small filter language that selects rows of a samples table: ``split=train & label!=cat``.

Used to pick the two sides of a comparison (``shoal compare --reference split=train``), and by
the app wherever a user types a subset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


class FilterError(ValueError):
    """A subset filter could not be applied; the message names the column or value at fault."""


_CLAUSE = re.compile(r"^\s*(?P<column>[^=!<>]+?)\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$")
_ALL = ("*", "all")


def parse_filter(
    expr: str | Mapping[str, Any],
    samples: pd.DataFrame,
    *,
    collections: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Boolean mask (n_samples,) of the rows of ``samples`` that ``expr`` selects.

    ``expr`` is ``"*"``/``"all"``, or clauses joined by ``&``: ``column=value[,value...]``
    (any of the values), ``column!=value[,value...]`` (none of them), and ``column<x``,
    ``<=``, ``>``, ``>=`` for numeric columns. Values may be quoted ('...' or "...").
    A mapping ``{"split": "train", "label": ["cat", "dog"]}`` means equality clauses joined by &.
    Rows whose value is missing never match. An unknown column, an equality value that no row
    has, or a comparison on a non-numeric column raises FilterError. ``collection=NAME[,NAME]``
    (and ``!=``) selects the members of saved collections, given as masks over ``samples`` by
    name in ``collections`` (a real column named "collection" wins).

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"split": ["train", "test"], "confidence": [0.9, 0.3]})
        >>> parse_filter("split=train", frame).tolist(), parse_filter("confidence<0.5", frame).tolist()
        ([True, False], [False, True])
    """
    if isinstance(expr, Mapping):
        clauses = [(str(column), "=", _as_list(values)) for column, values in expr.items()]
        if not clauses:
            raise FilterError("empty filter mapping; use '*' to select every sample")
    else:
        if not isinstance(expr, str) or not expr.strip():
            raise FilterError("empty filter; use '*' to select every sample, or e.g. 'split=train'")
        if expr.strip().lower() in _ALL:
            return np.ones(len(samples), dtype=bool)
        clauses = [_parse_clause(part) for part in _split_clauses(expr)]
    mask = np.ones(len(samples), dtype=bool)
    for column, op, values in clauses:
        if column == COLLECTION and column not in samples.columns:
            mask &= _collection_clause(op, values, collections or {})
        else:
            mask &= _apply_clause(samples, column, op, values)
    return mask


#: The pseudo-column of a clause on saved collections: ``collection=blurry``.
COLLECTION = "collection"


def mentions_collection(*exprs: str | Mapping[str, Any] | None) -> bool:
    """Whether any filter may hold a ``collection=`` clause (then its caller loads the masks)."""
    return any(isinstance(e, str) and COLLECTION in e for e in exprs)


def _collection_clause(
    op: str, values: list[str], collections: Mapping[str, np.ndarray]
) -> np.ndarray:
    if op not in ("=", "!="):
        raise FilterError(f"use collection=NAME or collection!=NAME, not collection{op}")
    unknown = [v for v in values if v not in collections]
    if unknown:
        known = ", ".join(sorted(collections)) or "none yet"
        raise FilterError(f"no collection {unknown[0]!r} (collections: {known})")
    inside = np.logical_or.reduce([np.asarray(collections[v], dtype=bool) for v in values])
    return inside if op == "=" else ~inside


def _as_list(values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, list | tuple | set | np.ndarray):
        return [str(values)]
    return [str(v) for v in values]


def _split_clauses(expr: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for char in expr:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "&":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _parse_clause(text: str) -> tuple[str, str, list[str]]:
    match = _CLAUSE.match(text)
    if not match or not match["column"].strip():
        raise FilterError(
            f"cannot read filter clause {text.strip()!r}: expected COLUMN=VALUE[,VALUE], "
            "COLUMN!=VALUE, or COLUMN<NUMBER (also <=, >, >=), joined by &"
        )
    op = "=" if match["op"] == "==" else match["op"]
    return match["column"].strip(), op, _split_values(match["value"])


def _split_values(text: str) -> list[str]:
    values: list[str] = []
    current: list[str] = []
    quote = ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
            else:
                current.append(char)
        elif char in "'\"":
            quote = char
        elif char == ",":
            values.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if quote:
        raise FilterError(f"unclosed quote in filter value {text!r}")
    values.append("".join(current).strip())
    return values


def _apply_clause(samples: pd.DataFrame, column: str, op: str, values: list[str]) -> np.ndarray:
    import pandas as pd

    if column not in samples.columns:
        raise FilterError(
            f"unknown column {column!r}; columns are: {', '.join(map(str, samples.columns))}"
        )
    series = samples[column]
    present = series.notna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if op in ("<", "<=", ">", ">="):
        if len(values) != 1:
            raise FilterError(f"{column}{op} takes one number, got {','.join(values)!r}")
        if not numeric:
            raise FilterError(
                f"column {column!r} is not numeric ({series.dtype}); use = or != with it"
            )
        threshold = _number(values[0], column)
        compare_ops = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
        column_values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            return present & compare_ops[op](column_values, threshold)
    if any(v == "" for v in values):
        raise FilterError(f"empty value in filter {column}{op}{','.join(values)}")
    if numeric:
        column_values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        matches = [np.isclose(column_values, _number(v, column), rtol=0, atol=1e-9) for v in values]
    else:
        as_text = series.astype(str).str.strip()
        if pd.api.types.is_bool_dtype(series):
            as_text, values = as_text.str.lower(), [v.lower() for v in values]
        matches = [(as_text == v).to_numpy() & present for v in values]
    for value, hit in zip(values, matches, strict=True):
        if not hit.any():
            known = sorted({str(v) for v in series.dropna().unique()})
            shown = ", ".join(known[:20]) + (
                f", ... ({len(known)} values)" if len(known) > 20 else ""
            )
            raise FilterError(
                f"no sample has {column}={value!r}; values of {column!r}: {shown or 'none'}"
            )
    selected = np.logical_or.reduce(matches)
    return selected if op == "=" else present & ~selected


def _number(text: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FilterError(f"column {column!r} is numeric but {text!r} is not a number") from None


def describe_filter(expr: str | Mapping[str, Any] | None) -> str:
    """The filter as text, for messages and cache keys; None is "(rest)"."""
    if expr is None:
        return "(rest)"
    if isinstance(expr, Mapping):
        return " & ".join(f"{k}={','.join(_as_list(v))}" for k, v in expr.items())
    return expr.strip()
