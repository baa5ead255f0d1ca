"""Checkpoints: written atomically, read back with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO, Any

import torch

from ..errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Write ``state`` to ``path`` atomically: a killed process leaves the previous file intact.

    The state is written to a temporary file in the same folder, flushed to disk, then renamed over
    ``path`` (``os.replace`` is atomic on POSIX and Windows).

    Parameters
    ----------
    state : dict
        Tensors, numbers, strings, lists, dicts: what ``torch.load(weights_only=True)`` can read back.
    path : str or os.PathLike
        Destination; its folder is created if needed.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "wb", lambda f: torch.save({"format": CHECKPOINT_FORMAT} | state, f))
    return path


def atomic_write(path: pathlib.Path, mode: str, write: Callable[[IO], object]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True`` (no code is run).

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    map_location : str, torch.device or None
        Where to put the tensors, as for ``torch.load``; CPU by default, None: where they were saved.

    Returns
    -------
    dict
        The saved state, including its ``"format"`` entry.

    Raises
    ------
    CheckpointError
        If the file is missing, cannot be read or unpickled safely, or is not a dict of this format version.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train without resume first, or point to the run's folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        raise CheckpointError(f"{path} is not a readable deqkit checkpoint ({type(exc).__name__}: {exc}); "
                              "delete it and train again without resume") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} has checkpoint format {found!r}, this deqkit reads format "
                              f"{CHECKPOINT_FORMAT}; it was written by another version")
    return state
