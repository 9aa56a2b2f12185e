"""Label resolution (data/prepare.py): noise, splits, label files -- and the transition-noise defect."""

import numpy as np
import pytest

from dataparams.build import validate_config
from dataparams.config import ConfigError, DataConfig, TrainConfig, apply_overrides
from dataparams.data.prepare import resolve_labels


def test_transition_noise_needs_its_matrix_and_then_works(tmp_path):
    # data.noise=transition used to pass validation and then always fail: it had no way to get
    # its matrix. Now the matrix comes from data.noise_transition, checked before any data is read.
    cfg = apply_overrides(TrainConfig(), ["data.noise=transition"])
    with pytest.raises(ConfigError, match="noise_transition"):
        validate_config(cfg)

    # Class 0 -> 1 always, class 1 -> 0 always, class 2 stays: the outcome is known exactly.
    matrix = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    path = tmp_path / "t.csv"
    path.write_text("\n".join(",".join(str(v) for v in row) for row in matrix) + "\n")
    cfg = apply_overrides(TrainConfig(), ["data.noise=transition", f"data.noise_transition={path}"])
    validate_config(cfg)
    clean = np.array([0, 1, 2, 0, 1, 2, 2])
    labels = resolve_labels(cfg.data, clean, 3, seed=1)
    np.testing.assert_array_equal(labels.given, [1, 0, 2, 1, 0, 2, 2])
    np.testing.assert_array_equal(labels.is_corrupted, [True, True, False, True, True, False, False])

    np.save(tmp_path / "t.npy", matrix)
    d = DataConfig(noise="transition", noise_transition=str(tmp_path / "t.npy"))
    np.testing.assert_array_equal(resolve_labels(d, clean, 3, seed=1).given, [1, 0, 2, 1, 0, 2, 2])
    with pytest.raises(ConfigError, match=r"\(4, 4\)"):
        resolve_labels(d, clean, 4, seed=1)
    with pytest.raises(ConfigError, match="sum to 1"):
        np.save(tmp_path / "bad.npy", matrix * 0.5)
        resolve_labels(DataConfig(noise="transition", noise_transition=str(tmp_path / "bad.npy")), clean, 3, seed=1)
    with pytest.raises(ConfigError, match="applies to data.noise=transition only"):
        resolve_labels(DataConfig(noise="uniform", noise_rate=0.2, noise_transition=str(path)), clean, 3, seed=1)


def test_subset_split_oracle_and_threshold_samples(tmp_path):
    clean = np.arange(20) % 4
    d = DataConfig(subset=16, noise="uniform", noise_rate=0.5, val_fraction=0.25, oracle=True)
    labels = resolve_labels(d, clean, 4, seed=3)
    assert len(labels.labels) == 16 and len(labels.val_index) == 4
    assert not np.intersect1d(labels.train_index, labels.val_index).size
    assert not labels.is_corrupted.any()  # the oracle keeps the clean samples only

    np.save(tmp_path / "thr.npy", np.array([0, 1]))
    labels = resolve_labels(DataConfig(threshold_file=str(tmp_path / "thr.npy")), clean, 4, seed=3)
    # AUM's threshold samples get the extra class K and are not counted as corrupted.
    assert labels.num_classes == 5 and (labels.labels[[0, 1]] == 4).all()
    assert not labels.is_corrupted.any()
