"""Promoter: a candidate ONNX model replaces the live one only when it is not worse; the old one
stays as <live>.prev; a first deploy always promotes; bad directories are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_CONVERSATIONS, assert_one_line_error, run_cli, train_tiny

from mtnsails.core.errors import MtnsailsError
from mtnsails.loop.promoter import Promoter
from mtnsails.model_dir.metadata import read_metadata

pytestmark = pytest.mark.slow


def snapshot(directory: Path) -> dict:
    """Every file's bytes by relative path (mtnsails.json parsed: a copy rewrites its layout):
    equal snapshots mean the same model."""
    return {
        str(path.relative_to(directory)): json.loads(path.read_text())
        if path.name == "mtnsails.json"
        else path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_first_deploy_promotes_without_comparing(tiny_onnx_dir, tmp_path):
    live = tmp_path / "live"
    decision = Promoter(live).promote(tiny_onnx_dir, TINY_CONVERSATIONS)
    assert decision.promoted and decision.comparison is None and decision.previous is None
    assert "first deploy" in decision.describe()
    assert snapshot(live) == snapshot(tiny_onnx_dir)  # a copy: the candidate stays
    assert not live.with_name("live.prev").exists()


def test_a_worse_candidate_leaves_the_live_directory_untouched(tiny_onnx_dir, worse_onnx_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(tiny_onnx_dir, live)
    before = snapshot(live)
    decision = Promoter(live).promote(worse_onnx_dir, TINY_CONVERSATIONS)
    assert not decision.promoted
    assert decision.comparison.report.first_sentence_match < 1.0
    assert decision.comparison.baseline.first_sentence_match == 1.0
    assert decision.reason.startswith("the candidate is worse (tolerance 0.0%")
    assert "retention (training data): first sentence match" in decision.reason
    assert "live model unchanged" in decision.describe()
    assert snapshot(live) == before and not (tmp_path / "live.prev").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["live"]  # no staging left


def test_a_better_candidate_is_promoted_and_the_old_one_kept_for_a_rollback(tiny_onnx_dir, worse_onnx_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(worse_onnx_dir, live)
    promoter = Promoter(live)
    decision = promoter.promote(tiny_onnx_dir, TINY_CONVERSATIONS)
    assert decision.promoted and decision.previous == promoter.previous
    assert decision.to_dict()["candidate_first_sentence_match"] == 1.0
    assert snapshot(live) == snapshot(tiny_onnx_dir)
    assert snapshot(tmp_path / "live.prev") == snapshot(worse_onnx_dir)
    promoter.rollback()
    assert snapshot(live) == snapshot(worse_onnx_dir)
    assert snapshot(tmp_path / "live.prev") == snapshot(tiny_onnx_dir)


def test_directories_that_are_not_onnx_models_are_refused(tiny_onnx_dir, trained_tiny_model_dir, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    (live / "notes.txt").write_text("mine")
    with pytest.raises(MtnsailsError, match="the live model is not an ONNX model directory"):
        Promoter(live)
    assert (live / "notes.txt").read_text() == "mine"
    with pytest.raises(MtnsailsError, match="the candidate is not an ONNX model directory"):
        Promoter(tmp_path / "new").promote(trained_tiny_model_dir, TINY_CONVERSATIONS)
    with pytest.raises(MtnsailsError, match="the candidate is not a directory"):
        Promoter(tmp_path / "new").promote(tmp_path / "missing", TINY_CONVERSATIONS)
    with pytest.raises(MtnsailsError, match="no previous model"):
        Promoter(tmp_path / "new").rollback()
    assert not (tmp_path / "new").exists()
    assert read_metadata(tiny_onnx_dir)["format"] == "mtnsails-onnx"


def test_promote_command_refuses_a_worse_model_then_promotes_a_better_one(tiny_onnx_dir, worse_onnx_dir, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(TINY_CONVERSATIONS))
    live = tmp_path / "live"
    first = run_cli(
        "promote", "--candidate", str(worse_onnx_dir), "--live", str(live), "--data-file", str(data), "--quiet"
    )
    assert first.returncode == 0 and first.stdout.startswith("promoted: first deploy")
    again = run_cli(
        "promote", "--candidate", str(worse_onnx_dir), "--live", str(live), "--data-file", str(data), "--quiet"
    )  # equal: not worse, promoted again
    assert again.returncode == 0, again.stderr
    before = snapshot(live)
    better = run_cli("promote", "--candidate", str(tiny_onnx_dir), "--live", str(live), "--quiet")
    # no --data-file: the data the candidate was trained on (training_data.jsonl of its source)
    assert better.returncode == 0, better.stderr
    assert (
        "promoted: the candidate is not worse: retention (training data): first sentence match 100.0%" in better.stdout
    )
    assert snapshot(live.with_name("live.prev")) == before
    worse = run_cli("promote", "--candidate", str(worse_onnx_dir), "--live", str(live), "--data-file", str(data))
    assert worse.returncode == 1 and "refused: the candidate is worse" in worse.stdout
    assert "live model unchanged" in worse.stdout and snapshot(live) == snapshot(tiny_onnx_dir)
    rollback = run_cli("promote", "--rollback", "--live", str(live))
    assert rollback.returncode == 0 and snapshot(live) == before


@pytest.mark.parametrize(
    "make_live, phrase",
    [
        (
            lambda live: live.mkdir() or (live / "notes.txt").write_text("mine"),
            "the live model is not an ONNX model directory",
        ),
        (lambda live: live.write_text("mine"), "the live model is not a directory"),
    ],
)
def test_promote_command_refuses_a_live_directory_that_is_not_an_onnx_model(
    tiny_onnx_dir, tmp_path, make_live, phrase, cli_here
):
    live = tmp_path / "live"
    make_live(live)
    before = snapshot(live) if live.is_dir() else live.read_bytes()
    result = cli_here("promote", "--candidate", str(tiny_onnx_dir), "--live", str(live))
    assert_one_line_error(result, phrase)
    assert (snapshot(live) if live.is_dir() else live.read_bytes()) == before


def test_promote_command_bad_candidate_and_data_are_one_line_errors(
    tiny_onnx_dir, trained_tiny_model_dir, tmp_path, cli_here
):
    live = tmp_path / "live"
    assert_one_line_error(
        cli_here("promote", "--candidate", str(trained_tiny_model_dir), "--live", str(live)),
        "the candidate is not an ONNX model",
    )
    assert_one_line_error(
        cli_here(
            "promote",
            "--candidate",
            str(tiny_onnx_dir),
            "--live",
            str(live),
            "--data-file",
            str(tmp_path / "missing.json"),
        ),
        "missing.json: no such file",
    )
    assert_one_line_error(cli_here("promote", "--live", str(live)), "--candidate", "--rollback")
    assert not live.exists()
    nowhere = tmp_path / "nodir" / "live"
    assert_one_line_error(
        cli_here("promote", "--candidate", str(tiny_onnx_dir), "--live", str(nowhere)), "nodir", "does not exist"
    )
    assert not nowhere.parent.exists()


HELD_OUT = [TINY_CONVERSATIONS[4], TINY_CONVERSATIONS[5]]  # two plus two, bees
NOT_HELD_OUT = [conversation for conversation in TINY_CONVERSATIONS if conversation not in HELD_OUT]


@pytest.fixture(scope="module")
def overfitted_onnx_dir(tmp_path_factory) -> Path:
    """A candidate that learned its own data by heart and nothing else: the tiny model trained
    on TINY_CONVERSATIONS without HELD_OUT."""
    root = tmp_path_factory.mktemp("overfitted")
    return train_tiny(NOT_HELD_OUT, root / "model", onnx_dir=root / "onnx")


def test_a_candidate_that_keeps_its_training_answers_but_loses_the_held_out_ones_is_refused(
    tiny_onnx_dir, overfitted_onnx_dir, tmp_path
):
    live = tmp_path / "live"
    shutil.copytree(tiny_onnx_dir, live)
    before = snapshot(live)
    promoter = Promoter(live)
    retention = promoter.compare(overfitted_onnx_dir, NOT_HELD_OUT)
    assert retention.passed  # on what it trained on, nothing is forgotten: that gate alone promotes
    decision = promoter.promote(overfitted_onnx_dir, NOT_HELD_OUT, held_out=HELD_OUT)
    assert not decision.promoted and snapshot(live) == before
    assert decision.held_out.report.first_sentence_match < decision.held_out.baseline.first_sentence_match == 1.0
    assert "held out: first sentence match" in decision.reason and "retention (training data)" in decision.reason
    assert decision.to_dict()["live_held_out_match"] == 1.0


def test_promote_command_takes_a_held_out_set_and_says_without_one_that_overfitting_is_unchecked(
    tiny_onnx_dir, overfitted_onnx_dir, tmp_path, cli_here
):
    live, eval_file, kept = tmp_path / "live", tmp_path / "eval.json", tmp_path / "kept.json"
    shutil.copytree(tiny_onnx_dir, live)
    eval_file.write_text(json.dumps(HELD_OUT))
    kept.write_text(json.dumps(NOT_HELD_OUT))
    refused = cli_here(
        "promote",
        "--candidate",
        str(overfitted_onnx_dir),
        "--live",
        str(live),
        "--data-file",
        str(kept),
        "--eval-file",
        str(eval_file),
        "--quiet",
    )
    assert refused.returncode == 1 and "refused" in refused.stdout and "held out:" in refused.stdout
    promoted = cli_here(
        "promote", "--candidate", str(overfitted_onnx_dir), "--live", str(live), "--data-file", str(kept), "--quiet"
    )
    assert promoted.returncode == 0 and "overfitting is not checked" in promoted.stdout
