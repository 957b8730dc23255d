"""Reference-vs-current comparison: *whether* two subsets of a dataset differ, and *where*.

Works on any two subsets (train vs test, labelled vs production), no labels needed.

* **Whether**: the two-sample permutation test of :mod:`shoal.analysis.two_sample` (MMD by default,
  or a domain classifier; exact p-values) on the pooled embeddings reduced by PCA.
* **Where**:

  - per current sample, *novelty*: its mean cosine distance to the ``novelty_neighbors`` nearest
    reference samples, ranked among the same distance of reference samples to the *other*
    reference samples. ``novelty`` is that percentile in [0, 1] (higher = farther from the
    reference than most reference samples are from each other); ``novelty_p_values`` is the
    conformal p-value ``(1 + #{reference >= sample}) / (1 + n_calibration)`` in (0, 1]
    (lower = more novel), and a sample is flagged when it is <= ``novelty_alpha``. On a current
    set drawn like the reference about ``novelty_alpha`` of the samples are flagged (slightly
    fewer: a reference sample's own neighbours come from one sample fewer).
  - per cluster, *composition*: KMeans clusters of the pooled PCA features (by default about
    20 samples of the smaller side per cluster, 2 to 30 clusters); each cluster's count of
    current vs reference samples against the rest, Fisher's exact test, Benjamini-Hochberg
    across clusters at level ``alpha``; over- or under-represented clusters are named with the
    ratio of shares and the counts.

Example:
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.normal(size=(300, 16)); current = rng.normal(size=(200, 16)) + 0.5
    >>> result = compare(reference, current, n_permutations=99)
    >>> result.p_value < 0.05, result.novelty.shape
    (True, (200,))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shoal.analysis.blocks import BLOCK_ROWS, sample_rows, take_rows
from shoal.analysis.knn import EXACT_MAX_SAMPLES, NeighborIndex
from shoal.analysis.pca import BlockPCA, single_threaded
from shoal.analysis.results import ArrayRecord, jsonable
from shoal.analysis.two_sample import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_N_COMPONENTS,
    DEFAULT_N_PERMUTATIONS,
    check_pair,
    two_sample_test,
)

if TYPE_CHECKING:
    import pandas as pd

#: Reference neighbours whose mean distance defines a sample's novelty.
DEFAULT_NOVELTY_NEIGHBORS = 10
#: A current sample is flagged as novel when its conformal p-value is at most this.
DEFAULT_NOVELTY_ALPHA = 0.01
#: Reference samples (at most) whose own neighbour distances calibrate novelty.
MAX_NOVELTY_CALIBRATION = 20_000
#: Pooled samples (at most) that KMeans is fitted on; every sample is then assigned.
MAX_CLUSTER_FIT = 20_000
#: Clusters at most when ``n_clusters=None``; and the target samples of the smaller side per
#: cluster (an exact Fisher test per cluster stays meaningful at about 20 of the smaller side).
MAX_AUTO_CLUSTERS = 30
SAMPLES_PER_CLUSTER = 20


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClusterShift:
    """One cluster of the pooled embeddings and how its share moved from reference to current.

    reference_fraction / current_fraction: share of each side's samples that fall in the
    cluster, in [0, 1]. ratio: current_fraction / reference_fraction with 0.5 added to both
    counts so it stays finite; > 1 = over-represented in current, < 1 = under-represented.
    p_value: Fisher's exact test of the cluster's counts against the rest; q_value: its
    Benjamini-Hochberg adjustment across clusters; significant: q_value <= alpha.
    """

    cluster: int
    n_reference: int
    n_current: int
    reference_fraction: float
    current_fraction: float
    ratio: float
    p_value: float
    q_value: float
    direction: str  # "over" | "under" | "even" (current vs reference share)
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class ComparisonResult(ArrayRecord):
    """A reference-vs-current comparison (see the module docstring for every score's meaning).

    Arrays: novelty, novelty_p_values, novelty_flags, novelty_distance, nearest_reference and
    current_clusters are (n_current,); reference_clusters is (n_reference,). ``n_used`` pooled
    samples (``n_used_reference`` + ``n_used_current``) entered the global test.
    """

    method: str
    p_value: float
    statistic: float
    effect_size: float
    effect_name: str
    alpha: float
    n_reference: int
    n_current: int
    n_used: int
    n_used_reference: int
    n_used_current: int
    n_permutations: int
    novelty: np.ndarray
    novelty_p_values: np.ndarray
    novelty_flags: np.ndarray
    novelty_distance: np.ndarray
    nearest_reference: np.ndarray
    clusters: tuple[ClusterShift, ...]
    reference_clusters: np.ndarray
    current_clusters: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    reference_ids: np.ndarray | None = None
    current_ids: np.ndarray | None = None

    nested_records: ClassVar[Mapping[str, type]] = {"clusters": ClusterShift}

    @property
    def significant(self) -> bool:
        """True when the global test rejects "same distribution" at level ``alpha``."""
        return self.p_value <= self.alpha

    @property
    def shifted_clusters(self) -> list[ClusterShift]:
        """Significant clusters, most over-represented first, then most under-represented."""
        chosen = [c for c in self.clusters if c.significant]
        return sorted(chosen, key=lambda c: -abs(math.log(c.ratio)))

    def verdict(self, unit: str = "samples") -> str:
        """A plain-language summary of the comparison, a few sentences long; ``unit`` names what
        the rows are ("boxes" for an object-level set)."""
        test_name = {
            "mmd": "MMD permutation test",
            "classifier": "domain-classifier permutation test",
        }
        used = f"{self.n_used_reference} reference vs {self.n_used_current} current {unit}" + (
            ""
            if self.n_used == self.n_reference + self.n_current
            else f", a random subsample of {self.n_reference} vs {self.n_current}"
        )
        head = (
            "The current set differs from the reference"
            if self.significant
            else "No difference between the current set and the reference was detected"
        )
        relation = "<=" if self.significant else ">"
        parts = [
            f"{head} ({test_name.get(self.method, self.method)}: p = {self.p_value:.3g} {relation} "
            f"alpha = {self.alpha:g}; {self.effect_name} = {self.effect_size:.3g}; {used})."
        ]
        shifted = self.shifted_clusters
        if shifted:
            described = [
                f"cluster {c.cluster} {c.direction}-represented (x{c.ratio:.2g}: "
                f"{c.n_current} current vs {c.n_reference} reference)"
                for c in shifted[:3]
            ]
            more = f" and {len(shifted) - 3} more" if len(shifted) > 3 else ""
            parts.append(
                f"{len(shifted)} of {len(self.clusters)} clusters changed share "
                f"(Benjamini-Hochberg, q <= {self.alpha:g}): " + "; ".join(described) + more + "."
            )
        else:
            parts.append(f"No cluster changed share significantly ({len(self.clusters)} clusters).")
        n_flagged = int(self.novelty_flags.sum())
        novelty_alpha = self.params.get("novelty_alpha", DEFAULT_NOVELTY_ALPHA)
        parts.append(
            f"{n_flagged} of {self.n_current} current {unit} ({n_flagged / max(self.n_current, 1):.1%}) "
            f"are novel (farther from the reference than all but {novelty_alpha:.0%} of reference "
            f"{unit} are from each other; about {novelty_alpha:.0%} expected without a shift)."
        )
        return " ".join(parts)

    # -- edges: JSON, DataFrames, storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays become lists, NaN becomes None)."""
        return jsonable(
            {
                "reference_ids": None,
                "current_ids": None,
                **self.to_meta(),
                **self.to_arrays(),
                "significant": self.significant,
                "verdict": self.verdict(),
            }
        )

    def clusters_frame(self) -> pd.DataFrame:
        """One row per cluster (the ClusterShift fields), most significant first."""
        import pandas as pd

        columns = [f.name for f in fields(ClusterShift)]
        frame = pd.DataFrame([c.to_dict() for c in self.clusters], columns=columns)
        return frame.sort_values(["q_value", "p_value"], kind="stable").reset_index(drop=True)

    def novelty_frame(self) -> pd.DataFrame:
        """One row per current sample: id (if known), novelty, p-value, flag, distance, cluster."""
        import pandas as pd

        frame = pd.DataFrame(
            {
                "novelty": self.novelty,
                "novelty_p_value": self.novelty_p_values,
                "novel": self.novelty_flags,
                "novelty_distance": self.novelty_distance,
                "nearest_reference": self.nearest_reference,
                "cluster": self.current_clusters,
            }
        )
        if self.current_ids is not None:
            frame.insert(0, "sample_id", self.current_ids)
        if self.reference_ids is not None:
            frame["nearest_reference_id"] = self.reference_ids[self.nearest_reference]
        return frame


# --------------------------------------------------------------------------- the kernel


def compare(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    method: str = "auto",
    alpha: float = 0.05,
    n_permutations: int = DEFAULT_N_PERMUTATIONS,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    n_components: int = DEFAULT_N_COMPONENTS,
    novelty_neighbors: int = DEFAULT_NOVELTY_NEIGHBORS,
    novelty_alpha: float = DEFAULT_NOVELTY_ALPHA,
    n_clusters: int | None = None,
    random_state: int = 0,
) -> ComparisonResult:
    """Test whether ``current`` is drawn like ``reference``, and show where it differs.

    reference: (n_reference, dim) embeddings; current: (n_current, dim), same dim; float16/32/64,
    may be memory maps or :class:`~shoal.analysis.rows.RowSubset` views (both are read in blocks). ``method``: a registered test name or ``"auto"`` (= ``"mmd"``).
    ``n_clusters=None`` picks ``clip(min(n_reference, n_current) // 20, 2, 30)``.
    Same inputs and ``random_state`` give the same result.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> result = compare(rng.normal(size=(200, 8)), rng.normal(size=(150, 8)), n_permutations=99)
        >>> result.significant, result.n_used
        (False, 350)
    """
    reference, current = check_pair(reference, current)
    n_reference, n_current = len(reference), len(current)
    if not 0 < alpha < 1 or not 0 < novelty_alpha < 1:
        raise ValueError(
            f"alpha and novelty_alpha must lie in (0, 1), got {alpha} and {novelty_alpha}"
        )
    whether = two_sample_test(
        reference,
        current,
        method=method,
        n_permutations=n_permutations,
        max_samples=max_samples,
        n_components=n_components,
        random_state=random_state,
    )
    novelty = _novelty(reference, current, n_neighbors=novelty_neighbors, random_state=random_state)
    cluster_count = (
        _auto_clusters(n_reference, n_current) if n_clusters is None else int(n_clusters)
    )
    # Clusters live in the test's PCA space: fitted on the pooled sample, blind to sides.
    reference_clusters, current_clusters = _cluster(
        reference,
        current,
        whether.pca,
        n_clusters=cluster_count,
        random_state=random_state,
    )
    shifts = cluster_shifts(reference_clusters, current_clusters, alpha=alpha)

    return ComparisonResult(
        method=whether.method,
        p_value=whether.p_value,
        statistic=whether.statistic,
        effect_size=whether.effect_size,
        effect_name=whether.effect_name,
        alpha=alpha,
        n_reference=n_reference,
        n_current=n_current,
        n_used=whether.n_used,
        n_used_reference=whether.n_used_reference,
        n_used_current=whether.n_used_current,
        n_permutations=n_permutations,
        novelty=novelty.scores,
        novelty_p_values=novelty.p_values,
        novelty_flags=novelty.p_values <= novelty_alpha,
        novelty_distance=novelty.distances,
        nearest_reference=novelty.nearest,
        clusters=shifts,
        reference_clusters=reference_clusters,
        current_clusters=current_clusters,
        params={
            "method": method,
            "max_samples": max_samples,
            "n_components": whether.pca.n_components_,
            "novelty_neighbors": novelty.n_neighbors,
            "novelty_alpha": novelty_alpha,
            "novelty_calibration_samples": novelty.n_calibration,
            "novelty_search": novelty.search_method,
            "n_clusters": int(max(len(shifts), 0)),
            "random_state": random_state,
        },
        details=whether.details,
    )


# --------------------------------------------------------------------------- where: novelty


@dataclass(frozen=True)
class _Novelty:
    scores: np.ndarray
    p_values: np.ndarray
    distances: np.ndarray
    nearest: np.ndarray
    n_neighbors: int
    n_calibration: int
    search_method: str


def _novelty(
    reference: np.ndarray, current: np.ndarray, *, n_neighbors: int, random_state: int
) -> _Novelty:
    """Conformal novelty of current samples against the reference's own neighbour distances."""
    n_reference = len(reference)
    k = max(1, min(n_neighbors, n_reference - 1))
    search_method = "exact" if n_reference <= EXACT_MAX_SAMPLES else "hnsw"
    index = NeighborIndex(reference, metric="cosine", method=search_method)
    calibration = sample_rows(
        n_reference, MAX_NOVELTY_CALIBRATION, np.random.default_rng(random_state)
    )
    # Each calibration sample searches the reference without itself (duplicates still count).
    _, calibration_distances = index.search(
        index.vectors_[calibration], k, exclude=[[int(i)] for i in calibration]
    )
    calibration_scores = np.sort(_mean_distance(calibration_distances))
    nearest = np.empty((len(current), k), dtype=np.int64)
    distances = np.empty((len(current), k), dtype=np.float32)
    for start in range(0, len(current), BLOCK_ROWS):
        block = np.asarray(current[start : start + BLOCK_ROWS], dtype=np.float32)
        nearest[start : start + len(block)], distances[start : start + len(block)] = index.search(
            block, k
        )
    current_scores = _mean_distance(distances)
    below = np.searchsorted(calibration_scores, current_scores, side="left")
    n_calibration = len(calibration_scores)
    return _Novelty(
        scores=below / n_calibration,
        p_values=(1 + n_calibration - below) / (1 + n_calibration),
        distances=current_scores,
        nearest=nearest[:, 0].astype(np.int64),
        n_neighbors=k,
        n_calibration=n_calibration,
        search_method=search_method,
    )


def _mean_distance(distances: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(distances), distances, np.nan)
    return np.nan_to_num(np.nanmean(finite, axis=1), nan=2.0).astype(np.float64)


# --------------------------------------------------------------------------- where: clusters


def _auto_clusters(n_reference: int, n_current: int) -> int:
    return int(np.clip(min(n_reference, n_current) // SAMPLES_PER_CLUSTER, 2, MAX_AUTO_CLUSTERS))


def _cluster(
    reference: np.ndarray,
    current: np.ndarray,
    pca: BlockPCA,
    *,
    n_clusters: int,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray]:
    """KMeans on the PCA scores of at most ``MAX_CLUSTER_FIT`` pooled rows, then every row of
    both sides assigned block by block: no pooled copy of either side, nor of their scores."""
    from sklearn.cluster import KMeans

    n_reference = len(reference)
    n_pooled = n_reference + len(current)
    n_clusters = max(1, min(n_clusters, n_pooled))
    fit_rows = sample_rows(n_pooled, MAX_CLUSTER_FIT, np.random.default_rng(random_state))
    fit_features = np.vstack(
        [
            pca.transform(take_rows(reference, fit_rows[fit_rows < n_reference])),
            pca.transform(take_rows(current, fit_rows[fit_rows >= n_reference] - n_reference)),
        ]
    )
    model = KMeans(n_clusters=n_clusters, n_init=3, random_state=random_state)
    labels = []
    with warnings.catch_warnings(), single_threaded():
        # Fewer distinct points than clusters: KMeans warns and returns what it found.
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(fit_features)
        for side in (reference, current):
            side_labels = np.empty(len(side), dtype=np.int64)
            for start in range(0, len(side), BLOCK_ROWS):
                block = pca.transform(side[start : start + BLOCK_ROWS])
                side_labels[start : start + len(block)] = model.predict(block)
            labels.append(side_labels)
    return labels[0], labels[1]


def cluster_shifts(
    reference_clusters: np.ndarray, current_clusters: np.ndarray, *, alpha: float = 0.05
) -> tuple[ClusterShift, ...]:
    """Per-cluster change of share between reference and current, BH-corrected.

    reference_clusters: (n_reference,) cluster ids, current_clusters: (n_current,). Fisher's
    exact test per cluster (its counts vs the rest); exact because the clusters were found
    without looking at which side a sample is on.

    Example:
        >>> shifts = cluster_shifts(np.array([0] * 50 + [1] * 50), np.array([0] * 20 + [1] * 80))
        >>> [(s.cluster, s.direction, s.significant) for s in shifts]
        [(0, 'under', True), (1, 'over', True)]
    """
    from scipy.stats import false_discovery_control, fisher_exact

    reference_clusters = np.asarray(reference_clusters, dtype=np.int64)
    current_clusters = np.asarray(current_clusters, dtype=np.int64)
    n_reference, n_current = len(reference_clusters), len(current_clusters)
    ids = np.union1d(reference_clusters, current_clusters)
    reference_counts = np.array([np.count_nonzero(reference_clusters == c) for c in ids])
    current_counts = np.array([np.count_nonzero(current_clusters == c) for c in ids])
    p_values = np.array(
        [
            fisher_exact([[cur, ref], [n_current - cur, n_reference - ref]]).pvalue
            for cur, ref in zip(current_counts, reference_counts, strict=True)
        ]
    )
    q_values = false_discovery_control(p_values, method="bh") if len(p_values) else p_values
    shifts = []
    for cluster, ref, cur, p, q in zip(
        ids, reference_counts, current_counts, p_values, q_values, strict=True
    ):
        reference_fraction = ref / n_reference
        current_fraction = cur / n_current
        ratio = ((cur + 0.5) / n_current) / ((ref + 0.5) / n_reference)
        direction = (
            "over"
            if current_fraction > reference_fraction
            else "under"
            if current_fraction < reference_fraction
            else "even"
        )
        shifts.append(
            ClusterShift(
                cluster=int(cluster),
                n_reference=int(ref),
                n_current=int(cur),
                reference_fraction=float(reference_fraction),
                current_fraction=float(current_fraction),
                ratio=float(ratio),
                p_value=float(p),
                q_value=float(q),
                direction=direction,
                significant=bool(q <= alpha),
            )
        )
    return tuple(shifts)
