"""Rows of the samples table as the pages show and export them: ids, tables, captions, CSV.

A row is a sample (``sample_id``) or, at the object level, a box (``object_id``); row i of the
table is row i of the embedding set.

Example:
    >>> samples = pd.DataFrame({"sample_id": ["a", "b"], "label": ["cat", "dog"]})
    >>> tile_caption(samples, 1)
    ['dog', 'b']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from shoal.ingest.export import csv_bytes


def row_ids(samples: pd.DataFrame) -> np.ndarray:
    """The id of each row: ``object_id`` for a table of objects, else ``sample_id``; (n,) str."""
    column = "object_id" if "object_id" in samples else "sample_id"
    return samples[column].astype(str).to_numpy()


def rows_of_ids(ids: np.ndarray, wanted: Sequence[str]) -> dict[str, int]:
    """The row of each of the ``wanted`` ids found in ``ids`` (one hashed pass over ``ids``; a
    dict of every id cost 0.3 s of each Similar page run at a million rows).

    >>> rows_of_ids(np.array(["a", "b", "c"]), ["c", "x"])
    {'c': 2}
    """
    if not len(wanted):
        return {}
    hits = np.flatnonzero(pd.Series(ids).isin(list(wanted)).to_numpy())
    return {str(ids[row]): int(row) for row in hits}


def rows_table(
    samples: pd.DataFrame, rows: Sequence[int] | np.ndarray, **extra: Sequence[Any] | np.ndarray
) -> pd.DataFrame:
    """The samples at ``rows`` (metadata columns, stored paths dropped) plus named extra columns."""
    rows = np.asarray(rows, dtype=np.int64)
    table = (
        samples.iloc[rows]
        .drop(columns=[c for c in ("path",) if c in samples])
        .reset_index(drop=True)
    )
    for name, values in extra.items():
        table[name] = np.asarray(values)
    return table


def to_csv_bytes(table: pd.DataFrame) -> bytes:
    """The table as CSV for a download; text cells a spreadsheet would run as a formula
    (labels, file names, metadata from an upload) get a leading ``'``, numbers stay numbers
    (:mod:`shoal.ingest.export`, which the CLI's ``--out`` uses too)."""
    return csv_bytes(table)


def describe_rows(
    samples: pd.DataFrame, row: int, *, columns: Sequence[str] = (), limit: int = 6
) -> list[str]:
    """Short "key: value" lines for one sample (for captions and for samples without images)."""
    record = samples.iloc[int(row)]
    names = ["object_id", "category", "kind", "status", "sample_id", "label", "split", "prediction"]
    names += list(columns)
    names += [c for c in samples.columns if c not in names and c not in ("source", "path")]
    lines: list[str] = []
    for name in dict.fromkeys(names):
        if name in record.index and pd.notna(record[name]) and len(lines) < limit:
            value = record[name]
            lines.append(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}")
    return lines


def tile_caption(samples: pd.DataFrame, row: int) -> list[str]:
    """Two short lines under a thumbnail: "label · split" (what is known) and the row's id.

    Objects: "category · kind · status" (and the detector's score) and the object id.
    """
    record = samples.iloc[int(row)]
    fields = ("category", "kind", "status") if "object_id" in record.index else ("label", "split")
    known = [str(record[c]) for c in fields if c in record.index and pd.notna(record[c])]
    if "prediction" in record.index and pd.notna(record["prediction"]):
        known.append(f"pred {record['prediction']}")
    if "object_id" in record.index and "score" in record.index and pd.notna(record["score"]):
        known.append(f"score {record['score']:.2f}")
    identity = str(record["object_id" if "object_id" in record.index else "sample_id"])
    return [" · ".join(known), identity] if known else [identity]
