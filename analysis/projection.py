"""2-D (or 3-D) maps of an embedding set with UMAP (or t-SNE, or PCA), fed by the shared kNN graph.

UMAP's own first step is a nearest-neighbour search over the raw vectors; here the graph built
once by :func:`shoal.analysis.knn.build_knn_graph` becomes UMAP's fuzzy graph
(:mod:`shoal.analysis.fuzzy`, numpy instead of umap-learn's per-process compiled kernels) and
UMAP's layout optimisation (:mod:`shoal.analysis.layout`: umap-learn's epochs, in a faster
kernel cached on disk) runs on a PCA-reduced copy of the data, so the search is not paid twice
and no process imports umap-learn.

The layout starts from the PCA coordinates instead of UMAP's spectral initialisation: an
informative start that preserves global structure as well (Kobak & Linderman, Nature
Biotechnology 2021), without the sparse eigensolver, which on clustered real embeddings (a graph
of several components) can take longer than the whole optimisation. From that start half of
UMAP's default epochs suffice (:data:`DEFAULT_EPOCHS_SMALL` / :data:`DEFAULT_EPOCHS_LARGE`);
benchmarks/bench_analysis.py checks trustworthiness against a default UMAP run.

Above ``max_fit_samples`` the map is fitted on a random sample, with the sample's own kNN graph
(a sampled point's neighbours in the shared graph are mostly outside the sample), and every
other point is placed into it by UMAP's transform step from its neighbours in the shared graph:
no second search, and no vector of those points is read. Every such point is flagged in
``transformed_mask``; ``params`` gives the seconds of each step (``seconds_sample_graph``,
``seconds_fit``, ``seconds_place``).

Example:
    >>> import numpy as np
    >>> from shoal.analysis.knn import build_knn_graph
    >>> x = np.random.default_rng(0).normal(size=(300, 16)).astype("float32")
    >>> result = project(x, graph=build_knn_graph(x))                     # doctest: +SKIP
    >>> result.coords.shape                                                # doctest: +SKIP
    (300, 2)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shoal.analysis.blocks import l2_normalize, sample_rows, take_rows
from shoal.analysis.fuzzy import fuzzy_simplicial_set, membership_strengths, smooth_knn_dist
from shoal.analysis.knn import KnnGraph, build_knn_graph, drop_self_matches
from shoal.analysis.pca import BlockPCA
from shoal.analysis.results import ArrayRecord, ids_or_rows, jsonable
from shoal.analysis.rows import RowSubset

if TYPE_CHECKING:
    from shoal.analysis.layout import LayoutParams

#: Fit UMAP on at most this many samples; place the rest with UMAP's transform step.
MAX_FIT_SAMPLES = 200_000
#: Points placed per run of the layout optimiser: bounds its per-edge state (about 32 bytes per
#: edge, 15 edges per point) to about 100 MB.
PLACE_CHUNK = 200_000
#: Global trustworthiness is computed on a random sample of this size (it needs all pairwise
#: distances of the sample); the result says when it was sampled.
TRUSTWORTHINESS_SAMPLE = 5_000
#: Points per block of the neighbourhood-preservation pass (its map neighbour lists).
PRESERVATION_BLOCK = 65_536
#: Neighbours used by trustworthiness (as in umap-learn's own trustworthiness tests).
TRUSTWORTHINESS_NEIGHBORS = 10
#: Below this many samples UMAP's graph layout is not meaningful; a PCA map is returned instead.
MIN_UMAP_SAMPLES = 16
#: Optimisation epochs when ``n_epochs=None``: half of umap-learn's defaults (500 up to 10,000
#: samples, 200 above), since the layout starts from PCA rather than a random-ish start.
DEFAULT_EPOCHS_SMALL = 250
DEFAULT_EPOCHS_LARGE = 100
#: The layouts :func:`project` draws: UMAP (default), t-SNE (openTSNE, on the shared graph) and
#: the first principal components (linear, instant at any size, distances between clusters mean
#: something; clusters overlap).
METHODS = ("umap", "tsne", "pca")
#: t-SNE fits every point (no transform step here): above this many samples use UMAP or PCA.
MAX_TSNE_SAMPLES = 200_000


@dataclass(frozen=True)
class Projection(ArrayRecord):
    """A low-dimensional map of an embedding set and how faithful it is.

    coords: (n_samples, n_components) float32.
    trustworthiness: sklearn's trustworthiness in [0, 1], higher = fewer false neighbours in the
    map; computed on ``trustworthiness_sample_size`` random samples when that is below n_samples.
    neighborhood_preservation: (n_samples,) float32 in [0, 1] per point, the share of its
    high-dimensional graph neighbours that are also among its nearest neighbours in the map;
    higher = better preserved.
    transformed_mask: (n_samples,) bool, True for points placed by UMAP's transform instead of
    being in the fitted sample (only when n_samples > max_fit_samples).
    """

    coords: np.ndarray
    trustworthiness: float
    trustworthiness_sample_size: int
    neighborhood_preservation: np.ndarray
    transformed_mask: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def trustworthiness_sampled(self) -> bool:
        return self.trustworthiness_sample_size < len(self.coords)

    def summary(self) -> dict[str, Any]:
        """JSON-able parameters and quality figures, without the per-point values."""
        return jsonable(
            {
                **self.to_meta(),
                "n_samples": len(self.coords),
                "n_transformed": int(self.transformed_mask.sum()),
                "mean_neighborhood_preservation": float(np.mean(self.neighborhood_preservation))
                if len(self.coords)
                else float("nan"),
            }
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-able summary plus per-point values (lists)."""
        return self.summary() | jsonable(
            {
                "sample_ids": None if sample_ids is None else [str(s) for s in sample_ids],
                "coords": self.coords,
                "neighborhood_preservation": self.neighborhood_preservation,
                "transformed": self.transformed_mask,
            }
        )

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per sample: sample_id (or row), x, y[, z], neighborhood_preservation, transformed."""
        frame = pd.DataFrame(self.coords, columns=["x", "y", "z"][: self.coords.shape[1]])
        frame.insert(0, "sample_id", ids_or_rows(sample_ids, len(self.coords)))
        frame["neighborhood_preservation"] = self.neighborhood_preservation
        frame["transformed"] = self.transformed_mask
        return frame


def project(
    embeddings: np.ndarray,
    *,
    graph: KnnGraph | None = None,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_components: int = 50,
    n_epochs: int | None = None,
    max_fit_samples: int = MAX_FIT_SAMPLES,
    trustworthiness_sample: int = TRUSTWORTHINESS_SAMPLE,
    metric: str = "cosine",
    random_state: int = 0,
    method: str = "umap",
    parallel: bool = False,
    pca_axes: tuple[np.ndarray, np.ndarray] | None = None,
) -> Projection:
    """A map of (n_samples, dim) embeddings, reusing ``graph`` (built here when None).

    ``pca_axes``: (mean, components) of a PCA already fitted on these rows, normalised when the
    metric is cosine (the HNSW index's, stored as ``pca_mean`` and ``pca_components`` by
    :meth:`NeighborIndex.to_arrays`), of which the leading
    ``pca_components`` axes are used instead of fitting again (the same seeded rows, and more
    axes' worth of power iterations, so at least as accurate).

    ``method``: ``"umap"`` (default), ``"tsne"`` (openTSNE with uniform affinities on the shared
    kNN graph: the kNN-graph t-SNE of Linderman et al. 2019, so the graph is not searched again,
    started from the PCA layout and otherwise openTSNE's defaults) or ``"pca"`` (the first
    principal components of the normalised vectors). The result's ``method`` says what was drawn.

    ``parallel``: run UMAP's layout epochs on all cores (as ``umap.UMAP()`` does when it has
    no seed): about 1.5x faster on two cores, but threads race on shared coordinates, so the
    same inputs give a slightly different map each time.

    ``n_neighbors`` counts UMAP-style (the point itself included), so a 15-neighbour map needs a
    graph with at least 14 neighbours. Fixed ``random_state`` makes the layout reproducible.
    ``n_epochs=None`` picks :data:`DEFAULT_EPOCHS_SMALL` up to 10,000 fitted samples, else
    :data:`DEFAULT_EPOCHS_LARGE`.
    """
    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components}")
    if method not in METHODS:
        raise ValueError(
            f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}"
        )
    n_samples = len(embeddings)
    if method == "tsne" and n_samples > MAX_TSNE_SAMPLES:
        raise ValueError(
            f"t-SNE maps up to {MAX_TSNE_SAMPLES:,} samples here, this set has {n_samples:,}: "
            "use UMAP (which places the rest into a fitted sample) or PCA"
        )
    if graph is None:
        graph = build_knn_graph(
            embeddings,
            n_neighbors=max(1, n_neighbors - 1),
            metric=metric,
            random_state=random_state,
        )
    if graph.n_samples != n_samples:
        raise ValueError(f"graph has {graph.n_samples} samples, embeddings have {n_samples}")
    if graph.metric != metric:
        raise ValueError(f"graph metric {graph.metric!r} differs from metric {metric!r}")
    if n_epochs is None:
        n_epochs = (
            DEFAULT_EPOCHS_SMALL
            if min(n_samples, max_fit_samples) <= 10_000
            else DEFAULT_EPOCHS_LARGE
        )
    params: dict[str, Any] = {
        "n_components": n_components,
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "pca_components": pca_components,
        "n_epochs": n_epochs,
        "max_fit_samples": max_fit_samples,
        "metric": metric,
        "random_state": random_state,
        "graph_method": graph.method,
        "parallel": parallel,
    }
    started = time.perf_counter()
    normalize = metric == "cosine"
    if pca_axes is not None and len(pca_axes[1]) >= pca_components:
        pca = BlockPCA.from_axes(pca_axes[0], pca_axes[1][:pca_components], normalize=normalize)
        params["pca_fitted"] = "given"
    else:
        pca = BlockPCA(pca_components, normalize=normalize, random_state=random_state).fit(
            embeddings
        )
    transformed = np.zeros(n_samples, dtype=bool)
    requested, params["method"] = method, method
    if method == "pca" or n_samples < MIN_UMAP_SAMPLES or graph.n_neighbors < 2:
        coords = _pca_coords(pca.transform(embeddings), n_components)
        method = "pca"
    elif requested == "tsne":
        coords = _fit_tsne(pca.transform(embeddings), graph, n_components, random_state)
        method = "tsne"
    elif n_samples <= max_fit_samples:
        coords = _fit_umap(
            pca.transform(embeddings),
            graph,
            n_components,
            n_neighbors,
            min_dist,
            n_epochs,
            metric,
            random_state,
            parallel=parallel,
        )[0]
        method = "umap"
    else:
        coords, transformed, seconds = _fit_sample_place_rest(
            embeddings,
            pca,
            graph,
            n_components=n_components,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            n_epochs=n_epochs,
            max_fit_samples=max_fit_samples,
            metric=metric,
            random_state=random_state,
            parallel=parallel,
        )
        params.update(seconds)
        method = "umap+transform"
    laid_out = time.perf_counter()
    trust, trust_size = trustworthiness_score(
        embeddings,
        coords,
        metric=metric,
        sample_size=trustworthiness_sample,
        random_state=random_state,
    )
    preservation = neighborhood_preservation(graph, coords)
    # Seconds for the map itself (PCA + UMAP, graph given) and for its quality measures.
    params["seconds_layout"] = round(laid_out - started, 3)
    params["seconds_quality"] = round(time.perf_counter() - laid_out, 3)
    return Projection(
        coords=coords.astype(np.float32),
        trustworthiness=trust,
        trustworthiness_sample_size=trust_size,
        neighborhood_preservation=preservation,
        transformed_mask=transformed,
        method=method,
        params=params,
    )


def _pca_coords(reduced: np.ndarray, n_components: int) -> np.ndarray:
    coords = np.zeros((len(reduced), n_components), dtype=np.float32)
    width = min(n_components, reduced.shape[1])
    coords[:, :width] = reduced[:, :width]
    return coords


def _fit_tsne(
    reduced: np.ndarray, graph: KnnGraph, n_components: int, random_state: int
) -> np.ndarray:
    """openTSNE on the shared graph: uniform affinities over each point's k neighbours."""
    try:
        from openTSNE import TSNEEmbedding, affinity, initialization
        from openTSNE.nearest_neighbors import PrecomputedNeighbors
    except ImportError as error:
        raise ImportError("Shoal's t-SNE map needs openTSNE: pip install openTSNE") from error
    indices = graph.indices.astype(np.int64, copy=True)
    distances = graph.distances.astype(np.float64, copy=True)
    missing = (indices < 0) | ~np.isfinite(distances)
    if missing.any():  # an unreachable neighbour: point at itself, which uniform weights skip
        rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
        indices[missing], distances[missing] = rows[missing], 0.0
    affinities = affinity.Uniform(
        knn_index=PrecomputedNeighbors(indices, distances),
        k_neighbors=graph.n_neighbors,
        random_state=random_state,
    )
    start = initialization.rescale(reduced[:, :n_components].astype(np.float64))
    if start.shape[1] < n_components:
        start = initialization.random(len(reduced), n_components, random_state=random_state)
    embedding = TSNEEmbedding(
        start,
        affinities,
        negative_gradient_method="auto",  # Barnes-Hut below 10,000 points, FFT above
        random_state=random_state,
        n_jobs=-1,
        verbose=False,
    )
    embedding = embedding.optimize(n_iter=250, exaggeration=12, momentum=0.5)
    embedding = embedding.optimize(n_iter=500, momentum=0.8)
    return np.asarray(embedding, dtype=np.float32)


def _umap_knn(graph: KnnGraph, n_neighbors: int) -> tuple[np.ndarray, np.ndarray, int]:
    """UMAP wants each row's own index first at distance 0, then its neighbours.

    Exactly ``n_neighbors`` columns (the shared graph may hold more): the fuzzy set's bandwidths
    are fitted to ``log2(n_neighbors)``, as umap-learn's for the same ``n_neighbors``.
    """
    k = min(n_neighbors - 1, graph.n_neighbors)
    rows = np.arange(graph.n_samples, dtype=np.int64)[:, None]
    indices = np.hstack([rows, graph.indices[:, :k]])
    distances = np.hstack([np.zeros((graph.n_samples, 1), np.float32), graph.distances[:, :k]])
    # An unreachable neighbour (inf) would poison UMAP's bandwidth search; UMAP marks it -1.
    unreachable = ~np.isfinite(distances)
    indices[unreachable] = -1
    distances[unreachable] = np.inf
    return indices, distances.astype(np.float32), k + 1


def _fit_umap(
    reduced: np.ndarray,
    graph: KnnGraph,
    n_components: int,
    n_neighbors: int,
    min_dist: float,
    n_epochs: int | None,
    metric: str,
    random_state: int,
    *,
    parallel: bool = False,
) -> tuple[np.ndarray, LayoutParams]:
    """umap-learn's ``simplicial_set_embedding`` on the PCA scores: the fuzzy graph of
    :mod:`shoal.analysis.fuzzy`, edges too weak to be sampled once in ``n_epochs`` dropped, a
    start from the first principal axes (scaled into [0, 10], with umap-learn's 1e-4 jitter so
    that duplicates part), then :func:`shoal.analysis.layout.optimize_layout`. Points the graph
    leaves unconnected get NaN, as in umap-learn.

    ``metric`` is the graph's: its distances (cosine) are what the fuzzy set is built from,
    while the layout compares PCA scores of normalised vectors with Euclidean distance.
    """
    from shoal.analysis.layout import LayoutParams, curve_params, optimize_layout

    n_samples = len(reduced)
    if n_epochs is None:
        n_epochs = DEFAULT_EPOCHS_SMALL if n_samples <= 10_000 else DEFAULT_EPOCHS_LARGE
    indices, distances, _ = _umap_knn(graph, n_neighbors)
    fuzzy = fuzzy_simplicial_set(indices, distances).tocoo()
    fuzzy.sum_duplicates()
    # As umap-learn: an edge sampled less than once over the run is dropped (its threshold for
    # ten epochs or fewer is that of its default run length).
    threshold_epochs = n_epochs if n_epochs > 10 else (500 if n_samples <= 10_000 else 200)
    fuzzy.data[fuzzy.data < fuzzy.data.max(initial=0.0) / float(threshold_epochs)] = 0.0
    fuzzy.eliminate_zeros()
    a, b = curve_params(min_dist)
    params = LayoutParams(a=a, b=b, n_epochs=n_epochs)
    rng = np.random.default_rng(random_state)
    coords = _initial_layout(reduced, n_components, rng)
    optimize_layout(
        coords,
        fuzzy.row,
        fuzzy.col,
        fuzzy.data,
        n_epochs=n_epochs,
        a=a,
        b=b,
        initial_alpha=params.initial_alpha,
        repulsion_strength=params.repulsion_strength,
        negative_sample_rate=params.negative_sample_rate,
        move_other=True,
        parallel=parallel,
        random_state=int(rng.integers(2**31)),
    )
    connected = np.bincount(fuzzy.row, minlength=n_samples) > 0
    coords[~connected] = np.nan
    return coords, params


def _initial_layout(reduced: np.ndarray, n_components: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n_components) float32 in [0, 10]: the leading PCA scores (uniform random where the
    scores have fewer axes than the map), jittered by 1e-4 of the largest score."""
    coords = np.zeros((len(reduced), n_components), dtype=np.float32)
    width = min(n_components, reduced.shape[1])
    coords[:, :width] = reduced[:, :width]
    coords[:, width:] = rng.uniform(-1.0, 1.0, (len(reduced), n_components - width))
    coords *= np.float32(10.0 / max(float(np.abs(coords).max(initial=0.0)), 1e-12))
    coords += rng.normal(scale=1e-4, size=coords.shape).astype(np.float32)
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.ascontiguousarray(10.0 * (coords - low) / span, dtype=np.float32)


def _fit_sample_place_rest(
    embeddings: np.ndarray,
    pca: BlockPCA,
    graph: KnnGraph,
    *,
    n_components: int,
    n_neighbors: int,
    min_dist: float,
    n_epochs: int | None,
    max_fit_samples: int,
    metric: str,
    random_state: int,
    parallel: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Fit on a random sample with its own kNN graph; place every other point from its
    neighbours in the shared graph. Only the sample's rows are read (through a
    :class:`~shoal.analysis.rows.RowSubset`, never copied whole) and PCA-projected.

    Returns the coordinates, the transformed mask and the seconds of each step."""
    n_samples = len(embeddings)
    fit_rows = sample_rows(n_samples, max_fit_samples, np.random.default_rng(random_state))
    transformed = np.ones(n_samples, dtype=bool)
    transformed[fit_rows] = False
    sample: Any = RowSubset(embeddings, fit_rows)  # read like the matrix of those rows

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    # The sample needs its own graph: a sampled point's shared-graph neighbours are mostly
    # outside the sample (about 3 of 15 when a fifth of the points is sampled).
    sample_graph = build_knn_graph(
        sample, n_neighbors=n_neighbors - 1, metric=metric, random_state=random_state
    )
    seconds["seconds_sample_graph"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    fitted, layout = _fit_umap(
        pca.transform(sample),
        sample_graph,
        n_components,
        n_neighbors,
        min_dist,
        n_epochs,
        metric,
        random_state,
        parallel=parallel,
    )
    seconds["seconds_fit"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    coords = np.zeros((n_samples, n_components), dtype=np.float32)
    coords[fit_rows] = fitted
    _place_rest(layout, coords, transformed, graph, n_neighbors, random_state, parallel)
    seconds["seconds_place"] = round(time.perf_counter() - started, 3)
    return coords, transformed, seconds


def _place_rest(
    layout: LayoutParams,
    coords: np.ndarray,
    transformed: np.ndarray,
    graph: KnnGraph,
    n_neighbors: int,
    random_state: int,
    parallel: bool = False,
) -> None:
    """UMAP's ``transform`` step (umap-learn 0.5.12) for the ``transformed`` points, in place in
    ``coords``, with their neighbours from the shared graph instead of a new search: fitted
    neighbours stay where they are, other placed points pull too.

    Start: each point at the membership-weighted mean of its placed neighbours, in rounds (a
    point whose neighbours are all unplaced waits for them; none at all: the map's centre). Then
    a third of the fit's epochs of UMAP's layout optimisation moves only these points, in chunks
    of ``PLACE_CHUNK`` points (the optimiser keeps 32 bytes per edge).
    """
    import scipy.sparse

    from shoal.analysis.layout import optimize_layout

    n_samples = len(coords)
    rest = np.flatnonzero(transformed)
    k = min(n_neighbors, graph.n_neighbors)
    indices = graph.indices[rest, :k].copy()
    distances = np.array(graph.distances[rest, :k], dtype=np.float32)
    # Padding (a row pointing at itself at infinite distance) is no neighbour; UMAP marks it -1.
    missing = (indices < 0) | (indices == rest[:, None]) | ~np.isfinite(distances)
    indices[missing] = -1
    distances[missing] = 0.0
    # As UMAP's transform: the point is not among its own neighbours.
    local_connectivity = max(0.0, layout.local_connectivity - 1.0)
    sigmas, rhos = smooth_knn_dist(distances, float(k), local_connectivity=local_connectivity)
    rows, cols, vals = membership_strengths(indices, distances, sigmas, rhos, bipartite=True)
    del indices, distances
    weights = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(rest), n_samples))
    weights.eliminate_zeros()
    del rows, cols, vals

    placed = ~transformed
    waiting = np.arange(len(rest))
    while len(waiting):
        part = weights[waiting]
        mask = placed.astype(np.float32)
        total = part @ mask
        reached = total > 0
        if not reached.any():
            break
        mean = (part[reached] @ (coords * mask[:, None])) / total[reached, None]
        coords[rest[waiting[reached]]] = mean
        placed[rest[waiting[reached]]] = True
        waiting = waiting[~reached]
    if len(waiting):
        coords[rest[waiting]] = coords[~transformed].mean(axis=0)

    n_epochs = 30 if layout.n_epochs is None else int(layout.n_epochs // 3)
    for start in range(0, len(rest), PLACE_CHUNK):
        chunk = weights[start : start + PLACE_CHUNK].tocoo()
        chunk.data[chunk.data < chunk.data.max(initial=0.0) / float(n_epochs)] = 0.0
        chunk.eliminate_zeros()
        if not chunk.nnz:
            continue
        optimize_layout(
            coords,
            rest[start + chunk.row],
            chunk.col,
            chunk.data,
            n_epochs=n_epochs,
            a=layout.a,
            b=layout.b,
            initial_alpha=layout.initial_alpha / 4.0,
            repulsion_strength=layout.repulsion_strength,
            negative_sample_rate=layout.negative_sample_rate,
            move_other=False,
            parallel=parallel,
            random_state=random_state + start,
        )


def trustworthiness_score(
    embeddings: np.ndarray,
    coords: np.ndarray,
    *,
    metric: str = "cosine",
    n_neighbors: int = TRUSTWORTHINESS_NEIGHBORS,
    sample_size: int = TRUSTWORTHINESS_SAMPLE,
    random_state: int = 0,
) -> tuple[float, int]:
    """(trustworthiness in [0, 1], number of samples it was computed on).

    Higher = the map invents fewer neighbours. Above ``sample_size`` samples it is computed on a
    random subset (neighbourhoods within the subset), which is what the second value reports.
    """
    n_samples = len(coords)
    if n_samples < 4:
        return float("nan"), n_samples
    rows = sample_rows(n_samples, sample_size, np.random.default_rng(random_state))
    high = take_rows(embeddings, rows)
    # The measure is defined for n_neighbors < n_samples / 2 (sklearn enforces it).
    n_neighbors = max(1, min(n_neighbors, (len(rows) - 1) // 2))
    return trustworthiness(high, coords[rows], n_neighbors=n_neighbors, metric=metric), len(rows)


#: Rows per block of :func:`trustworthiness`'s rank counting (block x k x n booleans).
TRUST_BLOCK = 256


def trustworthiness(
    high: np.ndarray, low: np.ndarray, *, n_neighbors: int = 5, metric: str = "euclidean"
) -> float:
    """sklearn's ``trustworthiness`` (Venna & Kaski 2001), without its n x n argsort.

    Each point's ``n_neighbors`` nearest in the map (``low``) are ranked among its neighbours in
    ``high`` (rank = 1 + the number of points nearer to it there); ranks beyond ``n_neighbors``
    are penalties. Counting the nearer points for k map neighbours costs k comparisons per pair
    instead of sorting every row: 0.5 s instead of sklearn's 2.3 s on 5,000 x 1280, same value
    (tests/analysis/test_projection.py compares them).
    """
    from scipy.spatial import cKDTree

    n_samples = len(high)
    high = np.asarray(high, dtype=np.float32)
    if metric == "cosine":
        high = l2_normalize(high)
    elif metric != "euclidean":
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    squared = np.einsum("ij,ij->i", high, high)
    points = np.asarray(low, dtype=np.float64)
    map_neighbors = _map_neighbors(cKDTree(points), points, 0, n_samples, n_neighbors)
    penalty = 0.0
    for start in range(0, n_samples, TRUST_BLOCK):
        stop = min(n_samples, start + TRUST_BLOCK)
        products = high[start:stop] @ high.T
        if metric == "cosine":
            distance = 1.0 - products
        else:
            distance = squared[start:stop, None] + squared[None, :] - 2.0 * products
        distance[np.arange(stop - start), np.arange(start, stop)] = np.inf
        to_neighbors = np.take_along_axis(distance, map_neighbors[start:stop], axis=1)
        nearer = (distance[:, None, :] < to_neighbors[:, :, None]).sum(axis=2)
        ranks = nearer + 1 - n_neighbors
        penalty += float(ranks[ranks > 0].sum())
    scale = 2.0 / (n_samples * n_neighbors * (2.0 * n_samples - 3.0 * n_neighbors - 1.0))
    return 1.0 - penalty * scale


def neighborhood_preservation(graph: KnnGraph, coords: np.ndarray) -> np.ndarray:
    """(n_samples,) float32 in [0, 1]: share of each point's graph neighbours that are also among
    its ``graph.n_neighbors`` nearest points in the map. Higher = better preserved."""
    n_samples, k = graph.indices.shape
    if k == 0:
        return np.ones(n_samples, dtype=np.float32)
    from scipy.spatial import cKDTree

    points = np.asarray(coords, dtype=np.float64)
    tree = cKDTree(points)
    shared = np.zeros(n_samples, dtype=np.float32)
    # Rows in blocks: the map's neighbour lists of a million points would take 600 MB at once.
    for start in range(0, n_samples, PRESERVATION_BLOCK):
        stop = min(n_samples, start + PRESERVATION_BLOCK)
        map_neighbors = _map_neighbors(tree, points, start, stop, k)
        for column in range(k):
            shared[start:stop] += (map_neighbors == graph.indices[start:stop, column][:, None]).any(
                axis=1
            )
    return shared / k


def _map_neighbors(tree: Any, points: np.ndarray, start: int, stop: int, k: int) -> np.ndarray:
    """(stop - start, k) int64: the ``k`` nearest other map points of rows ``start:stop``, from
    ``tree``, a cKDTree of all ``points`` (the row itself dropped wherever ties put it)."""
    _, found = tree.query(points[start:stop], k=min(k + 1, len(points)), workers=-1)
    found = np.asarray(found, dtype=np.int64).reshape(stop - start, -1)
    neighbors, _ = drop_self_matches(
        found, np.zeros(found.shape, np.float32), np.arange(start, stop), k
    )
    return neighbors
