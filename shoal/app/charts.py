"""Small plotly figures the pages show beside a result (built here, tested without Streamlit)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

#: Bars of a score histogram.
HISTOGRAM_BINS = 60


def score_histogram(
    scores: np.ndarray, threshold: float, *, x_title: str = "score", height: int = 220
) -> go.Figure:
    """How a result's scores spread, a log-count histogram (so the few high scores stay
    visible beside the bulk), and the flagging threshold as a vertical line."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n_flagged = int((finite > threshold).sum())
    low = float(min(finite.min(), threshold)) if len(finite) else 0.0
    high = float(max(finite.max(), threshold)) if len(finite) else 1.0
    counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS, range=(low, high or low + 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    flagged = centres > threshold
    figure = go.Figure(
        go.Bar(
            x=centres,
            y=np.where(counts > 0, counts, np.nan),
            width=float(edges[1] - edges[0]),
            marker_color=np.where(flagged, "#d62728", "#9aa5b1").tolist(),
            hovertemplate="score %{x:.3g}: %{y:,} samples<extra></extra>",
        )
    )
    figure.add_vline(
        x=threshold,
        line_dash="dash",
        line_color="#d62728",
        annotation_text=f"threshold {threshold:.3g}: {n_flagged:,} flagged",
        annotation_position="top right",
    )
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=False,
        bargap=0.05,
        xaxis_title=x_title,
        yaxis_title="samples",
        yaxis_type="log",
    )
    return figure
