from __future__ import annotations

import numpy as np

from shoal.app.charts import score_histogram


def test_the_histogram_marks_the_threshold_and_the_flagged_bars() -> None:
    scores = np.concatenate([np.random.default_rng(0).normal(size=1000), [6.0, 7.0, np.nan]])
    figure = score_histogram(scores, 4.0)
    bars = figure.data[0]
    assert np.nansum(bars.y) == 1002  # every finite score counted once
    flagged_colour = "#d62728"
    assert {c for x, c in zip(bars.x, bars.marker.color, strict=True) if x > 4.0} == {
        flagged_colour
    }
    assert figure.layout.shapes[0].x0 == 4.0
    assert "2 flagged" in figure.layout.annotations[0].text
    assert figure.layout.yaxis.type == "log"


def test_a_threshold_beyond_every_score_is_still_drawn() -> None:
    figure = score_histogram(np.array([0.1, 0.2, 0.3]), 5.0)
    assert figure.layout.shapes[0].x0 == 5.0 and "0 flagged" in figure.layout.annotations[0].text
    assert max(figure.data[0].x) < 5.0
