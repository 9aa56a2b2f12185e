"""Temperature scaling and ECE against values computed by hand."""

import pytest
import torch

from dataparams.calibration import expected_calibration_error, fit_temperature


def test_fit_temperature_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    true_t = 2.5
    base = torch.randn(20000, 5, generator=g) * 3
    # labels drawn from softmax(base / T): the NLL-optimal temperature for `base` is T
    y = torch.multinomial((base / true_t).softmax(1), 1, generator=g).squeeze(1)
    assert fit_temperature(base, y) == pytest.approx(true_t, rel=0.05)


def test_ece_by_hand():
    # two bins used: confidences 0.9 (2 samples, 1 correct) and 0.6 (2 samples, 2 correct)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = torch.tensor([0, 1, 1, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, y) == pytest.approx(expected)


def test_fit_temperature_needs_data():
    with pytest.raises(ValueError, match="val_fraction"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
