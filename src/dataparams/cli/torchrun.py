"""The sub-commands' check for ``torchrun``: a command with no data-parallel path refuses to run
in several processes, each of which would do the whole work and write the same files."""

from __future__ import annotations

__all__ = ["single_process"]


def single_process(why: str) -> None:
    """Refuse a command that has no data-parallel path when torchrun started several processes."""
    from dataparams.config import ConfigError
    from dataparams.distributed import launched_world_size

    if launched_world_size() > 1:
        raise ConfigError(why)
