"""The headline number of a detection run, and its mean ± std over seeds (``train --seeds``).

The paper reports its KITTI detector (Saxena, Tuzel & DeCoste, NeurIPS 2019, sec. 3.3, Figure 2)
by Car AP at the devkit's IoU 0.7 for the easy, moderate and hard levels. :func:`headline` picks
those six numbers (AP|R40 and the 11-point AP, :mod:`~dataparams.detection.kitti_eval`) out of a
run's evaluation; it is what ``summary.json`` holds under ``headline`` and what the trainer prints
last. The mean over the trained classes (``map40_*``, ``map11_*``) stays in the summary as the
secondary numbers. For COCO-format data (``coco-synth``) the headline is COCO's box mAP@[.5:.95]
(pycocotools), with AP50 and AP75 as secondary numbers. Every value is in percent.

:func:`summarize_seeds` gives the mean, sample standard deviation and count of each of these
numbers over the seeds' summaries, with :func:`dataparams.analysis.metrics.over_seeds` (the
package's one definition of "mean ± std over seeds": runs without the number are left out);
:func:`write_seeds_summary` writes ``OUT/seeds_summary.json`` and ``OUT/seeds_summary.md``, the
file names of the classification presets' ``--seeds``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.analysis.metrics import over_seeds
from dataparams.detection.kitti import DIFFICULTIES
from dataparams.detection.kitti_eval import MIN_OVERLAP

__all__ = [
    "HEADLINE_CLASS",
    "format_headline",
    "headline",
    "seeds_markdown",
    "summarize_seeds",
    "write_seeds_summary",
]

#: The class of the paper's KITTI figure.
HEADLINE_CLASS = "Car"

_AP_KINDS = (("ap40", "AP|R40"), ("ap11", "11-point AP"))


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def headline(evaluation: Mapping[str, Any]) -> dict[str, Any] | None:
    """The headline numbers of one evaluation.

    Parameters
    ----------
    evaluation : mapping
        An epoch record or a run summary holding ``kitti`` (``{class: {difficulty: {"ap40",
        "ap11"}}}``, percent) or ``coco`` (:func:`~dataparams.detection.coco.coco_evaluate`,
        fractions).

    Returns
    -------
    dict or None
        ``{"metric": str, "unit": "percent", "values": {name: float or None}}``. KITTI: Car AP
        at IoU 0.7, ``values`` ``ap40_easy`` ... ``ap11_hard``; without a Car class, the mean
        over the evaluated classes under the same names (``metric`` says so). COCO: ``map``
        (AP@[.5:.95]) times 100. None when the evaluation has neither.
    """
    kitti = evaluation.get("kitti")
    if kitti:
        car = next((c for c in kitti if c.lower() == HEADLINE_CLASS.lower()), None)
        classes = [car] if car is not None else list(kitti)
        values = {f"{kind}_{d}": _finite(np.mean([kitti[c][d][kind] for c in classes]))
                  for kind, _ in _AP_KINDS for d in DIFFICULTIES}
        if car is not None:
            metric = f"{HEADLINE_CLASS} AP at IoU {MIN_OVERLAP[HEADLINE_CLASS]:g} (KITTI 2D, devkit rules)"
        else:
            metric = f"mean AP over {', '.join(classes)} (KITTI 2D, devkit rules; no {HEADLINE_CLASS} class)"
        return {"metric": metric, "unit": "percent", "values": values}
    coco = evaluation.get("coco")
    if coco:
        value = coco.get("map")
        return {"metric": "COCO box mAP@[.5:.95] (pycocotools)", "unit": "percent",
                "values": {"map": None if value is None else _finite(100.0 * value)}}
    return None


def _secondary(evaluation: Mapping[str, Any]) -> dict[str, float | None]:
    """The secondary numbers: KITTI's mean over classes, or COCO's AP50 and AP75 (percent)."""
    if evaluation.get("kitti"):
        return {f"m{kind}_{d}": _finite(evaluation.get(f"m{kind}_{d}", math.nan))
                for kind, _ in _AP_KINDS for d in DIFFICULTIES}
    coco = evaluation.get("coco") or {}
    return {k: None if coco.get(k) is None else _finite(100.0 * coco[k]) for k in ("map50", "map75") if k in coco}


def format_headline(h: Mapping[str, Any] | None) -> str:
    """One line: ``Car AP at IoU 0.7 ...: AP|R40 easy/moderate/hard 80.1/70.2/60.3, 11-point AP ...``."""
    if not h:
        return "no evaluation"
    values = h["values"]

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    if "map" in values:
        return f"{h['metric']}: {num(values['map'])}"
    parts = [f"{label} {'/'.join(DIFFICULTIES)} " + "/".join(num(values[f'{kind}_{d}']) for d in DIFFICULTIES)
             for kind, label in _AP_KINDS]
    return f"{h['metric']}: " + ", ".join(parts)


def summarize_seeds(summaries: Sequence[Mapping[str, Any]], seeds: Sequence[int], *,
                    preset: str) -> dict[str, Any]:
    """Mean ± std over seeds of the headline and secondary numbers of the runs' summaries.

    Parameters
    ----------
    summaries : sequence of mappings
        The runs' ``summary.json`` contents, one per seed.
    seeds : sequence of int
    preset : str

    Returns
    -------
    dict
        ``{"preset", "seeds", "metric", "unit", "headline": {name: over_seeds}, "secondary":
        {name: over_seeds}, "runs": {seed: summary}}``; each ``over_seeds`` entry is ``{"mean",
        "std", "n", "values"}`` with the sample standard deviation (``ddof = 1``).
    """
    if len(summaries) != len(seeds):
        raise ValueError(f"{len(summaries)} summaries for {len(seeds)} seeds")
    heads = [s.get("headline") or headline(s) for s in summaries]
    first = next((h for h in heads if h), None)
    names = list(first["values"]) if first else []
    secondary = [_secondary(s) for s in summaries]
    second_names = list(dict.fromkeys(k for s in secondary for k in s))
    return {
        "preset": preset,
        "seeds": list(seeds),
        "metric": first["metric"] if first else None,
        "unit": "percent",
        "headline": {k: over_seeds([(h or {}).get("values", {}).get(k) for h in heads]) for k in names},
        "secondary": {k: over_seeds([s.get(k) for s in secondary]) for k in second_names},
        "runs": {str(seed): dict(s) for seed, s in zip(seeds, summaries)},
    }


def _label(name: str) -> str:
    # "ap40_moderate" -> "AP|R40 moderate", with the pipe escaped for the markdown table.
    labels = {"ap40": "AP\\|R40", "ap11": "11-point AP", "map40": "mean over classes AP\\|R40",
              "map11": "mean over classes 11-point AP",
              "map": "mAP@[.5:.95]", "map50": "AP50", "map75": "AP75"}
    kind, _, diff = name.partition("_")
    if name in labels:
        return labels[name]
    return f"{labels.get(kind, kind)} {diff}".strip()


def seeds_markdown(table: Mapping[str, Any]) -> str:
    """The markdown of :func:`summarize_seeds`' result: one row per number, mean ± std (n)."""
    def cell(agg: Mapping[str, Any]) -> str:
        return "n/a (0)" if agg["n"] == 0 else f"{agg['mean']:.2f} ± {agg['std']:.2f} ({agg['n']})"

    lines = [f"# {table['preset']}, seeds {' '.join(map(str, table['seeds']))}", "",
             f"Headline: {table['metric']}, {table['unit']}; mean ± sample std (n runs).", "",
             "| quantity | mean ± std (n) |", "|---|---:|"]
    lines += [f"| **{_label(k)}** | {cell(v)} |" for k, v in table["headline"].items()]
    lines += [f"| {_label(k)} | {cell(v)} |" for k, v in table["secondary"].items()]
    return "\n".join(lines) + "\n"


def write_seeds_summary(out: str | os.PathLike[str], summaries: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                        *, preset: str) -> tuple[dict[str, Any], str]:
    """Write ``OUT/seeds_summary.json`` (:func:`summarize_seeds`) and ``OUT/seeds_summary.md``
    (:func:`seeds_markdown`); return both contents."""
    out = Path(out)
    table = summarize_seeds(summaries, seeds, preset=preset)
    text = seeds_markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds_summary.json").write_text(json.dumps(table, indent=2, allow_nan=True) + "\n")
    (out / "seeds_summary.md").write_text(text)
    return table, text
