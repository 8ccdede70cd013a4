"""Charts drawn on the server as inline SVG: the pages need no script, no library and no
internet access to show them, and every label is escaped like any other template value."""

from collections.abc import Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from archive.safetext import text_marked

_BAR = "#417690"  # the admin's own blue


def column_chart(
    points: Sequence[tuple[str, int]],
    *,
    title: str,
    unit: str = "instances",
    label_every: int = 1,
    width: int = 720,
    height: int = 180,
) -> SafeString:
    """One column per (label, value), left to right; every `label_every`th label is written
    under its column, and each column's exact value is in its tooltip."""
    left, bottom, top = 48, 22, 10
    plot_w, plot_h = width - left - 4, height - bottom - top
    peak = max((value for _, value in points), default=0)
    scale = _nice_ceiling(peak)
    slot = plot_w / max(len(points), 1)
    columns = []
    # Labels come from the data: SVG text shows no HTML marking, so escapes in plain text.
    for i, (label, value) in enumerate((text_marked(label), value) for label, value in points):
        bar_h = plot_h * value / scale if scale else 0
        x = left + i * slot
        columns.append(
            format_html(
                '<rect class="bar" x="{}" y="{}" width="{}" height="{}" '
                'fill="{}"><title>{}: {} {}</title></rect>',
                _n(x + slot * 0.1),
                _n(top + plot_h - bar_h),
                _n(slot * 0.8),
                _n(bar_h),
                _BAR,
                label,
                value,
                unit,
            )
        )
        if i % label_every == 0:
            columns.append(
                format_html(
                    '<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>',
                    _n(x + slot / 2),
                    height - 6,
                    label,
                )
            )
    axis = format_html(
        '<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/>'
        '<text x="{tx}" y="{ty}" font-size="10" text-anchor="end">{max}</text>'
        '<text x="{tx}" y="{b}" font-size="10" text-anchor="end">0</text>',
        l=left,
        r=width - 4,
        b=top + plot_h,
        tx=left - 4,
        ty=top + 8,
        max=scale,
    )
    return format_html(
        '<svg class="chart" role="img" aria-label="{}" viewBox="0 0 {} {}" width="100%" '
        'style="max-width:{}px" xmlns="http://www.w3.org/2000/svg"><title>{}</title>{}{}</svg>',
        title,
        width,
        height,
        width,
        title,
        axis,
        SafeString("".join(columns)),
    )


def bar_list(items: Sequence[tuple[str, int]], *, title: str, width: int = 480) -> SafeString:
    """Horizontal bars, one per (label, value), largest first as given."""
    row_h, label_w = 20, 140
    peak = max((value for _, value in items), default=0) or 1
    height = row_h * max(len(items), 1) + 4
    rows = format_html_join(
        "",
        '<text x="0" y="{}" font-size="11">{}</text>'
        '<rect class="bar" x="{}" y="{}" width="{}" height="14" fill="{}">'
        "<title>{}: {}</title></rect>"
        '<text x="{}" y="{}" font-size="11">{}</text>',
        (
            (
                i * row_h + 14,
                label[:22],
                label_w,
                i * row_h + 3,
                _n((width - label_w - 60) * value / peak),
                _BAR,
                label,
                value,
                _n(label_w + (width - label_w - 60) * value / peak + 4),
                i * row_h + 14,
                value,
            )
            for i, (label, value) in enumerate(
                (text_marked(label), value) for label, value in items
            )
        ),
    )
    return format_html(
        '<svg class="chart" role="img" aria-label="{}" viewBox="0 0 {} {}" width="100%" '
        'style="max-width:{}px" xmlns="http://www.w3.org/2000/svg"><title>{}</title>{}</svg>',
        title,
        width,
        height,
        width,
        title,
        rows,
    )


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2 or 5 times a power of ten at or above `value`: a round axis top."""
    if value <= 0:
        return 0
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if factor * magnitude >= value:
                return factor * magnitude
        magnitude *= 10


def _n(value: float) -> str:
    """A coordinate with one decimal (format_html escapes its arguments before formatting)."""
    return f"{value:.1f}"
