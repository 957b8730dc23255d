"""What the analysis results share: one way to store them, JSON-safe conversion, robust
thresholds, and a false-discovery-rate cut against a fitted null.

:class:`ArrayRecord` gives a frozen result dataclass ``to_arrays`` / ``to_meta`` / ``from_arrays``,
the storage contract of ``shoal.workflows.cache``: fields annotated ``np.ndarray`` (or
``np.ndarray | None``) go to the npz, every other field to the JSON metadata.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Scores(ArrayRecord):
    ...     scores: np.ndarray
    ...     threshold: float
    >>> record = Scores(np.array([0.5, 2.0]), float("inf"))
    >>> record.to_arrays(), record.to_meta()
    ({'scores': array([0.5, 2. ])}, {'threshold': inf})
    >>> Scores.from_arrays(record.to_arrays(), {"saved_at": "...", **record.to_meta()}).threshold
    inf
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np

#: 1 / Φ⁻¹(3/4): scales the median absolute deviation to a standard deviation under normality.
MAD_TO_SD = 1.482602218505602
#: sqrt(π / 2): scales the mean absolute deviation likewise (Iglewicz & Hoaglin's fallback when
#: the MAD is zero).
MEAN_AD_TO_SD = 1.2533141373155001
#: Fewer values than this give no robust spread worth trusting: nothing is flagged.
MIN_VALUES_FOR_SPREAD = 10

RecordT = TypeVar("RecordT", bound="ArrayRecord")


class ArrayRecord:
    """Storage for a frozen result dataclass: arrays to an npz, the rest to JSON metadata.

    Fields annotated ``np.ndarray`` are arrays (``np.ndarray | None``: optional, left out when
    None); object arrays (ids, labels) are stored as str, since an npz holds no pickles. Every
    other field goes to the metadata as it is, but for numpy scalars as Python numbers and
    tuples as lists; inf and NaN stay inf and NaN (the store writes them as JSON ``Infinity`` /
    ``NaN`` and reads them back). A field holding a tuple of dataclasses names their type in
    ``nested_records`` and is stored as a list of dicts.
    ``from_arrays`` ignores metadata keys that are no fields (the store adds ``saved_at``).
    """

    nested_records: ClassVar[Mapping[str, type]] = {}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name in _fields(type(self))[0]:
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value)
            arrays[name] = value.astype(str) if value.dtype.kind == "O" else value
        return arrays

    def to_meta(self) -> dict[str, Any]:
        meta = {}
        for name in _fields(type(self))[1]:
            value = getattr(self, name)
            if name in self.nested_records:
                value = [dataclasses.asdict(item) for item in value]
            meta[name] = jsonable(value, allow_nan=True)
        return meta

    @classmethod
    def from_arrays(
        cls: type[RecordT], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> RecordT:
        array_fields, meta_fields = _fields(cls)
        values: dict[str, Any] = {
            name: np.asarray(arrays[name]) for name in array_fields if name in arrays
        }
        for name in meta_fields:
            if name not in meta:
                continue
            value = meta[name]
            if name in cls.nested_records:
                record_type = cls.nested_records[name]
                value = tuple(record_type(**item) for item in value)
            values[name] = value
        return cls(**values)


_FIELDS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(array fields, metadata fields) of a record class, from its annotations."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        arrays = tuple(name for name in names if _is_array(hints[name]))
        _FIELDS[cls] = arrays, tuple(name for name in names if name not in arrays)
    return _FIELDS[cls]


def _is_array(hint: Any) -> bool:
    if isinstance(hint, types.UnionType):
        return set(hint.__args__) == {np.ndarray, type(None)}
    return hint is np.ndarray


def jsonable(value: Any, *, allow_nan: bool = False) -> Any:
    """Numpy scalars and arrays to plain Python, recursively; tuples become lists. NaN and inf
    become None unless ``allow_nan`` (as ``json.dumps``: strict JSON by default).

    >>> jsonable({"a": np.float32(0.5), "b": (np.inf, 1)}), jsonable([np.nan], allow_nan=True)
    ({'a': 0.5, 'b': [None, 1]}, [nan])
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, allow_nan=allow_nan) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, allow_nan=allow_nan) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biu" or (
            value.dtype.kind == "f" and (allow_nan or np.isfinite(value).all())
        ):
            return value.tolist()  # plain ints and floats already: no walk over every item
        return jsonable(value.tolist(), allow_nan=allow_nan)
    if isinstance(value, np.generic):
        return jsonable(value.item(), allow_nan=allow_nan)
    if isinstance(value, float) and not allow_nan and not math.isfinite(value):
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


def log_with_floor(values: np.ndarray) -> tuple[np.ndarray, float]:
    """(log(max(values, 0) + floor), floor) with floor = 1e-3 · the median finite value.

    Distance-like scores are right-skewed, so rules compare their logs; exact duplicates score
    0, and a floor far below the typical value keeps their log finite (1e-12 when the median
    is 0). Non-finite values stay non-finite.

    >>> log_with_floor(np.array([0.0, 1.0, 1.0]))[1]
    0.001
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    floor = 1e-3 * float(np.median(finite)) if finite.size else 0.0
    floor = floor if floor > 0 else 1e-12
    return np.log(np.maximum(values, 0.0) + floor), floor


def robust_threshold(values: np.ndarray, *, z: float = 3.5) -> tuple[float, float, float]:
    """(threshold, centre, spread) with threshold = median + z · robust SD of ``values``.

    The robust SD is 1.4826 · MAD, or 1.2533 · mean absolute deviation when more than half the
    values are equal (MAD = 0). ``z = 3.5`` is Iglewicz & Hoaglin's cut-off for the modified
    z-score: about 0.02% of a normal sample exceeds it on one side. Non-finite values are ignored; with
    fewer than ``MIN_VALUES_FOR_SPREAD`` values the threshold is infinite (no flags).

    Who cuts here: the near-duplicate rule (:mod:`shoal.analysis.duplicates`), on the low side: a pair
    is a near-duplicate when its distance is below exp(m - 3.5 s), m and s the median and
    robust SD of every sample's log nearest-neighbour distance (a fixed z, not a rate: copies
    sit many robust SDs below the bulk, whatever their number); and the outliers' earlier
    fixed rule, on request. The outliers' default rule cuts with :func:`gaussian_fdr_cut` instead, whose null
    uses this centre and spread.
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
        values, _ = log_with_floor(values)
    _, centre, spread = robust_threshold(values)
    if not np.isfinite(centre) or spread == 0:
        return np.where(np.isfinite(values), 0.0, values)
    return (values - centre) / spread


class NullCut(NamedTuple):
    """Where :func:`gaussian_fdr_cut` cuts: ``threshold`` on the values' scale, the null's
    ``centre`` and ``spread``, the cut as a null z-score ``z``, and ``n_flagged`` values above it."""

    threshold: float
    centre: float
    spread: float
    z: float
    n_flagged: int


def gaussian_fdr_cut(values: np.ndarray, *, fdr: float) -> NullCut:
    """Benjamini–Hochberg cut at false-discovery rate ``fdr`` on the upper tail of ``values``,
    against a Gaussian null fitted to their bulk (an *empirical null*, Efron 2004).

    The null is N(centre, spread²) with the median and robust SD of :func:`robust_threshold`:
    most values are ordinary, so the bulk of the distribution tells what ordinary looks like,
    and a few extreme values move neither statistic. Each value gets the one-sided p-value
    ``P(N > value)`` and the Benjamini & Hochberg (1995) step-up procedure keeps the largest R
    with ``p_(R) <= fdr * R / n``: the threshold is the value whose p-value is ``fdr * R / n``,
    so exactly the R largest values exceed it. Under the null the expected share of ordinary
    values among those above the threshold is at most ``fdr``; a set with nothing unusual gets
    no flag with probability about ``1 - fdr``. When nothing is flagged (R = 0) the threshold is
    still reported, as the value a single sample would have to exceed (p = ``fdr / n``).
    The cut adapts to contamination: many clearly unusual values lower it, none raise it to
    the Bonferroni level. Non-finite values are ignored; with fewer than
    ``MIN_VALUES_FOR_SPREAD`` values or zero spread the threshold is infinite (no flags).

    >>> cut = gaussian_fdr_cut(np.r_[np.linspace(-2, 2, 200), 9.0], fdr=0.05)
    >>> cut.n_flagged, round(cut.z, 2)
    (1, 3.48)
    """
    from scipy.special import ndtr, ndtri

    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    _, centre, spread = robust_threshold(finite)
    if not np.isfinite(centre) or spread == 0.0 or finite.size < MIN_VALUES_FOR_SPREAD:
        return NullCut(float("inf"), centre, spread, float("inf"), 0)
    n = finite.size
    p_values = np.sort(ndtr(-(finite - centre) / spread))
    below = np.flatnonzero(p_values <= fdr * np.arange(1, n + 1) / n)
    n_flagged = int(below[-1] + 1) if below.size else 0
    z = float(-ndtri(fdr * max(n_flagged, 1) / n))
    return NullCut(centre + z * spread, centre, spread, z, n_flagged)
