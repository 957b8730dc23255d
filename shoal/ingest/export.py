"""Tables out as CSV that a spreadsheet opens as data: formula-like text cells neutralised.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a formula
by Excel, LibreOffice and Google Sheets (CSV injection). Labels, file names, ids and metadata come
from uploads, so every text cell (and column name) that starts so gets a leading ``'``; numbers
stay numbers. The one implementation, for the web app's downloads and the CLI's ``--out``.

Example:
    >>> csv_bytes(pd.DataFrame({"label": ["=1+1", "cat"], "score": [-0.5, 2.0]})).decode()
    "label,score\\n'=1+1,-0.5\\ncat,2.0\\n"
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

#: A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: object) -> object:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def map_text_cells(table: pd.DataFrame, function: Callable[[Any], Any]) -> pd.DataFrame:
    """A copy of ``table`` with ``function`` applied to every cell of its text (and categorical)
    columns; numeric columns are left as they are."""
    mapped = table.copy()
    for column in mapped.columns:
        series = mapped[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        if series.dtype == object or pd.api.types.is_string_dtype(series):
            mapped[column] = series.map(function)
    return mapped


def neutralise_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells and column names cannot run as formulas."""
    safe = map_text_cells(table, neutralise_formula)
    safe.columns = [neutralise_formula(c) for c in safe.columns]
    return safe


def csv_bytes(table: pd.DataFrame) -> bytes:
    """The table as UTF-8 CSV (no index), formula cells neutralised."""
    return neutralise_formulas(table).to_csv(index=False).encode()


def write_csv(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the table to ``path`` as CSV, formula cells neutralised."""
    path = Path(path)
    path.write_bytes(csv_bytes(table))
    return path
