"""``OUTPUT/report.html``: the cohort report a pathologist reads — one self-contained HTML file.

Everything is inline: the region maps as ``data:image/png;base64`` URIs, CSS in a ``<style>`` block, the charts as
inline SVG (``jobs._report_svg``); no script, no network, no link. Built only from what a finished run left in its
output folder (``cohort_summary.json``, ``tables/*.csv``, ``maps/*.png``, ``infer/summaries/*.json``,
``tracking/run.json``), so it can be rebuilt later: ``python -c "from jobs.report import write_report; ..."``.

Uses ``tables/regions.csv`` (region names, tissue, colour, markers) and ``tables/composition.csv`` (per patient)
when present; otherwise falls back to ``patients.csv`` (``prop_region_<r>``), ``markers.csv``, region ids as
names and the ``senca_core`` palette (the colours of the region maps). Every text from data is escaped.

Errors: :func:`write_report` never raises (bar ``KeyboardInterrupt``): on any failure it returns ``None`` and hands
one line (``"report not written: <why>"``) to ``on_error`` — or, without one, issues it as a
:class:`ReportWarning`. No Ray / MLflow import.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from html import escape
from pathlib import Path
from typing import Any, Callable

from . import _report_data as data
from ._report_svg import CSS, NA_COLOUR, region_bars, stacked_bars

REPORT_NAME = "report.html"
MAX_IMG_PX = 1000  # region maps wider than this are downscaled for the report
QUANTIZE_OVER = 400_000  # PNG bytes above which a map is re-encoded with a 256-colour palette
TEXT = ' class="t"'  # a text cell of a numeric table


class ReportWarning(UserWarning):
    """The report could not be written (the run itself is unaffected)."""


def write_report(output_dir: str | Path, *, on_error: Callable[[str], Any] | None = None) -> Path | None:
    """Write ``output_dir/report.html``; return its path, or ``None`` (and one line to ``on_error``) on failure."""
    try:
        out = Path(output_dir)
        html = build_report(out)
        path = out / REPORT_NAME
        tmp = path.with_name(f".{REPORT_NAME}.tmp")
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(path)
        return path
    except Exception as err:  # noqa: BLE001 - the report must never fail a run
        msg = f"report not written: {type(err).__name__}: {err}"
        if on_error is not None:
            try:
                on_error(msg)
            except Exception:  # noqa: BLE001
                pass
        else:
            warnings.warn(msg, ReportWarning, stacklevel=2)
        return None


def build_report(output_dir: str | Path) -> str:
    """The report's HTML (raises on an unreadable output folder; :func:`write_report` catches)."""
    c = data.load(Path(output_dir))
    parts = [_header(c), _cohort_section(c), _patients_section(c), _slides_section(c), _markers_section(c),
             _failed_section(c), _settings_section(c)]
    title = f"SENCA-st cohort report — {c['cohort']}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
            + "".join(p for p in parts if p) + _footer(c) + "</main></body></html>\n")


# ------------------------------------------------------------------------------------------------ pieces
def _e(x: Any) -> str:
    return escape("" if x is None else str(x))


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None or isinstance(x, bool):
        return "—" if x is None else ("yes" if x else "no")
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        return f"{int(x):,}" if x.is_integer() and abs(x) >= 1 else f"{x:.{nd}f}"
    return _e(x)


def _swatch(colour: str) -> str:
    return f'<span class="sw" style="background:{_e(colour)}"></span>'


def _name(c: dict, r: str) -> str:
    return str(c["names"].get(r, r))


def _header(c: dict) -> str:
    s = c["summary"]
    status = str(s.get("status") or "unknown")
    n, bad = len(c["slides"]), sum(x["status"] != "ok" for x in c["slides"])
    sel = ((s.get("tuning") or {}).get("selection") or {}).get("rule")
    facts = [("Status", f'<span class="badge {_e(status)}">{_e(status)}</span>'),
             ("Slides finished", f"{n - bad} of {n}"), ("Slides failed", str(bad)),
             ("Patients", str(len(c["patient_ids"]))), ("Regions", str(len(c["regions"])))]
    if s.get("registered_model_version") is not None:
        facts.append(("Model version", _e(s["registered_model_version"])))
    out = [f"<header><p class=\"kicker\">SENCA-st spatial transcriptomics · cohort report</p>"
           f"<h1>{_e(c['cohort'])}</h1><p class=\"date\">{_e(c['date'])}</p>",
           '<dl class="facts">' + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts) + "</dl>"]
    if sel:
        best = (s.get("tuning") or {}).get("best_config") or {}
        cfg = ", ".join(f"{_e(k)} = {_fmt(v, 4)}" for k, v in best.items())
        out.append(f'<p class="note"><b>Model selection:</b> {_e(sel)}.' + (f" Chosen settings: {cfg}." if cfg else "")
                   + "</p>")
    if s.get("k_auto"):
        out.append(f'<p class="note"><b>Number of regions:</b> {_e(data.k_auto_line(s["k_auto"]))}.</p>')
    if s.get("region_restarts"):
        out.append(f'<p class="note"><b>Reproducibility:</b> {_e(data.restarts_line(s["region_restarts"]))}.</p>')
    if s.get("error"):
        out.append(f'<p class="note err"><b>Cohort error:</b> {_e(s["error"])}</p>')
    for w in s.get("warnings") or []:  # cohort-level, e.g. pooled regions that follow the patients
        out.append(f'<p class="note warn"><b>Warning:</b> {_e(w)}</p>')
    return "".join(out) + "</header>"


def _legend(c: dict, regions: list[str]) -> str:
    return '<ul class="legend">' + "".join(
        f"<li>{_swatch(c['colours'].get(r, NA_COLOUR))}{_e(_name(c, r))}</li>" for r in regions) + "</ul>"


def _cohort_section(c: dict) -> str:
    items = [(r, c["cohort_fraction"].get(r, 0.0), c["cohort_counts"].get(r, 0)) for r in c["regions"]]
    if not items:
        return ""
    chart = region_bars(items, c["colours"], c["names"], title="Cohort composition")
    total = sum(c["cohort_counts"].values())
    return (f"<section><h2>Cohort composition</h2><p class=\"sub\">Share of all {total:,} spots of the finished "
            f"slides in each region (regions are shared across the cohort).</p>{chart}</section>")


def _patients_section(c: dict) -> str:
    rows = [(pid, [(r, c["composition"].get(pid, {}).get(r, 0.0)) for r in c["regions"]])
            for pid in c["patient_ids"] if pid in c["composition"]]
    out = ["<section><h2>Patients</h2>"]
    if rows:
        out.append('<p class="sub">Region composition of each patient (share of the patient\'s spots).</p>')
        out.append(_legend(c, c["regions"]) + stacked_bars(rows, c["colours"], c["names"], title="Composition"))
    cols = c["patient_columns"]
    if c["patient_rows"] and cols:
        head = "".join(f"<th{TEXT if k == 'tumour_regions' else ''}>{_e(label)}</th>" for k, label in cols)
        body = []
        for row in c["patient_rows"]:
            cells = []
            for key, _ in cols:
                v = row.get(key)
                if key == "tumour_regions" and v is not None:  # "1,4" (a lone id may have been read as a number)
                    v = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                    v = [_name(c, t.strip()) for t in v.split(",") if t.strip()]
                    cells.append(f"<td{TEXT}>" + ("<br>".join(_e(x) for x in v) or "—") + "</td>")
                    continue
                cls = TEXT if isinstance(v, str) else ""
                cells.append(f"<td{cls}>{_fmt(v)}</td>" if key != "patient_id" else f"<th scope=\"row\">{_e(v)}</th>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        out.append('<h3>Heterogeneity indices</h3><div class="scroll"><table class="num"><thead><tr>'
                   f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
        out.append('<p class="sub">Shannon / Simpson: diversity of the regions; mixing: share of a spot\'s '
                   "neighbours in another region; tumour spread in spot pitches.</p>")
    return "".join(out) + "</section>" if len(out) > 1 else ""


def _slides_section(c: dict) -> str:
    ok = [s for s in c["slides"] if s["status"] == "ok"]
    if not ok:
        return ""
    cards = [_slide_card(c, s) for s in ok]
    over = " over the H&amp;E image" if c["any_image"] else ""
    return (f"<section><h2>Slides</h2><p class=\"sub\">Regions per spot{over}; counts are spots.</p>"
            f"<div class=\"grid\">{''.join(cards)}</div></section>")


def _slide_card(c: dict, s: dict) -> str:
    sid = str(s["slide"])
    img = _img_uri(s.get("region_map"))
    pic = (f'<img src="{img}" alt="Region map of slide {_e(sid)}" loading="eager">' if img
           else '<div class="noimg">No region map</div>')
    caption = "Regions over H&amp;E" if s.get("has_image") else "Regions (no H&amp;E image)"
    counts = s.get("region_counts") or {}
    regs = [r for r in c["regions"] if counts.get(r)] + [r for r in counts if r not in c["regions"] and counts[r]]
    lis = "".join(f"<li>{_swatch(c['colours'].get(r, NA_COLOUR))}<span class=\"nm\">{_e(_name(c, r))}</span>"
                  f"<b>{int(counts[r]):,}</b></li>" for r in regs)
    meta = f"Patient {_e(s.get('patient'))} · {_fmt(s.get('n_spots'))} spots · {_fmt(s.get('n_regions'))} regions"
    score = ""
    if s.get("ari") is not None or s.get("nmi") is not None:
        score = (f'<p class="score">ARI {_fmt(s.get("ari"))} · NMI {_fmt(s.get("nmi"))} '
                 f"<span>scored against annotations</span></p>")
    warn = ""
    if s.get("warnings"):
        warn = '<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in dict.fromkeys(s["warnings"])) + "</ul>"
    return (f'<article class="card"><h3>{_e(sid)}</h3><p class="meta">{meta}</p><figure>{pic}'
            f"<figcaption>{caption}</figcaption></figure>{score}<ul class=\"counts\">{lis}</ul>{warn}</article>")


def _markers_section(c: dict) -> str:
    if not c["regions"]:
        return ""
    info = c["region_info"]
    extra = [k for k in ("tissue", "is_tumour") if any(info.get(r, {}).get(k) not in (None, "") for r in c["regions"])]
    heads = ["Region"] + [{"tissue": "Tissue", "is_tumour": "Tumour"}[k] for k in extra] + ["Spots", "Share",
                                                                                            "Top marker genes"]
    body = []
    for r in c["regions"]:
        cells = [f"<th scope=\"row\">{_swatch(c['colours'].get(r, NA_COLOUR))}{_e(_name(c, r))}</th>"]
        cells += [f"<td>{_fmt(info.get(r, {}).get(k))}</td>" for k in extra]
        cells += [f"<td class=\"n\">{c['cohort_counts'].get(r, 0):,}</td>",
                  f"<td class=\"n\">{100 * c['cohort_fraction'].get(r, 0.0):.1f}%</td>",
                  "<td class=\"genes\">" + (" ".join(f"<code>{_e(g)}</code>" for g in c["markers"].get(r, []))
                                           or "—") + "</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<section><h2>Regions and marker genes</h2><p class=\"sub\">Top marker genes of each region against the "
            "rest (ranked over the slides).</p><table class=\"markers\"><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in heads)
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table></section>")


def _failed_section(c: dict) -> str:
    bad = [s for s in c["slides"] if s["status"] != "ok"]
    if not bad:
        return ""
    rows = "".join(f"<tr><th scope=\"row\">{_e(s['slide'])}</th><td>{_e(s.get('patient'))}</td>"
                   f"<td class=\"errtxt\">{_e(data.one_line(s.get('error')))}</td></tr>" for s in bad)
    return ("<section><h2>Failed slides</h2><table class=\"failed\"><thead><tr><th>Slide</th><th>Patient</th>"
            f"<th>Error</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _settings_section(c: dict) -> str:
    blocks = []
    for section, values in c["settings"]:
        rows = "".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in values)
        blocks.append(f"<div class=\"set\"><h3>{_e(section)}</h3><table>{rows}</table></div>")
    if not blocks:
        return ""
    return ("<section><h2>Run settings</h2><p class=\"sub\">From the run's resolved spec; secrets and URIs are not "
            f"shown.</p><div class=\"sets\">{''.join(blocks)}</div></section>")


def _footer(c: dict) -> str:
    s = c["summary"]
    bits = [f"output folder {_e(s.get('output_dir') or c['out'])}"]
    if s.get("mlflow_run_id"):
        bits.append(f"MLflow run {_e(s['mlflow_run_id'])}")
    if s.get("seconds") is not None:
        bits.append(f"{_fmt(float(s['seconds']), 0)} s")
    return f"<footer>Generated by senca-platform · {' · '.join(bits)}</footer>"


def _img_uri(path: Any) -> str | None:
    """A region map as a PNG data URI (downscaled / palette-encoded when large), or None when unreadable."""
    if not path or not Path(str(path)).is_file():
        return None
    raw = Path(str(path)).read_bytes()
    try:
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:
            if im.width > MAX_IMG_PX or len(raw) > QUANTIZE_OVER:
                im = im.convert("RGB")
                if im.width > MAX_IMG_PX:
                    im = im.resize((MAX_IMG_PX, max(1, round(im.height * MAX_IMG_PX / im.width))), Image.LANCZOS)
                if len(raw) > QUANTIZE_OVER:
                    im = im.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG)
                buf = io.BytesIO()
                im.save(buf, "PNG")
                raw = buf.getvalue()
            elif im.format != "PNG":
                return None
    except Exception:  # noqa: BLE001 - keep the file as it is (it is the pipeline's own PNG)
        if not raw.startswith(b"\x89PNG"):
            return None
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


__all__ = ["write_report", "build_report", "ReportWarning", "REPORT_NAME"]
