"""Pick what to label next: N samples that cover a set, what a reference lacks, or one subset.

Two ways to cover, because they optimise different things (both measured on the real
Fashion-MNIST embeddings, tests/analysis/test_selection.py and benchmarks/bench_selection.py):

* ``method="k-means"`` (the default): k-means with N clusters on the candidates' PCA scores,
  then, per cluster, the candidate nearest its centre; picks come in order of cluster mass,
  largest first. It targets the *mean* distance from a sample to its nearest pick (the k-median
  objective), i.e. typical samples of every region. With 100 of 5,000 images it gives a mean
  cosine distance of 0.187 against 0.213 for random picks and a 1-NN label accuracy of 0.77
  against 0.73.
* ``method="k-center"``: k-center greedy (Gonzalez 1985; the "core-set" of Sener & Savarese
  2018): each pick is the candidate farthest from every earlier pick and seed. It targets the
  *largest* distance (the coverage radius, 0.40 against 0.57 for random picks at 100 of 5,000),
  so nothing is left far from a pick, and picks come most-novel first. It goes to the edges and
  outliers: on the same data its mean distance (0.281) and 1-NN accuracy (0.64) are *worse* than
  random's. It is the method of :func:`select_novel`.

Seeds (``already_selected``, or a reference set) count as covering: k-center starts from each
candidate's distance to its nearest seed, and k-means weights each candidate by that distance
(a sample next to a labelled one adds nothing to cover). So the picks go where the seeds are not,
and are never near-duplicates of each other or of a seed while anything farther is left.

Scale: k-center is exact (the textbook greedy's picks; tests check it against one). Each pick
updates every candidate's distance, in ``BLOCK_ROWS`` blocks of a maybe memory-mapped matrix, on
one thread (a matrix-vector product is bound by memory; more threads only add synchronisation),
never holding an n x n matrix: 0.09 s per pick for 200k x 1280 float32 (a 1 GB memory map) on
2 busy cores, 60 MB of memory besides the map. With at least ``PRUNE_MIN_CANDIDATES``
candidates and ``PRUNE_MIN_PICKS`` picks, a PCA copy (``PRUNE_COMPONENTS`` axes, n x 128
float32 in memory) skips the rows that cannot come closer: a projection only shrinks
distances, so a row whose projected distance to the new pick already exceeds its current
distance keeps it, and only the others are read in full. The picks stay exactly the same; 1000
picks of 200k took 47 s instead of 87 s (88 % of row updates skipped; 95 % on the real 5,000).
k-means fits on at most ``max(MAX_KMEANS_FIT, KMEANS_FIT_PER_CLUSTER · N)`` candidates and
assigns the rest in blocks (1000 picks of 200k: 29 s). Every reported distance is exact, in
``metric``, on the full vectors (for k-means, a final pass over the candidates against the N
picks). Each candidate's distance to its nearest seed is exact up to ``EXACT_SEED_PRODUCTS``
(seed, candidate) pairs, with the smaller side in memory (at most 20k rows) and the other read
past it in blocks; beyond, it comes from an HNSW index over the seeds, which reads their rows
from the matrix (no copy: seeding with the 800k train rows of a 1M x 1280 set adds the index's
few hundred MB, not 4 GB).

Distances: ``metric="cosine"``: 1 - cos in [0, 2]; ``"euclidean"``: [0, inf). Smaller = better
covered.

Example:
    >>> x = np.random.default_rng(0).normal(size=(300, 8))
    >>> picks = select_samples(x, 10, method="k-center", random_state=0)
    >>> len(picks.selected), bool(np.all(np.diff(picks.radii) <= 1e-6))
    (10, True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.analysis.blocks import BLOCK_ROWS, sample_rows, take_rows
from shoal.analysis.knn import EXACT_MAX_SAMPLES, METRICS, NeighborIndex, prepare_rows
from shoal.analysis.pca import MAX_FIT_ROWS, BlockPCA, single_threaded
from shoal.analysis.results import ArrayRecord, ids_or_rows, jsonable
from shoal.analysis.rows import RowSubset

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("k-means", "k-center")
#: PCA axes k-means clusters in when ``n_components`` is None (as the comparison's tests).
KMEANS_COMPONENTS = 50
#: k-means is fitted on at most max(MAX_KMEANS_FIT, KMEANS_FIT_PER_CLUSTER · n_select) seeded
#: random candidates; every candidate is then assigned to its nearest centre.
MAX_KMEANS_FIT = 20_000
KMEANS_FIT_PER_CLUSTER = 50
#: Seed-to-candidate distances are searched exactly up to this many (seed, candidate) products
#: (the kNN graph's exact limit, 20k²); beyond it, with HNSW (approximate neighbour, exact
#: distance: a candidate's distance to the seeds may come out slightly too large).
EXACT_SEED_PRODUCTS = EXACT_MAX_SAMPLES**2
#: Elements of one (rows x picks) distance block in the coverage pass (64 MB of float32).
COVERAGE_BLOCK_ELEMENTS = 1 << 24
#: k-center prunes its updates with a PCA copy of this many axes when there are at least
#: PRUNE_MIN_CANDIDATES candidates and PRUNE_MIN_PICKS picks to make (and the vectors are more
#: than twice as wide). The copy costs a PCA fit and a pass over the data, which only pays off
#: over many picks: for 200k x 1280 (benchmarks/bench_selection.py) 100 picks took 18 s pruned
#: against 15 s plain, 1000 picks 47 s against 87 s. 128 axes left 3 % of the rows to read in
#: full per pick after 100 picks on real 1280-d embeddings; 64 left 8 %, 32 left 18 %.
PRUNE_COMPONENTS = 128
PRUNE_MIN_CANDIDATES = EXACT_MAX_SAMPLES
PRUNE_MIN_PICKS = 200
#: Slack of the pruning test (relative to the squared norms involved): float32 rounding of the
#: projected distance must never prune a row that would come closer.
PRUNE_TOLERANCE = 1e-4
#: A block where more than this share of rows may come closer is read whole: a gathered row
#: costs about three times a streamed one (copied, then read again).
PRUNE_DENSE_SHARE = 0.3


@dataclass(frozen=True)
class Selection(ArrayRecord):
    """Picked samples in pick order and how well they (with the seeds) cover the candidates.

    selected: (n_selected,) int64 rows of the embeddings, pick order. After pick k:
    radii[k] is the largest and mean_distances[k] the mean distance from a candidate to its
    nearest pick or seed (both non-increasing; smaller = better covered). pick_distances[k]: the
    pick's own distance to the nearest seed or earlier pick (how much it added; inf for a first
    pick without seeds). distances: (n_samples,) float32 final distance of every candidate to
    its nearest pick or seed, NaN for rows that are no candidates. nearest_pick: (n_samples,)
    int64 position in ``selected`` of that pick, -1 when a seed is nearer or the row is no
    candidate. initial_radius / initial_mean_distance: the same before any pick (inf without
    seeds). n_seeds: rows counted as already covered (already_selected or the reference).
    """

    selected: np.ndarray
    radii: np.ndarray
    mean_distances: np.ndarray
    pick_distances: np.ndarray
    distances: np.ndarray
    nearest_pick: np.ndarray
    method: str
    metric: str
    n_candidates: int
    n_seeds: int
    initial_radius: float
    initial_mean_distance: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_selected(self) -> int:
        return int(len(self.selected))

    @property
    def radius(self) -> float:
        """Largest distance from a candidate to its nearest pick or seed, after every pick."""
        return float(self.radii[-1]) if len(self.radii) else self.initial_radius

    @property
    def mean_distance(self) -> float:
        return float(self.mean_distances[-1]) if len(self.radii) else self.initial_mean_distance

    def represented(self) -> np.ndarray:
        """(n_selected,) int64: candidates whose nearest pick (not a seed) each pick is."""
        covered = self.nearest_pick[self.nearest_pick >= 0]
        return np.bincount(covered, minlength=self.n_selected).astype(np.int64)

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per pick: pick (1 = first), sample_id, pick_distance, radius, mean_distance
        (after the pick), represented (candidates nearest to it)."""
        import pandas as pd

        names = ids_or_rows(sample_ids, len(self.distances))
        return pd.DataFrame(
            {
                "pick": np.arange(1, self.n_selected + 1),
                "sample_id": names[self.selected],
                "pick_distance": self.pick_distances,
                "radius": self.radii,
                "mean_distance": self.mean_distances,
                "represented": self.represented(),
            }
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        names = ids_or_rows(sample_ids, len(self.distances))
        return jsonable(
            {
                **self.to_meta(),
                "n_selected": self.n_selected,
                "radius": self.radius,
                "mean_distance": self.mean_distance,
                "selected": names[self.selected],
                "pick_distances": self.pick_distances,
                "radii": self.radii,
                "mean_distances": self.mean_distances,
            }
        )


# --------------------------------------------------------------------------- public API


def select_samples(
    embeddings: np.ndarray,
    n_select: int,
    *,
    method: str = "k-means",
    candidates: np.ndarray | None = None,
    already_selected: np.ndarray | None = None,
    metric: str = "cosine",
    n_components: int | None = None,
    random_state: int = 0,
) -> Selection:
    """``n_select`` candidates that cover the candidates not yet covered, in pick order.

    embeddings: (n_samples, dim), may be a memory map (read in blocks). candidates: rows that
    may be picked and that are to be covered (default: all). already_selected: rows counted as
    covered already (e.g. labelled ones; they may lie outside the candidates) and never picked.
    n_components: PCA axes k-means clusters in (None: ``KMEANS_COMPONENTS``); k-center
    always measures the full vectors. Fewer than ``n_select`` picks come back only when
    fewer candidates are left. Deterministic given ``random_state`` (k-center's first pick
    without seeds, the PCA and k-means).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(200, 8))
        >>> result = select_samples(x, 5, already_selected=np.arange(10))
        >>> len(result.selected), bool(np.isin(result.selected, np.arange(10)).any())
        (5, False)
    """
    embeddings = _check_matrix(embeddings, "embeddings")
    n_samples = len(embeddings)
    candidate_rows = _rows_or_all(candidates, n_samples, "candidates")
    seed_rows = _rows_or_all(already_selected, n_samples, "already_selected", default_all=False)
    return _select(
        embeddings,
        candidate_rows,
        seed_source=embeddings,
        seed_rows=seed_rows,
        seeds_are_candidates=True,
        n_select=n_select,
        method=method,
        metric=metric,
        n_components=n_components,
        random_state=random_state,
    )


def select_novel(
    reference: np.ndarray,
    current: np.ndarray,
    n_select: int,
    *,
    metric: str = "cosine",
    random_state: int = 0,
) -> Selection:
    """The ``n_select`` current samples that best cover what the reference lacks.

    reference: (n_reference, dim), current: (n_current, dim) embeddings (either may be a memory
    map). The reference counts as covered already, so k-center's first pick is the current
    sample farthest from every reference sample (the most novel), and each next one the
    farthest from the reference *and* the earlier picks: novel and mutually distinct, never
    two near-copies of one novel image. ``selected`` are rows of ``current``;
    ``pick_distances[0]`` is the first pick's distance to its nearest reference sample.
    (k-means weighted by that distance, the other method, only tilts toward the gaps: with three
    classes missing from the reference, 47 % of its picks came from them against 100 % here.)
    Within one embedding set, ``select_samples(embeddings, n, method="k-center",
    candidates=current_rows, already_selected=reference_rows)`` is the same selection, without
    copying either side.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> reference = np.abs(rng.normal(size=(200, 8))); current = np.abs(rng.normal(size=(100, 8)))
        >>> current[:5] *= -1  # five samples pointing away from every reference sample
        >>> sorted(select_novel(reference, current, 5).selected.tolist())
        [0, 1, 2, 3, 4]
    """
    reference = _check_matrix(reference, "reference")
    current = _check_matrix(current, "current")
    if reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"reference has dim {reference.shape[1]}, current has dim {current.shape[1]}"
        )
    return _select(
        current,
        np.arange(len(current)),
        seed_source=reference,
        seed_rows=np.arange(len(reference)),
        seeds_are_candidates=False,
        n_select=n_select,
        method="k-center",
        metric=metric,
        n_components=None,
        random_state=random_state,
    )


def select_representatives(
    embeddings: np.ndarray,
    rows: np.ndarray,
    n_select: int,
    *,
    method: str = "k-means",
    metric: str = "cosine",
    n_components: int | None = None,
    random_state: int = 0,
) -> Selection:
    """``n_select`` representatives of one subset (a cluster, a class, a selection): the subset
    is both the candidates and what is to be covered. With ``method="k-means"`` they are
    typical members of its main modes, biggest mode first; ``"k-center"`` spreads them to its
    edges instead.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(200, 8))
        >>> picks = select_representatives(x, np.arange(50, 100), 3).selected
        >>> bool(np.all((picks >= 50) & (picks < 100)))
        True
    """
    return select_samples(
        embeddings,
        n_select,
        method=method,
        candidates=rows,
        metric=metric,
        n_components=n_components,
        random_state=random_state,
    )


def selection_coverage(
    embeddings: np.ndarray,
    selected: np.ndarray,
    *,
    candidates: np.ndarray | None = None,
    already_selected: np.ndarray | None = None,
    metric: str = "cosine",
) -> Selection:
    """How well a given selection (a random draw, the labelled set) covers the candidates, as a
    :class:`Selection` with ``method="given"`` and ``selected`` in the order given. Every
    distance is exact; one pass over the candidates, in blocks.

    Example:
        >>> x = np.eye(3)
        >>> selection_coverage(x, np.array([0])).radius
        1.0
    """
    embeddings = _check_matrix(embeddings, "embeddings")
    n_samples = len(embeddings)
    candidate_rows = _rows_or_all(candidates, n_samples, "candidates")
    seed_rows = _rows_or_all(already_selected, n_samples, "already_selected", default_all=False)
    _check_metric(metric)
    selected = np.asarray(selected, dtype=np.int64).ravel()
    position = _positions(candidate_rows, selected, n_samples)
    if np.any(position < 0):
        raise ValueError("every selected row must be a candidate")
    full = _Vectors(embeddings, candidate_rows, metric)
    state = _State.start(full, embeddings, seed_rows, seeds_are_candidates=True)
    state.cover(full, position)
    return state.result(
        "given",
        metric,
        candidate_rows,
        n_samples,
        n_seeds=len(seed_rows),
        params={"n_requested": len(selected)},
    )


# --------------------------------------------------------------------------- the selection


def _select(
    embeddings: np.ndarray,
    candidate_rows: np.ndarray,
    *,
    seed_source: np.ndarray,
    seed_rows: np.ndarray,
    seeds_are_candidates: bool,
    n_select: int,
    method: str,
    metric: str,
    n_components: int | None,
    random_state: int,
) -> Selection:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_metric(metric)
    if n_select < 0:
        raise ValueError(f"n_select must be >= 0, got {n_select}")
    if n_components is not None and (method != "k-means" or n_components < 1):
        raise ValueError(
            f"n_components (k-means' PCA axes) must be >= 1 or None, and None for {method}; "
            f"got {n_components}"
        )
    full = _Vectors(embeddings, candidate_rows, metric)
    state = _State.start(full, seed_source, seed_rows, seeds_are_candidates=seeds_are_candidates)
    params: dict[str, Any] = {
        "n_requested": n_select,
        "n_components": n_components,
        "random_state": random_state,
    }
    n_select = min(n_select, int((~state.taken).sum()))
    if method == "k-center":
        bound = None
        if (
            len(candidate_rows) >= PRUNE_MIN_CANDIDATES
            and n_select >= PRUNE_MIN_PICKS
            and embeddings.shape[1] > 2 * PRUNE_COMPONENTS
        ):
            reducer = _fit_reducer(
                embeddings, candidate_rows, PRUNE_COMPONENTS, metric, random_state
            )
            bound = _Vectors(embeddings, candidate_rows, "euclidean", reducer=reducer)
            params["prune_components"] = reducer.n_components_
        state.k_center(full, n_select, np.random.default_rng(random_state), bound=bound)
        if bound is not None:
            params["pruned_share"] = state.pruned_share()
    else:
        components = n_components or KMEANS_COMPONENTS
        picks, details = _k_means_picks(
            embeddings, candidate_rows, state, n_select, metric, components, random_state
        )
        params.update(details)
        state.cover(full, picks)
        # Empty or fully covered clusters leave picks to make; k-center fills them in.
        params["n_filled_by_k_center"] = n_select - len(picks)
        state.k_center(full, n_select - len(picks), np.random.default_rng(random_state))
    return state.result(
        method, metric, candidate_rows, len(embeddings), n_seeds=len(seed_rows), params=params
    )


class _Vectors:
    """The candidates as a selection measures them: the full rows (read block by block from a
    maybe memory-mapped matrix, normalised on the fly for cosine), or their PCA scores held in
    memory (``reducer``; then only with ``metric="euclidean"``: k-means' space and the pruning
    bound)."""

    def __init__(
        self,
        source: np.ndarray,
        rows: np.ndarray,
        metric: str,
        *,
        reducer: BlockPCA | None = None,
    ):
        self.source, self.rows, self.metric, self.reducer = source, rows, metric, reducer
        self.n = len(rows)
        self.contiguous = self.n == len(source) or self.n == 0
        self.scores: np.ndarray | None = None
        if reducer is not None:
            scores = np.empty((self.n, reducer.n_components_), dtype=np.float32)
            for start in range(0, self.n, BLOCK_ROWS):
                scores[start : start + BLOCK_ROWS] = reducer.transform(
                    self._raw(start, start + BLOCK_ROWS)
                )
            self.scores = scores
        # Per-row factors so a block needs one product per centre and no normalised copy:
        # 1 / norm for cosine on full rows, squared norm otherwise.
        self.factors = np.empty(self.n, dtype=np.float32)
        for start in range(0, self.n, BLOCK_ROWS):
            block = self.block(start, start + BLOCK_ROWS)
            squared = np.einsum("ij,ij->i", block, block)
            if self._unit_rows:
                norms = np.sqrt(squared)
                # A zero row has no direction: factor 0 puts it at distance 1 from everything.
                squared = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
            self.factors[start : start + len(block)] = squared

    @property
    def _unit_rows(self) -> bool:
        return self.metric == "cosine" and self.scores is None

    def _raw(self, start: int, stop: int) -> np.ndarray:
        if self.contiguous:
            return np.asarray(self.source[start:stop], dtype=np.float32)
        return np.asarray(self.source[self.rows[start:stop]], dtype=np.float32)

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, dim) float32 candidates as stored (raw rows or PCA scores)."""
        if self.scores is not None:
            return self.scores[start:stop]
        return self._raw(start, stop)

    def centres(self, positions: np.ndarray) -> np.ndarray:
        """(m, dim) candidates at ``positions``, prepared as centres (unit rows for cosine)."""
        if self.scores is not None:
            return self.scores[positions]
        centres = take_rows(self.source, self.rows[positions])
        if self._unit_rows:
            centres *= self.factors[positions][:, None]
        return centres

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), dim) float32 candidates at ascending ``positions``."""
        if self.scores is not None:
            return self.scores[positions]
        return np.asarray(self.source[self.rows[positions]], dtype=np.float32)

    def distances(self, start: int, block: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """(len(block), m) float32 distances from the block starting at ``start`` to centres."""
        return self._distances(block, self.factors[start : start + len(block)], centres)

    def distances_at(self, positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """(len(positions), m) float32 distances from the candidates at ``positions``."""
        return self._distances(self.rows_at(positions), self.factors[positions], centres)

    def squared(self, start: int, block: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """(len(block), m) float32 squared Euclidean distances (for PCA scores)."""
        factors = self.factors[start : start + len(block)][:, None]
        squared = (
            factors + np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * (block @ centres.T)
        )
        return np.maximum(squared, 0.0)

    def _distances(self, rows: np.ndarray, factors: np.ndarray, centres: np.ndarray) -> np.ndarray:
        products = rows @ centres.T
        if self._unit_rows:
            return np.clip(1.0 - products * factors[:, None], 0.0, 2.0)
        squared = factors[:, None] + np.einsum("ij,ij->i", centres, centres)[None, :]
        return np.sqrt(np.maximum(squared - 2.0 * products, 0.0))

    def seed_distances(self, seeds: Any) -> np.ndarray:
        """(n,) float32 distance of every candidate to its nearest seed (inf without seeds).

        seeds: (n_seeds, dim), read in blocks. Exact up to ``EXACT_SEED_PRODUCTS`` (seed,
        candidate) pairs, with the smaller side in memory and the other read past it; beyond,
        an HNSW index over the seeds (it holds no copy of them).
        """
        nearest = np.full(self.n, np.inf, dtype=np.float32)
        if len(seeds) == 0 or self.n == 0:
            return nearest
        exact = len(seeds) * self.n <= EXACT_SEED_PRODUCTS
        if exact and len(seeds) > self.n:
            candidates = self.block(0, self.n)
            step = max(1, COVERAGE_BLOCK_ELEMENTS // self.n)
            for start in range(0, len(seeds), step):
                centres = prepare_rows(seeds[start : start + step], self.metric)
                distance = self._distances(candidates, self.factors, centres)
                np.minimum(nearest, distance.min(axis=1), out=nearest)
            return nearest
        index = NeighborIndex(seeds, metric=self.metric, method="exact" if exact else "hnsw")
        for start in range(0, self.n, BLOCK_ROWS):
            _, found = index.search(self.block(start, start + BLOCK_ROWS), 1)
            nearest[start : start + len(found)] = found[:, 0]
        return nearest


class _State:
    """Running coverage of the candidates: each one's distance to its nearest pick or seed."""

    def __init__(self, min_distance: np.ndarray, taken: np.ndarray):
        self.min_distance = min_distance
        self.nearest = np.full(len(min_distance), -1, dtype=np.int64)
        self.taken = taken
        self.initial_radius = _max_or_nan(min_distance)
        self.initial_mean = _mean_or_nan(min_distance)
        self.picks: list[int] = []
        self.radii: list[float] = []
        self.means: list[float] = []
        self.pick_distances: list[float] = []
        self.n_read_in_full = 0
        self.n_bounded = 0

    @classmethod
    def start(
        cls,
        vectors: _Vectors,
        seed_source: np.ndarray,
        seed_rows: np.ndarray,
        *,
        seeds_are_candidates: bool,
    ) -> _State:
        # A view of the seed rows, not a copy: "covered = train" is 800k rows of a 1M set.
        seeds = (
            seed_source if len(seed_rows) == len(seed_source) else RowSubset(seed_source, seed_rows)
        )
        min_distance = vectors.seed_distances(seeds)
        taken = np.zeros(vectors.n, dtype=bool)
        if seeds_are_candidates and len(seed_rows):
            seed_positions = _positions(vectors.rows, seed_rows, len(vectors.source))
            seed_positions = seed_positions[seed_positions >= 0]
            taken[seed_positions] = True
            min_distance[seed_positions] = 0.0
        return cls(min_distance, taken)

    def _take(self, position: int) -> None:
        self.picks.append(position)
        self.pick_distances.append(float(self.min_distance[position]))
        self.taken[position] = True

    def k_center(
        self,
        vectors: _Vectors,
        n_picks: int,
        rng: np.random.Generator,
        *,
        bound: _Vectors | None = None,
    ) -> None:
        """Greedy: pick the candidate farthest from every pick and seed, update, repeat.

        bound: the candidates' PCA scores (Euclidean; of unit rows for cosine), whose distances
        are lower bounds of the full ones; rows they show cannot come closer are not read.
        """
        n_picks = min(n_picks, int((~self.taken).sum()))
        with single_threaded():
            for _ in range(n_picks):
                if not self.picks and not np.isfinite(self.min_distance).any():
                    free = np.flatnonzero(~self.taken)
                    position = int(free[rng.integers(len(free))])
                else:
                    position = int(np.argmax(self.min_distance))
                    if self.taken[position]:
                        # Everything left is at distance 0 of a pick or seed (duplicates).
                        position = int(np.argmax(np.where(self.taken, -1.0, self.min_distance)))
                self._take(position)
                self._update(vectors, position, bound)

    def _update(self, vectors: _Vectors, position: int, bound: _Vectors | None) -> None:
        centre = vectors.centres(np.array([position]))
        bound_centre = bound.centres(np.array([position])) if bound is not None else None
        pick = len(self.picks) - 1
        for start in range(0, vectors.n, BLOCK_ROWS):
            stop = min(vectors.n, start + BLOCK_ROWS)
            current = self.min_distance[start:stop]
            if bound is None or bound_centre is None:
                distance = vectors.distances(start, vectors.block(start, stop), centre)[:, 0]
                closer = np.flatnonzero(distance < current)
                distance = distance[closer]
            else:
                lower = bound.squared(start, bound.block(start, stop), bound_centre)[:, 0]
                # A projection only shrinks squared distances: 2 (1 - cos) of unit rows for
                # cosine, the squared distance for euclidean. Rows above theirs cannot come closer.
                ceiling = 2.0 * current if vectors.metric == "cosine" else current * current
                slack = PRUNE_TOLERANCE * (bound.factors[start:stop] + bound.factors[position])
                maybe = np.flatnonzero(lower <= ceiling + slack)
                self.n_bounded += stop - start
                self.n_read_in_full += len(maybe)
                if not len(maybe):
                    continue
                if len(maybe) > PRUNE_DENSE_SHARE * (stop - start):
                    # Gathering scattered rows costs more per row than streaming the block.
                    distance = vectors.distances(start, vectors.block(start, stop), centre)[:, 0]
                    distance = distance[maybe]
                else:
                    distance = vectors.distances_at(start + maybe, centre)[:, 0]
                closer_among = distance < current[maybe]
                closer, distance = maybe[closer_among], distance[closer_among]
            current[closer] = distance
            self.nearest[start + closer] = pick
        # The pick covers itself exactly (float rounding leaves ~1e-7).
        self.min_distance[position] = 0.0
        self.nearest[position] = pick
        self.radii.append(_max_or_nan(self.min_distance))
        self.means.append(_mean_or_nan(self.min_distance))

    def pruned_share(self) -> float:
        """Share of the bounded row updates skipped without reading the full row."""
        return 1.0 - self.n_read_in_full / max(self.n_bounded, 1)

    def cover(self, vectors: _Vectors, positions: np.ndarray) -> None:
        """Add fixed picks at once: one pass over the candidates, cumulative minimum over picks."""
        positions = np.asarray(positions, dtype=np.int64)
        n_picks = len(positions)
        if n_picks == 0:
            return
        first = len(self.picks)
        radii = np.zeros(n_picks, dtype=np.float64)
        sums = np.zeros(n_picks, dtype=np.float64)
        before = np.full(n_picks, np.nan, dtype=np.float64)
        centres = vectors.centres(positions)
        rows_per_block = max(1, min(BLOCK_ROWS, COVERAGE_BLOCK_ELEMENTS // (n_picks + 1)))
        for start in range(0, vectors.n, rows_per_block):
            block = vectors.block(start, start + rows_per_block)
            stop = start + len(block)
            distance = vectors.distances(start, block, centres)
            # A pick covers itself exactly (float rounding leaves ~1e-7).
            inside = np.flatnonzero((positions >= start) & (positions < stop))
            distance[positions[inside] - start, inside] = 0.0
            # Column 0: coverage before these picks; column k + 1: after pick k.
            running = np.minimum.accumulate(
                np.concatenate([self.min_distance[start:stop, None], distance], axis=1), axis=1
            )
            radii = np.maximum(radii, running[:, 1:].max(axis=0))
            sums += running[:, 1:].sum(axis=0, dtype=np.float64)
            before[inside] = running[positions[inside] - start, inside]
            best = distance.argmin(axis=1)
            best_distance = distance[np.arange(len(block)), best]
            closer = best_distance < self.min_distance[start:stop]
            self.nearest[start:stop][closer] = first + best[closer]
            self.min_distance[start:stop] = running[:, -1]
        for k, position in enumerate(positions):
            self.picks.append(int(position))
            self.pick_distances.append(float(before[k]))
            self.taken[position] = True
        self.radii.extend(radii.tolist() if vectors.n else [np.nan] * n_picks)
        self.means.extend((sums / max(vectors.n, 1)).tolist())

    def result(
        self,
        method: str,
        metric: str,
        candidate_rows: np.ndarray,
        n_samples: int,
        *,
        n_seeds: int,
        params: dict[str, Any],
    ) -> Selection:
        distances = np.full(n_samples, np.nan, dtype=np.float32)
        distances[candidate_rows] = self.min_distance
        nearest = np.full(n_samples, -1, dtype=np.int64)
        nearest[candidate_rows] = self.nearest
        return Selection(
            selected=candidate_rows[np.asarray(self.picks, dtype=np.int64)],
            radii=np.asarray(self.radii, dtype=np.float32),
            mean_distances=np.asarray(self.means, dtype=np.float32),
            pick_distances=np.asarray(self.pick_distances, dtype=np.float32),
            distances=distances,
            nearest_pick=nearest,
            method=method,
            metric=metric,
            n_candidates=len(candidate_rows),
            n_seeds=n_seeds,
            initial_radius=self.initial_radius,
            initial_mean_distance=self.initial_mean,
            params=params,
        )


def _k_means_picks(
    embeddings: np.ndarray,
    candidate_rows: np.ndarray,
    state: _State,
    n_select: int,
    metric: str,
    n_components: int,
    random_state: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Candidate positions nearest each k-means centre, largest cluster (by weight) first.

    Weights: each candidate's distance to its nearest seed (1 without seeds), so clusters form
    where coverage is missing; seeds themselves are never picked.
    """
    from sklearn.cluster import KMeans

    n_candidates = len(candidate_rows)
    if n_select == 0 or n_candidates == 0:
        return np.empty(0, dtype=np.int64), {}
    has_seeds = bool(np.isfinite(state.min_distance).any())
    weights = (
        np.where(np.isfinite(state.min_distance), state.min_distance, 0.0).astype(np.float64)
        if has_seeds
        else np.ones(n_candidates)
    )
    weights[state.taken] = 0.0
    if weights.sum() <= 0:
        return np.empty(0, dtype=np.int64), {"n_clusters": 0}
    rng = np.random.default_rng(random_state)
    n_fit = max(MAX_KMEANS_FIT, KMEANS_FIT_PER_CLUSTER * n_select)
    fit_positions = sample_rows(n_candidates, n_fit, rng)
    fit_positions = fit_positions[weights[fit_positions] > 0]
    reducer = _fit_reducer(embeddings, candidate_rows, n_components, metric, random_state)
    reduced = _Vectors(embeddings, candidate_rows, "euclidean", reducer=reducer)
    n_clusters = min(n_select, len(fit_positions))
    model = KMeans(n_clusters=n_clusters, n_init=1, random_state=random_state)
    with warnings.catch_warnings():
        # Fewer distinct points than clusters: KMeans warns and returns what it found.
        warnings.simplefilter("ignore")
        assert reduced.scores is not None
        model.fit(reduced.scores[fit_positions], sample_weight=weights[fit_positions])
    centres = model.cluster_centers_.astype(np.float32)
    mass = np.zeros(n_clusters, dtype=np.float64)
    best_distance = np.full(n_clusters, np.inf)
    best_position = np.full(n_clusters, -1, dtype=np.int64)
    for start in range(0, n_candidates, BLOCK_ROWS):
        block = reduced.block(start, start + BLOCK_ROWS)
        distance = reduced.distances(start, block, centres)
        label = distance.argmin(axis=1)
        own = distance[np.arange(len(block)), label]
        mass += np.bincount(
            label, weights=weights[start : start + len(block)], minlength=n_clusters
        )
        eligible = np.flatnonzero(~state.taken[start : start + len(block)])
        if not len(eligible):
            continue
        # Nearest eligible member per cluster in this block: sort by (cluster, distance).
        order = eligible[np.lexsort((own[eligible], label[eligible]))]
        clusters, first = np.unique(label[order], return_index=True)
        winners = order[first]
        better = own[winners] < best_distance[clusters]
        best_distance[clusters[better]] = own[winners][better]
        best_position[clusters[better]] = start + winners[better]
    usable = np.flatnonzero((best_position >= 0) & (mass > 0))
    order = usable[np.lexsort((usable, -mass[usable]))]
    picks = best_position[order]
    return picks, {
        "n_clusters": n_clusters,
        "n_fit": len(fit_positions),
        "n_components_": reducer.n_components_,
        "kmeans_iterations": int(model.n_iter_),
    }


# --------------------------------------------------------------------------- helpers


def _fit_reducer(
    embeddings: np.ndarray,
    candidate_rows: np.ndarray,
    n_components: int,
    metric: str,
    random_state: int,
) -> BlockPCA:
    rows = sample_rows(len(candidate_rows), MAX_FIT_ROWS, np.random.default_rng(random_state))
    return BlockPCA(n_components, normalize=metric == "cosine", random_state=random_state).fit(
        take_rows(embeddings, candidate_rows[rows])
    )


def _check_matrix(matrix: Any, name: str) -> Any:
    """The matrix as given when rows can be read from it (an array, a memory map, the store's
    block reader, a RowSubset: never read whole here), else as a float32 array."""
    if not (hasattr(matrix, "shape") and hasattr(matrix, "__getitem__")):
        matrix = np.asarray(matrix, dtype=np.float32)
    if len(matrix.shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, dim), got shape {matrix.shape}")
    return matrix


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _rows_or_all(
    rows: np.ndarray | None, n_samples: int, name: str, *, default_all: bool = True
) -> np.ndarray:
    """Ascending unique int64 rows; all rows (or none) when ``rows`` is None. A boolean mask
    of length n_samples is accepted too."""
    if rows is None:
        return np.arange(n_samples) if default_all else np.empty(0, dtype=np.int64)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n_samples,):
            raise ValueError(f"{name} mask has {rows.size} entries for {n_samples} samples")
        return np.flatnonzero(rows)
    rows = np.unique(rows.astype(np.int64).ravel())
    if len(rows) and (rows[0] < 0 or rows[-1] >= n_samples):
        raise ValueError(f"{name} holds rows outside 0..{n_samples - 1}")
    return rows


def _positions(candidate_rows: np.ndarray, rows: np.ndarray, n_samples: int) -> np.ndarray:
    """Position of each row among the (ascending) candidates, -1 when it is no candidate."""
    lookup = np.full(n_samples, -1, dtype=np.int64)
    lookup[candidate_rows] = np.arange(len(candidate_rows))
    return lookup[np.asarray(rows, dtype=np.int64)]


def _max_or_nan(values: np.ndarray) -> float:
    return float(values.max()) if len(values) else float("nan")


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean(dtype=np.float64)) if len(values) else float("nan")
