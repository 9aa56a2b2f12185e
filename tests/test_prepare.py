"""Label resolution (data/prepare.py): noise, splits, label files -- and the transition-noise defect."""

import numpy as np
import pytest

from dataparams.build import validate_config
from dataparams.config import ConfigError, DataConfig, TrainConfig, apply_overrides
from dataparams.data.prepare import noise_reference, reference_probabilities, resolve_labels


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


def test_without_noise_the_given_labels_are_the_clean_array_and_changes_copy_first(tmp_path):
    # No noise: one (N,) array for given and clean labels, not two; a labels or threshold file
    # then writes into a copy, never into the clean labels.
    clean = np.arange(12) % 3
    plain = resolve_labels(DataConfig(), clean, 3, seed=1)
    assert plain.labels is plain.clean and not plain.is_corrupted.any()
    noisy = resolve_labels(DataConfig(noise="uniform", noise_rate=0.5), clean, 3, seed=1)
    assert not np.shares_memory(noisy.labels, noisy.clean) and noisy.is_corrupted.any()
    np.save(tmp_path / "thr.npy", np.array([0, 1]))
    with_thr = resolve_labels(DataConfig(threshold_file=str(tmp_path / "thr.npy")), clean, 3, seed=1)
    assert (with_thr.labels[[0, 1]] == 3).all() and list(with_thr.clean[:2]) == [0, 1]
    (tmp_path / "labels.csv").write_text("source_index,label\n0,2\n1,1\n")
    relabelled = resolve_labels(DataConfig(labels_file=str(tmp_path / "labels.csv")), clean, 3, seed=1)
    assert relabelled.labels[0] == 2 and relabelled.clean[0] == 0 and relabelled.is_corrupted.sum() == 1


def test_reference_probabilities_are_out_of_sample():
    # Two well separated blobs: the cross-fitted linear model gives each sample its blob's class. A
    # sample's own label never reaches the model that predicts it, so changing it changes nothing
    # in its row, while a label of the *other* fold does change the model that predicts it.
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    x = rng.normal(size=(200, 5)) + 3.0 * y[:, None]
    ref = reference_probabilities(x, y, 2, seed=0)
    assert ref.shape == (200, 2) and np.allclose(ref.sum(1), 1)
    assert (ref.argmax(1) == y).mean() > 0.95
    y2 = y.copy()
    y2[0] = 1
    ref2 = reference_probabilities(x, y2, 2, seed=0)
    np.testing.assert_allclose(ref2[0], ref[0])
    fold = np.random.default_rng(0).permutation(200) % 2
    other_fold = np.flatnonzero(fold != fold[0])
    assert not np.allclose(ref2[other_fold], ref[other_fold])


def test_instance_noise_needs_a_reference(tmp_path):
    clean = np.array([0, 1, 2, 0, 1, 2])
    d = DataConfig(noise="instance", noise_rate=0.5)
    with pytest.raises(ConfigError, match="reference"):
        resolve_labels(d, clean, 3, seed=1)
    with pytest.raises(ConfigError, match="noise_reference"):
        noise_reference(d, None, clean, 3)  # image files, nothing in memory to fit on
    np.save(tmp_path / "bad.npy", np.ones((5, 3)))
    with pytest.raises(ConfigError, match="6 samples and 3 classes"):
        noise_reference(DataConfig(noise="instance", noise_rate=0.5, noise_reference=str(tmp_path / "bad.npy")),
                        None, clean, 3)
    with pytest.raises(ConfigError, match="instance only"):
        noise_reference(DataConfig(noise="uniform", noise_reference=str(tmp_path / "bad.npy")), None, clean, 3)
    # A reference file gives exactly the noise of instance_dependent_noise with the run's seed.
    ref = np.array([[0.1, 0.8, 0.1]] * 3 + [[0.1, 0.1, 0.8]] * 3)
    np.save(tmp_path / "ref.npy", ref)
    d = DataConfig(noise="instance", noise_rate=0.5, noise_reference=str(tmp_path / "ref.npy"))
    got = resolve_labels(d, clean, 3, seed=4, reference=noise_reference(d, None, clean, 3))
    from dataparams.noise import instance_dependent_noise

    np.testing.assert_array_equal(got.given, instance_dependent_noise(clean, 0.5, ref, seed=4)[0])
