"""Line charts as inline SVG text: the HTML run report draws its curves with no library and no network.

Text, not pixels: the page stays small, sharp at any zoom and searchable, and each point's value is a
tooltip (its <title>). Non-finite values break a line rather than being drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
MAX_POINTS = 400  # longer series keep every k-th point (and the last): a chart is ~400 pixels wide
Series = tuple[str, Sequence[float], Sequence[float]]  # (label, x, y)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    k = math.ceil(len(xs) / MAX_POINTS)
    keep = list(range(0, len(xs), k))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def line_chart(series: Sequence[Series], title: str, width: int = 440, height: int = 230) -> str:
    """An <svg> chart of each series (x = step) with axes, round ticks and a legend for several series."""
    series = [(label, *_thin(xs, ys)) for label, xs, ys in series]
    finite = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if not finite:
        raise ValueError(f"chart {title!r}: no finite value to draw")
    x_lo, x_hi = min(x for x, _ in finite), max(x for x, _ in finite)
    y_lo, y_hi = min(y for _, y in finite), max(y for _, y in finite)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = (y_hi - y_lo) * 0.05 or (abs(y_hi) * 0.1 if y_hi else 0.5)  # a flat line sits mid-chart
    y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 56, 10, 24, 30
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * plot_h

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="15" class="title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>',
    ]
    for y in nice_ticks(y_lo, y_hi):
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{py(y) + 4:.1f}" class="ytick">{_label(y)}</text>')
    for x in nice_ticks(x_lo, x_hi):
        out.append(f'<text x="{px(x):.1f}" y="{height - 12}" class="xtick">{_label(x)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{height - 1}" class="xlabel">step</text>')
    for i, (label, xs, ys) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        for segment in _segments(xs, ys):
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
            out.append(
                f'<polyline points="{points}" stroke="{color}" class="line" data-series="{escape(label)}"/>'
            )
            if len(xs) <= 40:
                out += [
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(label)} at step {_label(x)}: {_label(y)}</title></circle>"
                    for x, y in segment
                ]
        if len(series) > 1:
            y = top + 12 + 13 * i
            out.append(f'<text x="{left + 8}" y="{y}" fill="{color}" class="legend">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _segments(xs: Sequence[float], ys: Sequence[float]) -> list[list[tuple[float, float]]]:
    """Runs of finite points: a NaN / inf between them breaks the line."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y):
            segments[-1].append((x, y))
        elif segments[-1]:
            segments.append([])
    return [s for s in segments if s]
