"""Checkpoints and run-folder files: atomic writes, weights-only loading, checksums, file modes."""

import os
import stat

import pytest
import torch

from deqkit.train import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint
from deqkit.train.checkpoint import CHECKPOINT_FORMAT, check_writable, checksum
from deqkit.train.metrics import write_metrics


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


class NotPlainData:
    pass


def test_load_checkpoint_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="not a readable deqkit checkpoint"):
        load_checkpoint(path)
    torch.save({"format": 99}, path)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)


def test_checksum_round_trip_and_format(tmp_path):
    state = {
        "w": torch.arange(12.0).reshape(3, 4).T,
        "epoch": 3,
        "lr": 1e-3,
        "tag": "x",
        "none": None,
        "nested": [{"a": (1, 2)}, torch.zeros(0)],
    }
    path = save_checkpoint(state, tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["sha256"] == checksum(
        {k: v for k, v in raw.items() if k != "sha256"}
    )
    loaded = load_checkpoint(path)
    assert "sha256" not in loaded and torch.equal(loaded["w"], state["w"]) and loaded["nested"][0] == {"a": (1, 2)}
    save_checkpoint(loaded, path)  # re-saving a loaded state replaces its format and checksum entries
    assert load_checkpoint(path)["epoch"] == 3
    # the digest sees values, not their storage: a contiguous copy has the same one, a changed value another
    assert checksum({"w": state["w"]}) == checksum({"w": state["w"].contiguous()})
    assert checksum({"w": state["w"]}) != checksum({"w": state["w"] + 1e-7})
    assert checksum({"e": 1}) != checksum({"e": 1.0}) != checksum({"e": "1"})


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint({"epoch": 1}, tmp_path / "checkpoint.pt")
        write_metrics(tmp_path, [], TrainConfig(), {})
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "metrics.csv", "metrics.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_check_writable_creates_the_folder(tmp_path):
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # no probe left
