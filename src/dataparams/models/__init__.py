"""Models used by the presets."""

from dataparams.models.small_cnn import SmallCNN

__all__ = ["SmallCNN"]
