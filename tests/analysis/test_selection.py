"""shoal.analysis.selection on REAL embeddings (tests/fixtures/real_embeddings.npz: EfficientNet-Lite0
features of Fashion-MNIST, 500 per class), against random picks and a naive in-memory oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shoal.analysis.selection as selection
from shoal.analysis.blocks import l2_normalize
from shoal.analysis.duplicates import find_duplicates
from shoal.analysis.selection import (
    Selection,
    select_novel,
    select_representatives,
    select_samples,
    selection_coverage,
)

N_RANDOM_SEEDS = 5


def nearest_label_accuracy(result: Selection, labels: np.ndarray) -> float:
    """Share of candidates whose label equals their nearest pick's (a 1-NN classifier trained on
    the picks, scored on every candidate)."""
    covered = result.nearest_pick >= 0
    predicted = labels[result.selected[result.nearest_pick[covered]]]
    return float(np.mean(predicted == labels[covered]))


def random_baseline(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_select: int,
    *,
    pool: np.ndarray | None = None,
    already: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(mean distance, 1-NN accuracy, radius) of random picks, averaged over several seeds."""
    pool = np.arange(len(embeddings)) if pool is None else pool
    figures = []
    for seed in range(N_RANDOM_SEEDS):
        picks = np.random.default_rng(seed).choice(pool, n_select, replace=False)
        chosen = picks if already is None else np.r_[already, picks]
        result = selection_coverage(embeddings, chosen)
        figures.append(
            (result.mean_distance, nearest_label_accuracy(result, labels), result.radius)
        )
    mean, accuracy, radius = np.mean(figures, axis=0)
    return float(mean), float(accuracy), float(radius)


def naive_k_center(unit: np.ndarray, n_select: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The textbook greedy on the whole normalised matrix in memory: (picks, radius after each)."""
    distance = 1.0 - unit.astype(np.float64) @ unit[first].astype(np.float64)
    distance[first] = 0.0
    picks, radii = [first], [distance.max()]
    for _ in range(n_select - 1):
        pick = int(np.argmax(distance))
        distance = np.minimum(distance, 1.0 - unit.astype(np.float64) @ unit[pick])
        distance[pick] = 0.0
        picks.append(pick)
        radii.append(distance.max())
    return np.array(picks), np.array(radii)


@pytest.fixture(scope="module")
def fmnist(real: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return real["fmnist"], real["fmnist_labels"]


# --------------------------------------------------------------------------- (a) coverage


@pytest.mark.parametrize("n_select", [50, 200])
def test_k_means_covers_real_data_better_than_random(fmnist, n_select):
    embeddings, labels = fmnist
    result = select_samples(embeddings, n_select, random_state=0)
    random_mean, random_accuracy, _ = random_baseline(embeddings, labels, n_select)
    assert result.method == "k-means" and len(np.unique(result.selected)) == n_select
    # Measured: 50 picks 0.202 vs 0.239 and 0.76 vs 0.69; 200 picks 0.171 vs 0.190, 0.80 vs 0.77.
    assert result.mean_distance < 0.93 * random_mean
    assert nearest_label_accuracy(result, labels) > random_accuracy + 0.02


def test_k_center_minimises_the_radius_not_the_mean(fmnist):
    """k-center's objective is the largest distance: far below random's. (It does not beat random
    on the mean distance or 1-NN accuracy on this data; that is what k-means is for.)"""
    embeddings, labels = fmnist
    result = select_samples(embeddings, 100, method="k-center", random_state=0)
    _, _, random_radius = random_baseline(embeddings, labels, 100)
    assert result.radius < 0.8 * random_radius  # measured 0.40 vs 0.57
    # The greedy's invariant: each pick is the farthest candidate, so it sets the radius before it.
    np.testing.assert_allclose(result.pick_distances[1:], result.radii[:-1], rtol=1e-5)
    assert np.all(np.diff(result.radii) <= 1e-6)
    assert np.all(np.diff(result.mean_distances) <= 1e-6)


def test_already_labelled_samples_are_covered_not_picked(fmnist):
    embeddings, labels = fmnist
    labelled = np.random.default_rng(100).choice(len(embeddings), 100, replace=False)
    unlabelled = np.setdiff1d(np.arange(len(embeddings)), labelled)
    result = select_samples(embeddings, 100, already_selected=labelled, random_state=0)
    assert not np.isin(result.selected, labelled).any()
    assert result.n_seeds == 100 and result.initial_radius > result.radius
    together = selection_coverage(embeddings, np.r_[labelled, result.selected])
    random_mean, random_accuracy, _ = random_baseline(
        embeddings, labels, 100, pool=unlabelled, already=labelled
    )
    assert together.mean_distance < random_mean
    assert nearest_label_accuracy(together, labels) > random_accuracy
    # The result's own figures count the seeds as covering.
    np.testing.assert_allclose(result.mean_distance, together.mean_distance, rtol=1e-4)

    greedy = select_samples(
        embeddings, 100, method="k-center", already_selected=labelled, random_state=0
    )
    assert not np.isin(greedy.selected, labelled).any()
    assert greedy.pick_distances[0] == pytest.approx(greedy.initial_radius, rel=1e-5)


def test_selection_is_deterministic_given_random_state(fmnist):
    embeddings, _ = fmnist
    rows = np.arange(1500)
    for method in ("k-means", "k-center"):
        first = select_samples(embeddings[rows], 20, method=method, random_state=3)
        again = select_samples(embeddings[rows], 20, method=method, random_state=3)
        np.testing.assert_array_equal(first.selected, again.selected)
    other = select_samples(embeddings[rows], 20, method="k-center", random_state=4)
    assert other.selected[0] != first.selected[0]


# --------------------------------------------------------------------------- (b) novelty


def test_novel_picks_fill_the_classes_the_reference_lacks_without_duplicates(real):
    train, train_labels = real["fmnist"], real["fmnist_labels"]
    current, current_labels = real["fmnist_test"], real["fmnist_test_labels"]
    missing = [7, 8, 9]
    reference = train[~np.isin(train_labels, missing)]
    # Three near-copies (cosine ~0.001) of each of the five most novel current samples: a plain
    # "top-N most novel" ranking picks them side by side.
    rng = np.random.default_rng(0)
    unit_reference = l2_normalize(reference)
    novelty = 1.0 - (l2_normalize(current) @ unit_reference.T).max(axis=1)
    most_novel = np.argsort(-novelty)[:5]
    copies = np.repeat(current[most_novel], 3, axis=0)
    copies += (rng.normal(size=copies.shape) * 0.05 * copies.std(axis=1, keepdims=True)).astype(
        np.float32
    )
    current = np.concatenate([current, copies])
    current_labels = np.r_[current_labels, np.repeat(current_labels[most_novel], 3)]
    threshold = find_duplicates(current).threshold

    result = select_novel(reference, current, 30)
    share = np.isin(current_labels[result.selected], missing).mean()
    assert share >= 0.9  # measured 1.0; the classes make up 31 % of the current set
    unit = l2_normalize(current[result.selected])
    pairwise = 1.0 - unit @ unit.T
    np.fill_diagonal(pairwise, np.inf)
    assert pairwise.min() > threshold  # measured 0.31 vs a duplicate threshold near 0.04
    # The first pick is the most novel sample; its pick distance is its novelty.
    full_novelty = 1.0 - (l2_normalize(current) @ unit_reference.T).max(axis=1)
    assert result.pick_distances[0] == pytest.approx(full_novelty.max(), abs=1e-5)
    # The naive ranking does pick the planted copies together (the test can fail).
    naive = l2_normalize(current[np.argsort(-full_novelty)[:30]])
    naive_pairwise = 1.0 - naive @ naive.T
    np.fill_diagonal(naive_pairwise, np.inf)
    assert naive_pairwise.min() < threshold

    # The same selection within one embedding set, by rows.
    pooled = np.concatenate([reference, current])
    by_rows = select_samples(
        pooled,
        30,
        method="k-center",
        candidates=np.arange(len(reference), len(pooled)),
        already_selected=np.arange(len(reference)),
    )
    np.testing.assert_array_equal(by_rows.selected - len(reference), result.selected)


# --------------------------------------------------------------------------- (c) subsets


def test_representatives_cover_their_subset(fmnist):
    embeddings, labels = fmnist
    rows = np.flatnonzero(labels == 3)
    result = select_representatives(embeddings, rows, 10)
    assert np.isin(result.selected, rows).all() and result.n_candidates == len(rows)
    outside = np.setdiff1d(np.arange(len(embeddings)), rows)
    assert np.isnan(result.distances[outside]).all() and (result.nearest_pick[outside] == -1).all()
    random_means = [
        selection_coverage(
            embeddings,
            np.random.default_rng(seed).choice(rows, 10, replace=False),
            candidates=rows,
        ).mean_distance
        for seed in range(N_RANDOM_SEEDS)
    ]
    assert result.mean_distance < np.mean(random_means)
    # Picks come largest cluster first: the first pick represents the most samples.
    represented = result.represented()
    assert represented.sum() == len(rows)  # without seeds, every member is nearest a pick
    assert represented[0] >= np.median(represented)


# --------------------------------------------------------------------------- the blocks


def test_blocked_k_center_equals_naive_in_memory_greedy(fmnist, monkeypatch, tmp_path: Path):
    """Blocks of 700 rows (5,000 rows: 8 blocks), read from a memory map, give the textbook
    greedy's picks and radii."""
    embeddings, _ = fmnist
    monkeypatch.setattr(selection, "BLOCK_ROWS", 700)
    stored = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=embeddings.shape
    )
    stored[:] = embeddings
    stored.flush()
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    result = select_samples(mapped, 60, method="k-center", random_state=0)
    picks, radii = naive_k_center(l2_normalize(embeddings), 60, int(result.selected[0]))
    np.testing.assert_array_equal(result.selected, picks)
    np.testing.assert_allclose(result.radii, radii, atol=2e-6)
    # A subset of candidates (read by row numbers, not slices) and the one-pass coverage.
    rows = np.arange(1, len(embeddings), 2)
    subset = select_samples(mapped, 30, method="k-center", candidates=rows, random_state=1)
    picks, radii = naive_k_center(
        l2_normalize(embeddings[rows]), 30, int(np.searchsorted(rows, subset.selected[0]))
    )
    np.testing.assert_array_equal(subset.selected, rows[picks])
    np.testing.assert_allclose(subset.radii, radii, atol=2e-6)
    monkeypatch.setattr(selection, "COVERAGE_BLOCK_ELEMENTS", 1000 * 31)
    again = selection_coverage(mapped, subset.selected, candidates=rows)
    np.testing.assert_allclose(again.radii, subset.radii, atol=2e-6)
    np.testing.assert_allclose(again.mean_distances, subset.mean_distances, atol=2e-6)
    np.testing.assert_array_equal(again.nearest_pick, subset.nearest_pick)
    np.testing.assert_allclose(again.pick_distances[1:], subset.pick_distances[1:], atol=2e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_many_seeds_stream_past_few_candidates_from_a_reader(fmnist, monkeypatch, metric):
    """4,000 seeds and 300 candidates, read from the store-like reader 64 rows at a time (never
    copied whole): the candidates sit in memory, the seeds stream past them 50 at a time, and
    the distances to the nearest seed and the k-center picks are the all-pairs oracle's."""
    from shoal.analysis import blocks
    from tests.analysis.readers import StrictReader

    embeddings, _ = fmnist
    candidates, seeds = np.arange(300), np.arange(300, 4300)
    monkeypatch.setattr(selection, "COVERAGE_BLOCK_ELEMENTS", 300 * 50)
    monkeypatch.setattr(selection, "BLOCK_ROWS", 64)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 64)
    reader = StrictReader(embeddings)
    result = select_samples(
        reader, 20, method="k-center", candidates=candidates, already_selected=seeds, metric=metric
    )
    assert reader.largest_read <= len(candidates)  # the candidates in memory; seeds in blocks
    wide = embeddings[: len(candidates) + len(seeds)].astype(np.float64)
    if metric == "cosine":
        wide /= np.linalg.norm(wide, axis=1, keepdims=True)
        all_pairs = np.clip(1.0 - wide @ wide.T, 0.0, 2.0)
    else:
        squared = (wide**2).sum(axis=1)
        all_pairs = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * wide @ wide.T, 0))
    distance = all_pairs[np.ix_(candidates, seeds)].min(axis=1)
    assert result.initial_radius == pytest.approx(distance.max(), rel=1e-5)
    assert result.initial_mean_distance == pytest.approx(distance.mean(), rel=1e-5)
    picks = []
    for _ in range(20):
        picks.append(int(np.argmax(distance)))
        distance = np.minimum(distance, all_pairs[candidates, picks[-1]])
    np.testing.assert_array_equal(result.selected, picks)
    np.testing.assert_allclose(result.distances[candidates], distance, rtol=1e-5, atol=2e-6)
    in_memory = select_samples(
        embeddings, 10, candidates=candidates, already_selected=seeds, metric=metric
    )
    from_reader = select_samples(
        reader, 10, candidates=candidates, already_selected=seeds, metric=metric
    )
    np.testing.assert_array_equal(from_reader.selected, in_memory.selected)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pca_pruned_k_center_equals_naive_greedy(fmnist, monkeypatch, metric):
    """With enough candidates and picks, a PCA copy skips rows that cannot come closer: the same
    picks. Blocks of 700 rows, some read whole (many rows may come closer), some gathered."""
    embeddings, _ = fmnist
    x = embeddings[:2000]
    plain = select_samples(x, 40, method="k-center", metric=metric)
    monkeypatch.setattr(selection, "PRUNE_MIN_CANDIDATES", 1000)
    monkeypatch.setattr(selection, "PRUNE_MIN_PICKS", 10)
    monkeypatch.setattr(selection, "BLOCK_ROWS", 700)
    pruned = select_samples(x, 40, method="k-center", metric=metric)
    assert pruned.params["prune_components"] == selection.PRUNE_COMPONENTS
    assert pruned.params["pruned_share"] > 0.3
    if metric == "cosine":
        picks, radii = naive_k_center(l2_normalize(x), 40, int(plain.selected[0]))
    else:
        exact = x.astype(np.float64)
        distance = np.linalg.norm(exact - exact[plain.selected[0]], axis=1)
        picks, radii = [int(plain.selected[0])], [distance.max()]
        for _ in range(39):
            picks.append(int(np.argmax(distance)))
            distance = np.minimum(distance, np.linalg.norm(exact - exact[picks[-1]], axis=1))
            radii.append(distance.max())
    np.testing.assert_array_equal(plain.selected, picks)
    np.testing.assert_array_equal(pruned.selected, picks)
    np.testing.assert_allclose(pruned.radii, radii, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(pruned.distances, plain.distances, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pruned.nearest_pick, plain.nearest_pick)


# --------------------------------------------------------------------------- the record


def test_selection_record_round_trip_and_edges(fmnist):
    embeddings, _ = fmnist
    result = select_samples(embeddings[:300], 5, random_state=0)
    back = Selection.from_arrays(result.to_arrays(), result.to_meta())
    np.testing.assert_array_equal(back.selected, result.selected)
    frame = result.to_frame(sample_ids=np.array([f"img{i}" for i in range(300)]))
    assert list(frame.columns) == [
        "pick",
        "sample_id",
        "pick_distance",
        "radius",
        "mean_distance",
        "represented",
    ]
    assert frame["sample_id"].iloc[0] == f"img{result.selected[0]}"
    assert result.to_dict()["n_selected"] == 5
    assert len(select_samples(embeddings[:10], 50).selected) == 10
    assert len(select_samples(embeddings[:10], 0).selected) == 0
    everything = select_samples(embeddings[:10], 5, already_selected=np.arange(10))
    assert len(everything.selected) == 0 and everything.radius == 0.0
    with pytest.raises(ValueError, match="method"):
        select_samples(embeddings[:10], 3, method="random")
    with pytest.raises(ValueError, match="outside"):
        select_samples(embeddings[:10], 3, candidates=np.array([10]))
    with pytest.raises(ValueError, match="n_components"):
        select_samples(embeddings[:10], 3, method="k-center", n_components=8)
