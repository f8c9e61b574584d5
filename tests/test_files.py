"""Atomic writes: a file or directory is either the complete old one or the complete new one."""

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text, file_sha256
from mtnsails.model_dir.metadata import METADATA_FILE, MODEL_FORMAT, ONNX_FORMAT, read_metadata
from mtnsails.model_dir.output import atomic_directory, check_replaceable, recover_swap


def _earlier_output(path, **files):
    """An output as mtnsails writes it: `files` (name -> text) plus its mtnsails.json."""
    with atomic_directory(path, kind=MODEL_FORMAT) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)
        (staging / METADATA_FILE).write_text(json.dumps({"format": MODEL_FORMAT}))
    return path


def test_atomic_write_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "data.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_atomic_directory_swaps_in_the_new_tree_on_success(tmp_path):
    target = _earlier_output(tmp_path / "model")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / METADATA_FILE).exists()  # still the old tree while writing
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failure_inside_atomic_directory_keeps_the_old_tree(tmp_path):
    target = _earlier_output(tmp_path / "model", weights="good")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("export failed")
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_written_files_and_directories_get_ordinary_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "weights").write_text("w")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "log.json"
    target.write_text("[]")
    target.chmod(0o600)
    atomic_write_text(target, "[1]")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_directory_never_replaces_a_folder_that_is_not_its_own_output(tmp_path):
    users = tmp_path / "notes"
    users.mkdir()
    (users / "thesis.tex").write_text("precious")
    with pytest.raises(MtnsailsError, match="not an mtnsails output"):
        with atomic_directory(users, kind=MODEL_FORMAT):
            pass
    assert (users / "thesis.tex").read_text() == "precious"


def test_atomic_directory_replaces_only_outputs_of_the_same_kind(tmp_path):
    model = tmp_path / "model"
    with atomic_directory(model, kind=MODEL_FORMAT) as staging:
        (staging / METADATA_FILE).write_text(json.dumps({"format": MODEL_FORMAT}))
    with atomic_directory(model, kind=MODEL_FORMAT) as staging:  # retraining: replaced
        (staging / METADATA_FILE).write_text(json.dumps({"format": MODEL_FORMAT, "run": 2}))
    assert read_metadata(model)["run"] == 2
    with pytest.raises(MtnsailsError, match="another kind"):
        check_replaceable(model, ONNX_FORMAT)  # an ONNX export never lands on a trained model


def test_files_and_the_working_directory_are_never_replaced(tmp_path, monkeypatch):
    data = tmp_path / "data.json"
    data.write_text("[]")
    with pytest.raises(MtnsailsError, match="not a directory"):
        check_replaceable(data)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MtnsailsError, match="current directory"):
        check_replaceable(tmp_path)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")  # an empty directory is fine


def test_read_metadata_reports_a_broken_file_in_one_line(tmp_path):
    assert read_metadata(tmp_path) == {}
    (tmp_path / METADATA_FILE).write_text("{broken")
    with pytest.raises(MtnsailsError, match="mtnsails.json: not valid JSON"):
        read_metadata(tmp_path)


def test_an_earlier_output_holding_files_of_the_users_is_never_replaced(tmp_path):
    model = _earlier_output(tmp_path / "model", weights="w")
    assert read_metadata(model)["written_files"] == [METADATA_FILE, "weights"]  # what mtnsails wrote
    (model / "my_data.json").write_text("[]")
    (model / "NOTES.txt").write_text("precious")
    with pytest.raises(MtnsailsError) as error:
        with atomic_directory(model, kind=MODEL_FORMAT):
            pass
    assert str(error.value) == (
        f"{model}: holds files mtnsails did not write (NOTES.txt, "
        "my_data.json); it is never overwritten: move them out or choose "
        "another output directory"
    )
    assert (model / "NOTES.txt").read_text() == "precious" and (model / "weights").exists()


def test_an_output_written_before_files_were_recorded_is_judged_by_its_file_names(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in (METADATA_FILE, "config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text(json.dumps({"format": MODEL_FORMAT}))
    check_replaceable(model, MODEL_FORMAT)
    (model / "NOTES.txt").write_text("precious")
    with pytest.raises(MtnsailsError, match=r"did not write \(NOTES.txt\)"):
        check_replaceable(model, MODEL_FORMAT)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_killed_while_writing_leaves_the_old_output_and_its_staging_is_cleaned_up(tmp_path):
    model = _earlier_output(tmp_path / "model", weights="old")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from mtnsails.model_dir.output import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as staging:\n"
            "    (staging / 'weights').write_text('half')\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n",
            str(model),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline() == "writing\n"
    writer.kill()  # kill -9: no cleanup code runs
    writer.wait()
    leftover = [path.name for path in tmp_path.iterdir() if path.name != "model"]
    assert leftover and leftover[0].startswith(f".model.staging-{writer.pid}-")
    assert (model / "weights").read_text() == "old"
    with atomic_directory(model, kind=MODEL_FORMAT) as staging:  # the next run
        (staging / METADATA_FILE).write_text(json.dumps({"format": MODEL_FORMAT}))
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_a_run_killed_between_the_two_renames_of_a_swap_is_finished_by_the_next(tmp_path):
    """Where renameat2 cannot exchange, a swap is two renames; a kill between them leaves no
    output, the old tree in `.model.previous-*` and the new one in `.model.staging-*`."""
    dead = _dead_pid()
    old = _earlier_output(tmp_path / f".model.previous-{dead}-x1", weights="old")
    _earlier_output(tmp_path / f".model.staging-{dead}-x2", weights="new")
    live = _earlier_output(tmp_path / f".model.staging-{os.getpid()}-x3", weights="live")
    recover_swap(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "old" and not old.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [live.name, "model"]
