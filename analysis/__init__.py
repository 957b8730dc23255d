"""Shoal's analysis engine: pure kernels (arrays in, frozen result records out).

One kNN graph per embedding set (:mod:`shoal.analysis.knn`) feeds the projection
(:mod:`shoal.analysis.projection`), outlier scores (:mod:`shoal.analysis.outliers`), near-duplicates
(:mod:`shoal.analysis.duplicates`) and label checks (:mod:`shoal.analysis.mislabels`); similarity search
(:mod:`shoal.analysis.similar`) reuses the same exact index. :mod:`shoal.analysis.compare` tells whether two
sets differ (the permutation tests of :mod:`shoal.analysis.two_sample`) and where;
:mod:`shoal.analysis.selection` picks what to label next and :mod:`shoal.analysis.splits` keeps duplicate
groups inside one split. One PCA
(:mod:`shoal.analysis.pca`) serves them all, and every stored result shares one storage contract
(:class:`shoal.analysis.results.ArrayRecord`). These modules import nothing of ``shoal``: the workflows
in ``shoal.workflows`` read a stored dataset, run them and cache their results.

>>> import numpy as np
>>> from analysis import build_knn_graph, score_outliers
>>> x = np.random.default_rng(0).normal(size=(100, 8))
>>> score_outliers(x, graph=build_knn_graph(x)).scores.shape
(100,)
"""

from shoal.analysis.blocks import l2_normalize
from shoal.analysis.duplicates import DuplicateResult, find_duplicates
from shoal.analysis.knn import KnnGraph, NeighborIndex, build_knn_graph
from shoal.analysis.mislabels import MislabelResult, score_mislabels
from shoal.analysis.outliers import SCORERS, OutlierResult, register_scorer, score_outliers
from shoal.analysis.projection import Projection, project
from shoal.analysis.selection import Selection, select_novel, select_samples
from shoal.analysis.similar import SimilarResult, search_similar
from shoal.analysis.splits import LeakFreeSplits, leak_free_splits

__all__ = [
    "SCORERS",
    "DuplicateResult",
    "KnnGraph",
    "LeakFreeSplits",
    "MislabelResult",
    "NeighborIndex",
    "OutlierResult",
    "Projection",
    "Selection",
    "SimilarResult",
    "build_knn_graph",
    "find_duplicates",
    "l2_normalize",
    "project",
    "leak_free_splits",
    "register_scorer",
    "select_novel",
    "select_samples",
    "score_mislabels",
    "score_outliers",
    "search_similar",
]
