"""Small helpers shared by the analysis results: JSON-safe conversion and robust thresholds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: 1 / Φ⁻¹(3/4): scales the median absolute deviation to a standard deviation under normality.
MAD_TO_SD = 1.482602218505602
#: sqrt(π / 2): scales the mean absolute deviation likewise (Iglewicz & Hoaglin's fallback when
#: the MAD is zero).
MEAN_AD_TO_SD = 1.2533141373155001
#: Fewer values than this give no robust spread worth trusting: nothing is flagged.
MIN_VALUES_FOR_SPREAD = 10


def jsonable(value: Any) -> Any:
    """Numpy scalars and arrays to plain Python, recursively; NaN and inf become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def ids_or_rows(sample_ids: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Sample ids as str for a result's rows, or the row numbers when no ids are given."""
    if sample_ids is None:
        return np.arange(n_rows)
    ids = np.asarray(sample_ids).astype(str)
    if len(ids) != n_rows:
        raise ValueError(f"{len(ids)} sample ids for {n_rows} rows")
    return ids


def robust_threshold(values: np.ndarray, *, z: float = 3.5) -> tuple[float, float, float]:
    """(threshold, centre, spread) with threshold = median + z · robust SD of ``values``.

    The robust SD is 1.4826 · MAD, or 1.2533 · mean absolute deviation when more than half the
    values are equal (MAD = 0). ``z = 3.5`` is Iglewicz & Hoaglin's cut-off for the modified
    z-score: about 0.05% of a normal sample exceeds it, so a clean set flags almost nothing and
    the share flagged follows the data instead of being fixed. Non-finite values are ignored;
    with fewer than ``MIN_VALUES_FOR_SPREAD`` values the threshold is infinite (no flags).
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < MIN_VALUES_FOR_SPREAD:
        centre = float(np.median(finite)) if finite.size else float("nan")
        return float("inf"), centre, 0.0
    centre = float(np.median(finite))
    spread = float(np.median(np.abs(finite - centre))) * MAD_TO_SD
    if spread == 0.0:
        spread = float(np.mean(np.abs(finite - centre))) * MEAN_AD_TO_SD
    if spread == 0.0:
        # Every value equal: nothing stands out.
        return float("inf"), centre, 0.0
    return centre + z * spread, centre, spread


def robust_z(values: np.ndarray, *, log_scale: bool = False) -> np.ndarray:
    """(values - median) / robust SD (see robust_threshold), on log-values if ``log_scale``.

    Zero spread gives all zeros; non-finite inputs stay non-finite.
    """
    values = np.asarray(values, dtype=np.float64)
    if log_scale:
        finite = values[np.isfinite(values)]
        floor = 1e-3 * float(np.median(finite)) if finite.size else 0.0
        values = np.log(np.maximum(values, 0.0) + (floor if floor > 0 else 1e-12))
    _, centre, spread = robust_threshold(values)
    if not np.isfinite(centre) or spread == 0:
        return np.where(np.isfinite(values), 0.0, values)
    return (values - centre) / spread
