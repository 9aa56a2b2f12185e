"""From the user's raw data to ranked label issues, in one call (``dataparams find-issues --data``).

:func:`find_label_issues` loads the data (checking every file first: bad input stops it before
anything is written), trains the instance curriculum on the labels as given (the ``user`` preset,
with the model, epochs and normalisation chosen from the data), ranks every sample by what the
curriculum learned (by default its loss under its learned temperature averaged over training,
:data:`DEFAULT_SCORE`, which does not depend on guessing the epoch), flags the estimated
number of wrong labels without being told the noise rate, and writes what ``dataparams find-issues RUN_DIR`` writes -- ``issues.csv``,
``label_issues_mask.npy``, ``ranked_label_issues.npy``, ``summary.json`` -- plus ``report.html``
with the most suspect samples as thumbnails. The run directory (with the trained model,
``run/model.pt``) is kept under the output folder.

Called again on the same data with the same settings, it reuses that run (continuing it if it
was interrupted); after an edited label, an added, removed or replaced file, another class list
or other settings it trains again from scratch, replacing ``OUT/run``, and says why. The data is compared
by its fingerprint (:attr:`dataparams.data.user.UserData.fingerprint`), which the run stores.
"""

from __future__ import annotations

import os
from pathlib import Path

from dataparams.analysis.find_issues import IssueReport, find_issues
from dataparams.analysis.issues_html import write_issues_html
from dataparams.build import validate_config
from dataparams.config import apply_overrides, config_to_dict
from dataparams.data.registry import load_dataset
from dataparams.experiment import train
from dataparams.presets import complete_user_config, get_preset
from dataparams.runs import RunDir
from dataparams.runs.logger import write_line

__all__ = ["DEFAULT_SCORE", "find_label_issues"]

#: The ranking find-issues uses on user data: each sample's training loss under its learned
#: temperature (the loss of ``logits / sigma``), averaged over the epochs. On the tuning sets of
#: benchmarks/results/user_data_tuning.md it ranked label errors better than sigma at the last epoch
#: and than sigma integrated over training (AUROC 0.984 vs 0.925 and 0.970 on Fashion-MNIST images,
#: 0.989 vs 0.949 and 0.975 on the wine table): a wrong label keeps a high loss because its
#: temperature flattens its softmax, and averaging over training does not depend on the epoch.
DEFAULT_SCORE = "mean-loss"


def find_label_issues(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str = "instance",
    score: str = DEFAULT_SCORE,
    holdout: float = 0.0,
    overrides: list[str] = (),
    seed: int = 1,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
    top: int = 60,
) -> tuple[IssueReport, dict[str, Path]]:
    """Train on ``data`` and write its ranked label issues into ``out``.

    Parameters
    ----------
    data : path-like
        A ``path,label`` CSV/TSV list, a folder of class folders, or an ``.npz`` with ``X``, ``y``.
    out : path-like
        Output folder; the run directory is ``out/run``. A run already there is reused (and
        continued if it was interrupted) only when it was trained on the same data and settings;
        otherwise it is replaced by a new training. The user asks for a ranking of the data as
        it is now: the old run's ranking would describe labels that no longer exist.
    variant : str
        The ``user`` preset's variant (``instance`` or ``joint``: the score needs instance sigma).
    score : str
        One of :data:`dataparams.analysis.find_issues.SCORES`.
    holdout : float
        Fraction of the samples held out (with their given labels) to pick the epoch and report
        accuracy on; those samples are not ranked.
    overrides : list of str
        ``section.field=value`` config overrides (e.g. ``model.arch=resnet18``, ``optim.epochs=30``).
    seed, device, quiet
        As for ``dataparams train``.
    overwrite : bool
        Train again even when ``out/run`` holds a run on the same data and settings.
    top : int
        Suspects shown in ``report.html``.

    Returns
    -------
    (IssueReport, dict)
        The report, and the written files by name (``issues_csv``, ``label_issues_mask``,
        ``ranked_label_issues``, ``summary``, ``report_html``, ``run_dir``).
    """
    cfg = apply_overrides(get_preset(f"user/{variant}"), [f"data.data_dir={os.fspath(data)}",
                                                            f"data.val_fraction={holdout}", f"seed={seed}",
                                                            *overrides])
    validate_config(cfg)
    dataset = load_dataset(cfg.data, progress=not quiet)  # every file checked before anything is written
    out = Path(out)
    run_dir = out / "run"
    resume = False
    if not overwrite and (run_dir / "config.json").exists():
        # The config train() will store, fingerprint of the data included: the only way to see
        # that a label was edited in place, which leaves every config field as it was.
        changed = RunDir(run_dir).differences(config_to_dict(complete_user_config(cfg, dataset.user)))
        overwrite, resume = bool(changed), not changed
        if changed and not quiet:
            write_line(f"{run_dir} was trained on other data or settings ({'; '.join(changed)}); "
                       "training again")
    train(cfg, run_dir, overwrite=overwrite, resume=resume, device=device, quiet=quiet, tensorboard=False,
          dataset=dataset)
    report = find_issues(run_dir, score=score, dataset=dataset)
    files = report.save(out)
    user = dataset.user
    # The thumbnail is the image the model saw (decoded at the common side).
    thumbnail = user.thumbnail if user.kind == "images" else None
    files["report_html"] = write_issues_html(report, out / "report.html", thumbnail=thumbnail, top=top,
                                             title=f"Label issues in {data}")
    files["run_dir"] = run_dir
    return report, files
