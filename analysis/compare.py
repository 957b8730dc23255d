"""Reference-vs-current comparison: *whether* two subsets of a dataset differ, and *where*.

Works on any two subsets (train vs test, labelled vs production), no labels needed.

* **Whether**: a two-sample permutation test on the pooled embeddings (L2-normalised, then
  reduced by PCA fitted on the pooled sample, so the reduction is blind to which side a sample
  is on). Every registered test computes its statistic for the observed split *and* for
  ``n_permutations`` random relabellings in a few matrix products, so the p-value
  ``(1 + #{permuted >= observed}) / (1 + n_permutations)`` is exact (valid at any sample size)
  without refitting anything per permutation.

  - ``"mmd"`` (``"auto"``): maximum mean discrepancy with a Gaussian kernel, bandwidth from the
    median heuristic. Effect size: the unbiased MMD² estimate (0 = same distribution, at most 2).
    The default because it was the more powerful of the two on shifts of class mixture in real
    embeddings (benchmarks/bench_compare.py).
  - ``"classifier"``: a domain classifier, cross-fitted over 5 folds, scored by out-of-fold AUC.
    The classifier is ridge (least-squares) regression on the PCA features: its out-of-fold
    scores are a linear function of the labels, so each permutation costs one product, not a
    refit. (A Mann-Whitney test on out-of-fold scores would not be valid: those scores share
    training data and are dependent.) Effect size: AUC - 0.5, in [-0.5, 0.5], 0 = no signal.

  Above ``max_samples`` pooled samples the test runs on a random subsample (the smaller side is
  kept whole up to half the budget); ``n_used`` in the result says how many, it never happens
  silently.
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
    100 samples of the smaller side per cluster, 2 to 30 clusters); each cluster's count of
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from analysis.knn import EXACT_MAX_SAMPLES, NeighborIndex, normalize
from analysis.results import jsonable

if TYPE_CHECKING:
    import pandas as pd

#: Random relabellings per test. The smallest reachable p-value is 1 / (1 + n_permutations).
DEFAULT_N_PERMUTATIONS = 500
#: Pooled samples the global test uses at most; beyond it, a random subsample (reported).
DEFAULT_MAX_SAMPLES = 5000
#: PCA dimensions for the global test and the clusters.
DEFAULT_N_COMPONENTS = 50
#: Reference neighbours whose mean distance defines a sample's novelty.
DEFAULT_NOVELTY_NEIGHBORS = 10
#: A current sample is flagged as novel when its conformal p-value is at most this.
DEFAULT_NOVELTY_ALPHA = 0.01
#: Reference samples (at most) whose own neighbour distances calibrate novelty.
MAX_NOVELTY_CALIBRATION = 20_000
#: Pooled samples (at most) that KMeans is fitted on; every sample is then assigned.
MAX_CLUSTER_FIT = 20_000
#: Clusters at most when ``n_clusters=None``; and the target samples of the smaller side per cluster.
MAX_AUTO_CLUSTERS = 30
SAMPLES_PER_CLUSTER = (
    20  # an exact (Fisher) test per cluster stays meaningful at ~20 of the smaller side
)
#: Folds of the cross-fitted domain classifier, and its ridge penalty as a multiple of the mean
#: feature variance times the training size (strong shrinkage towards the mean-difference
#: direction, which is where a shift of class mixture shows).
CLASSIFIER_FOLDS = 5
CLASSIFIER_SHRINKAGE = 10.0
#: Rows per block when projecting (maybe memory-mapped) embeddings.
_BLOCK_ROWS = 8192
#: Bump when a change in this module changes results, so cached comparisons are recomputed.
CACHE_VERSION = 1
ARTEFACT_KIND = "compare"


# --------------------------------------------------------------------------- the test registry


@dataclass(frozen=True, eq=False)
class PermutationStatistic:
    """What a registered two-sample test returns.

    values: (1 + n_permutations,) the statistic for each column of the label matrix it was
    given, values[0] for the observed split; larger = more different. effect_size: a
    descriptive size on the test's own scale, named by effect_name. The p-value is computed
    from ``values`` by the framework, not by the test.
    """

    values: np.ndarray
    effect_size: float
    effect_name: str
    details: dict[str, Any] = field(default_factory=dict)


#: A comparison test: ``fn(features, labels, *, rng) -> PermutationStatistic``. features: the
#: (n_samples, n_components) pooled PCA matrix; labels: (n_samples, 1 + n_permutations) 0/1
#: floats, 1 = current, column 0 the observed split and the rest random relabellings. A test
#: computes its statistic for every column with the same procedure, and may use ``rng`` for
#: choices that ignore the labels (e.g. folds); then the p-value is an exact permutation p-value.
ComparisonTest = Callable[..., PermutationStatistic]
COMPARISON_TESTS: dict[str, ComparisonTest] = {}


def register_test(name: str) -> Callable[[ComparisonTest], ComparisonTest]:
    """Decorator: make a two-sample test available to ``compare(method=name)``.

    Example:
        >>> @register_test("mean-shift-demo")
        ... def _demo(features, labels, *, rng):
        ...     gaps = np.linalg.norm(features.T @ signed_weights(labels), axis=0)
        ...     return PermutationStatistic(gaps, float(gaps[0]), "mean gap")
        >>> "mean-shift-demo" in available_tests()
        True
    """

    def decorate(fn: ComparisonTest) -> ComparisonTest:
        existing = COMPARISON_TESTS.get(name)
        if existing is not None and _qualified(existing) != _qualified(fn):
            raise ValueError(
                f"comparison test {name!r} is already registered by {_qualified(existing)}"
            )
        COMPARISON_TESTS[name] = fn
        return fn

    return decorate


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def available_tests() -> list[str]:
    """Names accepted by ``compare(method=...)`` besides ``"auto"``."""
    return sorted(COMPARISON_TESTS)


def permutation_labels(
    is_current: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_samples, 1 + n_permutations) float 0/1 matrix: column 0 the observed labels, then shuffles."""
    observed = np.asarray(is_current, dtype=np.float64)
    shuffled = rng.permuted(np.tile(observed, (n_permutations, 1)), axis=1)
    return np.ascontiguousarray(np.vstack([observed[None, :], shuffled]).T)


def permutation_p_value(statistics: np.ndarray) -> float:
    """Exact permutation p-value of ``statistics[0]`` among ``statistics[1:]`` (larger = more extreme)."""
    observed, null = statistics[0], statistics[1:]
    return float((1 + np.count_nonzero(null >= observed)) / (1 + len(null)))


def signed_weights(labels: np.ndarray) -> np.ndarray:
    """(n_samples, m) columns of +1/n_current on current rows, -1/n_reference on reference rows:
    ``features.T @ signed_weights(labels)`` is the current-minus-reference mean per column."""
    n_current = labels.sum(axis=0)
    n_reference = labels.shape[0] - n_current
    return labels / n_current - (1.0 - labels) / n_reference


@register_test("mmd")
def mmd_test(
    features: np.ndarray, labels: np.ndarray, *, rng: np.random.Generator
) -> PermutationStatistic:
    """Gaussian-kernel MMD, bandwidth by the median heuristic on the pooled sample.

    statistic and effect size: the unbiased MMD² estimate, 0 under no shift, at most 2 (it can
    be slightly negative by chance); larger = more different.
    """
    features = np.asarray(features, dtype=np.float64)
    n_samples = len(features)
    squared_norms = np.einsum("ij,ij->i", features, features)
    # One n x n float64 buffer, updated in place: distances, then the kernel.
    kernel = features @ features.T
    kernel *= -2.0
    kernel += squared_norms[:, None]
    kernel += squared_norms[None, :]
    np.maximum(kernel, 0.0, out=kernel)
    median = _off_diagonal_median(kernel)
    # All points identical: any bandwidth gives the same (zero) statistic.
    bandwidth = median if median > 0 else 1.0
    kernel /= -bandwidth
    np.exp(kernel, out=kernel)
    np.fill_diagonal(kernel, 0.0)

    n_current = float(labels[:, 0].sum())
    n_reference = n_samples - n_current
    kernel_current = kernel @ labels
    current_current = np.einsum("ij,ij->j", labels, kernel_current)
    reference_current = kernel_current.sum(axis=0) - current_current
    total = kernel.sum()
    reference_reference = total - 2.0 * reference_current - current_current
    mmd2 = (
        reference_reference / (n_reference * (n_reference - 1))
        + current_current / (n_current * (n_current - 1))
        - 2.0 * reference_current / (n_reference * n_current)
    )
    return PermutationStatistic(
        values=mmd2,
        effect_size=float(mmd2[0]),
        effect_name="MMD²",
        details={
            "kernel": "gaussian exp(-|x-y|² / median |x-y|²)",
            "median_squared_distance": median,
        },
    )


@register_test("classifier")
def classifier_test(
    features: np.ndarray, labels: np.ndarray, *, rng: np.random.Generator
) -> PermutationStatistic:
    """Cross-fitted ridge domain classifier scored by out-of-fold AUC.

    statistic: out-of-fold AUC in [0, 1] of telling current from reference; effect size
    AUC - 0.5 in [-0.5, 0.5]; larger = more different, 0 = no signal.
    """
    features = np.asarray(features, dtype=np.float64)
    n_samples, n_components = features.shape
    # Folds depend on neither features nor labels, so relabelling keeps the test exact.
    folds = rng.permutation(np.arange(n_samples) % CLASSIFIER_FOLDS)
    centred = features - features.mean(axis=0)
    mean_variance = float(np.einsum("ij,ij->", centred, centred)) / (
        n_samples * max(n_components, 1)
    )
    scores = np.empty_like(labels)
    for fold in range(CLASSIFIER_FOLDS):
        held_out = folds == fold
        train = ~held_out
        train_mean = features[train].mean(axis=0)
        train_features = features[train] - train_mean
        penalty = CLASSIFIER_SHRINKAGE * mean_variance * train.sum() + 1e-12
        gram = train_features.T @ train_features + penalty * np.eye(n_components)
        coefficients = np.linalg.solve(gram, train_features.T @ labels[train])
        scores[held_out] = (features[held_out] - train_mean) @ coefficients + labels[train].mean(
            axis=0
        )
    auc = _auc_columns(scores, labels)
    return PermutationStatistic(
        values=auc,
        effect_size=float(auc[0] - 0.5),
        effect_name="AUC - 0.5",
        details={
            "classifier": "ridge (least squares)",
            "folds": CLASSIFIER_FOLDS,
            "shrinkage": CLASSIFIER_SHRINKAGE,
        },
    )


def _off_diagonal_median(squared_distances: np.ndarray) -> float:
    """Median of the off-diagonal entries of a square matrix with a zero diagonal."""
    n_samples = len(squared_distances)
    if n_samples < 2:
        return 1.0
    flat = squared_distances.astype(np.float32).ravel()
    # The n zeros of the diagonal sort first; the off-diagonal median sits n places further on.
    n_off = n_samples * n_samples - n_samples
    low = n_samples + (n_off - 1) // 2
    high = n_samples + n_off // 2
    flat.partition([low, high])
    return float(flat[low] + flat[high]) / 2.0


def _auc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC per column of (n, m) scores against 0/1 labels (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    n_positive = labels.sum(axis=0)
    n_negative = labels.shape[0] - n_positive
    return (np.einsum("ij,ij->j", ranks, labels) - n_positive * (n_positive + 1) / 2) / (
        n_positive * n_negative
    )


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
class ComparisonResult:
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

    @property
    def significant(self) -> bool:
        """True when the global test rejects "same distribution" at level ``alpha``."""
        return self.p_value <= self.alpha

    @property
    def shifted_clusters(self) -> list[ClusterShift]:
        """Significant clusters, most over-represented first, then most under-represented."""
        chosen = [c for c in self.clusters if c.significant]
        return sorted(chosen, key=lambda c: -abs(math.log(c.ratio)))

    def verdict(self) -> str:
        """A plain-language summary of the comparison, a few sentences long."""
        test_name = {
            "mmd": "MMD permutation test",
            "classifier": "domain-classifier permutation test",
        }
        used = f"{self.n_used_reference} reference vs {self.n_used_current} current samples" + (
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
            f"{n_flagged} of {self.n_current} current samples ({n_flagged / max(self.n_current, 1):.1%}) "
            f"are novel (farther from the reference than all but {novelty_alpha:.0%} of reference "
            f"samples are from each other; about {novelty_alpha:.0%} expected without a shift)."
        )
        return " ".join(parts)

    # -- edges: JSON, DataFrames, storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays become lists, NaN becomes None)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "clusters":
                value = [c.to_dict() for c in value]
            out[f.name] = jsonable(value)
        out["significant"] = self.significant
        out["verdict"] = self.verdict()
        return out

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

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "novelty",
        "novelty_p_values",
        "novelty_flags",
        "novelty_distance",
        "nearest_reference",
        "reference_clusters",
        "current_clusters",
    )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The per-sample arrays, for ``Dataset.save_artefact``; ``from_arrays`` inverts it."""
        arrays = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        if self.reference_ids is not None:
            arrays["reference_ids"] = np.asarray(self.reference_ids, dtype=str)
        if self.current_ids is not None:
            arrays["current_ids"] = np.asarray(self.current_ids, dtype=str)
        return arrays

    def to_meta(self) -> dict[str, Any]:
        """Everything else, JSON-serialisable."""
        skip = {*self._ARRAYS, "reference_ids", "current_ids", "clusters"}
        meta = {f.name: jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        meta["clusters"] = [c.to_dict() for c in self.clusters]
        return meta

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> ComparisonResult:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in meta.items() if k in known and k != "clusters"}
        values.update({name: np.asarray(arrays[name]) for name in cls._ARRAYS})
        return cls(
            **values,
            clusters=tuple(ClusterShift(**c) for c in meta["clusters"]),
            reference_ids=arrays.get("reference_ids"),
            current_ids=arrays.get("current_ids"),
        )


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
    may be memory maps. ``method``: a registered test name or ``"auto"`` (= ``"mmd"``).
    ``n_clusters=None`` picks ``clip(min(n_reference, n_current) // 20, 2, 30)``.
    Same inputs and ``random_state`` give the same result.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> result = compare(rng.normal(size=(200, 8)), rng.normal(size=(150, 8)), n_permutations=99)
        >>> result.significant, result.n_used
        (False, 350)
    """
    reference, current = _check_pair(reference, current)
    n_reference, n_current = len(reference), len(current)
    if not 0 < alpha < 1 or not 0 < novelty_alpha < 1:
        raise ValueError(
            f"alpha and novelty_alpha must lie in (0, 1), got {alpha} and {novelty_alpha}"
        )
    rng = np.random.default_rng(random_state)
    whether, projection = _two_sample(
        reference,
        current,
        method=method,
        n_permutations=n_permutations,
        max_samples=max_samples,
        n_components=n_components,
        random_state=random_state,
        rng=rng,
    )

    novelty = _novelty(reference, current, n_neighbors=novelty_neighbors, rng=rng)
    cluster_count = (
        _auto_clusters(n_reference, n_current) if n_clusters is None else int(n_clusters)
    )
    reference_clusters, current_clusters = _cluster(
        projection.transform_blocks(reference),
        projection.transform_blocks(current),
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
            "n_components": projection.n_components,
            "novelty_neighbors": novelty.n_neighbors,
            "novelty_alpha": novelty_alpha,
            "novelty_calibration_samples": novelty.n_calibration,
            "novelty_search": novelty.search_method,
            "n_clusters": int(max(len(shifts), 0)),
            "random_state": random_state,
        },
        details=whether.details,
    )


@dataclass(frozen=True, eq=False)
class TwoSampleResult:
    """The global test alone: ``two_sample_test``'s result (fields as in ComparisonResult).

    null_statistics: (n_permutations,) the statistic under random relabellings; details holds
    the test's notes and ``standardised_statistic`` = (observed - null mean) / null SD.
    """

    method: str
    p_value: float
    statistic: float
    effect_size: float
    effect_name: str
    n_used_reference: int
    n_used_current: int
    n_permutations: int
    null_statistics: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_used(self) -> int:
        return self.n_used_reference + self.n_used_current


def two_sample_test(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    method: str = "auto",
    n_permutations: int = DEFAULT_N_PERMUTATIONS,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    n_components: int = DEFAULT_N_COMPONENTS,
    random_state: int = 0,
) -> TwoSampleResult:
    """Only the *whether* part of ``compare``: the permutation test, without novelty or clusters.

    reference: (n_reference, dim), current: (n_current, dim). Same statistic, p-value and
    subsampling as ``compare`` with the same arguments.

    Example:
        >>> rng = np.random.default_rng(2)
        >>> outcome = two_sample_test(rng.normal(size=(100, 4)), rng.normal(size=(80, 4)) + 1)
        >>> outcome.p_value < 0.01
        True
    """
    reference, current = _check_pair(reference, current)
    outcome, _ = _two_sample(
        reference,
        current,
        method=method,
        n_permutations=n_permutations,
        max_samples=max_samples,
        n_components=n_components,
        random_state=random_state,
        rng=np.random.default_rng(random_state),
    )
    return outcome


def _two_sample(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    method: str,
    n_permutations: int,
    max_samples: int,
    n_components: int,
    random_state: int,
    rng: np.random.Generator,
) -> tuple[TwoSampleResult, _Projection]:
    test_name = "mmd" if method == "auto" else method
    if test_name not in COMPARISON_TESTS:
        raise ValueError(
            f"unknown comparison method {method!r}; choose 'auto' or one of {available_tests()}"
        )
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    if max_samples < 4:
        raise ValueError(f"max_samples must be >= 4, got {max_samples}")
    n_reference, n_current = len(reference), len(current)
    reference_used = _subsample(n_reference, _budget(n_reference, n_current, max_samples), rng)
    current_used = _subsample(n_current, _budget(n_current, n_reference, max_samples), rng)
    pooled = normalize(np.vstack([reference[reference_used], current[current_used]]))
    is_current = np.r_[np.zeros(len(reference_used), bool), np.ones(len(current_used), bool)]
    # PCA sees the pooled sample only, blind to sides: the permutation test stays exact.
    projection = _Projection.fit(pooled, n_components=n_components, random_state=random_state)
    labels = permutation_labels(is_current, n_permutations, rng)
    outcome = COMPARISON_TESTS[test_name](projection.transform(pooled), labels, rng=rng)
    values = np.asarray(outcome.values, dtype=np.float64)
    if values.shape != (1 + n_permutations,):
        raise ValueError(
            f"comparison test {test_name!r} returned {values.shape} values for "
            f"{1 + n_permutations} label columns"
        )
    result = TwoSampleResult(
        method=test_name,
        p_value=permutation_p_value(values),
        statistic=float(values[0]),
        effect_size=outcome.effect_size,
        effect_name=outcome.effect_name,
        n_used_reference=len(reference_used),
        n_used_current=len(current_used),
        n_permutations=n_permutations,
        null_statistics=values[1:],
        details={**outcome.details, "standardised_statistic": _standardised(values)},
    )
    return result, projection


def _standardised(values: np.ndarray) -> float:
    """(observed - null mean) / null SD: how many null SDs the observed statistic lies out."""
    null = values[1:]
    spread = float(np.std(null))
    return float((values[0] - np.mean(null)) / spread) if spread > 0 else 0.0


def _check_pair(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = _check_embeddings(reference, "reference")
    current = _check_embeddings(current, "current")
    if reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"reference has dim {reference.shape[1]} but current has dim {current.shape[1]}"
        )
    if len(reference) < 2 or len(current) < 2:
        raise ValueError(
            f"need at least 2 samples on each side, got {len(reference)} reference and {len(current)} current"
        )
    return reference, current


def _check_embeddings(embeddings: np.ndarray, what: str) -> np.ndarray:
    if getattr(embeddings, "ndim", None) != 2:
        embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D (n_samples, dim) array, got shape {np.shape(embeddings)}"
        )
    if embeddings.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {embeddings.dtype}")
    return embeddings


def _budget(n_side: int, n_other: int, max_samples: int) -> int:
    """Samples of one side the global test keeps: the smaller side whole up to half the budget."""
    if n_side + n_other <= max_samples:
        return n_side
    half = max_samples // 2
    if n_side <= n_other:
        return min(n_side, half)
    return min(n_side, max_samples - min(n_other, half))


def _subsample(n: int, keep: int, rng: np.random.Generator) -> np.ndarray:
    if keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=keep, replace=False))


@dataclass(frozen=True)
class _Projection:
    """PCA fitted on pooled normalised embeddings; applied to raw embeddings block by block."""

    mean: np.ndarray
    components: np.ndarray  # (n_components, dim)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, normalised: np.ndarray, *, n_components: int, random_state: int) -> _Projection:
        from sklearn.decomposition import PCA

        n_components = max(1, min(n_components, normalised.shape[0] - 1, normalised.shape[1]))
        # Two power iterations keep >99 % of the top components' variance at a third of the cost.
        pca = PCA(
            n_components=n_components,
            svd_solver="randomized",
            iterated_power=2,
            random_state=random_state,
        )
        with _single_threaded():
            pca.fit(normalised)
        return cls(mean=pca.mean_.astype(np.float32), components=pca.components_.astype(np.float32))

    def transform(self, normalised: np.ndarray) -> np.ndarray:
        return (normalised - self.mean) @ self.components.T

    def transform_blocks(self, embeddings: np.ndarray) -> np.ndarray:
        out = np.empty((len(embeddings), self.n_components), dtype=np.float32)
        for start in range(0, len(embeddings), _BLOCK_ROWS):
            out[start : start + _BLOCK_ROWS] = self.transform(
                normalize(embeddings[start : start + _BLOCK_ROWS])
            )
        return out


def _single_threaded() -> Any:
    """Run bounded-size PCA/KMeans steps on one thread: their many small BLAS/LAPACK/OpenMP
    calls gain little from threads and stall badly when the cores are shared (measured: a
    randomized PCA of 2000 x 1280 took 0.1 s on one thread, over 1 s on two busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


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
    reference: np.ndarray, current: np.ndarray, *, n_neighbors: int, rng: np.random.Generator
) -> _Novelty:
    """Conformal novelty of current samples against the reference's own neighbour distances."""
    n_reference = len(reference)
    k = max(1, min(n_neighbors, n_reference - 1))
    search_method = "exact" if n_reference <= EXACT_MAX_SAMPLES else "hnsw"
    index = NeighborIndex(reference, metric="cosine", method=search_method)
    calibration = _subsample(n_reference, MAX_NOVELTY_CALIBRATION, rng)
    # Each calibration sample searches the reference without itself (duplicates still count).
    _, calibration_distances = index.search(
        index.vectors_[calibration], k, exclude=[[int(i)] for i in calibration]
    )
    calibration_scores = np.sort(_mean_distance(calibration_distances))
    nearest = np.empty((len(current), k), dtype=np.int64)
    distances = np.empty((len(current), k), dtype=np.float32)
    for start in range(0, len(current), _BLOCK_ROWS):
        block = np.asarray(current[start : start + _BLOCK_ROWS], dtype=np.float32)
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
    reference_features: np.ndarray,
    current_features: np.ndarray,
    *,
    n_clusters: int,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    pooled = np.vstack([reference_features, current_features])
    n_clusters = max(1, min(n_clusters, len(pooled)))
    rng = np.random.default_rng(random_state)
    fit_rows = _subsample(len(pooled), MAX_CLUSTER_FIT, rng)
    model = KMeans(n_clusters=n_clusters, n_init=3, random_state=random_state)
    with warnings.catch_warnings(), _single_threaded():
        # Fewer distinct points than clusters: KMeans warns and returns what it found.
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(pooled[fit_rows])
        labels = model.predict(pooled).astype(np.int64)
    return labels[: len(reference_features)], labels[len(reference_features) :]


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
