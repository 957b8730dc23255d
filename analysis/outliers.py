"""Outlier scores from embeddings and the shared kNN graph, with a flagging rule and evidence.

Scorers register by name (``@register_scorer("lof")``). Every scorer returns one float per sample,
**higher = more anomalous**; its range is stated in :data:`SCORERS` (``ScorerSpec.score_range``).
Registering different code under a taken name raises ``ValueError``; an unknown name raises
``shoal.registry.UnknownNameError`` (a ``ValueError`` and a ``KeyError``) listing the registered ones.

Default scorer ``"ensemble"``, an outlier at any of three scales (``"knn"`` is the first two):

* ``knn_local`` (from the shared graph): mean distance to the *far half* of each sample's k
  nearest neighbours (ranks k//2+1 .. k; with k = 15, ranks 8 to 15). Outliers often come in
  small clumps (near-copies, a few images from one foreign source); a clump member's nearest
  neighbours are its clump-mates, so the distance to the first few neighbours calls it normal.
  Skipping the nearest half makes the score blind to clumps of up to k//2 + 1 members while
  still averaging several distances (the k-th distance alone is clump-proof but noisier).
* ``knn_global``: the same idea at the scale of the data set. A foreign *group* larger than k
  (say 50 scanned digits among 5,000 garments: they resemble each other far more than anything
  else) looks perfectly normal to any k-neighbour score. Distances to the 5 nearest rows of a
  random subsample of 256 rows, averaged over 10 subsamples (subsampled kNN ensembles, Zimek et
  al. 2013; the subsample size of Isolation Forest, Liu et al. 2008), behave like a kNN distance
  with k ≈ 5 · n / 256: groups holding less than about 2% of the data cannot hide each other.
  Cost: 2,560 distances per sample, linear in n.
* ``mahalanobis``: the *shape* of the data. Scanned digits among garments sit close to some
  garments in plain distance (they land in the inliers' own upper tail of every kNN score:
  AUROC 0.97, yet no threshold on it reached precision and recall 0.5), but off the directions
  along which garments vary. The squared Mahalanobis distance in the leading principal axes
  (32, and at least 50 rows per axis, so 6 axes for 300 samples) measures exactly that. Fitted
  naively, a foreign group shapes the covariance it is measured with (it gets an axis of its
  own) and hides; so the covariance is refitted without the suspect rows, as in reweighted MCD
  (Rousseeuw & Van Driessen 1999): first without the 5% farthest, then repeatedly without the
  rows whose log-distance has a robust z above 3.5, until the kept set stops changing (at most
  6 refits). The last refit keeps every ordinary row, so a clean set's distances keep a
  near-Gaussian log tail (a fixed 10% trim instead inflated it: 1.8% of clean samples
  flagged; a cut at z = 3 dropped precision to 0.38 on some sets of 0.5% clumped photos).
  Cost: one PCA pass over the vectors in blocks and a few passes over n x 32 floats.

Each is turned into a robust z-score of its logarithm (median and 1.4826 · MAD, as below) and the
default score is the largest of the three.

Flagging rule (default; :func:`fdr_threshold`): flags chosen from the score distribution itself
at a stated false-discovery rate, ``fdr = 0.05``. Most samples of a data set are ordinary, so
the bulk of its scores shows what an ordinary score looks like: a Gaussian *empirical null*
(Efron 2004) is fitted to it, N(median, (1.4826 · MAD)²) of the log-scores (of the scores
themselves for the default score, already a robust z, and for ``isolation_forest``). Each sample
gets the p-value of its score under that null, and the Benjamini–Hochberg step-up procedure
flags the largest set in which the expected share of ordinary samples is at most ``fdr``
(:func:`shoal.analysis.results.gaussian_fdr_cut`).

* Nothing unusual: the first flag needs p < fdr / n (a null z of 4.1 at n = 2,000, 4.8 at
  50,000), so a clean set gets no flag in about 95% of cases, however large it is.
* Many unusual samples: the cut moves down with them (the R-th flag needs only
  p < fdr · R / n): with 100 clear outliers among 2,000 it sits near z = 2.8. A fixed cut (the
  earlier z > 3.5) misses part of such a crowd: 12-19 of 100 photos among 2,000 garments.
* Why Gaussian: the log kNN distances of real embeddings have a *lighter* upper tail than the
  Gaussian fitted to their bulk (5,000 Fashion-MNIST EfficientNet-Lite0 vectors: 99.9th
  percentile at z = 2.8 against 3.1), so the null errs towards fewer flags.

Measured on planted real outliers (benchmarks/bench_flags.py, 2,000 samples, 0.5-5% planted,
5 seeds): foreign photos, scattered or in tight clumps, are flagged with precision 0.88-0.99 and
recall 0.99-1.00 at every contamination level; scanned digits at 0.5-2% with precision
0.89-0.94 and recall 0.84-1.00 (the two kNN scales alone flagged none of them); mixed sources
with precision 0.71-0.95 and recall 0.44-0.80. Where the ranking's AUROC reaches 0.85 and some
threshold would reach precision and recall 0.5, the default flag does so in 101 of 104 runs.
Real sets with nothing planted get 0-0.3% flagged (Fashion-MNIST draws of 1,000 to 5,000, the
digits, the photos). Where it loses: 100 digits among 2,000 garments (5%) are a sub-population,
not outliers, to every scale (AUROC 0.2), and garments of held-out classes sit inside the
inliers' own tail (AUROC 0.5-0.8): the rule then flags nothing or a handful rather than a crowd
of ordinary samples. A set made of sub-populations gets its minority flagged, as it should:
among 500 trousers alone it flags 22, trousers whose nearest Fashion-MNIST neighbours are half
dresses and coats.

The threshold is reported on the score's own scale (``scores > threshold`` is flagged), also
when nothing is flagged, and ``params`` records the ``rule``, ``fdr``, the null's ``centre``
and ``robust_sd``, the cut as a null z-score ``z`` and ``n_tests``. ``threshold=`` (a score)
overrides the rule. ``z_threshold=`` selects the earlier fixed rule instead: flagged when the
(log-)score exceeds median + z robust SDs (Iglewicz & Hoaglin's modified z-score,
:func:`flag_threshold`; for the default score, when it exceeds z).

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(200, 8)) + 5.0
    >>> x[0] = -x[0]
    >>> result = score_outliers(x)
    >>> bool(result.flagged[0])
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.blocks import BLOCK_ROWS, take_rows
from shoal.analysis.knn import KnnGraph, build_knn_graph, prepare_rows
from shoal.analysis.pca import BlockPCA
from shoal.analysis.results import (
    ArrayRecord,
    gaussian_fdr_cut,
    ids_or_rows,
    jsonable,
    log_with_floor,
    robust_threshold,
    robust_z,
)
from shoal.registry import Registry

#: The scorer used when none is named.
DEFAULT_METHOD = "ensemble"
#: False-discovery rate of the default flags (Benjamini & Hochberg, 1995).
DEFAULT_FDR = 0.05
#: Cut-off of the fixed robust rule (modified z-score, Iglewicz & Hoaglin, 1993), used only when
#: asked for with ``z_threshold=``.
DEFAULT_Z_THRESHOLD = 3.5
#: The ``mahalanobis`` scorer (see the module docstring): at most this many principal axes, and
#: at least this many rows per axis; the share of rows left out of the first refit of the
#: covariance; later refits keep the rows whose log-distance has a robust z up to ``KEEP_Z``.
MAHALANOBIS_COMPONENTS = 32
MAHALANOBIS_ROWS_PER_AXIS = 50
MAHALANOBIS_FIRST_TRIM = 0.05
MAHALANOBIS_KEEP_Z = 3.5
MAHALANOBIS_MAX_STEPS = 6


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer: ``function(graph, embeddings, *, random_state, **params)``."""

    name: str
    function: Callable[..., np.ndarray]
    score_range: str
    needs_embeddings: bool = False
    log_scale: bool = True
    standardized: bool = False
    description: str = ""


SCORERS: Registry[ScorerSpec] = Registry("outlier scorer")


def register_scorer(
    name: str,
    *,
    score_range: str,
    needs_embeddings: bool = False,
    log_scale: bool = True,
    standardized: bool = False,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register an outlier scorer under ``name``; its scores must grow with anomaly.

    ``log_scale``: apply the flagging rule to log-scores (positive, right-skewed scores).
    ``standardized``: scores are already robust z-scores; the rule compares them to z directly.
    """

    def decorate(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        doc = (function.__doc__ or "").strip().splitlines()
        spec = ScorerSpec(
            name=name,
            function=function,
            score_range=score_range,
            needs_embeddings=needs_embeddings,
            log_scale=log_scale,
            standardized=standardized,
            description=doc[0] if doc else "",
        )
        return SCORERS.register(name, spec).function

    return decorate


@dataclass(frozen=True)
class OutlierResult(ArrayRecord):
    """Outlier scores for every sample, the flags, and the neighbours behind each flag.

    scores: (n_samples,) float32, higher = more anomalous, range per ``score_range``.
    flagged: (n_samples,) bool, ``scores > threshold``.
    flagged_indices: (n_flagged,) int64 rows of the flagged samples, most anomalous first.
    neighbor_indices / neighbor_distances: (n_flagged, k) the flagged samples' nearest
    neighbours in the graph (row numbers, distances ascending): the "why".
    """

    scores: np.ndarray
    flagged: np.ndarray
    threshold: float
    method: str
    score_range: str
    flagged_indices: np.ndarray
    neighbor_indices: np.ndarray
    neighbor_distances: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per sample: sample_id (or row), score, flagged, rank (1 = most anomalous)."""
        order = np.argsort(-self.scores, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        return pd.DataFrame(
            {
                "sample_id": ids_or_rows(sample_ids, len(self.scores)),
                "score": self.scores,
                "flagged": self.flagged,
                "rank": rank,
            }
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-able: summary, all scores, and per flagged sample its neighbours."""
        names = ids_or_rows(sample_ids, len(self.scores))
        flagged = [
            {
                "sample": names[row],
                "score": self.scores[row],
                "neighbors": names[self.neighbor_indices[i]],
                "neighbor_distances": self.neighbor_distances[i],
            }
            for i, row in enumerate(self.flagged_indices)
        ]
        return jsonable(
            {
                **self.to_meta(),
                "n_samples": len(self.scores),
                "n_flagged": self.n_flagged,
                "scores": self.scores,
                "flagged": flagged,
            }
        )


def score_outliers(
    embeddings: np.ndarray | None = None,
    *,
    graph: KnnGraph | None = None,
    method: str = DEFAULT_METHOD,
    threshold: float | None = None,
    fdr: float = DEFAULT_FDR,
    z_threshold: float | None = None,
    n_neighbors: int = 15,
    metric: str = "cosine",
    random_state: int = 0,
    **params: Any,
) -> OutlierResult:
    """Score every sample with a registered scorer and flag the outliers.

    embeddings: (n_samples, dim), needed when ``graph`` is None or the scorer reads vectors
    (``"isolation_forest"``). graph: the shared kNN graph (built with ``n_neighbors`` if None).
    fdr: false-discovery rate of the default rule (see module docstring). threshold: flag
    ``scores > threshold`` instead. z_threshold: use the fixed robust rule with this cut instead.
    """
    spec = SCORERS[method]
    if graph is None:
        if embeddings is None:
            raise ValueError("pass embeddings or a precomputed graph")
        graph = build_knn_graph(
            embeddings, n_neighbors=n_neighbors, metric=metric, random_state=random_state
        )
    if spec.needs_embeddings and embeddings is None:
        raise ValueError(f"outlier method {method!r} needs the embeddings, not only the graph")
    scores = np.asarray(
        spec.function(graph, embeddings, random_state=random_state, **params), dtype=np.float32
    )
    if scores.shape != (graph.n_samples,):
        raise ValueError(
            f"scorer {method!r} returned shape {scores.shape}, expected ({graph.n_samples},)"
        )

    rule: dict[str, Any]
    if threshold is not None:
        rule = {"rule": "user", "threshold": float(threshold)}
    elif z_threshold is not None and spec.standardized:
        threshold, rule = float(z_threshold), {"rule": "robust z-score > z", "z": z_threshold}
    elif z_threshold is not None:
        threshold, rule = flag_threshold(scores, z=z_threshold, log_scale=spec.log_scale)
    else:
        # A standardized score is a robust z already: its null is fitted on the scores as they are.
        threshold, rule = fdr_threshold(
            scores, fdr=fdr, log_scale=spec.log_scale and not spec.standardized
        )
    flagged = scores > threshold
    flagged_indices = np.flatnonzero(flagged)
    flagged_indices = flagged_indices[np.argsort(-scores[flagged_indices], kind="stable")]
    return OutlierResult(
        scores=scores,
        flagged=flagged,
        threshold=float(threshold),
        method=method,
        score_range=spec.score_range,
        flagged_indices=flagged_indices.astype(np.int64),
        neighbor_indices=graph.indices[flagged_indices],
        neighbor_distances=graph.distances[flagged_indices],
        params={
            "n_neighbors": graph.n_neighbors,
            "graph_method": graph.method,
            "metric": graph.metric,
            "random_state": random_state,
            **rule,
            **params,
        },
    )


def fdr_threshold(
    scores: np.ndarray, *, fdr: float = DEFAULT_FDR, log_scale: bool = True
) -> tuple[float, dict[str, Any]]:
    """Score threshold of the default rule: Benjamini–Hochberg at ``fdr`` against a Gaussian null
    fitted to the bulk of the scores (of log-scores if ``log_scale``); see the module docstring.

    Returns the threshold on the original score scale (``scores > threshold`` are flagged; finite
    even when nothing is) and a record of the rule.

    >>> scores = np.r_[np.random.default_rng(0).normal(size=1000), [6.0, 7.0]]
    >>> threshold, rule = fdr_threshold(scores, log_scale=False)
    >>> int((scores > threshold).sum()), rule["fdr"]
    (2, 0.05)
    """
    scores = np.asarray(scores, dtype=np.float64)
    floor = 0.0
    values = scores[np.isfinite(scores)]
    if log_scale:
        values, floor = log_with_floor(values)
    cut = gaussian_fdr_cut(values, fdr=fdr)
    threshold = cut.threshold
    if log_scale and np.isfinite(threshold):
        threshold = float(np.exp(threshold) - floor)
    return threshold, {
        "rule": f"false-discovery rate {100 * fdr:g}% (Benjamini-Hochberg, Gaussian null of the "
        + ("log-scores" if log_scale else "scores")
        + ")",
        "fdr": fdr,
        "z": cut.z,
        "centre": cut.centre,
        "robust_sd": cut.spread,
        "n_tests": int(values.size),
    }


def flag_threshold(
    scores: np.ndarray, *, z: float = DEFAULT_Z_THRESHOLD, log_scale: bool = True
) -> tuple[float, dict[str, Any]]:
    """Score threshold of the fixed robust rule: median + z robust SDs, on log-scores if
    ``log_scale`` (the default rule before the false-discovery-rate one; kept for comparison).

    Returns the threshold on the original score scale and a record of how it was reached.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if log_scale:
        logs, floor = log_with_floor(scores[np.isfinite(scores)])
        cut, centre, spread = robust_threshold(logs, z=z)
        threshold = float(np.exp(cut) - floor) if np.isfinite(cut) else float("inf")
    else:
        cut, centre, spread = robust_threshold(scores, z=z)
        threshold = cut
    return threshold, {
        "rule": "median + z * robust_sd" + (" of log-scores" if log_scale else ""),
        "z": z,
        "centre": centre,
        "robust_sd": spread,
    }


# --------------------------------------------------------------------------- scorers


@register_scorer(
    "knn",
    score_range="robust z-score, (-inf, inf); inliers mostly within +-3",
    needs_embeddings=True,
    standardized=True,
)
def two_scale_knn_scores(
    graph: KnnGraph, embeddings: np.ndarray, *, random_state: int = 0, **subsample_options: int
) -> np.ndarray:
    """Outlier at either scale: max of the robust z-scores of knn_local and knn_global.

    subsample_options: knn_global's ``subsample_size``, ``subsample_neighbors``, ``n_subsamples``.
    """
    local = robust_z(knn_local_scores(graph), log_scale=True)
    global_ = robust_z(
        knn_global_scores(graph, embeddings, random_state=random_state, **subsample_options),
        log_scale=True,
    )
    return np.maximum(local, global_).astype(np.float32)


@register_scorer(
    "ensemble",
    score_range="robust z-score, (-inf, inf); inliers mostly within +-3",
    needs_embeddings=True,
    standardized=True,
)
def ensemble_scores(
    graph: KnnGraph, embeddings: np.ndarray, *, random_state: int = 0, **subsample_options: int
) -> np.ndarray:
    """Outlier at any of three scales: max of the robust z-scores of knn_local, knn_global and
    mahalanobis (the default; see the module docstring).

    subsample_options: knn_global's ``subsample_size``, ``subsample_neighbors``, ``n_subsamples``.
    """
    shape = robust_z(
        mahalanobis_scores(graph, embeddings, random_state=random_state), log_scale=True
    )
    knn = two_scale_knn_scores(graph, embeddings, random_state=random_state, **subsample_options)
    return np.maximum(knn, shape).astype(np.float32)


@register_scorer("knn_local", score_range="[0, 2] for cosine, [0, inf) for euclidean")
def knn_local_scores(
    graph: KnnGraph, embeddings: Any = None, *, random_state: int = 0
) -> np.ndarray:
    """Mean distance to the far half of the k nearest neighbours (ranks k//2+1 .. k)."""
    k = graph.n_neighbors
    if k == 0:
        return np.zeros(graph.n_samples, dtype=np.float32)
    distances = np.where(np.isfinite(graph.distances), graph.distances, np.nan)[:, k // 2 :]
    with np.errstate(all="ignore"):
        scores = np.nanmean(distances, axis=1)
    return np.nan_to_num(scores, nan=0.0).astype(np.float32)


@register_scorer(
    "knn_global",
    score_range="[0, 2] for cosine, [0, inf) for euclidean",
    needs_embeddings=True,
)
def knn_global_scores(
    graph: KnnGraph,
    embeddings: np.ndarray,
    *,
    random_state: int = 0,
    subsample_size: int = 256,
    subsample_neighbors: int = 5,
    n_subsamples: int = 10,
) -> np.ndarray:
    """Mean distance to the nearest rows of random subsamples, averaged over subsamples."""
    n_samples = len(embeddings)
    size = min(subsample_size, n_samples)
    n_neighbors = max(1, min(subsample_neighbors, size - 1))
    if size < 2:
        return np.zeros(n_samples, dtype=np.float32)
    rounds = 1 if size == n_samples else n_subsamples
    rng = np.random.default_rng(random_state)
    members = np.stack([np.sort(rng.choice(n_samples, size, replace=False)) for _ in range(rounds)])
    reference = prepare_rows(take_rows(embeddings, members.ravel()), graph.metric)
    reference_norms = np.einsum("ij,ij->i", reference, reference)
    scores = np.zeros(n_samples, dtype=np.float64)
    # Distances computed in place: one (block rows x rounds * size) float32 buffer per block,
    # and nothing n-sized but the scores.
    for start in range(0, n_samples, BLOCK_ROWS):
        stop = min(n_samples, start + BLOCK_ROWS)
        block = prepare_rows(embeddings[start:stop], graph.metric)
        distances = block @ reference.T
        if graph.metric == "cosine":
            np.subtract(1.0, distances, out=distances)
            np.clip(distances, 0.0, 2.0, out=distances)
        else:
            distances *= -2.0
            distances += np.einsum("ij,ij->i", block, block)[:, None]
            distances += reference_norms[None, :]
            np.sqrt(np.maximum(distances, 0.0, out=distances), out=distances)
        # A row is no reference for itself: its own column in each subsample it belongs to.
        for r in range(rounds):
            low, high = np.searchsorted(members[r], [start, stop])
            distances[members[r][low:high] - start, r * size + np.arange(low, high)] = np.inf
        for r in range(rounds):
            part = distances[:, r * size : (r + 1) * size]
            nearest = np.partition(part, n_neighbors - 1, axis=1)[:, :n_neighbors]
            scores[start:stop] += nearest.mean(axis=1)
    return (scores / rounds).astype(np.float32)


@register_scorer("knn_mean", score_range="[0, 2] for cosine, [0, inf) for euclidean")
def knn_mean_scores(
    graph: KnnGraph, embeddings: Any = None, *, random_state: int = 0
) -> np.ndarray:
    """Mean distance to all k nearest neighbours (as cleanlab's OutOfDistribution)."""
    if graph.n_neighbors == 0:
        return np.zeros(graph.n_samples, dtype=np.float32)
    return graph.distances.mean(axis=1, dtype=np.float64).astype(np.float32)


@register_scorer("lof", score_range="(0, inf), about 1 for inliers")
def local_outlier_factor_scores(
    graph: KnnGraph, embeddings: Any = None, *, random_state: int = 0
) -> np.ndarray:
    """Local Outlier Factor (Breunig et al. 2000) on the shared graph: density relative to neighbours."""
    k = graph.n_neighbors
    if k == 0:
        return np.ones(graph.n_samples, dtype=np.float32)
    distances = graph.distances.astype(np.float64)
    k_distance = distances[:, -1]
    reach = np.maximum(distances, k_distance[graph.indices])
    # sklearn's guard: duplicates make the reach distance 0 and the density infinite.
    local_density = 1.0 / (reach.mean(axis=1) + 1e-10)
    return (local_density[graph.indices].mean(axis=1) / local_density).astype(np.float32)


@register_scorer(
    "isolation_forest",
    score_range="(0, 1], about 0.5 for inliers",
    needs_embeddings=True,
    log_scale=False,
)
def isolation_forest_scores(
    graph: KnnGraph,
    embeddings: np.ndarray,
    *,
    random_state: int = 0,
    n_estimators: int = 200,
    pca_components: int = 50,
) -> np.ndarray:
    """Isolation Forest (Liu et al. 2008) anomaly score on PCA-reduced embeddings."""
    from sklearn.ensemble import IsolationForest

    reduced = BlockPCA(
        pca_components, normalize=graph.metric == "cosine", random_state=random_state
    ).fit_transform(embeddings)
    if len(reduced) < 2:
        return np.full(len(reduced), 0.5, dtype=np.float32)
    forest = IsolationForest(n_estimators=n_estimators, random_state=random_state).fit(reduced)
    # sklearn's score_samples is minus the paper's anomaly score s(x) in (0, 1].
    return (-forest.score_samples(reduced)).astype(np.float32)


@register_scorer(
    "mahalanobis",
    score_range="[0, inf), about the number of axes for inliers",
    needs_embeddings=True,
)
def mahalanobis_scores(
    graph: KnnGraph,
    embeddings: np.ndarray,
    *,
    random_state: int = 0,
    n_components: int = MAHALANOBIS_COMPONENTS,
    first_trim: float = MAHALANOBIS_FIRST_TRIM,
    keep_z: float = MAHALANOBIS_KEEP_Z,
    max_steps: int = MAHALANOBIS_MAX_STEPS,
) -> np.ndarray:
    """Squared Mahalanobis distance in the leading principal axes, under a covariance refitted
    without the suspect rows (see the module docstring)."""
    n_samples = len(embeddings)
    n_components = int(min(n_components, max(2, n_samples // MAHALANOBIS_ROWS_PER_AXIS)))
    if n_samples <= n_components + 1:
        return np.zeros(n_samples, dtype=np.float32)
    reduced = BlockPCA(
        n_components, normalize=graph.metric == "cosine", random_state=random_state
    ).fit_transform(embeddings)
    keep = np.ones(n_samples, dtype=bool)
    for step in range(max_steps + 1):
        scores = _squared_mahalanobis(reduced, reduced[keep])
        if step == max_steps:
            break
        if step == 0:
            kept = scores <= np.quantile(scores, 1.0 - first_trim)
        else:
            kept = robust_z(scores, log_scale=True) <= keep_z
        if np.array_equal(kept, keep) or kept.sum() <= reduced.shape[1] + 1:
            break
        keep = kept
    return scores.astype(np.float32)


def _squared_mahalanobis(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row under the mean and covariance of ``reference``."""
    dim = rows.shape[1]
    centre = reference.mean(axis=0, dtype=np.float64)
    covariance = np.cov(reference, rowvar=False, dtype=np.float64).reshape(dim, dim)
    # A tiny ridge keeps an axis along which the reference does not vary finite.
    covariance += np.eye(dim) * 1e-9 * max(float(np.trace(covariance)), 1e-12)
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    scores = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), BLOCK_ROWS):
        block = (rows[start : start + BLOCK_ROWS] - centre) @ whitening
        scores[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    return scores
