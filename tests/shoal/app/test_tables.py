"""shoal.app.tables (with the object-level rules of scatter and thumbnails): rows described for people."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shoal.app.scatter import STATUS_COLOURS, metadata_colourings
from shoal.app.tables import row_ids, tile_caption, to_csv_bytes
from shoal.app.thumbnails import object_box


def test_object_rows_are_described_by_category_kind_and_status() -> None:
    import pandas as pd

    objects = pd.DataFrame(
        {
            "object_id": ["o1", "o2"],
            "sample_id": ["s1", "s1"],
            "kind": ["label", "inference"],
            "category": ["person", "car"],
            "x0": [1.0, 2.0], "y0": [1.0, 2.0], "x1": [5.0, 6.0], "y1": [5.0, 6.0],
            "score": [np.nan, 0.9],
            "status": ["fn", "fp"],
            "match_id": [None, None],
        }
    )  # fmt: skip
    assert row_ids(objects).tolist() == ["o1", "o2"]
    assert tile_caption(objects, 1) == ["car · inference · fp · score 0.90", "o2"]
    assert object_box(objects, 0) == (1.0, 1.0, 5.0, 5.0)
    colourings = metadata_colourings(objects)
    assert {"category", "kind", "status"} <= set(colourings)
    assert not {"x0", "object_id", "match_id"} & set(colourings)
    assert dict(colourings["status"].colours) == STATUS_COLOURS


def test_csv_downloads_do_not_carry_spreadsheet_formulas() -> None:
    """Regression: a label or file name such as '=HYPERLINK(...)' from an upload was exported as
    is, and a spreadsheet opening the download ran it."""
    import io

    table = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "label": ['=HYPERLINK("http://x","y")', "+cmd", "cat"],
            "path": ["@SUM(A1)", "-2+3", "dog.jpg"],
            "score": [-1.5, 2.0, 0.25],
        }
    )
    back = pd.read_csv(io.BytesIO(to_csv_bytes(table)))
    assert back["label"].tolist() == ['\'=HYPERLINK("http://x","y")', "'+cmd", "cat"]
    assert back["path"].tolist() == ["'@SUM(A1)", "'-2+3", "dog.jpg"]
    assert back["score"].tolist() == [-1.5, 2.0, 0.25]


def test_csv_column_names_cannot_run_as_formulas_either() -> None:
    """A metadata column from an upload becomes a header cell: it is neutralised like a value."""
    import io

    import pandas as pd

    table = pd.DataFrame({"=cmd()": ["a"], "label": pd.Categorical(["+x"]), "n": [-1]})
    back = pd.read_csv(io.BytesIO(to_csv_bytes(table)))
    assert list(back.columns) == ["'=cmd()", "label", "n"]
    assert back.loc[0, "label"] == "'+x" and back.loc[0, "n"] == -1


def test_rows_of_ids_finds_only_the_wanted_ids() -> None:
    from shoal.app.tables import rows_of_ids

    ids = np.array([f"s{i:07d}" for i in range(200_000)], dtype=object)
    assert rows_of_ids(ids, ["s0150000", "nope", "s0000003"]) == {"s0150000": 150000, "s0000003": 3}
    assert rows_of_ids(ids, []) == {}
