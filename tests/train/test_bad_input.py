"""Bad input and faults around training, one row each: what was done, what must happen, what the message says.

Read the table :data:`CASES` from top to bottom: each row is ``(id, act, expected, fragment)``. ``act`` sets the
fault up and calls deqkit; ``expected`` is the exception it must raise, or the command line's exit status
(1: the run cannot go on, 2: a usage error); ``fragment`` must appear in the exception's message or on stderr.
The command-line rows replace the MNIST loader by one that fails the test: every usage error must be found
before the data are loaded (and before any training).

Faults are made for real where a test can (bytes flipped in a checkpoint, fields edited, a folder where a file
should be, a path under a regular file) and simulated where it cannot: a full disk by a ``torch.save`` or an
``fsync`` that fails as they do then, a read-only folder by an ``os.open`` that answers ``EACCES`` (the tests
may run as root, whom no permission stops). The real read-only cases follow the table, skipped as root.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from deqkit import DEQ, ConvergenceWarning
from deqkit.data import MNISTError, load_mnist, mnist_datasets
from deqkit.data import mnist as mnist_module
from deqkit.errors import CheckpointError, RunFolderError
from deqkit.train import RunOptions, TrainConfig, load_checkpoint, load_model, save_checkpoint, train
from deqkit.train import __main__ as cli

from .tiny import run

CLOSED_PORT = "http://127.0.0.1:9/"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run folder (2 epochs of 3 steps, checkpoints every 2 steps); each case works on a copy."""
    folder = tmp_path_factory.mktemp("finished")
    run(data, folder, checkpoint_every=2)
    return folder


@dataclass
class Bench:
    """What a case's ``act`` works with."""

    tmp: pathlib.Path
    monkeypatch: pytest.MonkeyPatch
    data: Any
    finished: pathlib.Path

    def copy(self) -> pathlib.Path:
        """A fresh copy of the finished run folder."""
        return pathlib.Path(shutil.copytree(self.finished, self.tmp / "run"))

    def edited(self, change: Callable[[dict], None], *, checksum: str = "updated") -> pathlib.Path:
        """A copy whose checkpoint went through ``change``: re-saved by deqkit (a valid checksum) when
        ``checksum="updated"``, or loaded and saved with plain torch (the stored checksum now stale)."""
        folder = self.copy()
        path = folder / "checkpoint.pt"
        if checksum == "updated":
            state = load_checkpoint(path)
            change(state)
            save_checkpoint(state, path)
        else:
            state = torch.load(path, weights_only=True)
            change(state)
            torch.save(state, path)
        return folder

    def resume(self, folder: pathlib.Path, **config: Any) -> Any:
        settings = dict(model="seed", epochs=2, batch_size=32, lr=3e-3, seed=0) | config
        return run(self.data, folder, config=TrainConfig(**settings), checkpoint_every=2, start="resume")

    def cli(self, *args: str) -> int:
        """Run the command line with a loader that fails the test if the data are loaded."""

        def no_data(*_, **__):
            raise AssertionError("the CLI loaded the data before finding the error")

        self.monkeypatch.setattr(cli, "mnist_datasets", no_data)
        return self.cli_with_data(*args)

    def cli_with_data(self, *args: str) -> int:
        """Run the command line, data loading included (the run folder in tmp unless ``--out`` is given)."""
        out = [] if "--out" in args else ["--out", str(self.tmp / "out")]
        return cli.main(["mnist", "--no-progress", *out, *args])

    def read_only(self, folder: pathlib.Path) -> pathlib.Path:
        """Make creating anything inside ``folder`` fail with EACCES, as a read-only folder does."""
        folder.mkdir(parents=True, exist_ok=True)
        real_open, real_mkdir = os.open, os.mkdir

        def inside(path) -> bool:
            return pathlib.Path(os.fsdecode(path)).absolute().is_relative_to(folder.absolute())

        def guarded_open(path, flags, *args, **kwargs):
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return real_open(path, flags, *args, **kwargs)

        def guarded_mkdir(path, *args, **kwargs):
            if inside(path) and pathlib.Path(os.fsdecode(path)).absolute() != folder.absolute():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return real_mkdir(path, *args, **kwargs)

        self.monkeypatch.setattr(os, "open", guarded_open)
        self.monkeypatch.setattr(os, "mkdir", guarded_mkdir)
        return folder

    def full_disk_on_save(self) -> None:
        """``torch.save`` fails as it does on a full disk (torch 2.x's zip writer)."""

        def full(obj, f, *args, **kwargs):
            f.write(b"PK\x03\x04 part of a zip")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 1980")

        self.monkeypatch.setattr(torch, "save", full)

    def full_disk_on_fsync(self) -> None:
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.monkeypatch.setattr(os, "fsync", full)


def _set(*keys: Any, value: Any) -> Callable[[dict], None]:
    """An edit that sets ``state[k1][k2]... = value``."""

    def change(state: dict) -> None:
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _flipped(b: Bench) -> pathlib.Path:
    """A copy of the run whose checkpoint.pt has 64 bytes of a weight tensor flipped, as a failing disk or a
    bad copy would."""
    folder = b.copy()
    path = folder / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    weight = load_checkpoint(path)["model"]["encoder.1.weight"]  # the largest tensor of the seed model
    at = raw.find(weight.numpy().tobytes()[:256])
    assert at > 0, "the weight bytes were not found in the file"
    raw[at + 64 : at + 128] = bytes(x ^ 0xFF for x in raw[at + 64 : at + 128])
    path.write_bytes(bytes(raw))
    return folder


def _nan_weight(state: dict) -> None:
    state["model"]["encoder.1.weight"][0, 0] = float("nan")


def _negative_adam(state: dict) -> None:
    state["optimizer"]["state"][0]["exp_avg_sq"].view(-1)[0] = -1.0


def _drop(key: str) -> Callable[[dict], None]:
    return lambda state: state.pop(key)


def _mid_epoch_without_tally(state: dict) -> None:
    state.update(epoch=1, step=2, metrics=state["metrics"][:1], tally=None)


def _metrics_json_edited(b: Bench) -> Any:
    folder = b.copy()
    doc = json.loads((folder / "metrics.json").read_text())
    doc["epochs"][0]["test_acc"] = 99.9
    (folder / "metrics.json").write_text(json.dumps(doc))
    return b.resume(folder)


def _metrics_csv_edited(b: Bench) -> Any:
    """Issue 22, cause 7: only the epoch column of metrics.csv used to be compared."""
    folder = b.copy()
    lines = (folder / "metrics.csv").read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[4] = "99.9"  # test_acc of epoch 1
    lines[1] = ",".join(fields)
    (folder / "metrics.csv").write_text("".join(lines))
    return b.resume(folder)


def _without_checkpoint(b: Bench) -> pathlib.Path:
    """A copy of the finished run whose checkpoint.pt is gone: its metrics files and TensorBoard folder stay."""
    folder = b.copy()
    (folder / "checkpoint.pt").unlink()
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.out.tfevents.1.other").write_bytes(b"another run's log")
    return folder


def _label_out_of_range(b: Bench) -> Any:
    train_set, test_set = b.data
    labels = train_set.tensors[1].clone()
    labels[5] = 12
    return run((torch.utils.data.TensorDataset(train_set.tensors[0], labels), test_set))


def _tensorboard_disk_full(b: Bench) -> Any:
    """The event file's writes fail as on a full disk (the writer thread's OSError surfaces at the next call)."""
    from torch.utils.tensorboard import SummaryWriter

    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    b.monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    return run(b.data, b.tmp / "board", tensorboard=True)


def _tensorboard_disk_full_at_start(b: Bench) -> Any:
    """The disk is full before the run starts: SummaryWriter's first flush, when it creates the event file, fails."""
    from tensorboard.summary.writer import record_writer

    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    b.monkeypatch.setattr(record_writer.RecordWriter, "flush", full)
    try:
        return run(b.data, b.tmp / "board", tensorboard=True)
    finally:  # else the next fresh run would refuse the partial file as an earlier run's log
        assert not list((b.tmp / "board").glob("tensorboard/events.out.tfevents.*")), "the partial event file stayed"


def _fresh_tensorboard_run(b: Bench) -> Any:
    """Issue 22, cause 3: a fresh --tensorboard run deleted another run's event files."""
    folder = b.tmp / "board"
    (folder / "tensorboard").mkdir(parents=True)
    (folder / "tensorboard" / "events.out.tfevents.1.other").write_bytes(b"another run's log")
    try:
        return run(b.data, folder, tensorboard=True)
    finally:
        assert (folder / "tensorboard" / "events.out.tfevents.1.other").exists(), "another run's log was deleted"


def _checkpoint_folder(b: Bench) -> pathlib.Path:
    (b.tmp / "run" / "checkpoint.pt").mkdir(parents=True)
    return b.tmp / "run"


def _metrics_files_deleted(b: Bench) -> Any:
    folder = b.copy()
    (folder / "metrics.json").unlink()
    return b.resume(folder)


def _dir_where_a_file_should_be(b: Bench, download: bool) -> Any:
    b.monkeypatch.setattr(mnist_module, "MIRRORS", [CLOSED_PORT])
    (b.tmp / "mnist" / "train-images-idx3-ubyte.gz").mkdir(parents=True)
    return load_mnist(b.tmp / "mnist", download=download)


def _read_only_mnist_cache(b: Bench) -> Any:
    b.monkeypatch.setattr(mnist_module, "MIRRORS", [CLOSED_PORT])
    return load_mnist(b.read_only(b.tmp / "cache"))


def _read_only_mnist_cache_cli(b: Bench) -> int:
    b.monkeypatch.setattr(mnist_module, "MIRRORS", [CLOSED_PORT])
    folder = b.tmp / "cache"
    b.read_only(folder)
    return b.cli_with_data("--data", str(folder))


def _unreadable_mnist_file(b: Bench) -> Any:
    """An MNIST file that cannot be read (EACCES when opened; simulated, since the tests may run as root)."""
    folder = b.tmp / "mnist"
    folder.mkdir()
    target = folder / "train-images-idx3-ubyte.gz"
    target.write_bytes(b"unreadable")
    real_open = open

    def guarded(path, *args, **kwargs):
        if pathlib.Path(os.fsdecode(path)) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    b.monkeypatch.setattr("builtins.open", guarded)
    return load_mnist(folder, download=False)


def _regular_file(b: Bench) -> pathlib.Path:
    (b.tmp / "a-file").write_text("not a folder\n")
    return b.tmp / "a-file"


class _TwoCalls(torch.nn.Module):
    """Calls one DEQ twice per forward pass: first from a far start that its budget of 10 evaluations cannot
    bring in (0.1^9 · 1e6 > 1e-5), then from zeros, where it converges."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.head = torch.nn.Linear(784, 16), torch.nn.Linear(16, 10)
        self.deq = DEQ(lambda z, x: 0.1 * z + x, solver="picard", max_nfe=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.tanh(self.inp(x.flatten(1)))
        far = self.deq(u, z0=torch.full_like(u, 1e6))
        return self.head(0.5 * (far + self.deq(u)))


def _two_calls_per_step(b: Bench) -> Any:
    """Issue 22, cause 1: only the last call's statistics were counted, so 0 unconverged and no warning."""
    config = TrainConfig(model="seed", epochs=1, batch_size=32, lr=3e-3, seed=0)
    return train(_TwoCalls(), *b.data, config, RunOptions(progress=False))


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --device cuda is valid here")

#: (id, act, expected exception or exit status, fragment of the message)
CASES: list[tuple[str, Callable[[Bench], Any], type[BaseException] | int, str]] = [
    # --- checkpoints: damaged or edited files are refused before anything is loaded into the model
    ("ckpt: 64 bytes flipped in a weight tensor", lambda b: b.resume(_flipped(b)), CheckpointError, "checksum"),
    (
        "ckpt: epoch=99 edited (checksum stale)",
        lambda b: b.resume(b.edited(_set("epoch", value=99), checksum="stale")),
        CheckpointError,
        "checksum",
    ),
    (
        "ckpt: epoch=99 re-saved with a valid checksum",
        lambda b: b.resume(b.edited(_set("epoch", value=99))),
        CheckpointError,
        "epoch 99",
    ),
    ("ckpt: epoch=-5", lambda b: b.resume(b.edited(_set("epoch", value=-5))), CheckpointError, "epoch -5"),
    ("ckpt: step=7 of a 3-step epoch", lambda b: b.resume(b.edited(_set("step", value=7))), CheckpointError, "step 7"),
    (
        "ckpt: mid-epoch without its tallies",
        lambda b: b.resume(b.edited(_mid_epoch_without_tally)),
        CheckpointError,
        "tallies",
    ),
    ("ckpt: no 'rng' entry", lambda b: b.resume(b.edited(_drop("rng"))), CheckpointError, "'rng'"),
    (
        "ckpt: config edited to another model",
        lambda b: b.resume(b.edited(_set("config", "model", value="wide")), model="wide"),
        CheckpointError,
        "do not fit the model 'wide'",
    ),
    ("ckpt: NaN in a weight", lambda b: b.resume(b.edited(_nan_weight)), CheckpointError, "encoder.1.weight"),
    (
        "ckpt: NaN in a weight, read by load_model",
        lambda b: load_model(b.edited(_nan_weight) / "checkpoint.pt"),
        CheckpointError,
        "encoder.1.weight",
    ),
    ("ckpt: negative Adam second moment", lambda b: b.resume(b.edited(_negative_adam)), CheckpointError, "exp_avg_sq"),
    ("ckpt: metrics.json disagrees with the checkpoint", _metrics_json_edited, CheckpointError, "metrics.json"),
    ("ckpt: metrics.json deleted", _metrics_files_deleted, CheckpointError, "metrics.json"),
    (
        "ckpt: metrics.csv edited (test_acc 99.9)",
        _metrics_csv_edited,
        CheckpointError,
        "column 'test_acc': '99.9' in metrics.csv",
    ),
    # --- run folders: nothing of another run is replaced or deleted without overwrite
    (
        "folder: fresh run over metrics files without a checkpoint",
        lambda b: run(b.data, _without_checkpoint(b)),
        FileExistsError,
        "another run's files (metrics.csv, metrics.json)",
    ),
    (
        "folder: fresh --tensorboard run over another run's event files",
        _fresh_tensorboard_run,
        FileExistsError,
        "tensorboard/events.out.tfevents.1.other",
    ),
    (
        "folder: checkpoint.pt is a folder (library, resume)",
        lambda b: run(b.data, _checkpoint_folder(b), start="resume"),
        FileExistsError,
        "is not a file",
    ),
    (
        "cli: fresh run over metrics files without a checkpoint",
        lambda b: b.cli("--out", str(_without_checkpoint(b))),
        1,
        "--overwrite",
    ),
    (
        "cli: fresh --tensorboard run over another run's event files",
        lambda b: b.cli("--tensorboard", "--out", str(_without_checkpoint(b))),
        1,
        "events.out.tfevents.1.other",
    ),
    (
        "cli: checkpoint.pt is a folder, --resume",
        lambda b: b.cli("--resume", "--out", str(_checkpoint_folder(b))),
        1,
        "is not a file (a folder?)",
    ),
    (
        "cli: checkpoint.pt is a folder, fresh",
        lambda b: b.cli("--out", str(_checkpoint_folder(b))),
        1,
        "is not a file (a folder?)",
    ),
    # --- writing: the atomic write holds, and the error names the disk
    (
        "write: disk full in torch.save",
        lambda b: (b.full_disk_on_save(), save_checkpoint({"e": 1}, b.tmp / "c.pt")),
        RunFolderError,
        "MB free",
    ),
    (
        "write: disk full at fsync (metrics)",
        lambda b: (b.full_disk_on_fsync(), run(b.data, b.tmp / "r")),
        RunFolderError,
        "metrics.csv",
    ),
    (
        "write: out is read-only (library)",
        lambda b: run(b.data, b.read_only(b.tmp / "ro")),
        RunFolderError,
        "cannot write",
    ),
    # --- the command line: usage errors (2) and run-folder errors (1), all before the data are loaded
    (
        "cli: --out under a regular file",
        lambda b: b.cli("--out", str(_regular_file(b) / "run")),
        1,
        "is a file, not a folder",
    ),
    ("cli: --out read-only", lambda b: b.cli("--out", str(b.read_only(b.tmp / "ro"))), 1, "Permission denied"),
    ("cli: --resume from a damaged checkpoint", lambda b: b.cli("--resume", "--out", str(_flipped(b))), 1, "checksum"),
    ("cli: --checkpoint-every -1", lambda b: b.cli("--checkpoint-every", "-1"), 2, "--checkpoint-every"),
    pytest.param(
        "cli: --device cuda without a GPU", lambda b: b.cli("--device", "cuda"), 2, "use --device cpu", marks=NO_GPU
    ),
    ("cli: --lr -1e-3", lambda b: b.cli("--lr", "-1e-3"), 2, "lr must be a positive number, got -0.001"),
    ("cli: --weight-decay -1", lambda b: b.cli("--weight-decay", "-1"), 2, "weight_decay must be a finite non-neg"),
    ("cli: --weight-decay inf", lambda b: b.cli("--weight-decay", "inf"), 2, "weight_decay must be a finite non-neg"),
    ("cli: --deq with an unknown key", lambda b: b.cli("--deq", "bogus=1"), 2, "unknown option(s) 'bogus'"),
    ("cli: --deq max_steps=0", lambda b: b.cli("--deq", "max_steps=0"), 2, "max_steps"),
    ("cli: --deq seed=3", lambda b: b.cli("--deq", "seed=3"), 2, "(--seed on the command line)"),
    (
        "cli: --deq abstol=1e999 (inf)",
        lambda b: b.cli("--model", "mlp", "--deq", "abstol=1e999"),
        2,
        "abstol must be in [0, inf), got inf",
    ),
    ("cli: --deq reltol=1", lambda b: b.cli("--model", "mlp", "--deq", "reltol=1"), 2, "reltol must be in [0, 1)"),
    # issue 22: these ended in tracebacks
    (
        "cli: --deq width=0 (wide)",
        lambda b: b.cli("--model", "wide", "--deq", "width=0"),
        2,
        "width must be an integer >= 1, got 0",
    ),
    (
        "cli: --deq width=-4 (wide)",
        lambda b: b.cli("--model", "wide", "--deq", "width=-4"),
        2,
        "width must be an integer >= 1, got -4",
    ),
    (
        "cli: --deq channels=0 (conv)",
        lambda b: b.cli("--model", "conv", "--deq", "channels=0"),
        2,
        "channels must be an integer >= 1",
    ),
    (
        "cli: --deq stem=-1 (conv)",
        lambda b: b.cli("--model", "conv", "--deq", "stem=-1"),
        2,
        "stem must be an integer >= 1",
    ),
    ("cli: --seed 2**70", lambda b: b.cli("--seed", str(2**70)), 2, "seed must be an integer in [0, 2**63)"),
    (
        "train: a label out of range (was a raw IndexError)",
        _label_out_of_range,
        ValueError,
        "class indices in [0, 10) (the model outputs 10 logits)",
    ),
    (
        "train: TensorBoard's disk full (was a raw OSError)",
        _tensorboard_disk_full,
        RunFolderError,
        "TensorBoard could not write its event file",
    ),
    (
        "train: TensorBoard's disk full when it creates its event file (was a raw OSError)",
        _tensorboard_disk_full_at_start,
        RunFolderError,
        "MB free. Free some space and start the run again",
    ),
    # --- what a run reports: every call of a DEQ is counted, not only the last
    (
        "train: a DEQ called twice per step, the first call unconverged",
        _two_calls_per_step,
        ConvergenceWarning,
        "epoch 1: 96 training samples (forward)",
    ),
    # --- MNIST
    (
        "mnist: a folder where a file should be",
        lambda b: _dir_where_a_file_should_be(b, download=False),
        MNISTError,
        "is a directory",
    ),
    (
        "mnist: a folder where a file should be (download)",
        lambda b: _dir_where_a_file_should_be(b, download=True),
        MNISTError,
        "is a directory",
    ),
    ("mnist: read-only cache folder", _read_only_mnist_cache, MNISTError, "DEQKIT_MNIST_DIR"),
    ("mnist: an unreadable file (was a raw PermissionError)", _unreadable_mnist_file, MNISTError, "chmod a+r"),
    (
        "mnist: subset=True (was one sample)",
        lambda b: mnist_datasets(b.tmp, subset=True),
        TypeError,
        "subset must be a positive integer",
    ),
    ("mnist: subset=2.5", lambda b: mnist_datasets(b.tmp, subset=2.5), TypeError, "subset must be a positive integer"),
    ("cli: read-only MNIST cache folder", _read_only_mnist_cache_cli, 1, "DEQKIT_MNIST_DIR"),
]


def _case_id(case: Any) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize(("name", "act", "expected", "fragment"), CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(name, act, expected, fragment, data, finished, tmp_path, monkeypatch, capsys):
    bench = Bench(tmp_path, monkeypatch, data, finished)
    if isinstance(expected, int):
        try:
            status = act(bench)
        except SystemExit as exc:
            status = exc.code
        err = capsys.readouterr().err
        assert status == expected, err
        assert fragment in err
        assert "Traceback" not in err
    elif issubclass(expected, Warning):
        with pytest.warns(expected) as caught:
            act(bench)
        assert any(fragment in str(w.message) for w in caught), [str(w.message) for w in caught]
    else:
        with pytest.raises(expected) as info:
            act(bench)
        assert fragment in str(info.value)


# ---- the same read-only faults, made for real (chmod), where permissions apply ----


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders: the simulated cases above cover this")
def test_real_read_only_folders(data, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module, "MIRRORS", [CLOSED_PORT])
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(MNISTError, match="DEQKIT_MNIST_DIR"):
            load_mnist(ro)
        with pytest.raises(RunFolderError, match="cannot write"):
            run(data, ro / "run")
    finally:
        ro.chmod(stat.S_IRWXU)
