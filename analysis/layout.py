"""UMAP's layout optimisation, compiled with numba and cached on disk.

The stochastic gradient descent of umap-learn's ``optimize_layout_euclidean`` (McInnes, Healy &
Melville 2018): every epoch samples each edge of the fuzzy graph in proportion to its weight
(an attraction between its two ends) and ``negative_sample_rate`` random points per sampled edge
(repulsions of its head), with per-coordinate gradients clipped to ±4 and a learning rate that
falls linearly to 0. The epoch schedule, the gradients and the defaults are umap-learn's; what
differs makes it faster, at the same quality (tests/analysis/test_layout.py compares the
trustworthiness of its maps with umap-learn's on real embeddings):

- float32 arithmetic, and ``d ** b`` from polynomial ``log2``/``exp2`` (relative error below
  1e-4 for the b of any ``min_dist``, 0.79 to 1.92) instead of a float64 ``pow``: the power is
  most of the work, one per sample;
- an edge's negative samples are computed from its head's position before any of them moves it,
  and their steps summed, instead of one after another: the samples are independent, so the CPU
  overlaps them instead of waiting out each one's latency;
- each point draws its negative samples from its own xorshift64 stream.

Altogether about 2x umap-learn's kernel (serial or parallel) on 50,000 points. This module does
not import umap-learn, which costs 2.5 s (with scikit-learn) in every new process; its kernels
are cached beside it (numba's ``cache=True``), so only the first process compiles them.

Example:
    >>> import numpy as np, scipy.sparse
    >>> weights = scipy.sparse.random(200, 200, density=0.05, random_state=0, format="coo")
    >>> coords = np.random.default_rng(0).uniform(0, 10, (200, 2)).astype(np.float32)
    >>> optimize_layout(coords, weights.row, weights.col, weights.data, n_epochs=20)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba.core import types as numba_types
from numba.extending import intrinsic

#: umap-learn's ``find_ab_params(spread, min_dist)`` for (spread, min_dist) pairs that maps use
#: by default, so that no process imports scipy.optimize (0.8 s) for them;
#: tests/analysis/test_layout.py checks each against the fit.
KNOWN_CURVES = {(1.0, 0.1): (1.5769434602697652, 0.8950608778515733)}
#: Gradients are clipped per coordinate to this magnitude (umap-learn's ``clip``).
GRADIENT_CLIP = 4.0


@dataclass(frozen=True)
class LayoutParams:
    """UMAP's layout parameters (umap-learn's defaults): ``a`` and ``b`` shape the map's
    similarity curve ``1 / (1 + a d^2b)`` (:func:`curve_params`); ``repulsion_strength`` is
    umap-learn's ``gamma``."""

    a: float
    b: float
    n_epochs: int | None
    initial_alpha: float = 1.0
    repulsion_strength: float = 1.0
    negative_sample_rate: int = 5
    local_connectivity: float = 1.0


@functools.cache
def curve_params(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """(a, b) of ``1 / (1 + a x^2b)`` fitted to UMAP's target curve: 1 up to ``min_dist``, then
    ``exp(-(x - min_dist) / spread)`` (umap-learn's ``find_ab_params``)."""
    known = KNOWN_CURVES.get((float(spread), float(min_dist)))
    return known if known is not None else _fit_curve(min_dist, spread)


def _fit_curve(min_dist: float, spread: float) -> tuple[float, float]:
    from scipy.optimize import curve_fit

    def curve(x: np.ndarray, a: float, b: float) -> np.ndarray:
        return 1.0 / (1.0 + a * x ** (2 * b))

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    (a, b), _ = curve_fit(curve, x, y)
    return float(a), float(b)


def epochs_per_sample(weights: np.ndarray, n_epochs: int) -> np.ndarray:
    """(n_edges,) float32: every how many epochs each edge is sampled; the heaviest edge every
    epoch (umap-learn's ``make_epochs_per_sample``). Weights must be positive."""
    weights = np.asarray(weights, dtype=np.float64)
    return (weights.max(initial=0.0) / weights).astype(np.float32)


def optimize_layout(
    coords: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    weights: np.ndarray,
    *,
    n_epochs: int,
    a: float = KNOWN_CURVES[(1.0, 0.1)][0],
    b: float = KNOWN_CURVES[(1.0, 0.1)][1],
    initial_alpha: float = 1.0,
    repulsion_strength: float = 1.0,
    negative_sample_rate: int = 5,
    move_other: bool = True,
    parallel: bool = False,
    random_state: int = 0,
) -> np.ndarray:
    """Optimise ``coords`` (n_points, 2 or 3) float32 in place and return it.

    head, tail, weights: the graph's edges (n_edges,), ``weights`` > 0. ``move_other``: an
    attraction also moves the tail (a fit); False keeps tails where they are (placing new points
    into a fitted map). Negative samples are drawn from all ``n_points``.

    ``parallel`` runs the edges of an epoch on all cores; threads race on shared coordinates
    (as umap-learn's parallel kernel does), so only the serial run is reproducible for a seed.
    """
    if coords.dtype != np.float32 or not coords.flags.c_contiguous:
        raise ValueError("coords must be a C-contiguous float32 array")
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise ValueError(f"coords must have 2 or 3 columns, got shape {coords.shape}")
    weights = np.asarray(weights)
    keep = weights > 0
    head = np.ascontiguousarray(np.asarray(head)[keep], dtype=np.int64)
    tail = np.ascontiguousarray(np.asarray(tail)[keep], dtype=np.int64)
    if not len(head):
        return coords
    if min(head.min(), tail.min()) < 0 or max(head.max(), tail.max()) >= len(coords):
        raise ValueError(f"edges must join rows of coords (0 to {len(coords) - 1})")
    every = epochs_per_sample(weights[keep], n_epochs)
    every_negative = every / np.float32(negative_sample_rate)
    next_sample, next_negative = every.copy(), every_negative.copy()
    # xorshift64 needs non-zero states.
    streams = np.random.default_rng(random_state).integers(1, 2**63 - 1, len(coords), np.uint64)
    epoch = _epoch_kernel(parallel)
    for n in range(n_epochs):
        epoch(
            coords,
            head,
            tail,
            every,
            next_sample,
            every_negative,
            next_negative,
            streams,
            np.float32(a),
            np.float32(b),
            np.float32(repulsion_strength),
            np.float32(initial_alpha * (1.0 - n / n_epochs)),
            np.float32(n),
            move_other,
        )
    return coords


# --------------------------------------------------------------------------- compiled kernels


@intrinsic
def _float_bits(typingctx: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(numba_types.int32))

    return numba_types.int32(numba_types.float32), codegen


@intrinsic
def _bits_float(typingctx: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(numba_types.float32))

    return numba_types.float32(numba_types.int32), codegen


@numba.njit(fastmath=True, inline="always", cache=True)
def _power(x: float, b: float) -> float:  # pragma: no cover - compiled
    """x ** b for x > 0 as exp2(b log2 x), each from its exponent bits and a polynomial of the
    mantissa (least-squares fits on [1, 2) and [0, 1): absolute error 3e-5 in log2, relative
    7e-6 in exp2)."""
    bits: int = _float_bits(np.float32(x))  # type: ignore[call-arg]  # numba passes the context
    t = _bits_float(np.int32((bits & 0x7FFFFF) | 0x3F800000)) - np.float32(1.0)
    log2 = np.float32((bits >> 23) - 127) + t * (
        np.float32(1.441267417148588)
        + t
        * (
            np.float32(-0.7057041576756423)
            + t
            * (
                np.float32(0.40872174404365985)
                + t * (np.float32(-0.18772263530834685) + t * np.float32(0.0434289078220859))
            )
        )
    )
    y = min(max(b * log2, np.float32(-126.0)), np.float32(126.0))
    whole = np.floor(y)
    f = y - whole
    scale = _bits_float(np.int32((np.int32(whole) + 127) << 23))
    return scale * (
        np.float32(1.000007283254341)
        + f
        * (
            np.float32(0.6929312891618609)
            + f
            * (
                np.float32(0.24171026247087748)
                + f * (np.float32(0.05166687743062797) + f * np.float32(0.013676531087901157))
            )
        )
    )


def _epoch(
    coords: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    every: np.ndarray,
    next_sample: np.ndarray,
    every_negative: np.ndarray,
    next_negative: np.ndarray,
    streams: np.ndarray,
    a: float,
    b: float,
    gamma: float,
    alpha: float,
    n: float,
    move_other: bool,
) -> None:  # pragma: no cover - compiled
    """One epoch over the edges due at epoch ``n`` (2 or 3 map axes; a third axis of a 2-D map
    is carried as 0)."""
    n_points = np.uint64(coords.shape[0])
    three = coords.shape[1] == 3
    clip = np.float32(GRADIENT_CLIP)
    zero = np.float32(0.0)
    for i in numba.prange(every.shape[0]):
        if next_sample[i] > n:
            continue
        j = head[i]
        k = tail[i]
        dx = coords[j, 0] - coords[k, 0]
        dy = coords[j, 1] - coords[k, 1]
        dz = coords[j, 2] - coords[k, 2] if three else zero
        squared = dx * dx + dy * dy + dz * dz
        coefficient = zero
        if squared > zero:
            power = _power(squared, b)
            coefficient = np.float32(-2.0) * a * b * (power / squared) / (a * power + np.float32(1))
        step_x = min(max(coefficient * dx, -clip), clip) * alpha
        step_y = min(max(coefficient * dy, -clip), clip) * alpha
        step_z = min(max(coefficient * dz, -clip), clip) * alpha
        x = coords[j, 0] + step_x
        y = coords[j, 1] + step_y
        z = coords[j, 2] + step_z if three else zero
        if move_other:
            coords[k, 0] -= step_x
            coords[k, 1] -= step_y
            if three:
                coords[k, 2] -= step_z
        next_sample[i] += every[i]

        n_negative = int((n - next_negative[i]) / every_negative[i])
        state = streams[j]
        push_x = zero
        push_y = zero
        push_z = zero
        for _ in range(n_negative):
            state ^= state << np.uint64(13)
            state ^= state >> np.uint64(7)
            state ^= state << np.uint64(17)
            k = np.intp(((state >> np.uint64(32)) * n_points) >> np.uint64(32))
            if k == j:
                continue
            dx = x - coords[k, 0]
            dy = y - coords[k, 1]
            dz = z - coords[k, 2] if three else zero
            squared = dx * dx + dy * dy + dz * dz
            if squared > zero:
                coefficient = (
                    np.float32(2.0)
                    * gamma
                    * b
                    / ((np.float32(0.001) + squared) * (a * _power(squared, b) + np.float32(1)))
                )
                push_x += min(max(coefficient * dx, -clip), clip) * alpha
                push_y += min(max(coefficient * dy, -clip), clip) * alpha
                push_z += min(max(coefficient * dz, -clip), clip) * alpha
        streams[j] = state
        coords[j, 0] = x + push_x
        coords[j, 1] = y + push_y
        if three:
            coords[j, 2] = z + push_z
        next_negative[i] += n_negative * every_negative[i]


def _compiled(name: str, parallel: bool) -> Any:
    """``_epoch`` compiled under its own name: numba keys its disk cache by function name, so
    the serial and parallel variants of one function would share (and mix up) one entry."""
    variant = types.FunctionType(
        _epoch.__code__, _epoch.__globals__, name, _epoch.__defaults__, _epoch.__closure__
    )
    variant.__qualname__ = name
    return numba.njit(variant, fastmath=True, parallel=parallel, cache=True)


_KERNELS: dict[bool, Any] = {}


def _epoch_kernel(parallel: bool) -> Any:
    if parallel not in _KERNELS:
        _KERNELS[parallel] = _compiled("_epoch_parallel" if parallel else "_epoch_serial", parallel)
    return _KERNELS[parallel]
