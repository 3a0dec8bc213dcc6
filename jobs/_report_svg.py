"""Inline SVG charts of the HTML cohort report (``jobs.report``): plain strings, no plotting library.

Every text that comes from data goes through :func:`html.escape`; every number is formatted here, so the SVG
is valid whatever the ids hold. The charts scale to their container (``viewBox`` + ``width="100%"``).
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

FONT = "font-family=\"-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif\""
NA_COLOUR = "#bdbdbd"


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _ink(colour: str) -> str:
    """Black or white text, whichever reads better on ``colour`` (``#rrggbb``)."""
    c = colour.lstrip("#")
    if len(c) != 6:
        return "#222"
    try:
        r, g, b = (int(c[i:i + 2], 16) / 255 for i in (0, 2, 4))
    except ValueError:
        return "#222"
    return "#1b1b1b" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "#ffffff"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def stacked_bars(rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], colours: dict[str, str],
                 names: dict[str, str], *, title: str = "", width: int = 900, bar_h: int = 26) -> str:
    """One horizontal bar per row, split into segments by proportion (each row sums to ~1).

    ``rows``: ``[(label, [(region, proportion), ...]), ...]``; ``colours`` / ``names``: per region. Segments
    wider than ~5 % carry their percentage; every segment has a tooltip (``<title>``) with the region's name.
    """
    label_w, gap, top = 150, 10, 6
    plot_w = width - label_w - 20
    height = top + len(rows) * (bar_h + gap) + 22
    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
           f'xmlns="http://www.w3.org/2000/svg" {FONT} font-size="12">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    for i, (label, parts) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" fill="#333">'
                   f"{escape(_clip(str(label), 20))}</text>")
        out.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" fill="#f2f2f2"/>')
        total = sum(max(0.0, float(p)) for _, p in parts if _finite(p)) or 1.0
        x = float(label_w)
        for region, p in parts:
            if not _finite(p) or p <= 0:
                continue
            w = plot_w * float(p) / max(total, 1.0)
            colour = colours.get(region, NA_COLOUR)
            name = names.get(region, region)
            out.append(f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar_h}" fill="{escape(colour)}" '
                       f'stroke="#fff" stroke-width="0.6"><title>{escape(str(label))}: {escape(str(name))} '
                       f"{100 * float(p):.1f}%</title></rect>")
            if w >= 0.05 * plot_w:
                out.append(f'<text x="{x + w / 2:.2f}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="middle" '
                           f'fill="{_ink(colour)}" font-size="11">{100 * float(p):.0f}%</text>')
            x += w
    axis_y = top + len(rows) * (bar_h + gap) + 2
    for f in (0, 0.25, 0.5, 0.75, 1.0):
        ax = label_w + plot_w * f
        out.append(f'<text x="{ax:.1f}" y="{axis_y + 12}" text-anchor="middle" fill="#777" font-size="10">'
                   f"{int(f * 100)}%</text>")
    out.append("</svg>")
    return "".join(out)


def region_bars(items: Sequence[tuple[str, float, int]], colours: dict[str, str], names: dict[str, str],
                *, title: str = "", width: int = 900, bar_h: int = 22) -> str:
    """The cohort's composition: one bar per region, its length the region's fraction of all spots.

    ``items``: ``[(region, fraction, n_spots), ...]`` in display order.
    """
    label_w, gap, top = 190, 8, 6
    plot_w = width - label_w - 140
    peak = max([float(f) for _, f, _ in items if _finite(f)] + [1e-9])
    height = top + len(items) * (bar_h + gap) + 6
    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
           f'xmlns="http://www.w3.org/2000/svg" {FONT} font-size="12">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    for i, (region, frac, n) in enumerate(items):
        y = top + i * (bar_h + gap)
        name = str(names.get(region, region))
        colour = colours.get(region, NA_COLOUR)
        f = float(frac) if _finite(frac) else 0.0
        w = max(1.0, plot_w * f / peak)
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" fill="#333">'
                   f"{escape(_clip(name, 26))}</text>")
        out.append(f'<rect x="{label_w}" y="{y}" width="{w:.2f}" height="{bar_h}" rx="2" fill="{escape(colour)}">'
                   f"<title>{escape(name)}: {int(n)} spots ({100 * f:.1f}%)</title></rect>")
        out.append(f'<text x="{label_w + w + 6:.2f}" y="{y + bar_h / 2 + 4:.1f}" fill="#444">'
                   f"{100 * f:.1f}% · {int(n):,} spots</text>")
    out.append("</svg>")
    return "".join(out)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


#: the report's stylesheet (inlined in ``<style>``): system fonts, a centred column, cards in a responsive grid
CSS = """
:root{--ink:#1d2530;--muted:#5f6b7a;--line:#e3e7ec;--bg:#f6f7f9;--card:#fff;--accent:#7a1f5c}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 -apple-system,"Segoe UI",Roboto,
 "Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 28px 40px}
header{background:var(--card);border:1px solid var(--line);border-top:4px solid var(--accent);border-radius:10px;
 padding:22px 26px 14px;margin-bottom:22px}
.kicker{margin:0;color:var(--accent);font-size:12px;letter-spacing:.08em;text-transform:uppercase;font-weight:600}
h1{margin:2px 0 0;font-size:28px;line-height:1.2;word-break:break-word}
.date{margin:2px 0 12px;color:var(--muted)}
h2{font-size:19px;margin:0 0 4px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:14px 0 6px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin-bottom:22px}
.sub{color:var(--muted);margin:6px 0 12px;font-size:13.5px}
.facts{display:flex;flex-wrap:wrap;gap:10px 34px;margin:0 0 8px}
.facts div{min-width:90px}.facts dt{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.facts dd{margin:0;font-size:20px;font-weight:600}
.badge{display:inline-block;padding:1px 10px;border-radius:999px;font-size:14px;background:#e8eaed}
.badge.ok{background:#dff3e4;color:#1e6b34}.badge.partial{background:#fff1d6;color:#8a5a00}
.badge.failed{background:#fde2e1;color:#a12622}
.note{margin:8px 0 4px;padding:8px 12px;background:#f7f2f6;border-left:3px solid var(--accent);border-radius:4px}
.note.err{background:#fdecea;border-color:#c62828}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 18px;padding:0;margin:0 0 8px;font-size:13px}
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;vertical-align:-1px;
 border:1px solid rgba(0,0,0,.15)}
.chart{display:block;max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:18px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:#fff;break-inside:avoid}
.card h3{margin:0;font-size:16px;word-break:break-all}.meta{margin:0 0 8px;color:var(--muted);font-size:13px}
figure{margin:0}figure img{width:100%;height:auto;display:block;border-radius:4px;border:1px solid var(--line)}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
.counts{list-style:none;padding:0;margin:8px 0 0;columns:2;column-gap:18px;font-size:13px}
.counts li{display:flex;align-items:center;break-inside:avoid;padding:1px 0}.counts .sw{flex:none}
.counts li .nm{flex:1;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.counts li b{font-weight:600;font-variant-numeric:tabular-nums;margin-left:6px}
.score{margin:8px 0 0;font-size:13.5px;font-weight:600}.score span{font-weight:400;color:var(--muted)}
.warn{margin:8px 0 0;padding:6px 10px 6px 26px;background:#fff8e1;border-radius:4px;font-size:12.5px;color:#6d4c00}
.noimg{height:160px;display:flex;align-items:center;justify-content:center;background:#f1f1f1;color:var(--muted)}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{background:#f1f3f6;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#435061}
tbody tr:nth-child(even){background:#fafbfc}
table.num td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.num{width:auto;min-width:50%}table.num th{text-align:right}
table.num th:first-child,table.num th.t{text-align:left}
table.num th,table.num td{padding:6px 7px}
table.num td.t{text-align:left}
.scroll{overflow-x:auto}.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.genes code{display:inline-block;background:#eef1f5;border-radius:4px;padding:0 6px;margin:1px 2px;
 font:12.5px/1.6 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.failed th{white-space:nowrap}.errtxt{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;
 color:#a12622;word-break:break-word}
.sets{columns:3 300px;column-gap:24px}.set{break-inside:avoid;margin-bottom:8px}.set h3{margin:4px 0 6px}
.set table{font-size:12.5px}.set th{font-weight:500;color:var(--muted);width:50%;word-break:break-all}
.set td{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px;word-break:break-all}
@media print{body{background:#fff}section,header{border:none;padding:0}.grid{grid-template-columns:1fr 1fr}}
"""


__all__ = ["stacked_bars", "region_bars", "NA_COLOUR", "CSS"]
