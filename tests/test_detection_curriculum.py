"""The per-epoch numbers of the box curriculum, per kind of injected box error, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dataparams.detection.curriculum import BoxTable, curriculum_statistics


def _table(kinds: list[str]) -> BoxTable:
    n = len(kinds)
    flipped = np.array([k == "flip" for k in kinds])
    labels = np.ones(n, np.int64)
    return BoxTable(
        labels=labels, true_labels=np.where(flipped, 2, 1), is_flipped=flipped,
        difficulty=np.zeros(n, np.int64), occluded=np.zeros(n, np.int64), truncated=np.zeros(n, np.float32),
        height=np.full(n, 40.0, np.float32), boxes=np.zeros((n, 4), np.float32),
        image_index=np.zeros(n, np.int64), line_index=np.arange(n, dtype=np.int64),
        image_ids=np.array(["000000"]), classes=np.array(["Car", "Pedestrian"]),
        error_kind=np.array(kinds),
    )


def test_each_kind_of_box_error_is_scored_against_the_clean_boxes_only():
    table = _table(["clean", "clean", "flip", "shift", "spurious", "clean"])
    sigma = np.array([1.0, 2.0, 2.5, 4.0, 0.5, 3.0])
    loss = np.array([0.1, 0.2, 0.15, np.nan, 0.9, 0.3])
    out = curriculum_statistics(sigma, table, box_loss=loss)
    errors = out["box_errors"]
    assert errors["clean"] == {"num": 3, "sigma_mean": pytest.approx(2.0)}
    # flip (2.5) against clean (1, 2, 3): above two of three pairs.
    assert errors["flip"]["auroc_sigma"] == pytest.approx(2 / 3)
    assert errors["flip"]["auroc_loss"] == pytest.approx(1 / 3)  # 0.15 above 0.1 only
    assert errors["shift"] == {"num": 1, "sigma_mean": 4.0, "auroc_sigma": 1.0, "auroc_loss": None}  # loss unknown
    assert errors["spurious"]["auroc_sigma"] == 0.0 and errors["spurious"]["auroc_loss"] == 1.0
    # The flipped block keeps its meaning: flipped against every other box (1, 2, 4, 0.5, 3).
    assert out["flipped"]["auroc_sigma"] == pytest.approx(3 / 5)


def test_a_table_without_shifted_or_spurious_boxes_has_no_per_kind_block_and_old_arrays_still_load():
    table = _table(["clean", "flip", "clean"])
    out = curriculum_statistics(np.array([1.0, 2.0, 3.0]), table)
    assert "box_errors" not in out and out["flipped"]["num_flipped"] == 1
    # A run's labels.npz from before error_kind: the kinds are read off is_flipped.
    arrays = {k: v for k, v in table.as_arrays().items() if k != "error_kind"}
    np.testing.assert_array_equal(BoxTable.from_arrays(arrays).error_kind, ["clean", "flip", "clean"])
    with pytest.raises(KeyError, match="lack labels"):
        BoxTable.from_arrays({k: v for k, v in arrays.items() if k != "labels"})
