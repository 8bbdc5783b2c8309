"""Write a :class:`~rubricate.metrics.Report` as ``report.json``, ``report.md`` and ``report.html``.

The JSON is the complete, machine-readable result (``Report.to_dict``; undefined values are ``null`` with a
reason in the ``notes`` next to them). Markdown and HTML show the same tables, built once as a list of
blocks and rendered twice, so the two never disagree:

1. across tasks - mean and Fisher-z mean QWK with bootstrap intervals, human-human beside machine-human,
   and the degradation; then the operational-readiness table (:mod:`rubricate.metrics.readiness`);
2. one row per (task, scale) of the score metrics, and one row per task of the UniMoE multi-label four;
3. per task - machine-human beside human-human per metric, the confusion matrix (PNG, rows human),
   per-label κ / accuracy / F1, and the subgroup breakdown when a group column was given.

The HTML is self-contained (plots embedded as data URIs) so it can be mailed or attached to a PR; the
Markdown links the PNG files written next to it under ``plots/``. This module only renders: the numbers
come from :mod:`rubricate.metrics`, predictions files are read by :func:`rubricate.metrics.read_predictions`.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rubricate.metrics import (
    SCORE_METRICS,
    AggregateQWK,
    Interval,
    Readiness,
    Report,
    ScaleReport,
    ScoreMetrics,
    TaskReport,
)

FORMATS = ("json", "md", "html")

_METRIC_NAMES = {
    "qwk": "QWK",
    "exact": "exact agreement",
    "adjacent": "adjacent agreement",
    "mae": "MAE",
    "rmse": "RMSE",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "smd": "SMD",
}


# --- a tiny document model rendered to Markdown and HTML -------------------------------------------------
@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class _Doc:
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list[str]], caption: str = "") -> None:
        self.blocks.append(("table", _Table(headers, rows, caption)))

    def image(self, path: Path, rel: str, alt: str) -> None:
        self.blocks.append(("img", (path, rel, alt)))


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _render_md(doc: _Doc) -> str:
    out: list[str] = []
    for kind, payload in doc.blocks:
        if kind == "h":
            level, text = payload  # type: ignore[misc]
            out.append("#" * level + " " + text)
        elif kind == "p":
            out.append(str(payload))
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in payload))  # type: ignore[union-attr]
        elif kind == "table":
            t: _Table = payload  # type: ignore[assignment]
            lines = [
                "| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
                "|" + "|".join("---" for _ in t.headers) + "|",
            ]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            if t.caption:
                lines.append("")
                lines.append(f"*{t.caption}*")
            out.append("\n".join(lines))
        elif kind == "img":
            _, rel, alt = payload  # type: ignore[misc]
            out.append(f"![{alt}]({rel})")
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
caption{caption-side:bottom;font-style:italic;color:#555;text-align:left;padding-top:.3em}
h1{border-bottom:2px solid #444} h2{border-bottom:1px solid #aaa;margin-top:1.8em}
img{max-width:420px;display:block;margin:.5em 0 1em}
ul{color:#444}
"""


def _render_html(doc: _Doc, title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for kind, payload in doc.blocks:
        if kind == "h":
            level, text = payload  # type: ignore[misc]
            out.append(f"<h{level}>{html.escape(text)}</h{level}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(str(payload))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in payload) + "</ul>")  # type: ignore
        elif kind == "table":
            t: _Table = payload  # type: ignore[assignment]
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows
            )
            cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
            head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            path, _, alt = payload  # type: ignore[misc]
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out)


# --- formatting -----------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 4) -> str:
    """A number, or 'n/a' for an undefined one (the reason is in the notes below the table)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(iv: Interval | None, digits: int = 3) -> str:
    if iv is None or not math.isfinite(iv.low):
        return ""
    return f"[{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def _with_ci(value: float, iv: Interval | None, digits: int = 4) -> str:
    s = _f(value, digits)
    c = _ci(iv)
    return f"{s} {c}" if c and s != "n/a" else s


def _notes(prefix: str, notes: dict[str, str]) -> list[str]:
    return [f"{prefix}{k}: {v}" for k, v in notes.items()]


# --- plots ----------------------------------------------------------------------------------------------
def plot_confusion(sm: ScoreMetrics, path: Path, title: str, machine_label: str = "machine") -> Path:
    """Save the confusion matrix (rows human, columns machine; counts and row shares) as a PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(sm.confusion, dtype=float)
    k = counts.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    size = 2.2 + 0.55 * k
    fig = Figure(figsize=(size + 0.8, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = list(range(sm.scale_min, sm.scale_max + 1))
    ax.set_xticks(range(k), [str(t) for t in ticks])
    ax.set_yticks(range(k), [str(t) for t in ticks])
    ax.set_xlabel(f"{machine_label} score")
    ax.set_ylabel("human (rater 1) score")
    ax.set_title(title, fontsize=9)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the human row")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --- building the document ------------------------------------------------------------------------------
def _agg_rows(
    m: AggregateQWK, hh: AggregateQWK | None, deg: dict[str, float] | None, deg_ci: dict[str, Interval]
) -> list[list[str]]:
    rows = []
    for key, label in (
        ("mean", "mean QWK"),
        ("fisher_z", "Fisher-z mean QWK"),
        ("fisher_z_weighted", "Fisher-z mean QWK, n-weighted"),
    ):
        row = [label, _with_ci(getattr(m, key), m.ci.get(key))]
        if hh is not None:
            row += [
                _with_ci(getattr(hh, key), hh.ci.get(key)),
                _with_ci((deg or {}).get(key, math.nan), deg_ci.get(key)),
            ]
        rows.append(row)
    return rows


def _score_row(label: str, sm: ScoreMetrics) -> list[str]:
    return [
        label,
        str(sm.n),
        _with_ci(sm.qwk, sm.ci.get("qwk")),
        _f(sm.exact, 3),
        _f(sm.adjacent, 3),
        _f(sm.mae, 3),
        _f(sm.rmse, 3),
        _f(sm.pearson, 3),
        _f(sm.spearman, 3),
        _f(sm.smd, 3),
    ]


_SCORE_HEADERS = ["n", "QWK [95% CI]", "exact", "adjacent", "MAE", "RMSE", "r", "ρ", "SMD"]


def build_document(report: Report, plot_dir: Path | None, rel_root: Path | None = None) -> _Doc:
    """Lay out the report; confusion-matrix PNGs are written to ``plot_dir`` (None: no plots)."""
    doc = _Doc()
    mach = report.machine_label
    s = report.settings
    doc.h(1, report.title)
    doc.p(
        f"Scorer: {mach}. Tasks: {len(report.tasks)}. Bootstrap: {s.get('n_boot')} resamples, "
        f"{int(100 * s.get('ci', 0.95))}% percentile intervals, seed {s.get('seed')}. Label threshold "
        f"{s.get('threshold')}; adjacent = within {s.get('tolerance')}; SMD {s.get('smd_method')}. "
        "'n/a' marks an undefined value; the reason is listed under the table. Metric definitions: "
        "rubricate.metrics module documentation."
    )
    doc.bullets(report.notes)

    _across_section(doc, report)
    _scores_section(doc, report)
    _labels_section(doc, report)
    for t in report.tasks:
        _task_section(doc, t, mach, plot_dir, rel_root, score_source(report, t.task_id))
    return doc


def _across_section(doc: _Doc, report: Report) -> None:
    """Mean and Fisher-z mean QWK across tasks, then the operational-readiness table."""
    mach, a = report.machine_label, report.across
    doc.h(2, "Across tasks")
    headers = ["statistic", f"{mach}–human"]
    if a.human_human is not None:
        headers += ["human–human", "degradation"]
    doc.table(
        headers,
        _agg_rows(a.machine, a.human_human, a.degradation, a.degradation_ci),
        caption="Over every (task, scale). Fisher-z mean: tanh(mean(atanh(clip(κ, ±0.999)))), Kaggle's "
        "ASAP average. Degradation: machine–human minus human–human on the double-scored responses.",
    )
    extra = []
    if a.machine.n_undefined:
        extra.append(f"{a.machine.n_undefined} (task, scale) QWK values undefined and left out of the means")
    doc.bullets(extra)
    if a.multilabel_mean:
        doc.table(
            ["mean κ", "macro-F1", "micro-F1", "accuracy"],
            [[_f(a.multilabel_mean.get(k)) for k in ("mean_kappa", "macro_f1", "micro_f1", "accuracy")]],
            caption="UniMoE multi-label metrics, averaged over tasks.",
        )

    if report.readiness is not None and report.readiness.items:
        _readiness_section(doc, report.readiness, mach)


#: how the report names a score source (metrics.workflow.score_sources; rubricate.student.active.SCORE_SOURCES)
SOURCE_NAMES = {"trained": "trained head", "few_shot": "few-shot", "zero_shot": "zero-shot"}


def score_source(report: Report, task_id: str) -> str | None:
    """Where a task's scores came from (None when the report does not know: human–human, old reports)."""
    found = (report.settings.get("score_sources") or {}).get(task_id)
    return None if found is None else SOURCE_NAMES.get(found, found)


def _scores_section(doc: _Doc, report: Report) -> None:
    """One row of score metrics per (task, scale), and their means."""
    mach, a = report.machine_label, report.across
    doc.h(2, "Scores per task")
    with_source = bool(report.settings.get("score_sources"))
    rows = []
    for t in report.tasks:
        for sr in t.scales:
            label = (
                t.task_id if sr.scale_id == "score" and len(t.scales) == 1 else f"{t.task_id} / {sr.scale_id}"
            )
            row = _score_row(label, sr.machine)
            if with_source:
                row.insert(1, score_source(report, t.task_id) or "")
            if a.human_human is not None:
                hh = sr.human_human
                row += [
                    _with_ci(hh.qwk, hh.ci.get("qwk")) if hh else "",
                    _with_ci((sr.degradation or {}).get("qwk", math.nan), sr.degradation_ci.get("qwk")),
                ]
            rows.append(row)
    headers = ["task / scale"] + (["scores from"] if with_source else []) + _SCORE_HEADERS
    if a.human_human is not None:
        headers += ["human–human QWK", "QWK degradation"]
    doc.table(
        headers,
        rows,
        caption=f"{mach} vs human (rater 1). r: Pearson; ρ: Spearman; SMD: (mean {mach} − "
        "mean human) / pooled SD."
        + (" Scores from: a trained head, few-shot (a handful of labels) or zero-shot (the task's text only)."
           if with_source else ""),
    )
    if a.score_means:
        doc.table(
            ["mean over (task, scale)"] + [_METRIC_NAMES[k] for k in SCORE_METRICS],
            [["arithmetic mean"] + [_f(a.score_means.get(k), 3) for k in SCORE_METRICS]],
        )


def _labels_section(doc: _Doc, report: Report) -> None:
    """One row of the UniMoE multi-label four per task."""
    s = report.settings
    ml_rows = [
        [
            t.task_id,
            str(t.multilabel.n_labels),
            _with_ci(t.multilabel.mean_kappa, t.multilabel.ci.get("mean_kappa")),
            _with_ci(t.multilabel.macro_f1, t.multilabel.ci.get("macro_f1")),
            _with_ci(t.multilabel.micro_f1, t.multilabel.ci.get("micro_f1")),
            _with_ci(t.multilabel.accuracy, t.multilabel.ci.get("accuracy")),
            str(t.multilabel.n_kappa_undefined),
        ]
        for t in report.tasks
        if t.multilabel is not None
    ]
    if ml_rows:
        doc.h(2, "Labels per task (UniMoE metrics)")
        doc.table(
            ["task", "labels", "mean κ", "macro-F1", "micro-F1", "accuracy", "κ undefined"],
            ml_rows,
            caption=f"Binary targets (criteria and cumulative 'scale>=k' indicators) at threshold "
            f"{s.get('threshold')}; undefined κ skipped in the mean.",
        )

def _pass(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "fail")


def _readiness_section(doc: _Doc, r: Readiness, mach: str) -> None:
    """Per item: QWK, its drop from human–human and SMD against the thresholds, and the overall verdict."""
    doc.h(2, "Operational readiness")
    doc.p(f"{r.n_pass} of {len(r.items)} items pass all three.")
    rows = [
        [
            it.task_id if it.scale_id == "score" else f"{it.task_id} / {it.scale_id}",
            str(it.n),
            _f(it.qwk),
            _pass(it.qwk_pass),
            "n/a" if it.qwk_drop is None else _f(it.qwk_drop),
            _pass(it.drop_pass),
            _f(it.smd, 3),
            _pass(it.smd_pass),
            _pass(it.passes),
        ]
        for it in r.items
    ]
    doc.table(
        ["item", "n", "QWK", f"QWK ≥ {r.min_qwk:g}", "QWK drop from human–human",
         f"drop ≤ {r.max_qwk_drop:g}", "SMD", f"|SMD| ≤ {r.max_abs_smd:g}", "all"],
        rows,
        caption=f"After Williamson, Xi & Breyer (2012). QWK and SMD: {mach} vs rater 1 on every matched "
        "response; QWK drop: human–human QWK minus machine–human QWK on the double-scored responses. Items "
        "without a second rater have no drop (n/a) and are judged on QWK and SMD only; an undefined value "
        "fails.",
    )


def _task_section(doc: _Doc, t: TaskReport, mach: str, plot_dir: Path | None, rel_root: Path | None,
                  source: str | None = None) -> None:
    doc.h(2, f"Task {t.task_id}")
    doc.p(f"Gold responses: {t.n_gold}; predictions: {t.n_predicted}; matched: {t.n_matched}."
          + (f" Scores from: {source}." if source else ""))
    doc.bullets(_notes("", t.notes))
    for sr in t.scales:
        _scale_section(doc, t, sr, mach, plot_dir, rel_root)
    if t.labels:
        doc.h(3, "Per label")
        doc.table(
            ["label", "n", "κ", "accuracy", "F1", "gold rate", "predicted rate"],
            [
                [
                    lm.name,
                    str(lm.n),
                    _f(lm.kappa),
                    _f(lm.accuracy),
                    _f(lm.f1),
                    _f(lm.gold_rate, 3),
                    _f(lm.pred_rate, 3),
                ]
                for lm in t.labels
            ],
        )
        doc.bullets(
            [f"{lm.name}: {k}: {v}" for lm in t.labels for k, v in lm.notes.items()]
            + (_notes("", t.multilabel.notes) if t.multilabel else [])
        )


def _scale_section(
    doc: _Doc, t: TaskReport, sr: ScaleReport, mach: str, plot_dir: Path | None, rel_root: Path | None
) -> None:
    """One scale of a task: the metrics beside human-human, notes, confusion matrix, subgroups."""
    doc.h(3, f"Scale '{sr.scale_id}' ({sr.machine.scale_min}–{sr.machine.scale_max})")
    headers = ["metric", f"{mach}–human"]
    cols: list[ScoreMetrics | None] = [sr.machine]
    if sr.human_human is not None:
        # the double-scored column only when it differs from the full one (some responses single-scored)
        if sr.machine_double_scored is not None and sr.machine_double_scored.n != sr.machine.n:
            headers.append(f"{mach}–human (double-scored)")
            cols.append(sr.machine_double_scored)
        headers += ["human–human", "degradation"]
        cols.append(sr.human_human)
    other = f"{mach} / rater 2" if sr.human_human is not None else mach
    names = {
        "mean_human": "mean rater 1",
        "mean_machine": f"mean {other}",
        "sd_human": "SD rater 1",
        "sd_machine": f"SD {other}",
    }
    rows = []
    for k in ("n",) + SCORE_METRICS + ("mean_human", "mean_machine", "sd_human", "sd_machine"):
        row = [_METRIC_NAMES.get(k) or names.get(k, k)]
        for sm in cols:
            if sm is None:
                row.append("")
            elif k == "n":
                row.append(str(sm.n))
            else:
                row.append(_with_ci(getattr(sm, k), sm.ci.get(k)))
        if sr.human_human is not None:
            deg = (sr.degradation or {}).get(k, math.nan)
            row.append(_with_ci(deg, sr.degradation_ci.get(k)) if k in SCORE_METRICS else "")
        rows.append(row)
    doc.table(headers, rows)
    notes = _notes(f"{mach}–human ", sr.machine.notes)
    if sr.human_human is not None:
        notes += _notes("human–human ", sr.human_human.notes)
    doc.bullets(notes)
    if plot_dir is not None and sr.machine.n > 0:
        png = plot_confusion(
            sr.machine,
            plot_dir / f"confusion_{t.task_id}_{sr.scale_id}.png",
            f"{t.task_id} / {sr.scale_id}: human vs {mach} (n={sr.machine.n})",
            mach,
        )
        rel = png.relative_to(rel_root).as_posix() if rel_root else png.as_posix()
        doc.image(png, rel, f"confusion matrix {t.task_id} {sr.scale_id}")
    if sr.subgroups:
        doc.h(4, "Subgroups")
        doc.table(["group"] + _SCORE_HEADERS, [_score_row(g, sm) for g, sm in sr.subgroups.items()])
        doc.bullets(
            [
                f"{g}: {k}: {v}"
                for g, sm in sr.subgroups.items()
                for k, v in sm.notes.items()
                if not k.startswith("ci_")
            ]
        )


# --- entry point ----------------------------------------------------------------------------------------
def write_report(
    report: Report, out_dir: str | Path, formats: Sequence[str] = FORMATS, plots: bool = True
) -> dict[str, Path]:
    """Write ``report.json`` / ``report.md`` / ``report.html`` (and ``plots/*.png``) into ``out_dir``.

    Returns the written paths by format (``"plots"`` -> the plot folder when plots were drawn). The JSON is
    written first, so a failure while drawing keeps the numbers.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown report formats {unknown} (use {list(FORMATS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        p = out / "report.json"
        p.write_text(
            json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        written["json"] = p
    if "md" in formats or "html" in formats:
        plot_dir = out / "plots" if plots else None
        doc = build_document(report, plot_dir, rel_root=out)
        if plot_dir is not None and plot_dir.exists():
            written["plots"] = plot_dir
        if "md" in formats:
            p = out / "report.md"
            p.write_text(_render_md(doc), encoding="utf-8")
            written["md"] = p
        if "html" in formats:
            p = out / "report.html"
            p.write_text(_render_html(doc, report.title), encoding="utf-8")
            written["html"] = p
    return written
