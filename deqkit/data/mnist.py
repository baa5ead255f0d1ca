"""MNIST from the four standard IDX files: our own reader, an MD5-checked download, a local folder.

The files are looked for in one folder (see :func:`mnist_dir`). A missing file is downloaded from public
mirrors into a temporary file in that folder, and renamed into place only once its MD5 matches. Every file
is MD5-checked before use, also one that was already there.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import numbers
import os
import pathlib
import secrets
import urllib.request
import zlib

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..errors import MNISTError

__all__ = [
    "MNISTError",
    "MNIST_MEAN",
    "MNIST_STD",
    "load_mnist",
    "mnist_datasets",
    "mnist_dir",
    "mnist_unavailable",
    "read_idx",
]

ENV_VAR = "DEQKIT_MNIST_DIR"
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
#: file name -> (size in bytes, MD5) of the original files.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (28_881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (1_648_877, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (4_542, "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_MAGICS = {0x00000801: 1, 0x00000803: 3}  # unsigned-byte IDX: labels (1 dimension), images (3)
_FIX = f"set {ENV_VAR} (or pass root=) to a folder that holds the original files"


def mnist_dir(root: str | os.PathLike | None = None) -> pathlib.Path:
    """Return the folder that holds (or will hold) the MNIST files.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder to use. If ``None``: the environment variable ``DEQKIT_MNIST_DIR`` if set and non-empty,
        else ``$XDG_CACHE_HOME/deqkit/mnist``, with ``~/.cache`` in place of ``$XDG_CACHE_HOME`` when that
        is unset or not an absolute path.

    Returns
    -------
    pathlib.Path
        The folder, with ``~`` expanded; it is not created here.
    """
    if root is not None:
        return pathlib.Path(root).expanduser()
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(cache) if os.path.isabs(cache) else pathlib.Path.home() / ".cache"
    return base / "deqkit" / "mnist"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (MNIST images or labels), gzip-compressed if named ``*.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Its header is a big-endian magic number (``0x00000803`` for images, ``0x00000801``
        for labels; the last byte is the number of dimensions), then one big-endian uint32 per dimension.

    Returns
    -------
    numpy.ndarray
        A writable uint8 array of the header's shape, e.g. ``(N, 28, 28)`` or ``(N,)``.

    Raises
    ------
    MNISTError
        If the file is not valid gzip or is truncated, has a wrong magic number, or its payload does not
        hold exactly the number of bytes that the header's dimensions call for.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise MNISTError(f"{path} does not exist: check the folder, or let load_mnist download the files.") from exc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise MNISTError(
            f"{path} is not a complete gzip file ({type(exc).__name__}: {exc}); it is probably "
            "truncated or corrupt: delete it and download it again."
        ) from exc
    except IsADirectoryError as exc:
        raise MNISTError(f"{path} is a directory, not an IDX file: pass the file's path.") from exc
    except OSError as exc:
        raise MNISTError(
            f"cannot read {path} ({type(exc).__name__}: {exc}): make it readable (e.g. chmod a+r {path}), or {_FIX}."
        ) from exc
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic not in _MAGICS:
        found = "missing (file shorter than 4 bytes)" if magic is None else f"0x{magic:08x}"
        raise MNISTError(
            f"{path} is not an MNIST IDX file: its magic number is {found}, expected 0x00000803 "
            "(images) or 0x00000801 (labels)."
        )
    header = 4 + 4 * _MAGICS[magic]
    if len(data) < header:
        raise MNISTError(f"{path}: the IDX header is cut short ({len(data)} bytes); the file is truncated.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=_MAGICS[magic], offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise MNISTError(
            f"{path}: the header announces dimensions {dims}, i.e. {expected} bytes of data, but the file "
            f"holds {len(data) - header}; it is truncated or corrupt."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _md5(path: pathlib.Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name: str, folder: pathlib.Path) -> None:
    """Fetch ``name`` from the first mirror that serves the right MD5, renaming it into ``folder``."""
    size, md5 = MNIST_FILES[name]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MNISTError(f"Cannot create the MNIST folder {folder} ({exc}); {_FIX}.") from exc
    errors = []
    for mirror in MIRRORS:
        url = mirror + name
        tmp = folder / f".{name}.{secrets.token_hex(4)}.part"
        try:  # os.open applies the umask to 0o666 (tempfile.mkstemp would force 0o600 on the cached file)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise MNISTError(
                f"Cannot write into the MNIST folder {folder} to download {name} ({type(exc).__name__}: {exc}). "
                f"Make the folder writable, or set {ENV_VAR} (or pass root=, --data) to a writable folder or to "
                "one that already holds the four files."
            ) from exc
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                total = int(response.headers.get("Content-Length") or size)
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            if digest.hexdigest() == md5:
                os.replace(tmp, folder / name)
                return
            errors.append(f"{url}: the downloaded file has MD5 {digest.hexdigest()}, expected {md5}")
        except (OSError, http.client.HTTPException) as exc:  # urllib.error.URLError is an OSError
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    tried = "\n".join(f"  - {e}" for e in errors)
    raise MNISTError(
        f"Could not download {name} from any mirror:\n{tried}\n"
        f"Without internet access, fetch the four files {', '.join(MNIST_FILES)} on another machine "
        f"(e.g. from {MIRRORS[0]}) and place them in {folder}, or {_FIX}."
    )


def _ensure(folder: pathlib.Path, name: str, download: bool, verify: bool) -> pathlib.Path:
    path = folder / name
    if path.exists() and not path.is_file():
        raise MNISTError(
            f"{path} is a directory (or another non-file), not the MNIST file {name}: remove or rename it so that "
            f"the file can take its place, or {_FIX}."
        )
    if not path.is_file():
        if not download:
            raise MNISTError(
                f"{name} is missing from the MNIST folder {folder}, and download=False. The folder must "
                f"hold the four files {', '.join(MNIST_FILES)}. Call with download=True, place the files "
                f"there, or {_FIX}."
            )
        _download(name, folder)
    elif verify:
        try:
            actual, expected = _md5(path), MNIST_FILES[name][1]
        except OSError as exc:  # e.g. no read permission: name the file and the fix, not a raw PermissionError
            raise MNISTError(
                f"cannot read {path} ({type(exc).__name__}: {exc.strerror or exc}): make it readable "
                f"(e.g. chmod a+r {path}), or {_FIX}."
            ) from exc
        if actual != expected:
            raise MNISTError(
                f"{path} has MD5 {actual}, expected {expected} for {name}: the file is corrupt or not "
                f"the original. Delete it so that load_mnist(download=True) downloads it again, or {_FIX}."
            )
    return path


def load_mnist(
    root: str | os.PathLike | None = None, *, train: bool = True, download: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the MNIST training or test split as raw tensors.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder of the four ``.gz`` files; ``None`` resolves it as :func:`mnist_dir` does.
    train : bool, default True
        The 60,000 training samples if True, else the 10,000 test samples.
    download : bool, default True
        Download a missing file from :data:`MIRRORS` (MD5-checked, then renamed into place atomically).
    verify : bool, default True
        Check the MD5 of files already in the folder. Only tests on small synthetic files turn this
        off; downloads are always checked.

    Returns
    -------
    images : torch.Tensor
        uint8, shape ``(N, 28, 28)``, grey levels 0-255.
    labels : torch.Tensor
        int64, shape ``(N,)``, digits 0-9.

    Raises
    ------
    MNISTError
        If a file is missing (with ``download=False``), cannot be downloaded, fails its MD5 check, or is
        malformed.
    """
    folder = mnist_dir(root)
    prefix = "train" if train else "t10k"
    image_path = _ensure(folder, f"{prefix}-images-idx3-ubyte.gz", download, verify)
    label_path = _ensure(folder, f"{prefix}-labels-idx1-ubyte.gz", download, verify)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise MNISTError(
            f"{image_path} and {label_path} do not form an MNIST split: shapes {images.shape} and "
            f"{labels.shape}, expected (N, 28, 28) and (N,)."
        )
    if labels.size and labels.max() > 9:
        raise MNISTError(f"{label_path} holds label {labels.max()}; MNIST labels are 0-9.")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def mnist_datasets(
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    subset: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> tuple[TensorDataset, TensorDataset]:
    """Training and test sets as normalised float tensors, ready for a ``DataLoader``.

    Parameters
    ----------
    root, download, verify
        As for :func:`load_mnist`.
    subset : int, optional
        If given, keep ``subset`` training samples and ``min(max(subset // 6, 1000), 10000)`` test
        samples (each count capped at the size of its split), drawn without replacement by one
        ``torch.Generator`` seeded with ``seed`` (training indices first, then test indices) and kept in
        their original order. The same files, ``subset`` and ``seed`` always give the same samples.
    seed : int, default 0
        Seed of that draw; unused when ``subset`` is None.

    Returns
    -------
    train, test : torch.utils.data.TensorDataset
        Each holds ``(images, labels)``: float32 images of shape ``(N, 1, 28, 28)``, computed as
        ``(x / 255 - 0.1307) / 0.3081``, and int64 labels of shape ``(N,)``.

    Raises
    ------
    TypeError
        If ``subset`` is not an integer (``True`` and ``2.5`` included).
    ValueError
        If ``subset`` is less than 1.
    MNISTError
        As for :func:`load_mnist`.
    """
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, numbers.Integral)):
        # True would be 1 sample and 2.5 a slice error deep in torch: a count is an integer
        raise TypeError(
            f"subset must be a positive integer (a number of training samples) or None, got "
            f"{subset!r} ({type(subset).__name__})"
        )
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of training samples or None, got {subset}")
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for train in (True, False):
        images, labels = load_mnist(root, train=train, download=download, verify=verify)
        if subset is not None:
            n = subset if train else min(max(subset // 6, 1000), 10_000)
            keep = torch.randperm(len(labels), generator=generator)[: min(n, len(labels))].sort().values
            images, labels = images[keep], labels[keep]
        x = (images.unsqueeze(1).float() / 255.0 - MNIST_MEAN) / MNIST_STD
        sets.append(TensorDataset(x, labels))
    return sets[0], sets[1]


def mnist_unavailable() -> str | None:
    """Why MNIST cannot be loaded here (found or downloaded as the notebooks would), in one line; None if it can.

    Used by the test suite and the site build to skip what needs MNIST with the reason.
    """
    try:
        for train in (True, False):
            load_mnist(train=train)
    except MNISTError as err:  # the first line, and the first mirror's answer when it is a download error
        return " ".join(line.strip(" -") for line in str(err).splitlines()[:2])
    return None
