"""Text from DICOM values shown to people: control characters made visible.

A sender controls every indexed value. ESC sequences in a Modality clear a terminal and
recolour what follows; a right-to-left override (U+202E) in a PatientID shows it reversed, so
one ID can be dressed as another. What is escaped here: C0 controls, DEL, C1 controls, and the
bidirectional formatting characters (embeddings and overrides U+202A-U+202E, isolates
U+2066-U+2069, the marks U+200E, U+200F and U+061C).

- `terminal_safe` for command output and logs: each such character becomes `\\x1b`-style or
  `\\u202e`-style text.
- `text_marked` for plain text that a page shows (SVG labels, JSON read by the status page):
  the same escapes, tab, newline and carriage return included.
- `ControlCharacterMiddleware` for every HTML page: each such character left in the page becomes
  a visible, highlighted `\\u202e` (tab, newline and carriage return are HTML whitespace and stay).
"""

import logging
import re
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
# In HTML, tab, newline and carriage return are whitespace the templates themselves use.
_HTML_CONTROLS = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """`text` with control and bidi characters as visible escapes, safe to print."""
    return _CONTROLS.sub(_escape, text)


text_marked = terminal_safe


def strings_marked(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with every string `text_marked`."""
    if isinstance(value, str):
        return text_marked(value)
    if isinstance(value, dict):
        return {key: strings_marked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strings_marked(item) for item in value]
    return value


def _html_mark(match: re.Match[str]) -> str:
    # No quotes in the markup: should it land inside an attribute value, it stays text there.
    return (
        "<span class=dicom-control title=hidden-control-character "
        "style=color:#fff;background:#b00;font-family:monospace;padding:0 2px>"
        f"{_escape(match)}</span>"
    )


def html_marked(html: str) -> str:
    """An HTML page with each control or bidi character shown as a highlighted escape."""
    return _HTML_CONTROLS.sub(_html_mark, html)


class ControlCharacterMiddleware:
    """Marks control and bidi characters in every HTML page, whichever view or admin list put a
    DICOM value there. Pages carry none of their own, so nothing legitimate changes."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.streaming or not response.get("Content-Type", "").startswith("text/html"):
            return response
        charset = response.charset or "utf-8"
        html = response.content.decode(charset, errors="replace")
        if _HTML_CONTROLS.search(html):
            response.content = html_marked(html).encode(charset)
        return response


class TerminalSafeFormatter(logging.Formatter):
    """Log lines with control and bidi characters of their message escaped: a log line quoting
    an AE title or a UID from a peer must not drive the terminal that shows it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = terminal_safe(record.message)
        return super().formatMessage(record)
