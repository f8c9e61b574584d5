"""A checkpoint is resumable only when every file transformers' Trainer wrote is whole."""

import json

import numpy as np
import torch
from safetensors.numpy import save_file

from mtnsails.train.checkpoints import checkpoint_problem, newest_complete


def _checkpoint(directory, step):
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": np.ones((64, 64), dtype=np.float32)}, path / "model.safetensors")
    torch.save({"state": torch.ones(64, 64)}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def _cut(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])


def test_a_complete_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(_checkpoint(tmp_path, 2)) is None


def test_each_kind_of_cut_short_file_is_named(tmp_path):
    for damage, problem in [
        (lambda p: _cut(p / "model.safetensors"), "model.safetensors is cut short"),
        (lambda p: _cut(p / "optimizer.pt"), "optimizer.pt is cut short or damaged"),
        (lambda p: (p / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda p: _cut(p / "trainer_state.json", 5), "trainer_state.json is damaged"),
    ]:
        path = _checkpoint(tmp_path / problem.split()[0], 2)
        damage(path)
        assert checkpoint_problem(path) == problem


def test_newest_complete_skips_newer_incomplete_ones_by_step_not_by_name(tmp_path):
    _checkpoint(tmp_path, 9)
    _cut(_checkpoint(tmp_path, 10) / "optimizer.pt")  # "10" sorts before "9" as text
    (tmp_path / "checkpoint-12").mkdir()  # a save killed before it wrote anything
    found, skipped = newest_complete(tmp_path)
    assert found == tmp_path / "checkpoint-9"
    assert skipped == [
        "checkpoint-12 is incomplete (no trainer_state.json)",
        "checkpoint-10 is incomplete (optimizer.pt is cut short or damaged)",
    ]
    assert newest_complete(tmp_path / "checkpoint-12") == (None, [])
