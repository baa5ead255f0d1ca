"""Checkpoints: written atomically with a SHA-256 of their content, read back with ``weights_only=True``.

Every file of a run folder (checkpoint, metrics) is written the same way: into a new file beside its
destination, flushed to disk, then renamed over it, so that a killed process or a full disk leaves the previous
file intact. New files get the usual mode (``0o666`` less the umask), as ``open()`` would give them.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
import shutil
from collections.abc import Callable
from typing import IO, Any

import torch

from ..errors import CheckpointError, RunFolderError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "RunFolderError",
    "check_writable",
    "checksum",
    "load_checkpoint",
    "save_checkpoint",
]

#: Version of the checkpoint layout; 2 added the ``sha256`` entry.
CHECKPOINT_FORMAT = 2


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content: every key, number, string and tensor (dtype, shape and bytes).

    The same content gives the same digest however it was stored (CPU or GPU, contiguous or not), so the digest
    computed before saving can be compared with one computed after loading.

    Parameters
    ----------
    state : dict
        Tensors, numbers, strings, None, and lists, tuples and dicts of them.

    Returns
    -------
    str
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {t.dtype} {tuple(obj.shape)}:".encode())
        digest.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)}:".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"list {len(obj)}:".encode())
        for value in obj:
            _feed(digest, value)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        digest.update(f"{type(obj).__name__} {obj!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors, numbers, strings and containers of them, not {type(obj)}")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Write ``state`` to ``path`` atomically, with its format version and SHA-256 (see :func:`checksum`).

    The state is written to a temporary file in the same folder, flushed to disk, then renamed over
    ``path`` (``os.replace`` is atomic on POSIX and Windows): a killed process leaves the previous file intact.

    Parameters
    ----------
    state : dict
        Tensors, numbers, strings, lists, dicts: what ``torch.load(weights_only=True)`` can read back. Its
        ``"format"`` and ``"sha256"`` entries, if any (e.g. from :func:`load_checkpoint`), are replaced.
    path : str or os.PathLike
        Destination; its folder is created if needed.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    RunFolderError
        If the file cannot be written (the folder is not writable, the disk is full, ...); the message names the
        folder and the free space on its disk.
    """
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(_unwritable(path.parent, exc)) from exc
    payload = {"format": CHECKPOINT_FORMAT} | {k: v for k, v in state.items() if k not in ("format", "sha256")}
    payload["sha256"] = checksum(payload)
    atomic_write(path, "wb", lambda f: torch.save(payload, f))
    return path


def atomic_write(path: pathlib.Path, mode: str, write: Callable[[IO], object]) -> None:
    """Call ``write(f)`` on a new file beside ``path``, flush it to disk, then rename it over ``path``.

    Raises
    ------
    RunFolderError
        If writing fails with an ``OSError`` or torch's ``RuntimeError`` (a full disk, a lost mount, ...);
        ``path`` is then untouched and the temporary file removed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open applies the umask to 0o666 (tempfile.mkstemp would force 0o600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, mode, newline=None if "b" in mode else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError("[enforce fail at ...")
        raise RunFolderError(_write_failed(path, exc)) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_failed(path: pathlib.Path, exc: BaseException) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return (
        f"could not write {path} ({type(exc).__name__}: {exc}); the disk that holds {path.parent} has {free}. "
        f"The previous {path.name}, if any, is intact: free some space, or choose another run folder (--out)."
    )


def _unwritable(folder: pathlib.Path, exc: OSError) -> str:
    blocker = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        why = f"{blocker} is a file, not a folder"
    else:
        why = f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"cannot write the run folder {folder} ({why}); choose another run folder (--out, or out=)"


def check_writable(folder: str | os.PathLike) -> pathlib.Path:
    """Create ``folder`` if needed and check that a file can be created in it (the probe is removed).

    Called before training, so that a run folder that cannot be written fails at once, not after an epoch.

    Parameters
    ----------
    folder : str or os.PathLike

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    RunFolderError
        If the folder cannot be created (e.g. it lies under a regular file) or a file cannot be created in it
        (e.g. read-only); the message says which.
    """
    folder = pathlib.Path(folder)
    probe = folder / f".deqkit-write-test.{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.remove(probe)
    except OSError as exc:
        raise RunFolderError(_unwritable(folder, exc)) from exc
    return folder


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
        The saved state, including its ``"format"`` entry (its ``"sha256"`` is checked and removed).

    Raises
    ------
    CheckpointError
        If the file is missing, cannot be read or unpickled safely, is not a dict of this format version, or
        its content does not match the SHA-256 stored with it (damaged, or edited after it was written).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train without resume first, or point to the run's folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        raise CheckpointError(
            f"{path} is not a readable deqkit checkpoint ({type(exc).__name__}: {exc}); "
            "delete it and train again without resume"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} has checkpoint format {found!r}, this deqkit reads format "
            f"{CHECKPOINT_FORMAT}; it was written by another version"
        )
    stored = state.pop("sha256", None)
    if stored != checksum(state):
        raise CheckpointError(
            f"{path} fails its checksum (SHA-256 of its content): the file was damaged (disk, "
            "copy) or edited after it was written. Resuming from it would continue from wrong "
            "numbers: restore an intact copy, or start a new run in another folder."
        )
    return state
