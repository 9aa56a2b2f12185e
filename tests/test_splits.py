"""Seeded holdout splits."""

import numpy as np
import pytest

from dataparams.data.base import Split
from dataparams.data.splits import holdout_split


def _check_partition(train, val, n):
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not np.intersect1d(train, val).size
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))


def test_partition_and_size():
    train, val = holdout_split(1000, 0.15, seed=0)
    _check_partition(train, val, 1000)
    assert len(val) == 150


def test_rounds_to_nearest():
    assert len(holdout_split(10, 0.25, seed=0)[1]) == 3  # 2.5 rounds up
    assert len(holdout_split(10, 0.24, seed=0)[1]) == 2


def test_seeded():
    a = holdout_split(500, 0.2, seed=1)
    b = holdout_split(500, 0.2, seed=1)
    c = holdout_split(500, 0.2, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_random_not_contiguous():
    _, val = holdout_split(1000, 0.1, seed=0)
    assert val.max() - val.min() > 500


def test_fraction_zero_gives_empty_val():
    train, val = holdout_split(7, 0.0, seed=0)
    np.testing.assert_array_equal(train, np.arange(7))
    assert val.shape == (0,) and val.dtype == np.int64


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        holdout_split(10, fraction, seed=0)


def test_fraction_leaving_no_training_samples():
    with pytest.raises(ValueError, match="no training samples"):
        holdout_split(1, 0.5, seed=0)


def test_stratified_keeps_class_proportions():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    train, val = holdout_split(len(labels), 0.1, seed=0, stratify=labels)
    _check_partition(train, val, len(labels))
    np.testing.assert_array_equal(np.bincount(labels[val]), [60, 30, 10])
    np.testing.assert_array_equal(np.bincount(labels[train]), [540, 270, 90])


def test_stratified_keeps_a_training_sample_per_class():
    labels = np.array([0, 0, 0, 0, 1])
    train, val = holdout_split(5, 0.5, seed=0, stratify=labels)
    assert 4 in train
    assert len(val) == 2


def test_stratify_shape_checked():
    with pytest.raises(ValueError, match="shape"):
        holdout_split(5, 0.2, seed=0, stratify=np.zeros(4, dtype=int))


def test_indices_apply_to_a_split():
    split = Split(np.arange(20) % 4, ["a", "b", "c", "d"], images=np.zeros((20, 2, 2, 1), np.uint8))
    train, val = holdout_split(len(split), 0.25, seed=0, stratify=split.targets)
    held_out = split.subset(val)
    assert len(split.subset(train)) == 16 and len(held_out) == 4
    np.testing.assert_array_equal(np.bincount(held_out.targets), [1, 1, 1, 1])
