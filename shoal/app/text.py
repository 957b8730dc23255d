r"""Text the pages show: user content escaped for Markdown and for charts, server paths cut.

Labels, metadata values, file names, ids and link parameters come from visitors. Streamlit renders
Markdown in st.markdown, st.caption, st.write, alerts, image captions and more; plotly renders a
subset of HTML in hover text, legends and titles. Everything user-controlled goes through one of
these helpers before it reaches either, so ``[click](http://evil)`` stays text and never becomes
a link, ``<b>`` stays text and never becomes markup. Messages shown to visitors also lose server
paths (:func:`visitor_error`); the CLI prints them whole.

Example:
    >>> print(escape_markdown("[click](http://evil) **bold**"))
    \[click\]\(http\:\/\/evil\) \*\*bold\*\*
    >>> escape_chart("<img src=x onerror=alert(1)>")
    '&lt;img src=x onerror=alert(1)&gt;'
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import pandas as pd

from shoal.ingest.export import map_text_cells
from shoal.ingest.publish import redact_paths

if TYPE_CHECKING:
    from shoal.app.scatter import Colouring

__all__ = [
    "code_span",
    "escape_chart",
    "escape_markdown",
    "chart_safe_colouring",
    "chart_safe_table",
    "redact_paths",
    "visitor_error",
]

#: Every ASCII punctuation character: CommonMark lets each be backslash-escaped, and escaping
#: them all also defuses Streamlit's own syntax (``:red[...]``, ``:material/...:``, ``$math$``)
#: and GFM's bare links (``www.x.com``, ``http://x``).
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def escape_markdown(value: object) -> str:
    """``value`` as literal text inside Streamlit Markdown: no links, images, emphasis, HTML,
    headings, tables, maths or directives; line breaks become spaces."""
    return _PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(value)))


def code_span(value: object) -> str:
    """``value`` as an inline code span that no backtick inside it can close early.

    >>> code_span("a`b")
    '``a`b``'
    """
    text = _LINE_BREAKS.sub(" ", str(value))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def escape_chart(value: object) -> str:
    """``value`` as literal text in plotly hover text, legends and titles (which read ``<b>``,
    ``<a href>`` and ``<br>`` as markup; entities show as the character)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart_safe_table(samples: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``samples`` whose text cells are escaped for plotly (numbers untouched)."""
    return map_text_cells(samples, lambda v: escape_chart(v) if isinstance(v, str) else v)


def chart_safe_colouring(colouring: Colouring | None) -> Colouring | None:
    """``colouring`` with its name and category names escaped for plotly's legend and hover."""
    if colouring is None:
        return None
    return dataclasses.replace(
        colouring,
        name=escape_chart(colouring.name),
        categories=tuple(escape_chart(c) for c in colouring.categories),
        colours=tuple((escape_chart(c), colour) for c, colour in colouring.colours),
    )


def visitor_error(error: BaseException | str) -> str:
    """An error message as a page shows it: server paths cut, Markdown escaped."""
    return escape_markdown(redact_paths(str(error)))
