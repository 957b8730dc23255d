"""shoal.app.text: user text escaped for Markdown and plotly, server paths cut from messages."""

from __future__ import annotations

import re
import string

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from shoal.app.scatter import Colouring
from shoal.app.text import (
    chart_safe_colouring,
    code_span,
    escape_chart,
    escape_markdown,
    redact_paths,
    visitor_error,
)


def _every_punctuation_escaped(text: str) -> bool:
    """True when each ASCII punctuation character of ``text`` is backslash-escaped."""
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            if position + 1 >= len(text) or text[position + 1] not in string.punctuation:
                return False
            position += 2
            continue
        if char in string.punctuation or char in "\r\n":
            return False
        position += 1
    return True


@given(st.text())
def test_escaped_markdown_has_no_live_syntax(text: str) -> None:
    escaped = escape_markdown(text)
    assert _every_punctuation_escaped(escaped)
    # Unescaped, it is the text again (a run of line breaks shown as one space).
    assert re.sub(r"\\(.)", r"\1", escaped) == re.sub(r"[\r\n\u2028\u2029]+", " ", text)


def test_markdown_injection_examples() -> None:
    assert escape_markdown("[click](http://evil)") == r"\[click\]\(http\:\/\/evil\)"
    assert escape_markdown("**bold**") == r"\*\*bold\*\*"
    assert escape_markdown("<img src=x onerror=alert(1)>") == r"\<img src\=x onerror\=alert\(1\)\>"
    assert escape_markdown("a\n# heading") == r"a \# heading"
    assert escape_markdown(":red[x] $x$ www.evil.com") == r"\:red\[x\] \$x\$ www\.evil\.com"


@given(st.text())
def test_code_span_cannot_be_closed_early(text: str) -> None:
    span = code_span(text)
    fence = len(span) - len(span.lstrip("`"))
    inner = span[fence:-fence]
    assert span.endswith("`" * fence)
    assert "`" * fence not in inner  # no run inside is as long as the fence
    assert "\n" not in span and "\r" not in span


def test_chart_text_and_colouring_are_escaped() -> None:
    assert escape_chart("<b>a & b</b>") == "&lt;b&gt;a &amp; b&lt;/b&gt;"
    colouring = Colouring.categorical(
        "<i>label</i>", np.array(["<b>x</b>", "y"]), colours={"<b>x</b>": "#000000"}
    )
    safe = chart_safe_colouring(colouring)
    assert safe is not None and safe.name == "&lt;i&gt;label&lt;/i&gt;"
    assert safe.categories == ("&lt;b&gt;x&lt;/b&gt;", "y")
    assert dict(safe.colours) == {"&lt;b&gt;x&lt;/b&gt;": "#000000"}
    assert np.array_equal(safe.codes, colouring.codes)
    assert chart_safe_colouring(None) is None


def test_server_paths_are_cut_from_messages() -> None:
    assert (
        redact_paths("Could not open '/srv/shoal/.uploads/upload-x1/e.parquet': no footer")
        == "Could not open 'e.parquet': no footer"
    )
    assert (
        redact_paths("no dataset 'x' in workspace /srv/shoal ws (datasets: none)")
        == "no dataset 'x' in workspace shoal ws (datasets: none)"
    )
    assert redact_paths(r"cannot open C:\data\shoal\x.jpg now") == "cannot open x.jpg now"
    for kept in (
        "see http://example.org/a/b",
        "train/cat/1.jpg is relative",
        "ratio 250:1",
        "TP/FP/FN",
        "/tmp",
    ):
        assert redact_paths(kept) == kept
    message = visitor_error(OSError(2, "No such file", "/srv/ws/datasets/d/x.jpg"))
    assert "srv" not in message and r"x\.jpg" in message
