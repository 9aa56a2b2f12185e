"""How many labels to flag after dp-gce: the library's flag rules next to other count estimators,
on the development cells (seed 100, never reported) whose injected noise is known.

Each run directory given is the first training of a filter pipeline (``dp-gce``: the instance
curriculum on GCE; e.g. the ``stage1`` folders that ``dev_filter_cells.py`` leaves). Its ranking is
the mean training loss over the epochs (the ``mean-loss`` score, from the snapshots) and its label
quality the one :func:`dataparams.scores.label_quality_scores` gives for that loss; every rule below
flags the lowest-quality samples and differs only in how many:

* ``class-mean``, ``confident``, ``mixture``, ``bound f``: :func:`dataparams.scores.flag_by_rule`;
* ``expected``: per class, the sum of ``1 - quality`` over its samples (the quality read as the
  probability that the label is right);
* ``argmax``: per class, the samples whose most probable class (probabilities averaged over
  training) is another one;
* ``otsu``: per class, Otsu's threshold on the quality (the split that maximises the between-group
  variance);
* ``min(class-mean, confident)`` and ``mean(class-mean, confident)``: per class, of the two counts.

Prints flagged / truly wrong and the flagged set's F1 for every run and rule, and per rule the
range of the ratio over the runs. Nothing is trained.

    python benchmarks/screen_flag_counts.py runs/dev-gcecm/*/stage1 --out table.md
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _table import emit, parse_runs
from dataparams.runs import RunDir
from dataparams.scores import confident_counts, flag_by_rule, label_quality_scores


def _load(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    snaps = sorted((run / "snapshots").glob("epoch_*.npz"))
    if not snaps:
        raise SystemExit(f"{run}: no snapshots")
    loss = np.mean([np.load(s)["loss"].astype(np.float64) for s in snaps], axis=0)
    run_dir = RunDir(run)  # a torchrun run's predictions are shard files that load_arrays joins
    labels, pred = run_dir.load_arrays("labels.npz"), run_dir.load_arrays("predictions.npz")
    if "mean_probs" not in pred:
        raise SystemExit(f"{run}: predictions.npz keeps no mean_probs (train in one process with this version)")
    cur = cfg["curriculum"]
    return {"loss": loss, "y": labels["given"].astype(np.int64), "wrong": labels["is_corrupted"].astype(bool),
            "probs": pred["mean_probs"].astype(np.float64), "name": cur.get("loss", "ce"),
            "q": cur.get("loss_q"), "cell": f"{cfg['data']['noise']}{round(100 * cfg['data']['noise_rate'])}"}


def _lowest_per_class(quality: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Flag the ``counts[c]`` lowest-quality samples of each class ``c``."""
    mask = np.zeros(len(y), dtype=bool)
    for c, n in enumerate(counts):
        members = np.flatnonzero(y == c)
        mask[members[np.argsort(quality[members], kind="stable")[: int(n)]]] = True
    return mask


def _otsu(values: np.ndarray) -> float:
    best, threshold = -1.0, 0.5
    for t in np.linspace(0.02, 0.98, 49):
        low, high = values[values < t], values[values >= t]
        if len(low) and len(high):
            between = len(low) * len(high) * (low.mean() - high.mean()) ** 2
            if between > best:
                best, threshold = between, float(t)
    return threshold


def rules(r: dict) -> dict[str, np.ndarray]:
    loss, y, probs, name, q = r["loss"], r["y"], r["probs"], r["name"], r["q"]
    k = probs.shape[1]
    quality = label_quality_scores(loss, loss=name, q=q)
    out = {rule: flag_by_rule(loss, labels=y, probs=probs, rule=rule, loss=name, q=q)["mask"]
           for rule in ("class-mean", "confident", "mixture")}
    if name == "gce":
        for f in (0.2, 0.5):
            out[f"bound {f}"] = flag_by_rule(loss, labels=y, rule="bound", loss=name, q=q, fraction=f)["mask"]
    classes = np.arange(k)
    out["expected"] = _lowest_per_class(quality, y, np.array([round((1 - quality[y == c]).sum()) for c in classes]))
    pred = probs.argmax(1)
    out["argmax"] = _lowest_per_class(quality, y, np.array([(pred[y == c] != c).sum() for c in classes]))
    otsu = np.zeros(len(y), dtype=bool)
    for c in classes:
        members = np.flatnonzero(y == c)
        if len(members):
            otsu[members] = quality[members] < _otsu(quality[members])
    out["otsu"] = otsu
    cm = np.bincount(y[out["class-mean"]], minlength=k)
    conf = confident_counts(y, probs)
    out["min(class-mean, confident)"] = _lowest_per_class(quality, y, np.minimum(cm, conf))
    out["mean(class-mean, confident)"] = _lowest_per_class(quality, y, np.rint((cm + conf) / 2).astype(int))
    return out


def _f1(mask: np.ndarray, wrong: np.ndarray) -> float:
    tp = int((mask & wrong).sum())
    p, rec = tp / max(1, int(mask.sum())), tp / max(1, int(wrong.sum()))
    return 2 * p * rec / max(1e-12, p + rec)


def main(argv: list[str] | None = None) -> None:
    args = parse_runs(__doc__.split("\n\n")[0], argv, "first-stage run directories (dp-gce, known injected noise)")
    runs = [_load(Path(p)) for p in args.runs]
    per_rule: dict[str, list[tuple[str, float, float]]] = {}
    for r in runs:
        for rule, mask in rules(r).items():
            per_rule.setdefault(rule, []).append((r["cell"], mask.sum() / max(1, r["wrong"].sum()), _f1(mask, r["wrong"])))
    cells = [r["cell"] for r in runs]
    lines = ["| rule | " + " | ".join(f"{c}: flagged/wrong, F1" for c in cells) + " | ratio range | worst F1 |",
             "|---|" + "---:|" * (len(cells) + 2)]
    for rule, rows in per_rule.items():
        ratios, f1s = [x[1] for x in rows], [x[2] for x in rows]
        lines.append(f"| {rule} | " + " | ".join(f"{x[1]:.2f}, {x[2]:.3f}" for x in rows)
                     + f" | {min(ratios):.2f}-{max(ratios):.2f} | {min(f1s):.3f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
