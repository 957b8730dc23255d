"""shoal.analysis.pca.BlockPCA, the one PCA of the kernels, against sklearn's exact PCA."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from shoal.analysis import pca as pca_module
from shoal.analysis.blocks import l2_normalize, sample_rows
from shoal.analysis.pca import BlockPCA, randomized_axes
from tests.analysis.synthetic import clustered_embeddings


def assert_same_axes(ours: np.ndarray, reference: np.ndarray) -> None:
    """Columns of two score matrices are the same axes up to sign."""
    for column in range(reference.shape[1]):
        correlation = np.corrcoef(ours[:, column], reference[:, column])[0, 1]
        assert abs(correlation) > 0.999, column


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_exact_pca(normalize: bool) -> None:
    x, _ = clustered_embeddings(500, dim=24, seed=4)
    ours = BlockPCA(5, normalize=normalize).fit_transform(x)
    reference = PCA(n_components=5, svd_solver="full").fit_transform(
        l2_normalize(x) if normalize else x
    )
    assert ours.shape == (500, 5) and ours.dtype == np.float32
    assert_same_axes(ours, reference)


def test_keeps_the_variance_of_the_exact_axes_on_real_embeddings(real) -> None:
    x = real["fmnist"][:2000]
    pca = BlockPCA(50, normalize=True).fit(x)
    exact = PCA(n_components=50, svd_solver="full").fit(l2_normalize(x))
    centred = l2_normalize(x) - exact.mean_
    captured = np.sum((centred @ pca.components_.T) ** 2)
    assert captured / np.sum((centred @ exact.components_.T) ** 2) >= 0.999


def test_blocks_memmap_and_seed_give_the_same_axes(tmp_path, monkeypatch) -> None:
    x, _ = clustered_embeddings(300, dim=16, seed=5)
    whole = BlockPCA(4, normalize=True, random_state=3).fit(x)
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float16))
    mapped = np.load(path, mmap_mode="r")
    # Blocks of 7 rows: fit and transform cross many block boundaries.
    monkeypatch.setattr(pca_module, "BLOCK_ROWS", 7)
    blocked = BlockPCA(4, normalize=True, random_state=3).fit(mapped)
    np.testing.assert_allclose(blocked.components_, whole.components_, atol=2e-3)
    np.testing.assert_allclose(blocked.transform(mapped), whole.transform(x), atol=2e-3)
    again = BlockPCA(4, normalize=True, random_state=3).fit(mapped)
    np.testing.assert_array_equal(again.components_, blocked.components_)


def test_signs_are_fixed_and_components_capped() -> None:
    x, _ = clustered_embeddings(40, dim=8, seed=6)
    pca = BlockPCA(50).fit(x)
    assert pca.n_components_ == 8 and pca.components_.shape == (8, 8)
    largest = pca.components_[np.arange(8), np.abs(pca.components_).argmax(axis=1)]
    assert (largest > 0).all()
    # Three rows span two centred directions.
    assert BlockPCA(50).fit(x[:3]).n_components_ == 2


def test_fits_on_a_seeded_subsample_above_max_fit_rows() -> None:
    x, _ = clustered_embeddings(2000, dim=16, seed=7)
    sampled = BlockPCA(3, max_fit_rows=500, random_state=1).fit_transform(x)
    rows = sample_rows(2000, 500, np.random.default_rng(1))
    assert_same_axes(sampled, PCA(n_components=3).fit(x[rows]).transform(x))
    other_seed = BlockPCA(3, max_fit_rows=500, random_state=2).fit(x)
    assert not np.array_equal(other_seed.mean_, BlockPCA(3, max_fit_rows=500).fit(x).mean_)
    with pytest.raises(ValueError, match="0 samples"):
        BlockPCA(3).fit(np.zeros((0, 4)))


@pytest.mark.parametrize("shape", [(3_000, 200), (120, 300)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_randomized_axes_are_sklearns(shape: tuple[int, int], dtype: type) -> None:
    """The same axes (up to sign) as sklearn's randomized_svd, which Shoal no longer imports;
    the narrower side is transposed in both."""
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(4)
    x = (rng.normal(size=shape) * np.linspace(3, 0.1, shape[1])).astype(dtype)
    x -= x.mean(axis=0)
    ours = randomized_axes(x, 20, n_iter=4, random_state=7)
    _, _, theirs = randomized_svd(x, 20, n_iter=4, random_state=7)
    signs = np.sign(np.sum(ours * theirs, axis=1))[:, None]
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-4 if dtype == np.float32 else 1e-10)
