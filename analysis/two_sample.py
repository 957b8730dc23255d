"""Two-sample permutation tests: *whether* a current set is drawn like a reference set.

The embeddings of both sides are pooled (L2-normalised, then reduced by :class:`shoal.analysis.pca.BlockPCA`
fitted on the pooled sample, so the reduction is blind to which side a sample is on). Every
registered test computes its statistic for the observed split *and* for ``n_permutations`` random
relabellings in a few matrix products, so the p-value
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

Tests register by name (``@register_test("name")``); registering different code under a taken
name raises ``ValueError``, an unknown name ``shoal.registry.UnknownNameError`` (a ``ValueError``).
Above ``max_samples`` pooled samples the test runs on a random subsample (the smaller side is
kept whole up to half the budget); ``n_used`` in the result says how many, it never happens
silently. :func:`shoal.analysis.compare.compare` adds *where* the sets differ.

Example:
    >>> rng = np.random.default_rng(2)
    >>> outcome = two_sample_test(rng.normal(size=(100, 4)), rng.normal(size=(80, 4)) + 1)
    >>> outcome.p_value < 0.01, outcome.method, outcome.n_used
    (True, 'mmd', 180)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoal.analysis.blocks import sample_rows, take_rows
from shoal.analysis.pca import BlockPCA
from shoal.registry import Registry

#: Random relabellings per test. The smallest reachable p-value is 1 / (1 + n_permutations).
DEFAULT_N_PERMUTATIONS = 500
#: Pooled samples the test uses at most; beyond it, a random subsample (reported).
DEFAULT_MAX_SAMPLES = 5000
#: PCA dimensions the test (and compare's clusters) work in.
DEFAULT_N_COMPONENTS = 50
#: Folds of the cross-fitted domain classifier, and its ridge penalty as a multiple of the mean
#: feature variance times the training size (strong shrinkage towards the mean-difference
#: direction, which is where a shift of class mixture shows).
CLASSIFIER_FOLDS = 5
CLASSIFIER_SHRINKAGE = 10.0


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
COMPARISON_TESTS: Registry[ComparisonTest] = Registry("comparison method")


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
    return COMPARISON_TESTS.decorator(name)


def available_tests() -> list[str]:
    """Names accepted by ``compare(method=...)`` besides ``"auto"``."""
    return COMPARISON_TESTS.names()


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


# --------------------------------------------------------------------------- running a test


@dataclass(frozen=True, eq=False)
class TwoSampleResult:
    """The global test alone: ``two_sample_test``'s result (fields as in ComparisonResult).

    null_statistics: (n_permutations,) the statistic under random relabellings; details holds
    the test's notes and ``standardised_statistic`` = (observed - null mean) / null SD. pca: the
    PCA the test ran in, fitted on the pooled sample (``compare`` clusters in the same space).
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
    pca: BlockPCA = field(repr=False)
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
    """Test whether ``current`` is drawn like ``reference`` (the module docstring has the tests).

    reference: (n_reference, dim), current: (n_current, dim), any float or int dtype, may be
    memory maps. ``method``: a registered test or ``"auto"`` (= ``"mmd"``). ``compare`` runs
    exactly this test (same statistic, p-value and subsampling for the same arguments) and adds
    novelty and clusters.

    Example:
        >>> rng = np.random.default_rng(3)
        >>> same = two_sample_test(rng.normal(size=(100, 4)), rng.normal(size=(80, 4)))
        >>> bool(same.p_value > 0.05), same.null_statistics.shape
        (True, (500,))
    """
    reference, current = check_pair(reference, current)
    test_name = "mmd" if method == "auto" else method
    test = COMPARISON_TESTS[test_name]
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    if max_samples < 4:
        raise ValueError(f"max_samples must be >= 4, got {max_samples}")
    rng = np.random.default_rng(random_state)
    n_reference, n_current = len(reference), len(current)
    reference_used = sample_rows(n_reference, _budget(n_reference, n_current, max_samples), rng)
    current_used = sample_rows(n_current, _budget(n_current, n_reference, max_samples), rng)
    pooled = np.vstack([take_rows(reference, reference_used), take_rows(current, current_used)])
    is_current = np.r_[np.zeros(len(reference_used), bool), np.ones(len(current_used), bool)]
    # PCA sees the pooled sample only, blind to sides: the permutation test stays exact.
    pca = BlockPCA(n_components, normalize=True, random_state=random_state).fit(pooled)
    labels = permutation_labels(is_current, n_permutations, rng)
    outcome = test(pca.transform(pooled), labels, rng=rng)
    values = np.asarray(outcome.values, dtype=np.float64)
    if values.shape != (1 + n_permutations,):
        raise ValueError(
            f"comparison test {test_name!r} returned {values.shape} values for "
            f"{1 + n_permutations} label columns"
        )
    return TwoSampleResult(
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
        pca=pca,
    )


def _standardised(values: np.ndarray) -> float:
    """(observed - null mean) / null SD: how many null SDs the observed statistic lies out."""
    null = values[1:]
    spread = float(np.std(null))
    return float((values[0] - np.mean(null)) / spread) if spread > 0 else 0.0


def check_pair(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two sides as 2-D numeric arrays (memory maps stay maps); raises ValueError on a
    dim mismatch or fewer than 2 samples on a side."""
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
