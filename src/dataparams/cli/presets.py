"""``dataparams presets``: list the preset names, classification and detection."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "cmd_presets"]


def add_parser(sub: Any) -> None:
    """Add ``presets`` to the sub-command parsers ``sub``; it runs :func:`cmd_presets`."""
    p = sub.add_parser("presets", help="list the preset names", description="List every EXPERIMENT/VARIANT preset.")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    from dataparams.detection.presets import get_detection_preset, list_detection_presets
    from dataparams.presets import get_preset, list_presets

    for name in list_presets():
        cfg = get_preset(name)
        if name.endswith("/baseline"):
            epochs = "epochs from the data" if cfg.optim.epochs == 0 else f"{cfg.optim.epochs} epochs"
            print(f"{name.split('/')[0]:<20} {cfg.data.dataset}, {cfg.model.arch}, {epochs}, "
                  f"noise {cfg.data.noise} {cfg.data.noise_rate:g}")
    print("\nvariants: baseline, class, instance, joint (and oracle for noisy experiments), e.g. "
          "--preset cifar100-noisy40/instance")
    print("\ndetection (sec. 3.3), one data parameter per box annotation:")
    for name in list_detection_presets():
        cfg = get_detection_preset(name)
        print(f"{name:<22} {cfg.model.arch}, {cfg.optim.epochs} epochs, box curriculum "
              f"{'on' if cfg.curriculum.instance_curriculum else 'off'}")
    return 0
