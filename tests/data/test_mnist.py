"""Tests of deqkit.data: the IDX reader, folder resolution, MD5 checks, download and error messages.

None of them uses the network: mirrors point at a closed local port or ``urlopen`` is replaced. The one test
on the real files runs only when ``DEQKIT_MNIST_DIR`` names a folder that holds them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pathlib
import stat
import urllib.error

import numpy as np
import pytest
import torch

from deqkit.data import MNIST_MEAN, MNIST_STD, MNISTError, load_mnist, mnist_datasets, mnist_dir, read_idx
from deqkit.data import mnist as mnist_module

NAMES = list(mnist_module.MNIST_FILES)
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = NAMES
CLOSED_PORT = "http://127.0.0.1:9/"


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Uncompressed IDX bytes of a uint8 array (magic 0x0000080N, N = number of dimensions)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x800 | array.ndim if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.tobytes()


def make_split(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random 28x28 images whose pixel (0, 0) is their index + offset, so that samples can be told apart."""
    images = np.random.default_rng(n + offset).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) + offset
    return images, (np.arange(n) + offset) % 10


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download that a test did not plan for hits a closed local port instead of the internet."""
    monkeypatch.setattr(mnist_module, "MIRRORS", [CLOSED_PORT])


@pytest.fixture
def synthetic(tmp_path) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """A folder with the four file names holding small synthetic splits (5 training, 3 test samples)."""
    (train_x, train_y), (test_x, test_y) = make_split(5), make_split(3, offset=100)
    arrays = {TRAIN_IMAGES: train_x, TRAIN_LABELS: train_y, TEST_IMAGES: test_x, TEST_LABELS: test_y}
    for name, array in arrays.items():
        (tmp_path / name).write_bytes(gzip.compress(idx_bytes(array)))
    return tmp_path, arrays


def md5_table(folder: pathlib.Path) -> dict[str, tuple[int, str]]:
    """The MD5 table of the files in ``folder``, to inject in place of the real one."""
    return {n: (len(data), hashlib.md5(data).hexdigest()) for n in NAMES for data in [(folder / n).read_bytes()]}


# ---------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images, labels = make_split(5)
    for name, array in [("images.idx", images), ("labels.idx", labels)]:
        raw = idx_bytes(array)
        path = tmp_path / (name + ".gz" if compress else name)
        path.write_bytes(gzip.compress(raw) if compress else raw)
        out = read_idx(path)
        assert out.dtype == np.uint8 and out.shape == array.shape and out.flags.writeable
        np.testing.assert_array_equal(out, array)
    assert read_idx(str(path)).shape == (5,)  # accepts str as well as Path


def test_load_mnist_on_synthetic_files(synthetic):
    folder, arrays = synthetic
    for train, x_name, y_name in [(True, TRAIN_IMAGES, TRAIN_LABELS), (False, TEST_IMAGES, TEST_LABELS)]:
        images, labels = load_mnist(folder, train=train, download=False, verify=False)
        assert images.dtype == torch.uint8 and images.shape == (len(arrays[x_name]), 28, 28)
        assert labels.dtype == torch.int64 and labels.shape == (len(arrays[y_name]),)
        np.testing.assert_array_equal(images.numpy(), arrays[x_name])
        np.testing.assert_array_equal(labels.numpy(), arrays[y_name])


def test_mnist_datasets_normalisation_and_subset(synthetic):
    folder, arrays = synthetic
    train, test = mnist_datasets(folder, download=False, verify=False)
    assert isinstance(train, torch.utils.data.TensorDataset) and len(train) == 5 and len(test) == 3
    x, y = train.tensors
    assert x.dtype == torch.float32 and x.shape == (5, 1, 28, 28) and y.dtype == torch.int64
    expected = (arrays[TRAIN_IMAGES].astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)

    def picked(seed):
        train, test = mnist_datasets(folder, download=False, verify=False, subset=3, seed=seed)
        return train.tensors[1].tolist(), test.tensors[1].tolist()

    sub_train, sub_test = picked(0)
    assert len(sub_train) == 3 and sub_train == sorted(sub_train) and set(sub_train) <= set(range(5))
    assert sub_test == [100 % 10, 101 % 10, 102 % 10]  # max(3 // 6, 1000) test samples, capped at all 3
    assert picked(0) == (sub_train, sub_test)  # deterministic
    assert any(picked(seed)[0] != sub_train for seed in range(1, 10))  # and depends on the seed
    with pytest.raises(ValueError, match="subset"):
        mnist_datasets(folder, download=False, verify=False, subset=0)


# ---------------------------------------------------------------------------------------- folder resolution


def test_mnist_dir_resolution_order(tmp_path, monkeypatch):
    home, xdg, env, arg = (tmp_path / d for d in ("home", "xdg", "env", "arg"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("DEQKIT_MNIST_DIR", raising=False)
    assert mnist_dir() == home / ".cache" / "deqkit" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the XDG spec says
    assert mnist_dir() == home / ".cache" / "deqkit" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert mnist_dir() == xdg / "deqkit" / "mnist"
    monkeypatch.setenv("DEQKIT_MNIST_DIR", "")  # empty: treated as unset
    assert mnist_dir() == xdg / "deqkit" / "mnist"
    monkeypatch.setenv("DEQKIT_MNIST_DIR", str(env))
    assert mnist_dir() == env
    assert mnist_dir(arg) == arg and mnist_dir(str(arg)) == arg
    assert mnist_dir("~/mnist") == home / "mnist"


def test_load_mnist_uses_env_var(synthetic, monkeypatch):
    folder, arrays = synthetic
    monkeypatch.setenv("DEQKIT_MNIST_DIR", str(folder))
    images, _ = load_mnist(train=False, download=False, verify=False)
    np.testing.assert_array_equal(images.numpy(), arrays[TEST_IMAGES])


# ------------------------------------------------------------------------------------------- error cases


def test_md5_mismatch_names_file_and_fix(synthetic, monkeypatch):
    folder, _ = synthetic
    actual = hashlib.md5((folder / TRAIN_IMAGES).read_bytes()).hexdigest()
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    for download in (False, True):  # a present but wrong file is never replaced behind the user's back
        with pytest.raises(MNISTError) as info:
            load_mnist(folder, download=download)
        message = str(info.value)
        assert TRAIN_IMAGES in message and str(folder) in message
        assert actual in message and mnist_module.MNIST_FILES[TRAIN_IMAGES][1] in message
        assert "Delete" in message and "download" in message and "DEQKIT_MNIST_DIR" in message
    # with the right MD5 table the same files are accepted
    monkeypatch.setattr(mnist_module, "MNIST_FILES", md5_table(folder))
    assert load_mnist(folder, download=False)[0].shape == (5, 28, 28)


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_broken_gzip(tmp_path, damage):
    packed = gzip.compress(idx_bytes(make_split(5)[0]))
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(packed[: len(packed) // 2] if damage == "truncated" else b"not a gzip file at all")
    with pytest.raises(MNISTError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "delete it" in str(info.value)
    assert isinstance(info.value.__cause__, EOFError if damage == "truncated" else gzip.BadGzipFile)


@pytest.mark.parametrize("magic", [0x00000804, 0x00000C03, 0x08030000])
def test_wrong_magic_number(tmp_path, magic):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(make_split(2)[0], magic=magic)))
    with pytest.raises(MNISTError, match=f"0x{magic:08x}") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "0x00000803" in str(info.value)
    path.write_bytes(gzip.compress(b"\x00\x00"))
    with pytest.raises(MNISTError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("change", [-1, +1, "header"])
def test_payload_size_must_match_header(tmp_path, change):
    raw = idx_bytes(make_split(5)[0])
    raw = raw[:10] if change == "header" else raw[:-1] if change == -1 else raw + b"\x00"
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(MNISTError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    if change != "header":
        assert "(5, 28, 28)" in str(info.value) and str(5 * 28 * 28 + change) in str(info.value)


def test_load_mnist_rejects_files_of_the_wrong_kind(synthetic):
    folder, _ = synthetic
    (folder / TRAIN_IMAGES).write_bytes((folder / TRAIN_LABELS).read_bytes())
    with pytest.raises(MNISTError, match=r"expected \(N, 28, 28\) and \(N,\)"):
        load_mnist(folder, download=False, verify=False)
    (folder / TEST_LABELS).write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 12]))))
    with pytest.raises(MNISTError, match="label 12"):
        load_mnist(folder, train=False, download=False, verify=False)


def test_missing_files_without_download(tmp_path):
    folder = tmp_path / "empty"
    with pytest.raises(MNISTError) as info:
        load_mnist(folder, download=False)
    message = str(info.value)
    assert str(folder) in message and "DEQKIT_MNIST_DIR" in message and "download=True" in message
    assert all(name in message for name in NAMES)
    assert not folder.exists()  # nothing created when nothing is downloaded


def test_offline_closed_port(tmp_path):
    folder = tmp_path / "cache"
    with pytest.raises(MNISTError) as info:
        load_mnist(folder)
    message = str(info.value)
    assert CLOSED_PORT + TRAIN_IMAGES in message and "URLError" in message
    assert "place them in" in message and str(folder) in message and "DEQKIT_MNIST_DIR" in message
    assert list(folder.iterdir()) == []  # no partial file left behind


def test_offline_all_mirrors_fail(tmp_path, monkeypatch):
    mirrors = ["https://first.invalid/mnist/", "https://second.invalid/mnist/"]
    monkeypatch.setattr(mnist_module, "MIRRORS", mirrors)

    def urlopen(url, timeout=None):
        raise urllib.error.URLError(f"no route to {url.split('/')[2]}")

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    with pytest.raises(MNISTError) as info:
        load_mnist(tmp_path, train=False)
    message = str(info.value)
    assert all(m + TEST_IMAGES in message for m in mirrors)
    assert "no route to first.invalid" in message and "no route to second.invalid" in message
    assert all(name in message for name in NAMES) and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- download


class FakeResponse(io.BytesIO):
    """What urlopen returns, reduced to what the downloader uses; checks that the target is not yet there."""

    def __init__(self, payload: bytes, target: pathlib.Path, fail_after: int | None = None):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}
        self.target, self.fail_after = target, fail_after

    def read(self, size=-1):
        assert not self.target.exists(), "the file must appear only after its MD5 was checked"
        assert any(self.target.parent.glob(f".{self.target.name}.*.part")), "writes go to a temporary file"
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise http.client.IncompleteRead(b"")
        return super().read(min(size, 16))  # several chunks, so that the progress bar moves


def test_download_success(synthetic, tmp_path, monkeypatch):
    source, arrays = synthetic
    folder = tmp_path / "new" / "cache"
    monkeypatch.setattr(mnist_module, "MNIST_FILES", md5_table(source))
    mirrors = ["https://down.invalid/", "https://bad.invalid/", "https://ok.invalid/"]
    monkeypatch.setattr(mnist_module, "MIRRORS", mirrors)
    calls, bars = [], []

    def urlopen(url, timeout=None):
        calls.append(url)
        host, name = url.split("/")[2], url.rsplit("/", 1)[1]
        if host == "down.invalid":
            raise urllib.error.URLError("offline")
        payload = (source / name).read_bytes()
        if host == "bad.invalid":  # a wrong file, then one cut off mid-stream: both must be discarded
            fail_after = None if "images" in name else len(payload) // 2
            return FakeResponse(b"x" + payload[1:], folder / name, fail_after)
        return FakeResponse(payload, folder / name)

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n = kwargs, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    monkeypatch.setattr(mnist_module, "tqdm", Bar)
    old_umask = os.umask(0o022)
    try:
        train, test = mnist_datasets(folder)  # downloads all four files
    finally:
        os.umask(old_umask)
    assert len(train) == 5 and len(test) == 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)  # no temporary file left
    assert {stat.S_IMODE((folder / n).stat().st_mode) for n in NAMES} == {0o644}  # the umask's, not 0o600
    for name in NAMES:
        assert (folder / name).read_bytes() == (source / name).read_bytes()
    assert len(calls) == 12  # every file: down, bad, ok
    assert [b.kwargs["desc"] for b in bars] == [n for n in NAMES for _ in range(2)]  # bad, ok; down: no bar
    assert all(b.kwargs["total"] == (source / b.kwargs["desc"]).stat().st_size for b in bars)
    assert all(b.n == b.kwargs["total"] for b in bars[1::2])  # the good downloads ran to the end
    assert all(b.n < b.kwargs["total"] for b in bars[2::4])  # the label downloads cut off mid-stream
    calls.clear()
    images, _ = load_mnist(folder, download=True)  # present and verified: nothing downloaded again
    assert calls == [] and images.shape == (5, 28, 28)
    np.testing.assert_array_equal(images.numpy(), arrays[TRAIN_IMAGES])


# ----------------------------------------------------------------------------------------- the real files


def test_real_mnist_files(monkeypatch):
    folder = os.environ.get("DEQKIT_MNIST_DIR")
    if not folder or not all((pathlib.Path(folder) / name).is_file() for name in NAMES):
        pytest.skip("set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files to run this test")
    folder = pathlib.Path(folder)
    for name, (size, md5) in mnist_module.MNIST_FILES.items():
        assert (folder / name).stat().st_size == size and mnist_module._md5(folder / name) == md5
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    for train, n, first_label in [(True, 60000, 5), (False, 10000, 7)]:
        images, labels = load_mnist(train=train)  # folder from the env var, MD5-checked
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert labels.min() == 0 and labels.max() == 9 and len(labels.unique()) == 10
        assert labels[0] == first_label and int(images.max()) == 255
    train, test = mnist_datasets(subset=600)
    assert len(train) == 600 and len(test) == 1000
    x = train.tensors[0]
    assert x.shape == (600, 1, 28, 28) and abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_read_idx_names_a_missing_file(tmp_path):
    with pytest.raises(MNISTError, match="does not exist"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")
