"""Checkpoints: atomic writes, weights-only loading."""

import pytest
import torch

from deqkit.train import CheckpointError, load_checkpoint, save_checkpoint


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

