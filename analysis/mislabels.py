"""Label issues from neighbour disagreement on the shared kNN graph.

Each sample's neighbours vote for their labels with weight ``exp(-d / s)``, ``d`` the distance
and ``s`` the median distance of that sample's neighbours (a self-tuning kernel: nearer
neighbours count more, whatever the embedding's scale). One pseudo-vote spread over the classes in
proportion to their frequency smooths the estimate (so a sample whose neighbours carry no label
gets the class prior). This gives a kNN posterior ``p(c | neighbours)``.

Score: ``1 - p(given label)``, in [0, 1); higher = more likely mislabelled.

Flag (default, ``rule="no_support"``): a labelled sample is flagged when **none of its labelled
neighbours carries its label**, and at least half of its k neighbours are labelled (so that
"none" means something). The suggested label is the neighbours' strongest class.

Why this rule. A label flip puts on a sample a class that its neighbourhood does not hold.
Under flips at rate ε spread over the K - 1 other classes, a label is more likely wrong than
right only where the neighbourhood's own probability of that label is below about
2ε / (K - 1) (0.4% at ε = 2%, 2% at ε = 10%, K = 10): the neighbours essentially never carry it,
and "none of k" is what that looks like in a sample of k neighbours. A label that some
neighbours share is an ambiguous case (shirt or T-shirt) far more often than an error, and
flagging those costs the precision users act on. Measured on real Fashion-MNIST embeddings
with labels flipped at random (benchmarks/bench_flags.py): precision about 0.55, 0.75 and 0.85
at 2, 5 and 10% flips with recall 0.75-0.9, and about 1.5% of samples flagged when no label was
flipped (samples whose whole neighbourhood is another class: true errors in the data set or
genuinely ambiguous images). Small classes weaken it: among 300 digits (30 per class)
precision is 0.34 at 2% flips (6 flips, 5 ambiguous digits), 0.64-0.76 at 5-10%. The rule does
not depend on the score's scale, the number of classes, or k beyond "none of k".

``rule="confident_joint"`` keeps the earlier, more liberal rule (confident learning, Northcutt et
al. 2021, without a model): for each class ``c`` the threshold ``t_c`` is the mean posterior of
``c`` among samples labelled ``c`` (``class_thresholds``); a sample is flagged when some other
class reaches ``p(c) >= t_c`` and beats the given label. Higher recall, but it flags the
ambiguous cases too: 4.6-8.9% of clean Fashion-MNIST, precision 0.15-0.6 at 2-10% flips.

Example:
    >>> import numpy as np
    >>> from shoal.analysis.knn import build_knn_graph
    >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5] + np.random.default_rng(0).normal(size=(40, 2))
    >>> labels = np.array(["a"] * 20 + ["b"] * 20); labels[3] = "b"
    >>> result = score_mislabels(labels, graph=build_knn_graph(x, metric="euclidean"))
    >>> result.flagged_indices.tolist(), str(result.suggested_labels[3])
    ([3], 'a')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.knn import KnnGraph, build_knn_graph
from shoal.analysis.results import ArrayRecord, ids_or_rows, jsonable

#: Weight of the class-prior pseudo-vote, in units of one neighbour at the median distance's
#: weight (exp(-1)).
PRIOR_WEIGHT = float(np.exp(-1.0))
#: Flagging rules: the default, and the earlier confident-learning rule (module docstring).
RULES = ("no_support", "confident_joint")


@dataclass(frozen=True)
class MislabelResult(ArrayRecord):
    """Mislabel scores, suggestions and the neighbours behind each flag.

    scores: (n_samples,) float32 in [0, 1), 1 - kNN posterior of the given label; higher = more
    likely mislabelled; NaN where the sample has no label. given_posterior: (n_samples,) the
    posterior itself. suggested_labels: (n_samples,) str, the neighbours' strongest other class
    when flagged, else "". flagged_indices: (n_flagged,) highest score first, with their
    neighbours' rows, distances and labels as evidence.
    """

    scores: np.ndarray
    given_posterior: np.ndarray
    flagged: np.ndarray
    suggested_labels: np.ndarray
    suggested_posterior: np.ndarray
    classes: np.ndarray
    class_thresholds: np.ndarray
    flagged_indices: np.ndarray
    neighbor_indices: np.ndarray
    neighbor_distances: np.ndarray
    neighbor_labels: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per sample: sample_id (or row), score, given_posterior, flagged, suggested_label."""
        return pd.DataFrame(
            {
                "sample_id": ids_or_rows(sample_ids, len(self.scores)),
                "score": self.scores,
                "given_posterior": self.given_posterior,
                "flagged": self.flagged,
                "suggested_label": self.suggested_labels,
                "suggested_posterior": self.suggested_posterior,
            }
        )

    def to_dict(
        self, *, sample_ids: np.ndarray | None = None, labels: Any = None
    ) -> dict[str, Any]:
        names = ids_or_rows(sample_ids, len(self.scores))
        flagged = []
        for i, row in enumerate(self.flagged_indices):
            entry = {
                "sample": names[row],
                "score": self.scores[row],
                "suggested_label": self.suggested_labels[row],
                "suggested_posterior": self.suggested_posterior[row],
                "neighbors": names[self.neighbor_indices[i]],
                "neighbor_labels": self.neighbor_labels[i],
                "neighbor_distances": self.neighbor_distances[i],
            }
            if labels is not None:
                entry["given_label"] = str(np.asarray(labels, dtype=object)[row])
            flagged.append(entry)
        return jsonable(
            {
                **self.to_meta(),
                "n_samples": len(self.scores),
                "n_flagged": self.n_flagged,
                "classes": self.classes.tolist(),
                "class_thresholds": self.class_thresholds,
                "scores": self.scores,
                "flagged": flagged,
            }
        )


def encode_labels(labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n,) int64 with -1 for missing, classes (n_classes,) str sorted).

    Missing: None, NaN, pandas NA or the empty string. Labels compare as strings, so 3 and "3"
    are one class.
    """
    series = pd.Series(np.asarray(labels, dtype=object))
    # pandas' own strings (no Python object per sample), and a hash lookup instead of a loop.
    as_text = series.astype("string")
    as_text = as_text.where(series.notna() & (as_text.str.len() > 0))
    classes = np.array(sorted(as_text.dropna().unique()), dtype=str)
    codes = pd.Index(classes).get_indexer(as_text).astype(np.int64)
    return codes, classes


def score_mislabels(
    labels: Any,
    *,
    graph: KnnGraph | None = None,
    embeddings: np.ndarray | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    rule: str = "no_support",
) -> MislabelResult:
    """Score how likely each sample's label is wrong, from its neighbours' labels.

    labels: (n_samples,) any hashable values, None/NaN/"" = unlabelled (scored NaN, never
    flagged, and not voting). graph: the shared kNN graph (built from ``embeddings`` if None).
    rule: ``"no_support"`` (default) or ``"confident_joint"``; see the module docstring.
    """
    if rule not in RULES:
        raise ValueError(f"unknown mislabel rule {rule!r}; choose from {', '.join(RULES)}")
    codes, classes = encode_labels(labels)
    if graph is None:
        if embeddings is None:
            raise ValueError("pass embeddings or a precomputed graph")
        graph = build_knn_graph(embeddings, n_neighbors=n_neighbors, random_state=random_state)
    n_samples, k = graph.indices.shape
    if len(codes) != n_samples:
        raise ValueError(f"{len(codes)} labels for a graph of {n_samples} samples")
    n_classes = len(classes)
    labelled = codes >= 0
    prior = np.bincount(codes[labelled], minlength=n_classes).astype(np.float64)
    prior = prior / prior.sum() if prior.sum() else prior

    weights = _kernel_weights(graph.distances)
    neighbor_codes = codes[graph.indices] if k else np.zeros((n_samples, 0), np.int64)
    # Padding (index -1 or infinite distance: fewer eligible rows than k) is no neighbour.
    present = (graph.indices >= 0) & np.isfinite(graph.distances)
    neighbor_codes = np.where(present, neighbor_codes, -1)
    weights = np.where(neighbor_codes >= 0, weights, 0.0)
    total = weights.sum(axis=1) + PRIOR_WEIGHT

    given_posterior = np.full(n_samples, np.nan)
    given_mass = (weights * (neighbor_codes == codes[:, None])).sum(axis=1)
    given_posterior[labelled] = (
        given_mass[labelled] + PRIOR_WEIGHT * prior[codes[labelled]]
    ) / total[labelled]

    # Posterior of each neighbour's class, per neighbour slot: (n, k), computed in row blocks.
    slot_posterior = np.zeros((n_samples, k))
    for start in range(0, n_samples, 16384):
        block_codes = neighbor_codes[start : start + 16384]
        block_weights = weights[start : start + 16384]
        same = block_codes[:, :, None] == block_codes[:, None, :]
        mass = (same * block_weights[:, None, :]).sum(axis=2)
        slot_prior = prior[np.maximum(block_codes, 0)] * PRIOR_WEIGHT
        slot_posterior[start : start + 16384] = (mass + slot_prior) / total[
            start : start + 16384, None
        ]
    slot_posterior[neighbor_codes < 0] = 0.0

    # Per-class bar: mean self-posterior among samples carrying that label (how self-consistent
    # each class is; the confident-joint rule's thresholds).
    thresholds = np.ones(n_classes)
    if n_classes:
        sums = np.bincount(codes[labelled], weights=given_posterior[labelled], minlength=n_classes)
        counts = np.bincount(codes[labelled], minlength=n_classes)
        thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    other_label = (neighbor_codes >= 0) & (neighbor_codes != codes[:, None]) & labelled[:, None]
    min_voters = max(1, -(-k // 2))
    if rule == "no_support":
        voters = (neighbor_codes >= 0).sum(axis=1)
        agreeing = ((neighbor_codes == codes[:, None]) & labelled[:, None]).sum(axis=1)
        supported = (agreeing > 0) | (voters < min_voters)
        eligible = other_label & ~supported[:, None]
        rule_record = {
            "rule": f"no labelled neighbour carries the label (of >= {min_voters} labelled)",
            "min_labelled_neighbors": min_voters,
        }
    else:
        eligible = (
            other_label
            & (slot_posterior >= thresholds[np.maximum(neighbor_codes, 0)])
            & (slot_posterior > np.nan_to_num(given_posterior, nan=1.0)[:, None])
        )
        rule_record = {"rule": "another class passes its class threshold (confident learning)"}
    candidate = np.where(eligible, slot_posterior, -1.0)
    best_slot = candidate.argmax(axis=1) if k else np.zeros(n_samples, dtype=np.int64)
    best_value = candidate[np.arange(n_samples), best_slot] if k else np.full(n_samples, -1.0)
    flagged = best_value > 0
    suggested_codes = np.where(
        flagged, neighbor_codes[np.arange(n_samples), best_slot] if k else -1, -1
    )

    scores = (1.0 - given_posterior).astype(np.float32)
    flagged_indices = np.flatnonzero(flagged)
    flagged_indices = flagged_indices[np.argsort(-scores[flagged_indices], kind="stable")]
    label_text = np.append(classes, "")
    return MislabelResult(
        scores=scores,
        given_posterior=given_posterior.astype(np.float32),
        flagged=flagged,
        suggested_labels=label_text[suggested_codes],
        suggested_posterior=np.where(flagged, best_value, np.nan).astype(np.float32),
        classes=classes,
        class_thresholds=thresholds.astype(np.float32),
        flagged_indices=flagged_indices.astype(np.int64),
        neighbor_indices=graph.indices[flagged_indices],
        neighbor_distances=graph.distances[flagged_indices],
        neighbor_labels=label_text[neighbor_codes[flagged_indices]],
        params={
            "n_neighbors": k,
            "metric": graph.metric,
            "graph_method": graph.method,
            "prior_weight": PRIOR_WEIGHT,
            "n_labelled": int(labelled.sum()),
            "flag_rule": rule,
            **rule_record,
        },
    )


def _kernel_weights(distances: np.ndarray) -> np.ndarray:
    """exp(-d / median row distance): 1 at distance 0, exp(-1) at the row's median distance."""
    if distances.shape[1] == 0:
        return np.zeros(distances.shape)
    distances = distances.astype(np.float64)
    scale = np.median(distances, axis=1, keepdims=True)
    # A row of exact duplicates has scale 0: treat every neighbour as equally close.
    scale = np.where(scale > 0, scale, 1.0)
    weights = np.exp(-distances / scale)
    weights[~np.isfinite(distances)] = 0.0
    return weights
