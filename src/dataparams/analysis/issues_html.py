"""``report.html`` of find-issues: the most suspect samples, to look at rather than read.

One self-contained page (images embedded as data URIs): the summary (how many samples, how many
flagged and by which rule, and -- when the run knows which labels it corrupted -- how good the
ranking is), the histogram of the ranking score with the flag threshold, the per-class table
(samples and flagged samples per given class, the most frequent given -> predicted confusions
among the flagged; :meth:`~dataparams.analysis.find_issues.IssueReport.per_class`), and a grid of
the most suspect samples, each with its thumbnail, given label and the model's prediction.

Notation as in :mod:`.find_issues`: ``N`` samples, ranks from 1 (most suspect).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dataparams.analysis.find_issues import IssueReport

__all__ = ["BASE_CSS", "plot_score_histogram", "write_issues_html"]

#: The page style of the issue reports (this one and the detection runs' box report), which add
#: their own card sizes.
BASE_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.id { color: #666; word-break: break-all; }
"""
_CSS = BASE_CSS + """
.card { width: 150px; border: 1px solid #ddd; padding: 6px; font-size: 0.8em; }
.card img { width: 138px; height: 138px; object-fit: contain; image-rendering: pixelated; background: #f4f4f4; }
.given { color: #b00; } .pred { color: #060; }
"""


# How the flags were decided (dataparams.scores.FLAG_RULES), in words.
_RULES = {"class-mean": "per-class rule (label quality below the mean of its given class)",
          "mixture": "two-component mixture on the log of the score",
          "bound": "bound rule (a loss at least a fixed fraction of the bounded loss's maximum)",
          "confident": "confident-learning count per class"}

def plot_score_histogram(report: IssueReport, path: str | os.PathLike[str]) -> Path:
    """Histogram of the ranking score (log scale for the sigma scores), kept vs flagged samples,
    with the mixture's threshold; true corrupted samples outlined when the run knows them."""
    from dataparams.analysis.plotting import new_figure, save_figure

    fig = new_figure(7.0, 3.2)
    ax = fig.subplots()
    values = np.asarray(report.score, dtype=np.float64)
    logged = report.score_name.startswith("sigma") or report.score_name.endswith("loss")
    x = np.log(np.maximum(values, 1e-8)) if logged else values
    bins = np.histogram_bin_edges(x, bins=60)
    flagged = report.is_flagged
    ax.hist(x[~flagged], bins=bins, color="tab:blue", alpha=0.75, label=f"kept ({int((~flagged).sum()):,})")
    ax.hist(x[flagged], bins=bins, color="tab:red", alpha=0.75, label=f"flagged ({int(flagged.sum()):,})")
    if report.is_corrupted is not None:
        ax.hist(x[report.is_corrupted], bins=bins, histtype="step", color="black", linewidth=1.0,
                label=f"truly corrupted ({int(report.is_corrupted.sum()):,})")
    threshold = report.estimate.get("threshold")
    if threshold is not None and np.isfinite(threshold):
        t = np.log(max(threshold, 1e-8)) if logged else threshold
        ax.axvline(t, color="0.3", linestyle="--", linewidth=1.0, label="flag threshold")
    ax.set_xlabel(f"log {report.score_name}" if logged else report.score_name)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"Ranking score of the {len(values):,} samples")
    return save_figure(fig, path)


def _png_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    arr = np.asarray(pixels, dtype=np.uint8)
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _per_class_html(report: IssueReport) -> list[str]:
    """The per-class table and the most confused pairs, as HTML."""
    e = html.escape
    table = report.per_class()
    out = ["<h2>Per class</h2>", "<table><tr><th>given class</th><th>samples</th><th>flagged</th>"
           "<th>flagged %</th></tr>"]
    for row in table["per_class"]:
        share = f"{100 * row['n_flagged'] / row['n']:.1f}%" if row["n"] else "n/a"
        out.append(f"<tr><td>{e(row['class'])}</td><td>{row['n']:,}</td><td>{row['n_flagged']:,}</td>"
                   f"<td>{share}</td></tr>")
    out.append("</table>")
    pairs = table["confused_pairs"]
    if pairs is None:
        out.append("<p>Most confused pairs: unknown (no predictions).</p>")
    elif not pairs:
        out.append("<p>Most confused pairs: none (no flagged sample is predicted as another class).</p>")
    else:
        out.append("<p>Most confused pairs among the flagged samples (given &rarr; predicted):</p>"
                   "<table><tr><th>given</th><th>predicted</th><th>flagged samples</th></tr>")
        out += [f"<tr><td>{e(p['given'])}</td><td>{e(p['predicted'])}</td><td>{p['count']:,}</td></tr>"
                for p in pairs]
        out.append("</table>")
    return out


def write_issues_html(report: IssueReport, path: str | os.PathLike[str], *,
                      thumbnail: Callable[[int], np.ndarray] | None = None, top: int = 60,
                      title: str | None = None) -> Path:
    """Write the page; ``thumbnail(i)`` gives sample ``i``'s pixels (uint8 (h, w, C)), or None
    for feature data (the suspects are then listed as a table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    e = html.escape
    s = report.summary()
    name = report.class_names

    def label(c: int | None) -> str:
        if c is None:
            return "?"
        return f"{c} {name[c]}" if name is not None and 0 <= c < len(name) else str(c)

    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title or 'label issues')}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title or 'Label issues')}</h1>"]
    rule = (f"flagged {s['n_flagged']:,} of {s['n']:,} samples ({100 * (s['fraction_flagged'] or 0):.1f}%) as "
            f"mislabeled by the {_RULES.get(s.get('rule'), s.get('rule'))}, without knowing the noise rate")
    parts.append(f"<p>Ranked by <b>{e(report.score_name)}</b> (epoch {report.epoch}); {e(rule)}.</p>")
    if "n_corrupted" in s:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        auroc = "n/a" if s["auroc"] is None else f"{s['auroc']:.4f}"
        ap = "n/a" if s["average_precision"] is None else f"{s['average_precision']:.4f}"
        parts.append(f"<p>Known truth: {s['n_corrupted']:,} corrupted; flagged precision {pct(s['precision'])}, "
                     f"recall {pct(s['recall'])}; AUROC {auroc}, average precision {ap}.</p>")
    for note in report.notes:
        parts.append(f"<p class='id'>note: {e(note)}</p>")
    try:
        hist = plot_score_histogram(report, path.parent / "score_histogram.png")
        uri = "data:image/png;base64," + base64.b64encode(hist.read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='{uri}' alt='score histogram' style='max-width:100%'></figure>")
    except ImportError:
        parts.append("<p>(histogram not drawn: matplotlib is not installed)</p>")

    parts += _per_class_html(report)

    order = report.order[: max(0, int(top))]
    parts.append(f"<h2>The {len(order)} most suspect samples</h2>")
    if thumbnail is not None:
        parts.append("<div class='grid'>")
        for i in order:
            i = int(i)
            pred = None if report.predicted is None else int(report.predicted[i])
            prob = "" if report.predicted_prob is None else f" ({report.predicted_prob[i]:.2f})"
            truth = ""
            if report.is_corrupted is not None and report.true_label is not None:
                truth = f"<br>truth: {e(label(int(report.true_label[i])))}"
            parts.append(
                f"<div class='card'><img src='{_png_uri(thumbnail(i))}' alt='sample {i}'><br>#{report.rank[i]} "
                f"<span class='id'>{e(report.paths[i] or f'index {i}')}</span><br>"
                f"<span class='given'>given: {e(label(int(report.given[i])))}</span><br>"
                f"<span class='pred'>predicted: {e(label(pred))}{prob}</span><br>"
                f"score {report.score[i]:.3g}, p(mislabeled) {report.mislabeled_prob[i]:.2f}{truth}</div>")
        parts.append("</div>")
    else:
        parts.append("<table><tr><th>rank</th><th>sample</th><th>given</th><th>predicted</th><th>score</th>"
                     "<th>p(mislabeled)</th></tr>")
        for i in order:
            i = int(i)
            pred = None if report.predicted is None else int(report.predicted[i])
            parts.append(f"<tr><td>{report.rank[i]}</td><td>{e(report.paths[i] or f'index {i}')}</td>"
                         f"<td>{e(label(int(report.given[i])))}</td><td>{e(label(pred))}</td>"
                         f"<td>{report.score[i]:.3g}</td><td>{report.mislabeled_prob[i]:.2f}</td></tr>")
        parts.append("</table>")
    parts.append("<p>Every sample, in rank order: <code>issues.csv</code>.</p></body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
