"""Shared test set-up.

The CIFAR fakes (``fakes.write_cifar10`` ...) are written in the archives' real format, but they
are not the published files, so the checksums torchvision's CIFAR classes verify cannot match.
Every test runs with that one check reduced to "the file exists"; ``real_cifar_checksums``
restores it for the test that shows a mismatch is refused.
"""

import os

import pytest
import torchvision.datasets.cifar as tv_cifar

_REAL_CHECK_INTEGRITY = tv_cifar.check_integrity


@pytest.fixture(autouse=True)
def _cifar_fakes_pass_the_checksum(monkeypatch):
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def real_cifar_checksums(monkeypatch):
    monkeypatch.setattr(tv_cifar, "check_integrity", _REAL_CHECK_INTEGRITY)
