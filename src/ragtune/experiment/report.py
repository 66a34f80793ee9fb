"""``ragtune report``: one self-contained HTML page that compares run folders.

The page has four parts:

1. metrics tables (quality, then cost), one row per run, the best value of each column marked;
2. a quality-vs-latency chart (inline SVG), the runs on the Pareto front joined by a line;
3. per-question wins and losses of every run against a baseline run (two runs or more);
4. each run's worst questions, with the gold answers, the prediction, the retrieved sources and
   the exact prompt.

The file needs no network: the CSS and the chart are inline and there is no script, so it opens
offline and can be attached to an issue. Every piece of run text (questions, predictions,
prompts, sources) is untrusted and goes through ``html.escape``. A missing value is shown as
"–", never filled in.

>>> from ragtune.experiment.runs import load_run
>>> write_report([load_run(p) for p in paths], Path("report.html"))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.experiment.compare import (LATENCIES, PER_QUESTION, QUALITY_PREFIXES, TOP, Comparison, Diff, Point, by_id,
                                        chart_points, compare, direction, label, metric, metric_columns, number,
                                        per_question_kind, pick_metric, quality_candidates, run_name, run_params,
                                        varying_params, worst)
from ragtune.experiment.runs import Run

MISSING = "–"


# ---------------------------------------------------------------------------------------------
# Entry point


def write_report(runs: list[Run], out: Path, baseline: int = 0, top: str = "") -> Path:
    """Write the HTML report comparing ``runs`` to ``out``; return the path written.

    ``baseline`` is the position in ``runs`` of the run that the others are compared with,
    question by question; ``top`` is a section shown first (``comparison_section``).
    """
    out = Path(out)
    page = render_report(runs, baseline, top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def render_report(runs: list[Run], baseline: int = 0, top: str = "") -> str:
    """The report as one HTML string (see the module docstring for what it holds)."""
    if not runs:
        raise ConfigError("no runs to report; give at least one run folder or id (see `ragtune runs list`)")
    if not 0 <= baseline < len(runs):
        raise ConfigError(f"--baseline {baseline} is out of range; give 0 to {len(runs) - 1} (a run's position)")
    quality, latency = pick_metric(runs, quality_candidates(runs)), pick_metric(runs, LATENCIES)
    kind = per_question_kind(runs, quality)
    body = [_header(runs, baseline, kind), top, _metrics_section(runs),
            _chart_section(runs, quality, latency)]
    if len(runs) > 1:
        body.append(_compare_section(runs, baseline, kind))
    body.append(_failures_section(runs, kind))
    return _page("\n".join(body))


# ---------------------------------------------------------------------------------------------
# Chart geometry


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < hi - 1e-9:
        ticks.append(first + len(ticks) * step)
    return [round(t, 12) for t in ticks]


def _tick_text(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:,.{decimals}f}"


def _quality_domain(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 0.05
    lo, hi = lo - pad, hi + pad
    if min(values) >= 0 and max(values) <= 1:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return nice_ticks(lo, hi)


# ---------------------------------------------------------------------------------------------
# HTML helpers


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, key: str = "") -> str:
    """A metric for display: "–" when missing, milliseconds and token counts with one decimal."""
    x = number(value)
    if x is None:
        return MISSING if value is None else esc(value)  # "nan", "inf" or text: shown as stored
    if isinstance(value, int):
        return f"{value:,}"
    if key.endswith(("_ms", "_tokens_mean")):
        return f"{x:,.1f}"
    return f"{x:.3f}"


def _param(value: Any) -> str:
    if value is None:
        return MISSING
    return esc(value if isinstance(value, (str, int, float)) else json.dumps(value, default=str))


def _table(headers: list[str], rows: list[str], attrs: str = "", above: str = "") -> str:
    """A table in a horizontal scroller; ``above`` is an optional header row of column groups."""
    head = f"{above}<tr>{''.join(headers)}</tr>"
    return f'<div class="scroll"><table{attrs}><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _prompt_text(prompt: Any) -> str:
    """The prompt exactly as stored: a string as is, chat messages as indented JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, indent=2, ensure_ascii=False, default=str)


def _answer(row: dict[str, Any]) -> str:
    """What a run answered: the prediction, or for a retrieval-only run where the gold document ranked."""
    if row.get("prediction") is not None:
        return esc(row["prediction"])
    if "gold_rank" in row:
        rank = row["gold_rank"]
        return f"gold at rank {esc(rank)}" if rank else "gold not retrieved"
    return MISSING


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def _score(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# Sections


def _header(runs: list[Run], baseline: int, kind: str | None) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = [f"{len(runs)} run{'s' * (len(runs) != 1)}", f"generated {when}",
             f"baseline <strong>{esc(run_name(runs[baseline]))}</strong>" if len(runs) > 1 else "",
             f"per-question score: {esc(PER_QUESTION[kind])}" if kind else ""]
    warning = _question_set_warning(runs)
    return (f'<header><h1>ragtune report</h1><p class="meta">{" · ".join(f for f in facts if f)}</p>'
            f"{warning}</header>")


def _question_set_warning(runs: list[Run]) -> str:
    sets = {frozenset(by_id(r)) for r in runs if r.predictions}
    if len(sets) <= 1:
        return ""
    return ('<p class="warn">The runs did not answer the same questions: their metrics are not directly '
            "comparable. Per-question comparisons use the questions two runs share.</p>")


def _metrics_section(runs: list[Run]) -> str:
    """Two tables, one row per run: what each run is and how good it is; then what it costs."""
    varied, metrics = varying_params(runs), metric_columns(runs)
    quality = [k for k in metrics if _group(k) == "quality"]
    cost = [k for k in metrics if _group(k) != "quality"]
    identity = (["<th>run</th>", "<th>id</th>", "<th>arm</th>"] + [f"<th>{esc(p)}</th>" for p in varied]
                + ['<th class="num">questions</th>'])
    tables = [_metric_table(runs, quality, identity, lambda r: _identity_cells(r, varied), ' id="metrics"')]
    if cost:
        costs = _metric_table(runs, cost, ["<th>run</th>"], lambda r: [_name_cell(r)], ' id="costs"',
                              _group_row(1, cost))
        tables.append(f"<h3>Cost</h3>{costs}")
    note = '<p class="note">Best value per column highlighted (hover a header for its direction).</p>'
    return f"<section><h2>Metrics</h2>{''.join(tables)}{note}</section>"


def _metric_table(runs: list[Run], keys: list[str], identity: list[str], cells, attrs: str, above: str = "") -> str:
    best = {k: _best(runs, k) for k in keys}
    rows = [_metrics_row(r, cells(r), keys, best) for r in runs]
    return _table(identity + [_metric_header(k) for k in keys], rows, attrs, above)


def _metric_header(key: str) -> str:
    hint = {1: "higher is better", -1: "lower is better", 0: "neither higher nor lower is better"}[direction(key)]
    return f'<th class="num" title="{esc(key)}: {hint}">{esc(_short_label(key))}</th>'


def _group(key: str) -> str:
    return "latency (ms)" if key.endswith("_ms") else "tokens (mean)" if key.endswith("_tokens_mean") else "quality"


def _short_label(key: str) -> str:
    """A column's label under its group: ``total_p50_ms`` is "total p50" under "latency (ms)"."""
    group = _group(key)
    if group == "quality":
        return label(key)
    return key.removesuffix("_ms").removesuffix("_tokens_mean").replace("_", " ")


def _group_row(identity_columns: int, metrics: list[str]) -> str:
    cells = [f'<th colspan="{identity_columns}"></th>']
    for group, keys in groupby(metrics, key=_group):
        cells.append(f'<th class="group" colspan="{len(list(keys))}">{group}</th>')
    return f'<tr class="groups">{"".join(cells)}</tr>'


def _best(runs: list[Run], key: str) -> float | None:
    """The best value of a column, or None when there is no direction or nothing to choose between."""
    values = [v for r in runs if (v := metric(r, key)) is not None]
    if direction(key) == 0 or len(values) < 2 or min(values) == max(values):
        return None
    return max(values) if direction(key) > 0 else min(values)


def _name_cell(run: Run) -> str:
    status = "" if run.finished else ' <span class="badge">unfinished</span>'
    return f'<td class="run">{esc(run_name(run))}{status}</td>'


def _identity_cells(run: Run, keys: list[str]) -> list[str]:
    cells = [_name_cell(run), f"<td><code>{esc(run.id)}</code></td>",
             f"<td>{esc(run.info.get('arm') or MISSING)}</td>"]
    cells += [f"<td>{_param(run_params(run).get(p))}</td>" for p in keys]
    return cells + [f'<td class="num">{len(run.predictions) or MISSING}</td>']


def _metrics_row(run: Run, cells: list[str], keys: list[str], best: dict[str, float | None]) -> str:
    for key in keys:
        value = metric(run, key)
        mark = " best" if value is not None and value == best[key] else ""
        cells.append(f'<td class="num{mark}">{fmt((run.metrics or {}).get(key), key)}</td>')
    return f'<tr data-run="{esc(run.id)}">{"".join(cells)}</tr>'


def _chart_section(runs: list[Run], quality: str | None, latency: str | None) -> str:
    points = chart_points(runs, quality, latency)
    if not points:
        return ('<section><h2>Quality vs latency</h2><p class="note">No run has both a quality metric '
                f"({', '.join(QUALITY_PREFIXES)}) and a latency ({', '.join(LATENCIES)}).</p></section>")
    plotted = {id(p.run) for p in points}
    skipped = [run_name(r) for r in runs if id(r) not in plotted]
    note = f"Not plotted (no {esc(quality)} or {esc(latency)}): {esc(', '.join(skipped))}. " if skipped else ""
    legend = ('<p class="note"><span class="dot pareto"></span> Pareto front: no other run is at least as good '
              'and as fast, and better or faster · <span class="dot"></span> dominated run. '
              f"{note}Runs on the front are named; hover any point for its values.</p>")
    svg, table = scatter_svg(points, quality, latency), _points_table(points, quality, latency)
    chart = f'<div class="chart-row">{svg}{table}</div>'
    return f"<section><h2>Quality vs latency</h2>{chart}{legend}</section>"


def _points_table(points: list[Point], quality: str, latency: str) -> str:
    """The chart's numbers, best quality first."""
    headers = ["<th>run</th>", f'<th class="num">{esc(label(quality))}</th>',
               f'<th class="num">{esc(label(latency))}</th>', "<th>front</th>"]
    rows = [f'<tr><td class="run">{esc(run_name(p.run))}</td><td class="num">{p.quality:.3f}</td>'
            f'<td class="num">{p.latency:,.1f}</td><td>{"yes" if p.pareto else "no"}</td></tr>'
            for p in sorted(points, key=lambda p: (-p.quality, p.latency))]
    return _table(headers, rows, ' class="points"')


@dataclass
class Frame:
    """The chart's plot area in pixels and the tick values of both axes (the ends are the data range)."""

    xt: list[float]
    yt: list[float]
    width: int = 640
    height: int = 400
    left: int = 70
    right: int = 120  # room for the name of the right-most point
    top: int = 20
    bottom: int = 56

    def x(self, value: float) -> float:
        share = (value - self.xt[0]) / (self.xt[-1] - self.xt[0])
        return self.left + share * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        share = (value - self.yt[0]) / (self.yt[-1] - self.yt[0])
        return self.height - self.bottom - share * (self.height - self.top - self.bottom)


def scatter_svg(points: list[Point], quality: str, latency: str, cost: str = "latency") -> str:
    """The chart as inline SVG: x latency (or another ``cost``, from 0), y quality, one ``circle.point`` per run."""
    f = Frame(nice_ticks(0.0, max(p.latency for p in points) or 1.0), _quality_domain([p.quality for p in points]))
    parts = _axes(f) + [_axis_labels(f, quality, latency, cost)]
    front = sorted((p for p in points if p.pareto), key=lambda p: p.latency)
    if len(front) > 1:
        coords = " ".join(f"{f.x(p.latency):.1f},{f.y(p.quality):.1f}" for p in front)
        parts.append(f'<polyline class="front" points="{coords}"/>')
    labelled: set[tuple[int, int]] = set()  # one name per spot: coinciding points would overprint
    for p in points:
        cx, cy = f.x(p.latency), f.y(p.quality)
        spot = (round(cx / 12), round(cy / 12))
        parts.append(_point_svg(p, cx, cy, quality, latency, p.pareto and spot not in labelled))
        if p.pareto:
            labelled.add(spot)
    return (f'<svg class="chart" viewBox="0 0 {f.width} {f.height}" width="{f.width}" height="{f.height}" '
            f'role="img" aria-label="{esc(label(quality))} against {esc(label(latency))}">{"".join(parts)}</svg>')


def _axes(f: Frame) -> list[str]:
    right, bottom = f.width - f.right, f.height - f.bottom
    parts = []
    for t in f.xt:
        x = f"{f.x(t):.1f}"
        parts.append(f'<line class="grid" x1="{x}" y1="{f.top}" x2="{x}" y2="{bottom}"/>'
                     f'<text class="tick" x="{x}" y="{bottom + 18}" text-anchor="middle">{_tick_text(t, f.xt)}</text>')
    for t in f.yt:
        y = f"{f.y(t):.1f}"
        tick = f'<text class="tick" x="{f.left - 8}" y="{y}" dy="4" text-anchor="end">{_tick_text(t, f.yt)}</text>'
        parts.append(f'<line class="grid" x1="{f.left}" y1="{y}" x2="{right}" y2="{y}"/>{tick}')
    parts.append(f'<line class="axis" x1="{f.left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
                 f'<line class="axis" x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{bottom}"/>')
    return parts


def _axis_labels(f: Frame, quality: str, latency: str, cost: str = "latency") -> str:
    x_mid, y_mid = (f.left + f.width - f.right) / 2, (f.top + f.height - f.bottom) / 2
    return (f'<text class="axis-label" x="{x_mid:.1f}" y="{f.height - 12}" text-anchor="middle">'
            f"{esc(cost)}: {esc(label(latency))} (lower is better)</text>"
            f'<text class="axis-label" x="18" y="{y_mid:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 18 {y_mid:.1f})">quality: {esc(label(quality))} (higher is better)</text>')


def _point_svg(p: Point, cx: float, cy: float, quality: str, latency: str, named: bool) -> str:
    tip = (f"{run_name(p.run)} ({p.run.id})\n{label(quality)}: {p.quality:.3f}\n"
           f"{label(latency)}: {p.latency:,.1f}" + ("\non the Pareto front" if p.pareto else ""))
    cls = "point pareto" if p.pareto else "point"
    return (f'<circle class="{cls}" data-run="{esc(p.run.id)}" cx="{cx:.1f}" cy="{cy:.1f}" r="7">'
            f"<title>{esc(tip)}</title></circle>"
            + (f'<text class="point-label" x="{cx + 11:.1f}" y="{cy + 4:.1f}">{esc(run_name(p.run))}</text>' if named else ""))


def _compare_section(runs: list[Run], baseline: int, kind: str | None) -> str:
    base = runs[baseline]
    comparisons = [compare(base, r, kind) for i, r in enumerate(runs) if i != baseline]
    headers = ["<th>run</th>"] + [f'<th class="num">{h}</th>' for h in
                                  ("compared", "wins", "losses", "ties", "mean Δ", "unmatched")]
    rows = [_summary_row(c) for c in comparisons]
    intro = (f'<p class="note">Each run against the baseline <strong>{esc(run_name(base))}</strong>, question by '
             f"question (matched by id). A win is a higher score: {esc(PER_QUESTION.get(kind, MISSING))}.</p>")
    details = "".join(_comparison_details(base, c) for c in comparisons)
    table = _table(headers, rows, ' id="comparisons"')
    return f"<section><h2>Wins and losses against the baseline</h2>{intro}{table}{details}</section>"


def _summary_row(c: Comparison) -> str:
    mean = sum(d.delta for d in c.diffs) / len(c.diffs) if c.diffs else None
    cells = [len(c.diffs), f'<span class="win">{len(c.wins)}</span>', f'<span class="loss">{len(c.losses)}</span>',
             c.ties, MISSING if mean is None else f"{mean:+.3f}", c.unmatched]
    tds = "".join(f'<td class="num">{v}</td>' for v in cells)
    return f'<tr data-run="{esc(c.run.id)}"><td>{esc(run_name(c.run))}</td>{tds}</tr>'


def _comparison_details(base: Run, c: Comparison) -> str:
    headers = ["<th>question</th>", f"<th>{esc(run_name(base))}</th>", f"<th>{esc(run_name(c.run))}</th>",
               '<th class="num">baseline</th>', '<th class="num">this run</th>', '<th class="num">Δ</th>']
    tables = []
    for title, diffs in (("Biggest wins", c.wins[:TOP]), ("Biggest losses", c.losses[:TOP])):
        rows = [_diff_row(d) for d in diffs]
        body = _table(headers, rows, ' class="wide"') if diffs else '<p class="note">No such questions.</p>'
        tables.append(f"<h4>{title}</h4>{body}")
    counts = f"{_count(len(c.wins), 'win')}, {_count(len(c.losses), 'loss')}"
    summary = f"{esc(run_name(c.run))} vs {esc(run_name(base))}: {counts}"
    return f'<details class="compare" open><summary>{summary}</summary>{"".join(tables)}</details>'


def _diff_row(d: Diff) -> str:
    cls = "win" if d.delta > 0 else "loss"
    return (f"<tr><td>{esc(d.base.get('question', d.base.get('id')))}</td><td>{_answer(d.base)}</td>"
            f'<td>{_answer(d.other)}</td><td class="num">{_score(d.base_score)}</td>'
            f'<td class="num">{_score(d.other_score)}</td><td class="num {cls}">{d.delta:+.3f}</td></tr>')


def _failures_section(runs: list[Run], kind: str | None) -> str:
    measure = esc(PER_QUESTION.get(kind, MISSING))
    intro = (f'<p class="note">Up to {TOP} lowest-scored questions of each run ({measure}; perfect scores left out), '
             "with what the model saw.</p>")
    blocks = [_run_failures(r, kind, open_=i == len(runs) - 1) for i, r in enumerate(runs)]
    return f'<section><h2>Worst questions</h2>{intro}{"".join(blocks)}</section>'


def _run_failures(run: Run, kind: str | None, open_: bool) -> str:
    cases = worst(run, kind)
    body = "".join(_case(score, row) for score, row in cases) or '<p class="note">No question scored below 1.</p>'
    flag = " open" if open_ else ""
    summary = f"{esc(run_name(run))} <span class=\"muted\">({_count(len(cases), 'question')})</span>"
    return f'<details class="run-failures"{flag}><summary>{summary}</summary>{body}</details>'


def _case(score: float, row: dict[str, Any]) -> str:
    fields = [("question", esc(row.get("question", MISSING))),
              ("gold answers", _listing(row.get("answers"), " | ")),
              ("prediction", MISSING if row.get("prediction") is None else esc(row["prediction"])),
              ("score", _score(score)),
              ("gold rank", _gold_rank(row)),
              ("citations", _listing(row.get("citations"), ", ")),
              ("retrieved", _sources(row.get("retrieved") or []))]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
    prompt = row.get("prompt")
    shown = f"<details><summary>prompt</summary><pre>{esc(_prompt_text(prompt))}</pre></details>" if prompt else ""
    return f'<div class="case" data-question="{esc(row.get("id", ""))}"><dl>{items}</dl>{shown}</div>'


def _listing(value: Any, sep: str) -> str:
    """A list joined by ``sep`` (a lone value as is), or "–" when there is none."""
    if value is None or value == [] or value == "":
        return MISSING
    return esc(sep.join(map(str, value)) if isinstance(value, (list, tuple)) else value)


def _gold_rank(row: dict[str, Any]) -> str:
    if "gold_rank" not in row:
        return MISSING
    return esc(row["gold_rank"]) if row["gold_rank"] else "not retrieved"


def _sources(hits: list[dict[str, Any]]) -> str:
    if not hits:
        return MISSING
    items = [f"<li value=\"{esc(h.get('rank', ''))}\">{esc(h.get('source', MISSING))} "
             f"<span class=\"muted\">{esc(h.get('doc_id', ''))} · {esc(h.get('chunk_id', ''))}</span></li>"
             for h in hits if isinstance(h, dict)]
    return f'<ol class="sources">{"".join(items)}</ol>'


# ---------------------------------------------------------------------------------------------
# Page

# ---------------------------------------------------------------------------------------------
# RAG or fine-tuning (``ragtune compare``): the section on top of its arms' runs


def comparison_section(state: dict[str, Any], figures: dict[str, dict[str, Any]], runs: list[Run]) -> str:
    """The recommendation, the arms with their one-off and per-question costs, quality against prompt
    tokens, freshness and forgetting bars; ``figures`` = ``rag_vs_ft.arm_figures(state)``, ``runs`` the
    arms' runs in the same order."""
    rec = state.get("recommendation") or {}
    split = state["steps"].get("split", {})
    qa = state["qa"]
    facts = [f"comparison <strong>{esc(state['id'])}</strong>", f"base {esc(state.get('base'))}",
             f"{split.get('train', 0)} training / {split.get('test', 0)} test questions"
             + (" stratified by document" if split.get("stratified") else " (not stratified: no doc_ids)"),
             esc(Path(qa["path"]).name)] + ([f"documents indexed in {state['index_s']:.1f} s"] if state.get("index_s") else [])
    synthetic = ('<p class="warn">The questions are synthetic (written by a model from the index with '
                 "<code>data synth-qa</code>): check a sample before trusting the figures.</p>") if qa.get("synthetic") else ""
    advice = (f'<div class="advice" id="recommendation"><strong>{esc(rec.get("text", "not finished"))}</strong>'
              f'<p class="note">Rule: {esc(rec.get("rule", ""))} (margin {rec.get("margin", 0):.2f} F1).</p></div>')
    return (f'<section id="comparison"><h2>RAG or fine-tuning?</h2><p class="meta">{" · ".join(facts)}</p>{synthetic}{advice}'
            f"{_arms_table(figures)}{_cost_chart(runs)}{_freshness_bars(state, figures)}{_forgetting_bars(state)}</section>")


def _arms_table(figures: dict[str, dict[str, Any]]) -> str:
    columns = [("f1", "F1", 3), ("em", "EM", 3), ("contains", "contains", 3), ("prompt_tokens", "prompt tokens", 0),
               ("completion_tokens", "answer tokens", 0), ("latency_p50_ms", "p50 ms", 0), ("latency_p95_ms", "p95 ms", 0),
               ("freshness", "fresh", 3), ("train_s", "training s", 0), ("footprint_mb", "on disk MB", 0)]
    headers = ["<th>arm</th>"] + [f'<th class="num">{esc(title)}</th>' for _, title, _ in columns] + ["<th>forgetting</th>"]
    rows = []
    for arm, f in figures.items():
        cells = [f'<td class="run">{esc(arm)}</td>'] + [
            f'<td class="num">{MISSING if f.get(k) is None else f"{f[k]:,.{d}f}"}</td>' for k, _, d in columns]
        flag = f.get("forgetting_flagged")
        shown = MISSING if flag is None else '<span class="loss">flagged</span>' if flag else "ok"
        cells.append(f"<td>{shown}</td>")
        rows.append(f'<tr data-arm="{esc(arm)}">{"".join(cells)}</tr>')
    return _table(headers, rows, ' id="arms"')


def _cost_chart(runs: list[Run]) -> str:
    points = chart_points(runs, "f1", "prompt_tokens_mean")
    if not points:
        return ""
    return (f'<h3>Quality vs prompt tokens</h3><div class="chart-row">{scatter_svg(points, "f1", "prompt_tokens_mean", "cost")}'
            "</div>")


def _bars(rows: list[tuple[str, float, str]], scale: float, css: str) -> str:
    """Horizontal bars: (name, value, text) each, ``scale`` = the value of a full bar."""
    width, left, height = 560, 90, 26
    parts = []
    for i, (name, value, text) in enumerate(rows):
        y = i * height
        w = max(0.0, min(1.0, value / scale if scale else 0.0)) * (width - left - 150)
        parts.append(f'<text class="tick" x="{left - 8}" y="{y + 17}" text-anchor="end">{esc(name)}</text>'
                     f'<rect class="{css}" x="{left}" y="{y + 5}" width="{w:.1f}" height="16"/>'
                     f'<text class="tick" x="{left + w + 6:.1f}" y="{y + 17}">{esc(text)}</text>')
    return (f'<svg class="chart bars" viewBox="0 0 {width} {height * len(rows)}" width="{width}" '
            f'height="{height * len(rows)}" role="img">{"".join(parts)}</svg>')


def _freshness_bars(state: dict[str, Any], figures: dict[str, dict[str, Any]]) -> str:
    fresh = state["steps"].get("freshness") or {}
    if not fresh.get("questions"):
        return f'<h3>Freshness</h3><p class="note">Not measured: {esc(fresh.get("reason", "the step has not run"))}.</p>'
    n = fresh["questions"]
    rows = [(arm, f["freshness"], f"{round(f['freshness'] * n)}/{n} new · {round(f['old_value'] * n)}/{n} old")
            for arm, f in figures.items() if f.get("freshness") is not None]
    right = [f"{arm} {round(f['freshness_of_right'] * f['right_before'])}/{f['right_before']}" for arm, f in figures.items()
             if f.get("right_before")]
    shown = [f"{arm} {f['shown']}/{n}" for arm, f in figures.items() if f.get("shown") is not None]
    return ("<h3>Freshness</h3>" + _bars(rows, 1.0, "fresh")
            + f'<p class="note" id="freshness-note">{n} test answers were changed in edited copies of their documents and '
            f"re-ingested ({fresh.get('reingest_s', 0):.1f} s); bars: the share of answers that give the new value (old: "
            "still the old one). An arm can only follow a change it could answer at all: among the questions each arm "
            f"answered right before the change, the new value came back for {', '.join(right) or 'none (no arm answered one right)'}"
            + (f"; the edited passage was in the prompt for {', '.join(shown)}" if shown else "") + ".</p>")


def _forgetting_bars(state: dict[str, Any]) -> str:
    trained = state["steps"].get("train") or {}
    rows = []
    for arm, t in trained.items():
        change = (t.get("forgetting") or {}).get("probe_ppl_change")
        if change is not None:
            rows.append((arm, abs(change), f"{change:+.1%} general-text perplexity"
                         + (" · flagged" if t.get("forgetting_flagged") else "")))
    if not rows:
        return '<h3>Forgetting</h3><p class="note">No fine-tuned arm has forgetting checks yet.</p>'
    return ("<h3>Forgetting</h3>" + _bars(rows, max(r[1] for r in rows) or 1.0, "forget")
            + '<p class="note">Change of the perplexity on a general-text sample, base vs tuned (the base arms are '
            "the base: no change).</p>")


CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --border: #e5e7eb; --head: #f3f4f6; --alt: #fafafa;
        --accent: #2563eb; --best: #dcfce7; --win: #15803d; --loss: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 56px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--border); }
h4 { font-size: .95rem; margin: 14px 0 6px; }
.meta, .note, .muted { color: var(--muted); }
.note { font-size: .875rem; margin: 8px 0; }
.warn { background: #fffbeb; border: 1px solid #fcd34d; border-radius: 6px; padding: 8px 12px; font-size: .9rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .875rem; }
table.wide { width: 100%; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--border); text-align: left; vertical-align: top; }
th { background: var(--head); font-weight: 600; vertical-align: bottom; }
th.num { white-space: normal; }
tr.groups th { background: #fff; text-align: center; font-size: .75rem; color: var(--muted); font-weight: 600;
               text-transform: uppercase; letter-spacing: .04em; border-bottom: 2px solid var(--border);
               padding: 4px; }
tr.groups th.group { border-left: 8px solid #fff; }
#metrics td:nth-child(-n+2), td.run { white-space: nowrap; }
h3 { font-size: 1rem; margin: 22px 0 8px; }
tbody tr:nth-child(even) { background: var(--alt); }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: var(--best); font-weight: 600; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
            font-size: .8rem; }
pre { white-space: pre-wrap; word-break: break-word; background: #f8fafc; border: 1px solid var(--border);
      border-radius: 6px; padding: 10px 12px; max-height: 480px; overflow: auto; }
.badge { font-size: .7rem; background: #fef3c7; color: #92400e; border-radius: 4px; padding: 1px 5px; }
.win { color: var(--win); font-weight: 600; } .loss { color: var(--loss); font-weight: 600; }
details { margin: 10px 0; }
details > summary { cursor: pointer; font-weight: 600; }
.case { border: 1px solid var(--border); border-radius: 8px; padding: 10px 14px; margin: 10px 0; }
.case dl { display: grid; grid-template-columns: 120px 1fr; gap: 4px 14px; margin: 0; font-size: .9rem; }
.case dt { color: var(--muted); } .case dd { margin: 0; overflow-wrap: anywhere; }
.case details > summary { font-weight: 500; color: var(--accent); font-size: .875rem; }
ol.sources { margin: 0; padding-left: 1.4em; }
.chart-row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.chart-row .scroll { flex: 0 1 auto; }
svg.chart { max-width: 100%; height: auto; display: block; flex: 0 1 auto; }
svg .grid { stroke: #eef0f3; } svg .axis { stroke: #9ca3af; }
svg .tick { font-size: 11px; fill: var(--muted); } svg .axis-label { font-size: 12px; fill: var(--fg); }
svg .point { fill: #9ca3af; stroke: #fff; stroke-width: 2; } svg .point.pareto { fill: var(--accent); }
svg .front { fill: none; stroke: var(--accent); stroke-width: 1.5; stroke-dasharray: 5 4; }
svg .point-label { font-size: 12px; fill: var(--fg); }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; background: #9ca3af;
       vertical-align: -1px; }
.dot.pareto { background: var(--accent); }
.advice { background: #eff6ff; border: 1px solid #bfdbfe; border-radius: 8px; padding: 12px 16px; margin: 12px 0; }
.advice p { margin: 6px 0 0; }
svg .fresh { fill: var(--accent); } svg .forget { fill: #f59e0b; }
"""


def _page(body: str) -> str:
    head = ('<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>ragtune report</title><style>{CSS}</style>")
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>\n<body><main>\n{body}\n</main></body></html>\n'
